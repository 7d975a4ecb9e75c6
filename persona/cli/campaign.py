"""`persona campaign`: create a campaign over a segment with a holdout, report whether it paid off, list them, and
(demo / tests) plant one with a known effect into a generated workspace (rules/campaigns.py, features/generate)."""

from __future__ import annotations

import datetime as dt
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator

import typer

from persona.cli.options import JsonOpt, WorkspaceOpt
from persona.cli.options import emit as _emit
from persona.cli.options import errors as _errors
from persona.cli.render import console
from persona.workspace import Workspace, write_json_atomic

campaign_app = typer.Typer(help="Campaigns: a segment with a holdout, and whether contacting it paid off.",
                           no_args_is_help=True)
NameArg = Annotated[str, typer.Argument(help="the campaign's name (lower-case letters, digits, '_' and '-')")]
PLANT_IDS = ("account_id", "email", "phone", "member_id")  # what the shop's and the tills' exports name people by


def _date(value: str, what: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise FileNotFoundError(f"{what}: {value!r} is not a date (YYYY-MM-DD)") from None


@contextmanager
def _campaign_errors() -> Iterator[None]:
    from rules.campaigns import CampaignError
    from rules.segments import SegmentError

    with _errors():
        try:
            yield
        except (CampaignError, SegmentError, ValueError) as exc:
            raise FileNotFoundError(str(exc)) from None  # printed as `error: ...`, exit 2


@campaign_app.command("create")
def create(
    name: NameArg,
    segment: Annotated[str, typer.Option(help="a segment id or an expression such as \"churn_risk >= 0.6\"")],
    start: Annotated[str, typer.Option(help="first day of the campaign window (YYYY-MM-DD, workspace time zone)")],
    end: Annotated[str, typer.Option(help="last day of the window (YYYY-MM-DD, included)")],
    holdout: Annotated[float, typer.Option(help="share of the audience held out, not contacted (0 < h < 1)")] = 0.1,
    cost_per_contact: Annotated[float | None, typer.Option(help="cost of contacting one customer")] = None,
    value_per_conversion: Annotated[float | None, typer.Option(
        help="value of one conversion (default: ROI from the revenue measured)")] = None,
    date: Annotated[str | None, typer.Option(help="tag snapshot the audience is taken from (default: latest)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="also write the treatment list here (.csv/.parquet)")] = None,
    replace: Annotated[bool, typer.Option(help="draw again over a campaign of the same name")] = False,
    workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False,
) -> None:
    """Take a segment's members, hold out a stable random share, record it, and write the treatment list."""
    from rules import campaigns
    from rules.catalog import rule_paths
    from rules.segments import load_segments

    with _campaign_errors():
        ws = Workspace.open(workspace)
        result = campaigns.create(
            ws, load_segments(rule_paths(ws, ws.config())), name, segment, holdout=holdout,
            start=_date(start, "--start"), end=_date(end, "--end"), cost_per_contact=cost_per_contact,
            value_per_conversion=value_per_conversion, date=date, out=out, replace=replace)
    _emit(result, as_json, lambda r: console.print(
        f"campaign {r['campaign']}{' (unchanged: already recorded with these settings)' if r.get('unchanged') else ''}:"
        f" {r['audience']:,} members of {r['segment']} at {r['snapshot_date']}: {r['treatment']:,} to contact, "
        f"{r['held_out']:,} held out; window {r['window']['start']} to {r['window']['end']}; "
        f"treatment list {r.get('treatment_list', r['folder'])}", highlight=False, soft_wrap=True))


@campaign_app.command("report")
def report(name: NameArg, workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Treatment against holdout over the window: conversion, revenue, increments with 95% intervals, ROI."""
    from rules import campaigns

    with _campaign_errors():
        result = campaigns.report(Workspace.open(workspace), name)
    _emit(result, as_json, _render_report)


@campaign_app.command("list")
def list_(workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """The campaigns recorded in the workspace, newest first."""
    from rules import campaigns

    with _campaign_errors():
        found = campaigns.list_campaigns(Workspace.open(workspace))
    _emit({"campaigns": found}, as_json, lambda r: [console.print(
        f"{c['name']}: {c['segment']} ({c['audience']:,} members, {c['held_out']:,} held out), "
        f"{c['start']} to {c['end']}", highlight=False) for c in r["campaigns"]] or console.print("no campaigns"))


@campaign_app.command("plant")
def plant(
    name: NameArg,
    lift: Annotated[float, typer.Option(help="added to the treatment group's conversion rate (0: no effect)")],
    base_rate: Annotated[float, typer.Option(help="conversion rate without the campaign")] = 0.1,
    order_value: Annotated[float, typer.Option(help="mean value of a window order")] = 250.0,
    seed: Annotated[int, typer.Option(help="random seed")] = 7,
    workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False,
) -> None:
    """Demo and tests: write the window's purchases of a created campaign with a known effect into a generated
    workspace's raw sources (then `persona integrate` and `persona campaign report`)."""
    with _campaign_errors():
        truth = plant_campaign(Workspace.open(workspace), name, lift=lift, base_rate=base_rate,
                               order_value=order_value, seed=seed)
    _emit(truth, as_json, lambda t: console.print(
        f"planted {t['orders']:,} purchases for campaign {name} ({t['treatment']:,} treated at "
        f"{base_rate + lift:.1%}, {t['holdout']:,} held out at {base_rate:.1%}; expected lift "
        f"{t['expected_conversion_lift']:+.2%}) in {', '.join(t['files'])}; now run `persona integrate`",
        highlight=False, soft_wrap=True))


def plant_campaign(ws: Workspace, name: str, *, lift: float, base_rate: float, order_value: float = 250.0,
                   seed: int = 7) -> dict:
    """The purchases of a recorded campaign's window, planted with a known effect (features/generate/campaign.py)
    under each member's raw shop or till identifiers; returns the truth, also kept in truth/campaign_NAME.json."""
    import pandas as pd

    from features.generate.campaign import campaign_orders, write_orders
    from rules import campaigns

    spec = campaigns.load(ws, name)
    members = pd.read_parquet(campaigns.folder(ws, name) / campaigns.ASSIGNMENT, columns=["persona_id", "group"])
    current = ws.require_current("integrated", "run `persona integrate`")
    ids = pd.read_parquet(current / "identity_map.parquet", columns=["id_type", "value", "persona_id"])
    ids = ids[ids["id_type"].isin(PLANT_IDS)].drop_duplicates(["persona_id", "id_type"])
    raw = ids.pivot(index="persona_id", columns="id_type", values="value").reindex(columns=list(PLANT_IDS))
    orders, till, truth = campaign_orders(members.join(raw, on="persona_id"), name=name, start=spec.start,
                                          end=spec.end, base_rate=base_rate, lift=lift, order_value=order_value,
                                          seed=seed)
    paths = write_orders(ws.root, name, orders, till)
    truth["files"] = [str(p.relative_to(ws.root)) for p in paths]
    write_json_atomic(ws.root / "truth" / f"campaign_{name}.json", truth)
    return truth


def _interval(iv: dict | None, fmt: str) -> str:
    if not iv or iv.get("estimate") is None:
        return "-"
    return f"{format(iv['estimate'], fmt)} [{format(iv['low'], fmt)}, {format(iv['high'], fmt)}]"


def _render_report(r: dict) -> None:
    from rich.table import Table

    console.print(f"campaign {r['campaign']} ({r['segment']}), window {r['window']['start']} to {r['window']['end']}"
                  f"; data through {r['data_through']}", highlight=False)
    if r.get("warning"):
        console.print(f"[yellow]warning:[/] {r['warning']}", highlight=False)
    t = Table("group", "customers", "converted", "conversion", "revenue / customer")
    for g, v in r["groups"].items():
        t.add_row(g, f"{v['customers']:,}", f"{v['converted']:,}", f"{v['conversion_rate']:.2%}",
                  f"{v['revenue_per_customer']:,.2f}")
    console.print(t)
    lift = r["lift"]
    console.print(f"conversion lift {_interval(lift['conversion_rate'], '+.2%')}; incremental conversions "
                  f"{_interval(lift['incremental_conversions'], ',.0f')}", highlight=False)
    console.print(f"revenue per customer {_interval(lift['revenue_per_customer'], '+,.2f')}; incremental revenue "
                  f"{_interval(lift['incremental_revenue'], ',.0f')} (95% intervals)", highlight=False)
    if r["roi"]:
        console.print(f"cost {r['roi']['cost']:,.2f}; ROI {_interval(r['roi']['roi'], '+.1%')} "
                      f"({r['roi']['value_basis']})", highlight=False)
    rows = [b for b in r["by_tag"] if b["lift"]]
    if rows:
        t = Table("tag", "value", "treatment", "holdout", "conversion lift (95%)")
        for b in sorted(rows, key=lambda b: -(b["lift"]["estimate"] or 0))[:12]:
            t.add_row(b["tag"], b["value"], f"{b['treatment']:,}", f"{b['holdout']:,}", _interval(b["lift"], "+.2%"))
        console.print(t)
