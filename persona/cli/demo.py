"""`persona demo` (what `make demo` runs): the whole platform on embedded defaults, explained as it goes.

generate -> integrate -> features -> train (promote) -> rescore -> serve, then a profile call, a recommendation, a
behaviour event and the changed profile, printed for a marketer to read. Every step is the library call the
matching CLI command makes; a step whose output already exists is still run (each is incremental or idempotent).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import pandas as pd
from rich.console import Console
from rich.table import Table

from persona.cli.console import address
from persona.config import CONFIG_NAME
from persona.workspace import Workspace

Progress = Callable[[], AbstractContextManager]


def _pretty_phone(e164: str) -> str:
    """+8613800138000 -> '+86 138 0013 8000': how a customer types it, so the demo shows normalisation at work."""
    if e164.startswith("+86") and len(e164) == 14:
        n = e164[3:]
        return f"+86 {n[:3]} {n[3:7]} {n[7:]}"
    return e164


def _example_customer(ws: Workspace, snapshot: pd.DataFrame) -> tuple[str, str]:
    """A persona with a phone, some purchases and browsing: (persona_id, phone as a customer would type it)."""
    current = ws.require_current("integrated", "run persona integrate")
    ids = pd.read_parquet(current / "identity_map.parquet", columns=["id_type", "value", "persona_id", "status"])
    phones = ids[(ids["id_type"] == "phone") & (ids["status"] == "linked")].drop_duplicates("persona_id")
    ranked = snapshot.sort_values(["churn_risk", "persona_id"]) if "churn_risk" in snapshot else snapshot
    candidates = ranked[ranked["persona_id"].isin(phones["persona_id"])]
    pick = candidates.iloc[len(candidates) // 3]["persona_id"]
    phone = phones.loc[phones["persona_id"] == pick, "value"].iloc[0]
    return str(pick), _pretty_phone(str(phone))


def _fmt(v) -> str:
    if isinstance(v, list):
        return ", ".join(map(str, v))
    if isinstance(v, float):
        return f"{v:,.2f}"
    return str(v)


def _show_profile(console: Console, title: str, body: dict) -> None:
    table = Table(title=title, show_lines=False)
    table.add_column("")
    table.add_column("")
    table.add_row("persona", body["persona_id"])
    for k, v in (body.get("scores") or {}).items():
        if k in ("churn_risk", "high_value"):
            table.add_row(f"model {k}", f"{v:.3f}" if isinstance(v, float) else str(v))
    table.add_row("top interests", ", ".join(f"{i['category']} {i['propensity']:.2f}" for i in body["top_interests"]))
    for category, tags in (body.get("tags") or {}).items():
        shown = {k: v for k, v in tags.items() if v not in (None, False, [], "")}
        text = "; ".join(f"{k}={_fmt(v)}" for k, v in list(shown.items())[:8])
        table.add_row(category, text)
    rt = body.get("realtime") or {}
    if rt:
        table.add_row("real-time", ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                             for k, v in rt.items() if k != "rt_last_event_ts"))
    table.add_row("models", ", ".join(f"{k} v{v}" for k, v in body["models"].items()))
    console.print(table)


def run_demo(workspace, customers: int, *, console: Console, progress: Progress) -> None:
    """The demo's steps, each announced, with what came out; raises on the first failure."""
    import httpx

    from features.build import build_features
    from features.generate import generate
    from features.integration.run import integrate
    from persona.cli import render
    from rules import history
    from serving.batch import rescore
    from serving.process import running_server
    from training.train import train

    start = time.perf_counter()
    ws = Workspace.open(workspace)
    if not (ws.root / CONFIG_NAME).exists():
        console.rule(f"1. generate demo data: {customers:,} customers across CRM, shop, stores, app and social")
        ws.root.mkdir(parents=True, exist_ok=True)
        with progress() as p:
            render.render_generate(generate(ws.root, customers, progress=p))
    console.rule("2. integrate: standardise, quarantine bad rows, resolve identities (OneID), enrich")
    with progress() as p:
        render.render_integrate(integrate(ws, progress=p))
    console.rule("3. features: point-in-time snapshots into the Feast store (offline + online)")
    with progress() as p:
        render.render_features(build_features(ws, progress=p))
    console.rule("4. train the model tags and compare them with the classical baselines (MLflow)")
    with progress() as p:
        render.render_train(train(ws, promote=True, progress=p))
    console.rule("5. rescore everyone: champion models + rule tags -> dated tag snapshot")
    with progress() as p:
        result = rescore(ws, progress=p)
    render.render_rescore(result)
    coverage = sorted(result["coverage"].items(), key=lambda kv: -kv[1])
    table = Table(title="tag coverage (share of personas with a value)")
    for col in ("tag", "coverage", "tag ", "coverage "):
        table.add_column(col)
    half = (len(coverage) + 1) // 2
    for left, right in zip(coverage[:half], coverage[half:] + [("", None)]):
        table.add_row(left[0], f"{left[1]:.0%}", right[0], "" if right[1] is None else f"{right[1]:.0%}")
    console.print(table)

    console.rule("6. the online service (BentoML): what a recommendation system sees")
    # churn_risk is a column only when a churn champion exists (the gate may have refused every model)
    snapshot = history.read(ws)
    snapshot = snapshot[[c for c in ("persona_id", "churn_risk") if c in snapshot]]
    pid, phone = _example_customer(ws, snapshot)
    with running_server(ws.root) as base, httpx.Client(base_url=base, timeout=30) as http:
        console.print(f"service ready at {base}")
        console.print(f"POST /v1/profile {{identifier: phone {phone!r}}}")
        r = http.post("/v1/profile", json={"identifier": {"type": "phone", "value": phone}})
        r.raise_for_status()
        before = r.json()
        _show_profile(console, f"profile of the customer with phone {phone}", before)
        r = http.post("/v1/recommend", json={"persona_id": pid, "n": 3})
        r.raise_for_status()
        rec = r.json()
        console.print("POST /v1/recommend -> " + ", ".join(
            f"{i['category']} ({i['propensity']:.2f})" for i in rec["recommendations"])
            + (f"; left out, bought recently: {', '.join(rec['excluded_recently_bought'])}"
               if rec.get("excluded_recently_bought") else ""))
        category = rec["recommendations"][0]["category"] if rec["recommendations"] else "beauty"
        events = [{"persona_id": pid, "event_type": "product_view", "category": category} for _ in range(3)]
        events.append({"persona_id": pid, "event_type": "cart_add", "category": category})
        t0 = time.perf_counter()
        r = http.post("/v1/events", json={"events": events})
        r.raise_for_status()
        r = http.post("/v1/profile", json={"persona_id": pid})
        r.raise_for_status()
        after = r.json()
        ms = (time.perf_counter() - t0) * 1000
        console.print(f"POST /v1/events: 3 views and a cart add in {category}; the profile reflects them "
                      f"{ms:.0f} ms later (they are real events: a second demo run posts them again, "
                      f"as a second visit would)")
        _show_profile(console, "the same customer after the events", after)
        churn_b, churn_a = (before.get("scores") or {}).get("churn_risk"), (after.get("scores") or {}).get("churn_risk")
        if churn_b is not None and churn_a is not None:
            console.print(f"churn risk {churn_b:.3f} -> {churn_a:.3f} with the fresh behaviour")
    _campaign(ws, console, progress)
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s; workspace: {ws.root}\n"
                  f"next: persona tags -w {workspace} | persona segment profile win_back -w {workspace} | "
                  f"persona serve -w {workspace}")
    console.print(f"the console (started on request): persona console -w {workspace}  ->  {address()}",
                  highlight=False, soft_wrap=True)


DEMO_CAMPAIGN = "demo_winback"
DEMO_SEGMENT = "churn_risk >= 0.3"


def _campaign(ws: Workspace, console: Console, progress) -> None:
    """Step 7: a win-back campaign to everyone at some risk of churning (churn_risk >= 0.3) with a 20% holdout, its
    window's purchases planted with a known +5 point effect, integrated like any other data, and its report. On a
    second run the recorded campaign is reported again."""
    import datetime as dt

    from features.integration.run import integrate
    from persona.cli import render
    from persona.cli.campaign import plant_campaign
    from rules import campaigns
    from rules.catalog import rule_paths
    from rules.segments import load_segments

    console.rule("7. a win-back campaign (churn_risk >= 0.3) with a 20% holdout: did it pay off?")
    if not (campaigns.folder(ws, DEMO_CAMPAIGN) / campaigns.DEFINITION).exists():
        made = campaigns.create(ws, load_segments(rule_paths(ws, ws.config())), DEMO_CAMPAIGN, DEMO_SEGMENT,
                                holdout=0.2, start=dt.date(2026, 10, 8), end=dt.date(2026, 10, 21),
                                cost_per_contact=2.0)
        console.print(f"persona campaign create {DEMO_CAMPAIGN} --segment '{DEMO_SEGMENT}' --holdout 0.2: "
                      f"{made['treatment']:,} to contact, {made['held_out']:,} held out", highlight=False)
        truth = plant_campaign(ws, DEMO_CAMPAIGN, lift=0.05, base_rate=0.08)
        console.print(f"its window's purchases arrive (planted: +{truth['expected_conversion_lift']:.1%} "
                      f"conversion for those contacted); persona integrate:", highlight=False)
        with progress() as p:
            render.render_integrate(integrate(ws, progress=p))
    r = campaigns.report(ws, DEMO_CAMPAIGN)
    lift, roi = r["lift"]["conversion_rate"], r["roi"]
    console.print(f"persona campaign report {DEMO_CAMPAIGN}: conversion {r['groups']['treatment']['conversion_rate']:.1%}"
                  f" contacted vs {r['groups']['holdout']['conversion_rate']:.1%} held out: lift {lift['estimate']:+.1%}"
                  f" (95% {lift['low']:+.1%} to {lift['high']:+.1%}); ROI {roi['roi']['estimate']:+.0%} at "
                  f"{roi['cost']:,.0f} cost", highlight=False, soft_wrap=True)
