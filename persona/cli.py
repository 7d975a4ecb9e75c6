"""The `persona` command line: thin commands that parse, call library functions and print.

Every command takes --workspace (default: the current folder); every command that reports takes --json.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from persona.config import CONFIG_NAME, ConfigError, parse_config
from persona.errors import InsufficientDataError
from persona.workspace import SecretError, Workspace, write_text_atomic

app = typer.Typer(help="persona: predictive customer tagging (OneID, features, rule and model tags, serving).",
                  no_args_is_help=True, add_completion=False)
console = Console()
err = Console(stderr=True)

@app.callback()
def _main(ctx: typer.Context, verbose: Annotated[bool, typer.Option(
        "--verbose", envvar="PERSONA_VERBOSE",
        help="show the warnings and log lines of the libraries under persona (hidden by default)")] = False) -> None:
    """persona: predictive customer tagging (OneID, features, rule and model tags, serving)."""
    from persona.quiet import quiet

    # Libraries under us (Feast, ibis, MLflow, SQLAlchemy) warn about their own deprecations on every run; a command
    # line prints what the user asked for. Scoped to the command; `serve` keeps its log, which is the service's output.
    if ctx.invoked_subcommand != "serve":
        ctx.with_resource(quiet(verbose))


WorkspaceOpt = Annotated[Path, typer.Option("--workspace", "-w", help="workspace folder holding persona.yaml")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the result as JSON (for automation)")]


@contextmanager
def _errors() -> Iterator[None]:
    """Known failures print what is wrong (a line per problem) and exit 2; no stack trace for bad input."""
    from features.ingest import SourceFileError
    from persona.quiet import settle

    settle()  # the command's libraries are imported by now: their loggers get the command's quiet levels
    try:
        yield
    except (ConfigError, SourceFileError, SecretError, InsufficientDataError, FileNotFoundError,
            FileExistsError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, float], None] | None]:
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err,
                  transient=True) as bar:
        task = bar.add_task("starting", total=1.0)
        yield lambda stage, frac: bar.update(task, description=stage, completed=frac)


def _emit(data: dict, as_json: bool, render: Callable[[dict], None]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, ensure_ascii=False, default=str) + "\n")
    else:
        render(data)


@app.command()
def generate(
    customers: Annotated[int, typer.Option(min=10, help="number of real people behind the data")] = 10_000,
    workspace: WorkspaceOpt = Path("."),
    seed: Annotated[int, typer.Option(help="random seed; the same seed writes the same data")] = 7,
    as_json: JsonOpt = False,
) -> None:
    """Write realistic, messy multi-channel demo data, external sources, ground truth and persona.yaml."""
    from features.generate import generate as run

    with _errors(), _progress(not as_json) as progress:
        workspace.mkdir(parents=True, exist_ok=True)
        summary = run(workspace, customers, seed=seed, progress=progress)
    _emit(summary, as_json, _render_generate)


def _render_generate(s: dict) -> None:
    table = Table(title=f"generated {s['customers']:,} customers in {s['seconds']:.1f} s")
    table.add_column("source")
    table.add_column("rows", justify="right")
    for name, rows in s["rows"].items():
        table.add_row(name, f"{rows:,}")
    console.print(table)


@app.command()
def integrate(workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Stage new source files, resolve identities (OneID), build and enrich profiles, publish."""
    from features.integrate import integrate as run

    with _errors(), _progress(not as_json) as progress:
        report = run(Workspace.open(workspace), progress=progress)
    _emit(report, as_json, render_integrate)


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


AS_OF_HELP = ("use the data up to and including this date (YYYY-MM-DD, UTC): the feature snapshot at the midnight "
              "after it")


def _as_of(value: str | None):
    """--as-of DATE: a calendar day (a time of day is refused: the day is included whole)."""
    import pandas as pd

    if value is None:
        return None
    try:
        day = pd.Timestamp(value, tz="UTC")
    except ValueError:
        raise typer.BadParameter(f"--as-of {value!r}: expected a date such as 2026-06-30") from None
    if day != day.normalize():
        raise typer.BadParameter(f"--as-of {value!r}: expected a date such as {day.date()} (its data is included "
                                 "whole), not a time of day")
    return day


@app.command()
def features(
    workspace: WorkspaceOpt = Path("."),
    as_of: Annotated[str | None, typer.Option(
        "--as-of", help=f"the last snapshot: {AS_OF_HELP} (default: all the data)")] = None,
    full: Annotated[bool, typer.Option(
        help="recompute every snapshot, not only new dates and those whose inputs changed")] = False,
    online: Annotated[bool, typer.Option(help="load the online store (--no-online: offline snapshots only)")] = True,
    reload_online: Annotated[bool, typer.Option(
        "--reload-online", help="load the online store again in full: features, the real-time state of logged "
                                "events and the latest tags (after Redis lost its data)")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Compute point-in-time feature snapshots, apply the Feast repository and materialise the online store."""
    from features.build import build_features
    from serving import recovery

    when = _as_of(as_of)
    ws = Workspace.open(workspace)
    with _errors(), _progress(not as_json) as progress:
        report = build_features(ws, as_of=when, full=full, online=online and not reload_online, progress=progress)
        if reload_online:
            report["reloaded"] = recovery.rebuild_online(ws, force=True)
            report["materialized"] = report["reloaded"]["features"]
        elif online and (report["materialized"] or {}).get("state_before") != "ok":
            # the store was empty or stale, so it was loaded in full: the tags go back too
            report["tags_pushed"] = recovery.push_latest_tags(ws)
    _emit(report, as_json, _render_features)


def _render_features(r: dict) -> None:
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


@app.command()
def train(
    workspace: WorkspaceOpt = Path("."),
    promote: Annotated[bool, typer.Option(help="move `champion` to each challenger that beats it")] = False,
    tag: Annotated[list[str] | None, typer.Option(help="train only these tags (churn_risk, high_value, interest)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train every model tag, compare with baselines on the held-out period, log and register in MLflow."""
    from training.train import train as run

    with _errors(), _progress(not as_json) as progress:
        result = run(Workspace.open(workspace), promote=promote, tags=tag, progress=progress)
    _emit(result, as_json, render_train)
    if not result["models"]:
        raise typer.Exit(2)


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


@app.command()
def models(workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """List registered model versions with their aliases and held-out metrics."""
    from training.tracking import connect, list_models

    with _errors():
        ws = Workspace.open(workspace)
        rows = list_models(connect(ws, ws.config()))
    _emit({"models": rows}, as_json, _render_models)


def _render_models(r: dict) -> None:
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


@app.command()
def forget(
    workspace: WorkspaceOpt = Path("."),
    identifier: Annotated[str | None, typer.Option(
        "--identifier", help="TYPE:VALUE of the person, e.g. phone:13800138000 or email:a@b.cn")] = None,
    persona_id: Annotated[str | None, typer.Option("--persona-id", help="the person's persona id")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Erase one person (right to erasure, PIPL / GDPR) from every output, the online store and the event log, and
    keep them out of later runs; the erasure is recorded without personal data."""
    from persona.forget import forget as run

    if (identifier is None) == (persona_id is None):
        raise typer.BadParameter("give exactly one of --identifier TYPE:VALUE or --persona-id ID")
    ident = None
    if identifier is not None:
        kind, sep, value = identifier.partition(":")
        if not sep or not kind or not value:
            raise typer.BadParameter(f"--identifier {identifier!r}: expected TYPE:VALUE, e.g. phone:13800138000")
        ident = (kind.strip(), value.strip())
    with _errors():
        try:
            result = run(Workspace.open(workspace), identifier=ident, persona_id=persona_id)
        except (LookupError, ValueError) as exc:  # unknown person, bad identifier: say so, no trace
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
    _emit(result, as_json, lambda r: console.print_json(data=r))


@app.command()
def rescore(
    workspace: WorkspaceOpt = Path("."),
    as_of: Annotated[str | None, typer.Option(
        "--as-of", help=f"{AS_OF_HELP}; no snapshot for exactly that date is an error (see --nearest) "
                        "(default: the latest snapshot)")] = None,
    nearest: Annotated[bool, typer.Option(
        "--nearest", help="with --as-of: use the latest snapshot on or before the date when there is none for it")
    ] = False,
    push: Annotated[bool, typer.Option(
        help="write the latest tags to the online store (only where `persona features` loaded one)")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Score every persona with the champion models and the rules; write a dated tag snapshot; push tags online."""
    from serving.batch import rescore as run

    when = _as_of(as_of)
    if nearest and when is None:
        raise typer.BadParameter("--nearest needs --as-of DATE")
    with _errors(), _progress(not as_json) as progress:
        result = run(Workspace.open(workspace), as_of=when, nearest=nearest, push=push, progress=progress)
    _emit(result, as_json, render_rescore)


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


@app.command()
def serve(
    workspace: WorkspaceOpt = Path("."),
    port: Annotated[int | None, typer.Option(help="port (default: serving.port in persona.yaml)")] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    workers: Annotated[int | None, typer.Option(min=1, help="server processes (default: serving.workers)")] = None,
) -> None:
    """Start the online service (BentoML): /v1/profile, /v1/score, /v1/recommend, /v1/events, health, metrics."""
    from serving.service import serve as run

    with _errors():
        ws = Workspace.open(workspace)
        run(ws.root, port or ws.config().serving.port, host=host, workers=workers)


@app.command()
def schedule(
    workspace: WorkspaceOpt = Path("."),
    runs: Annotated[int | None, typer.Option(help="stop after this many runs (default: run forever)")] = None,
) -> None:
    """Rescore (and, if schedule.retrain_cron is set, retrain behind the promotion gate) on cron expressions."""
    from serving.schedule import ScheduleError, jobs_for, run_loop

    try:
        with _errors():
            ws = Workspace.open(workspace)
            jobs = jobs_for(ws)
            for job in jobs:
                nxt = job.trigger.get_next_fire_time(None, __import__("datetime").datetime.now(
                    __import__("datetime").timezone.utc))
                console.print(f"{job.name}: next run {nxt.isoformat()}")
            run_loop(ws, jobs, max_runs=runs, log=lambda e: console.print(
                f"{e['started'][:19]} {e['job']}: {'ok' if e['ok'] else '[red]failed[/] ' + e['error']} "
                f"in {e['seconds']} s"))
    except ScheduleError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None


tags_app = typer.Typer(help="The tag catalog: list tags, show one, diff two snapshots.", no_args_is_help=False,
                       invoke_without_command=True)
app.add_typer(tags_app, name="tags")


@tags_app.callback()
def tags_list(ctx: typer.Context, workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """List every tag with its category, type and coverage (share of personas with a value)."""
    if ctx.invoked_subcommand is not None:
        return
    from rules.catalog import listing

    with _errors():
        result = listing(Workspace.open(workspace))
    _emit(result, as_json, _render_tags)


def _render_tags(r: dict) -> None:
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


@tags_app.command("show")
def tags_show(tag_id: str, workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """One tag: definition, coverage, value distribution and its last change between snapshots."""
    from rules.catalog import show

    with _errors():
        try:
            result = show(Workspace.open(workspace), tag_id)
        except KeyError as exc:
            raise FileNotFoundError(exc.args[0]) from None
    _emit(result, as_json, _render_tag)


def _render_tag(r: dict) -> None:
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


@tags_app.command("diff")
def tags_diff(
    a: Annotated[str, typer.Argument(help="earlier snapshot date (YYYY-MM-DD, or 'previous')")] = "previous",
    b: Annotated[str, typer.Argument(help="later snapshot date (YYYY-MM-DD, or 'latest')")] = "latest",
    workspace: WorkspaceOpt = Path("."),
    tag: Annotated[list[str] | None, typer.Option(help="only these tags")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Who entered and who left each tag value between two tag snapshots."""
    from rules.history import diff

    with _errors():
        try:
            result = diff(Workspace.open(workspace), a, b, tags=tag)
        except KeyError as exc:
            raise FileNotFoundError(exc.args[0]) from None
    _emit(result, as_json, _render_diff)


def _render_diff(r: dict) -> None:
    table = Table(title=f"tag changes {r['from']} -> {r['to']}")
    for col in ("tag", "value", "before", "after", "entered", "left"):
        table.add_column(col, justify="left" if col in ("tag", "value") else "right")
    for tag, values in r["tags"].items():
        for v, c in values.items():
            if c["entered"] or c["left"]:
                table.add_row(tag, v, f"{c['before']:,}", f"{c['after']:,}", f"+{c['entered']:,}", f"-{c['left']:,}")
    console.print(table)


segment_app = typer.Typer(help="Audience segments: count, export, profile, overlap.", no_args_is_help=True)
app.add_typer(segment_app, name="segment")
SegmentArg = Annotated[str, typer.Argument(help="a segment id, or an expression such as \"churn_risk >= 0.6\"")]
OptedOutOpt = Annotated[bool, typer.Option(help="keep customers who opted out of marketing (expressions only)")]
DateOpt = Annotated[str | None, typer.Option(help="tag snapshot date (default: the latest)")]


@contextmanager
def _audience(workspace: Path, date: str | None) -> Iterator:
    from rules.segments import Audience, SegmentError, load_segments
    from serving.scoring import rule_paths

    with _errors():
        try:
            ws = Workspace.open(workspace)
            yield Audience.open(ws, load_segments(rule_paths(ws, ws.config())), date)
        except SegmentError as exc:
            raise FileNotFoundError(str(exc)) from None


@segment_app.command("count")
def segment_count(target: SegmentArg, workspace: WorkspaceOpt = Path("."), date: DateOpt = None,
                  include_opted_out: OptedOutOpt = False, as_json: JsonOpt = False) -> None:
    """How many personas a segment or expression selects."""
    from rules.segments import count

    with _audience(workspace, date) as aud:
        result = count(aud, target, include_opted_out=include_opted_out)
    _emit(result, as_json, lambda r: console.print(
        f"{r['count']:,} of {r['population']:,} personas ({r['share']:.1%}) as of {r['date']}"))


@segment_app.command("export")
def segment_export(target: SegmentArg, out: Annotated[Path, typer.Option("--out", help="a .csv or .parquet file")],
                   workspace: WorkspaceOpt = Path("."), date: DateOpt = None,
                   include_opted_out: OptedOutOpt = False, as_json: JsonOpt = False) -> None:
    """Write the members' persona_id and hashed channel identifiers (CSV or Parquet)."""
    from rules.segments import export

    with _audience(workspace, date) as aud:
        result = export(aud, target, out, include_opted_out=include_opted_out)
    _emit(result, as_json, lambda r: console.print(f"wrote {r['rows']:,} rows to {r['path']}"))


@segment_app.command("profile")
def segment_profile(target: SegmentArg, workspace: WorkspaceOpt = Path("."), date: DateOpt = None,
                    include_opted_out: OptedOutOpt = False, as_json: JsonOpt = False) -> None:
    """Size, and how the segment differs from everyone else (over/under-indexed tag values, feature averages)."""
    from rules.segments import profile

    with _audience(workspace, date) as aud:
        result = profile(aud, target, include_opted_out=include_opted_out)
    _emit(result, as_json, render_segment_profile)


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


@segment_app.command("overlap")
def segment_overlap(targets: Annotated[list[str], typer.Argument(help="two or more segment ids or expressions")],
                    workspace: WorkspaceOpt = Path("."), date: DateOpt = None, as_json: JsonOpt = False) -> None:
    """Pairwise overlap between segments."""
    from rules.segments import overlap

    with _audience(workspace, date) as aud:
        result = overlap(aud, targets)
    _emit(result, as_json, lambda r: [console.print(
        f"{p['a']} & {p['b']}: {p['both']:,} ({p['share_of_a']:.1%} of {p['a']}, {p['share_of_b']:.1%} of {p['b']})")
        for p in r["pairs"]])


def _constraints(field) -> str:
    words = {"ge": "at least", "gt": "more than", "le": "at most", "lt": "less than"}
    found = [f"{words[k]} {getattr(m, k)}" for m in field.metadata for k in words if getattr(m, k, None) is not None]
    return ", ".join(found)


def commented_section(name: str, model) -> str:
    """`name:` with every field of the pydantic `model` at its default, each under a comment: its description (or,
    lacking one, its constraints), so that a key added to the model appears here without more code."""
    import textwrap
    import typing

    lines = [f"{name}:"]
    for key, field in model.model_fields.items():
        default = field.get_default(call_default_factory=True)
        about = " ".join((field.description or "").split())
        limits = _constraints(field)
        choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal else ()
        limits = " | ".join(map(str, choices)) or limits
        comment = "; ".join(x for x in (about, limits) if x) or f"default {default!r}"
        lines += [f"  # {part}" for part in textwrap.wrap(comment, 100)]
        value = yaml.safe_dump(default, default_flow_style=True, allow_unicode=True).strip()
        lines.append(f"  {key}: {value.removesuffix(chr(10) + '...').strip()}")
    return "\n".join(lines) + "\n"


@app.command()
def init(
    workspace: WorkspaceOpt = Path("."),
    transactions: Annotated[Path | None, typer.Option(help="a transactions CSV/Parquet file inside the workspace")] = None,
    customer_id: Annotated[str, typer.Option(help="its customer id column")] = "customer_id",
    timestamp: Annotated[str, typer.Option(help="its timestamp column")] = "timestamp",
    timestamp_format: Annotated[str, typer.Option(help="iso | epoch_s | epoch_ms | date | strftime pattern")] = "iso",
    amount: Annotated[str, typer.Option(help="its amount column")] = "amount",
    quantity: Annotated[str | None, typer.Option(help="its quantity column, if any")] = None,
    category: Annotated[str | None, typer.Option(help="its category column, if any")] = None,
    timezone: Annotated[str, typer.Option(help="time zone of naive timestamps")] = "UTC",
) -> None:
    """Start a workspace for your own data: persona.yaml (from one transactions file, or a template) and a salt."""
    with _errors():
        ws = Workspace.open(workspace)
        target = ws.root / CONFIG_NAME
        if target.exists():
            raise FileExistsError(f"{target}: already exists; edit it instead")
        if transactions is None:
            raise FileNotFoundError("pass --transactions FILE (a CSV or Parquet inside the workspace); "
                                    "for several sources, copy docs/persona.example.yaml and edit it")
        rel = (transactions if transactions.is_absolute() else (Path.cwd() / transactions)).resolve()
        try:
            rel_path = rel.relative_to(ws.root).as_posix()
        except ValueError:
            raise FileNotFoundError(f"{transactions}: must be inside the workspace {ws.root}") from None
        fields = {"amount": amount}
        if quantity:
            fields["quantity"] = quantity
        if category:
            fields["category"] = category
        config = {
            "version": 1, "name": ws.root.name, "timezone": timezone,
            "sources": {"transactions": {
                "channel": "other", "kind": "transactions", "path": rel_path,
                "timestamp": {"column": timestamp, "format": timestamp_format},
                "identifiers": {"customer_id": customer_id}, "fields": fields}},
            "identity": {"identifiers": {"customer_id": {"normalise": "id", "account": True}}},
        }
        from persona.config import LabelConfig, TrainingConfig

        text = yaml.safe_dump(config, allow_unicode=True, sort_keys=False) + "".join(
            commented_section(name, model) for name, model in (("labels", LabelConfig), ("training", TrainingConfig)))
        parse_config(yaml.safe_load(text), path=target)
        write_text_atomic(target, text)
        ws.ensure_secrets()
    console.print(f"wrote {target} and {ws.root / 'secrets.env'}; next: persona integrate -w {workspace}")


@app.command()
def demo(
    workspace: WorkspaceOpt = Path("demo_workspace"),
    customers: Annotated[int, typer.Option(min=2000, help="demo size")] = 10_000,
) -> None:
    """The whole platform on embedded defaults: generate, integrate, features, train, rescore, serve and call it."""
    from persona.demo import run_demo

    with _errors():
        run_demo(workspace, customers, console=console, progress=lambda: _progress(True))


if __name__ == "__main__":
    app()
