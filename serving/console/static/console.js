// persona console: charts from data-chart attributes (Plotly, served by the console) and the live segment builder.
"use strict";

function drawCharts(root) {
  (root || document).querySelectorAll("[data-chart]").forEach((el) => {
    const fig = JSON.parse(el.dataset.chart || "null");
    if (fig && window.Plotly) {
      Plotly.react(el, fig.data, Object.assign({ autosize: true }, fig.layout || {}), { displayModeBar: false, responsive: true });
      el.dataset.drawn = "1";
    }
  });
}

function debounce(fn, ms) {
  let t = null;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}

async function getJSON(url) {
  try {
    const r = await fetch(url, { headers: { Accept: "application/json" } });
    const body = await r.json();
    return { ok: r.ok, body };
  } catch (e) { // a reply that is not JSON (a proxy's error page, a dropped connection): say so, keep going
    return { ok: false, body: { error: "the console did not answer (" + e + ")" } };
  }
}

function segmentBuilder() {
  const expr = document.getElementById("expr");
  if (!expr) return;
  const names = JSON.parse(expr.dataset.names || "[]");
  const count = document.getElementById("count"), detail = document.getElementById("count-detail");
  const error = document.getElementById("expr-error"), suggest = document.getElementById("suggest");
  const exportLink = document.getElementById("export");
  let seq = 0;

  const update = debounce(async () => {
    const text = expr.value.trim();
    exportLink.href = text ? "/segments/export?expr=" + encodeURIComponent(text) : "#";
    if (!text) { count.textContent = "-"; detail.textContent = ""; error.textContent = ""; return; }
    const mine = ++seq;
    const { ok, body } = await getJSON("/api/segments/count?expr=" + encodeURIComponent(text));
    if (mine !== seq) return; // a newer keystroke answered first
    if (!ok) { error.textContent = body.error; count.textContent = "-"; detail.textContent = ""; return; }
    error.textContent = "";
    count.textContent = body.count.toLocaleString();
    detail.textContent = " / " + body.population.toLocaleString() + " (" + (100 * body.share).toFixed(1) + "%) · " + body.date + " · " + Math.round(body.seconds * 1000) + " ms";
    profile(text, mine);
  }, 150);

  const profile = debounce(async (text, mine) => {
    const { ok, body } = await getJSON("/api/segments/profile?expr=" + encodeURIComponent(text));
    if (!ok || mine !== seq) return;
    const rows = body.tags.filter((r) => r.index !== null).slice(0, 15).reverse();
    const el = document.getElementById("chart-profile");
    el.dataset.chart = JSON.stringify({
      data: [{ type: "bar", orientation: "h", x: rows.map((r) => r.index - 100), base: 100,
               y: rows.map((r) => r.tag + " = " + r.value),
               marker: { color: rows.map((r) => (r.index >= 100 ? "#c0392b" : "#27ae60")) } }],
      layout: { height: 60 + 24 * rows.length, margin: { l: 260, t: 10 }, xaxis: { title: { text: "index (100 = like everyone)" } } },
    });
    drawCharts(el.parentNode);
  }, 400);

  const suggestNames = () => {
    const m = /([A-Za-z_][A-Za-z0-9_]*)$/.exec(expr.value.slice(0, expr.selectionStart));
    suggest.innerHTML = "";
    if (!m || m[1].length < 2) return;
    names.filter((n) => n.startsWith(m[1]) && n !== m[1]).slice(0, 12).forEach((n) => {
      const s = document.createElement("span");
      s.textContent = n;
      s.onclick = () => {
        const at = expr.selectionStart - m[1].length;
        expr.value = expr.value.slice(0, at) + n + expr.value.slice(expr.selectionStart);
        suggest.innerHTML = ""; expr.focus(); update();
      };
      suggest.appendChild(s);
    });
  };

  expr.addEventListener("input", () => { suggestNames(); update(); });
  document.querySelectorAll(".use-segment").forEach((a) => a.addEventListener("click", (e) => {
    e.preventDefault(); expr.value = a.dataset.id; update();
  }));
  document.querySelectorAll(".seg-count").forEach(async (td) => {
    const { ok, body } = await getJSON("/api/segments/count?expr=" + encodeURIComponent(td.dataset.id));
    td.textContent = ok ? body.count.toLocaleString() : "!";
  });
  document.getElementById("save").addEventListener("click", async () => {
    const form = new FormData();
    form.append("segment_id", document.getElementById("segment-id").value);
    form.append("expr", expr.value);
    form.append("zh", document.getElementById("segment-zh").value);
    form.append("en", document.getElementById("segment-en").value);
    const r = await fetch("/segments/save", { method: "POST", body: form });
    const body = await r.json();
    document.getElementById("saved").textContent = r.ok ? "✓ " + body.id + " → " + body.path : "";
    error.textContent = r.ok ? "" : body.error;
  });
  update();
}

function keepQueryOnLanguageSwitch() {
  const a = document.getElementById("lang-switch");
  if (!a) return;
  const params = new URLSearchParams(window.location.search);
  params.set("lang", new URLSearchParams(a.getAttribute("href").slice(1)).get("lang"));
  a.setAttribute("href", "?" + params.toString());
}

document.addEventListener("DOMContentLoaded", () => { keepQueryOnLanguageSwitch(); drawCharts(); segmentBuilder(); });
