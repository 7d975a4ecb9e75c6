"""How the `persona` commands print their reports for a person at a terminal (`--json` prints the report itself).

One function per report (`render_<command>`); the demo prints the same reports through them.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console()
err = Console(stderr=True)


def render_generate(s: dict) -> None:
    table = Table(title=f"generated {s['customers']:,} customers in {s['seconds']:.1f} s")
    table.add_column("source")
    table.add_column("rows", justify="right")
    for name, rows in s["rows"].items():
        table.add_row(name, f"{rows:,}")
    console.print(table)


def render_integrate(r: dict) -> None:
    table = Table(title="sources (cumulative)")
    for col in ("source", "files", "read", "accepted", "quarantined", "top reasons"):
        table.add_column(col, justify="left" if col in ("source", "top reasons") else "right")
    for name, s in r["sources"].items():
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(s["reasons"].items(), key=lambda kv: -kv[1])[:3])
        table.add_row(name, str(s["files"]), f"{s['read']:,}", f"{s['accepted']:,}", f"{s['quarantined']:,}", reasons)
    console.print(table)
    ident = r["identity"]
    console.print(f"[bold]{r['personas']:,} personas[/] from {ident['identifiers']:,} identifiers "
                  f"({ident['links']:,} links); new {ident['new_personas']:,}, merges {ident['merges']:,}, "
                  f"splits {ident['splits']:,}; shared values {ident['shared_values']}, "
                  f"blocked {ident['blocked_values']:,}, oversized components {len(ident['oversized_components'])}")
    if "resolution" in r:
        q = r["resolution"]
        console.print(f"resolution vs ground truth: precision [bold]{q['precision']:.4f}[/], "
                      f"recall [bold]{q['recall']:.4f}[/] over {q['units']:,} mentions")
    if r["enrichment"]:
        et = Table(title="enrichment")
        for col in ("source", "provider", "match rate", "matched", "withheld (no consent)", "quarantined"):
            et.add_column(col)
        for name, e in r["enrichment"].items():
            et.add_row(name, e["provider"], f"{e['match_rate']:.1%}", f"{e['matched']:,}",
                       f"{e['withheld_no_consent']:,}", f"{e['quarantined']:,}")
        console.print(et)
    console.print(f"run {r['run_id']} in {r['seconds']['total']:.1f} s")


def render_features(r: dict) -> None:
    console.print(f"snapshots: {len(r['dates'])} dates from {r['dates'][0][:10]} to {r['dates'][-1][:10]} "
                  f"({len(r['computed'])} computed now); data {r['data_start'][:10]}..{r['data_end'][:10]}; "
                  f"the last snapshot holds the data up to and including {r['data_end'][:10]}")
    by_reason: dict[str, list[str]] = {}
    for date, p in r.get("recomputed", {}).items():
        by_reason.setdefault(p["why"] + ("" if len(p["groups"]) > 1 else f" [{p['groups'][0]} only]"),
                             []).append(date[:10])
    for why, dates in by_reason.items():
        console.print(f"  recomputed {', '.join(dates)}: {why}", highlight=False)
    for group, rows in r["rows"].items():
        console.print(f"  {group:<12} {rows:>10,} rows")
    m = r["materialized"]
    online = "online store not loaded"
    if r.get("reloaded"):
        online = (f"online store reloaded in full in {r['reloaded']['seconds']} s (was {m.get('state_before')}; "
                  f"{r['reloaded']['replayed_events']} personas' real-time state from the event log)")
    elif m:
        how = "in full" if m.get("state_before") != "ok" else "incrementally"
        online = f"materialised {how} in {r['seconds']['materialize']} s"
        if m.get("state_before") not in (None, "ok"):
            online += f" (the online store was {m['state_before']})"
    console.print(f"feature services: {', '.join(r['services'])}; store: {r['store']}; {online}; "
                  f"total {r['seconds']['total']} s")


def render_train(r: dict) -> None:
    table = Table(title=f"model tags vs baselines on the held-out period (data to {r['data_end'][:10]})")
    for col in ("tag", "metric", "model", "best baseline", "grade", "version", "beats all"):
        table.add_column(col)
    for m in r["models"]:
        best = max(m["baselines"].items(), key=lambda kv: kv[1]) if m["baselines"] else ("-", float("nan"))
        table.add_row(m["tag"], m["metric"], f"{m.get('learner', '')} {m['value']:.4f}".strip(),
                      f"{best[0]} {best[1]:.4f}", m["grade"],
                      str(m["version"]), "yes" if m["beats_baselines"] else "[red]no[/]")
    console.print(table)
    for m in r["models"]:
        if m.get("passed_over"):
            lead = ", ".join(f"{k} +{v:.4f}" for k, v in m["passed_over"].items())
            console.print(f"{m['tag']}: {m['learner']} serves; within one standard error of it: {lead} (learned "
                          "models must lead a buy-till-you-die model by more than the noise)")
    for tag, why in r["skipped"].items():
        console.print(f"[yellow]skipped {tag}:[/] {why}")
    for tag, p in r.get("promotions", {}).items():
        console.print(f"{tag}: {'promoted' if p['promoted'] else 'not promoted'} ({p['reason']})")
    console.print(f"trained in {r['seconds']} s")


def render_models(r: dict) -> None:
    table = Table(title="registered models")
    for col in ("model", "version", "aliases", "metric", "value", "held out", "grade", "promotion gate"):
        table.add_column(col)
    for m in r["models"]:
        gate = m.get("gate")
        verdict = "-" if gate is None else f"{gate}: {m.get('gate_reason') or ''}".strip()
        table.add_row(m["model"], str(m["version"]), ",".join(m["aliases"]), str(m["metric"]),
                      "" if m["value"] is None else f"{m['value']:.4f}", str(m["held_out"]), str(m["grade"]),
                      verdict if gate != "refused" else f"[yellow]{verdict}[/]")
    console.print(table)


def render_rescore(r: dict) -> None:
    s = r["seconds"]
    if r.get("requested") and r["requested"] != r["data_through"]:
        console.print(f"[yellow]--nearest:[/] no snapshot holds the data up to {r['requested']}; using the latest "
                      f"before it", highlight=False)
    console.print(f"feature snapshot {r['date']} (data up to and including {r['data_through']})", highlight=False)
    console.print(f"rescored [bold]{r['personas']:,}[/] personas as of {r['date']} with models "
                  f"{', '.join(f'{k} v{v}' for k, v in r['models'].items())}: {r['tags']} tags, "
                  f"{r['personas_per_second']:,} personas/s; snapshot {r['snapshot']}")
    console.print("  seconds: " + ", ".join(f"{k} {v}" for k, v in s.items()))
    if r.get("pushed"):
        console.print(f"  online: {r['pushed']['rows']:,} rows to view '{r['pushed']['view']}' "
                      f"in {r['pushed']['seconds']} s")
    if r.get("push_skipped"):
        console.print(f"  online: not pushed: {r['push_skipped']}", highlight=False)
    for tag, why in r.get("unavailable", {}).items():
        console.print(f"  [yellow]tag {tag} unavailable:[/] {why}")


def render_build(r: dict) -> None:
    console.print(f"built Bento [bold]{r['tag']}[/] (service {r['service']})", highlight=False)
    console.print(f"in {r['path']} (BentoML home {r['bentoml_home']})", highlight=False)
    console.print(f"next: {r['containerize']}", highlight=False)


def render_tags(r: dict) -> None:
    table = Table(title=f"tag catalog ({len(r['tags'])} tags; coverage as of {r['date'] or 'no snapshot yet'})")
    for col in ("id", "名称", "name", "category", "type", "values", "coverage"):
        table.add_column(col, justify="right" if col == "coverage" else "left")
    for t in r["tags"]:
        values = ", ".join(str(v["value"]) for v in t.get("values", [])[:4]) + (" ..." if len(t.get("values", [])) > 4 else "")
        cov = "" if t["coverage"] is None else f"{t['coverage']:.1%}"
        table.add_row(t["id"], t["name_zh"], t["name_en"], f"{t['category_zh']} {t['category']}", t["type"],
                      values or t["value_type"], cov)
    console.print(table)
    for tag, why in r.get("unavailable", {}).items():
        console.print(f"[yellow]unavailable here:[/] {tag}: {why}")


def render_tag(r: dict) -> None:
    t = r["tag"]
    console.print(f"[bold]{t['id']}[/]  {t['name_zh']} / {t['name_en']}  ({t['category_zh'] if 'category_zh' in t else ''}"
                  f" {t['category']}, {t['type']}, {t['kind']}, v{t['version']}, owner {t['owner'] or '-'}, "
                  f"cadence {t['cadence'] or '-'})")
    console.print(f"  {t['description']}")
    console.print(f"  defined at {t['source']}; reads {', '.join(sorted(t.get('inputs', []))) or '-'}")
    if r["date"] is None:
        console.print("  no tag snapshot yet: run `persona rescore`")
        return
    console.print(f"  coverage {r['coverage']:.1%} as of {r['date']}")
    table = Table(title="distribution")
    for col in ("value", "personas", "share"):
        table.add_column(col)
    for d in r["distribution"]:
        table.add_row(d["value"], f"{d['count']:,}", f"{d['share']:.1%}")
    console.print(table)
    if r["last_change"]:
        ch = r["last_change"]
        console.print(f"  last change {ch['from']} -> {ch['to']}: " + "; ".join(
            f"{v}: +{c['entered']:,} / -{c['left']:,}" for v, c in ch["values"].items()))


def render_diff(r: dict) -> None:
    table = Table(title=f"tag changes {r['from']} -> {r['to']}")
    for col in ("tag", "value", "before", "after", "entered", "left"):
        table.add_column(col, justify="left" if col in ("tag", "value") else "right")
    for tag, values in r["tags"].items():
        for v, c in values.items():
            if c["entered"] or c["left"]:
                table.add_row(tag, v, f"{c['before']:,}", f"{c['after']:,}", f"+{c['entered']:,}", f"-{c['left']:,}")
    console.print(table)


def render_segment_profile(r: dict) -> None:
    console.print(f"[bold]{r['segment']}[/]: {r['size']:,} of {r['population']:,} personas ({r['share']:.1%}) "
                  f"as of {r['date']}")
    table = Table(title="tag values: members vs everyone else (index 100 = same)")
    for col in ("tag", "value", "members", "others", "index"):
        table.add_column(col)
    for t in r["tags"]:
        table.add_row(t["tag"], t["value"], f"{t['share_in']:.1%}", f"{t['share_out']:.1%}",
                      "-" if t["index"] is None else f"{t['index']:.0f}")
    console.print(table)
    table = Table(title="averages: members vs everyone else")
    for col in ("feature", "members", "others", "index"):
        table.add_column(col)
    for f in r["features"]:
        table.add_row(f["feature"], f"{f['mean_in']:.3g}", f"{f['mean_out']:.3g}",
                      "-" if f["index"] is None else f"{f['index']:.0f}")
    console.print(table)
