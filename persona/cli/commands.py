"""The `persona` command line: thin commands that parse, call library functions and print.

Every command but `build` takes --workspace (default: the current folder); every command that reports takes --json.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from persona.config import CONFIG_NAME, parse_config
from persona.engine import check_spark
from persona.cli import render
from persona.cli.options import JsonOpt, WorkspaceOpt
from persona.cli.options import emit as _emit
from persona.cli.options import errors as _errors
from persona.cli.render import console, err
from persona.workspace import Workspace, write_text_atomic

app = typer.Typer(help="persona: predictive customer tagging (OneID, features, rule and model tags, serving).",
                  no_args_is_help=True, add_completion=False)

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


def _engine(ws: Workspace, stage: str) -> None:
    """`engine: spark`: Spark must be startable (else one error naming what is missing) before any work starts."""
    if ws.config().engine == "spark":
        check_spark()


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, float], None] | None]:
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err,
                  transient=True) as bar:
        task = bar.add_task("starting", total=1.0)
        yield lambda stage, frac: bar.update(task, description=stage, completed=frac)


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
    _emit(summary, as_json, render.render_generate)


@app.command()
def integrate(workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """Stage new source files, resolve identities (OneID), build and enrich profiles, publish."""
    from features.integration.run import integrate as run

    with _errors(), _progress(not as_json) as progress:
        ws = Workspace.open(workspace)
        _engine(ws, "integrate")
        report = run(ws, progress=progress)
    _emit(report, as_json, render.render_integrate)


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
        _engine(ws, "features")
        report = build_features(ws, as_of=when, full=full, online=online and not reload_online, progress=progress)
        if reload_online:
            report["reloaded"] = recovery.rebuild_online(ws, force=True)
            report["materialized"] = report["reloaded"]["features"]
        elif online and (report["materialized"] or {}).get("state_before") != "ok":
            # the store was empty or stale, so it was loaded in full: the tags go back too
            report["tags_pushed"] = recovery.push_latest_tags(ws)
    _emit(report, as_json, render.render_features)


@app.command()
def train(
    workspace: WorkspaceOpt = Path("."),
    promote: Annotated[bool, typer.Option(help="move `champion` to each challenger that beats it")] = False,
    tag: Annotated[list[str] | None, typer.Option(help="train only these model tags (default: every tag of features/model_tags.py: churn_risk, high_value, interest)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train every model tag, compare with baselines on the held-out period, log and register in MLflow."""
    from training.train import train as run

    with _errors(), _progress(not as_json) as progress:
        result = run(Workspace.open(workspace), promote=promote, tags=tag, progress=progress)
    _emit(result, as_json, render.render_train)
    if not result["models"]:
        raise typer.Exit(2)


@app.command()
def models(workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """List registered model versions with their aliases and held-out metrics."""
    from training.tracking import connect, list_models

    with _errors():
        ws = Workspace.open(workspace)
        rows = list_models(connect(ws, ws.config()))
    _emit({"models": rows}, as_json, render.render_models)


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
    from persona.cli.forget import forget as run

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
    explain: Annotated[bool, typer.Option(
        "--explain", help="add <output>_reasons columns to the snapshot: each model score's top factors as JSON "
                          "(embedded engine)")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Score every persona with the champion models and the rules; write a dated tag snapshot; push tags online."""
    from serving.batch import EXPLAIN_EMBEDDED_ONLY, rescore as run

    when = _as_of(as_of)
    if nearest and when is None:
        raise typer.BadParameter("--nearest needs --as-of DATE")
    with _errors(), _progress(not as_json) as progress:
        ws = Workspace.open(workspace)
        if explain and ws.config().engine == "spark":
            raise typer.BadParameter(EXPLAIN_EMBEDDED_ONLY, param_hint="--explain")
        _engine(ws, "rescore")
        result = run(ws, as_of=when, nearest=nearest, push=push, explain=explain, progress=progress)
    _emit(result, as_json, render.render_rescore)


@app.command()
def serve(
    workspace: WorkspaceOpt = Path("."),
    port: Annotated[int | None, typer.Option(help="port (default: serving.port in persona.yaml)")] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    workers: Annotated[int | None, typer.Option(min=1, help="server processes (default: serving.workers)")] = None,
) -> None:
    """Start the online service (BentoML): /v1/profile, /v1/score, /v1/recommend, /v1/events, health, metrics."""
    from serving.process import serve as run

    with _errors():
        ws = Workspace.open(workspace)
        run(ws.root, port or ws.config().serving.port, host=host, workers=workers)


@app.command()
def build(
    version: Annotated[str | None, typer.Option(help="the Bento's version (default: one BentoML generates)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the Bento of the online service (bentofile.yaml: the code, the default rule tags, the requirements) into
    BentoML's store ($BENTOML_HOME, default ~/bentoml), ready for `bentoml containerize`. Needs no network."""
    import os
    import shutil

    import bentoml
    from bentoml.exceptions import BentoMLException

    from serving.process import ROOT

    bentofile = ROOT / "bentofile.yaml"
    with _errors():
        if not bentofile.is_file():
            raise FileNotFoundError(f"{bentofile}: not found; `persona build` runs in a source checkout of persona")
        # BentoML 1.4 looks for uv even when it locks nothing, and pip-installs it when none is found: found here
        # first (on PATH, else the project's own .tools/bin/uv from `make setup`), so that a build never downloads.
        uv = shutil.which("uv") or shutil.which("uv", path=str(ROOT / ".tools" / "bin"))
        if uv is None:
            raise FileNotFoundError("uv not found: BentoML needs it to build a Bento (and would download it); put "
                                    "uv on PATH or run `make setup`, which installs it in .tools/bin")
        path = os.environ.get("PATH", "")
        os.environ["PATH"] = os.pathsep.join([str(Path(uv).parent), path])
        try:
            bento = bentoml.bentos.build_bentofile(str(bentofile), build_ctx=str(ROOT), version=version)
        except BentoMLException as exc:
            err.print(f"[bold red]error:[/] the Bento did not build: {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        finally:
            os.environ["PATH"] = path
    where = Path(bento.path)  # <BENTOML_HOME>/bentos/<name>/<version>
    result = {"tag": str(bento.tag), "service": bento.info.service, "path": str(where),
              "bentoml_home": str(where.parents[2]), "containerize": f"bentoml containerize {bento.tag}"}
    _emit(result, as_json, render.render_build)


@app.command()
def schedule(
    workspace: WorkspaceOpt = Path("."),
    runs: Annotated[int | None, typer.Option(help="stop after this many runs (default: run forever)")] = None,
) -> None:
    """Rescore (and, if schedule.retrain_cron is set, retrain behind the promotion gate) on cron expressions."""
    from persona.cli.schedule import ScheduleError, jobs_for, run_loop

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
    _emit(result, as_json, render.render_tags)


@tags_app.command("show")
def tags_show(tag_id: str, workspace: WorkspaceOpt = Path("."), as_json: JsonOpt = False) -> None:
    """One tag: definition, coverage, value distribution and its last change between snapshots."""
    from rules.catalog import show

    with _errors():
        try:
            result = show(Workspace.open(workspace), tag_id)
        except KeyError as exc:
            raise FileNotFoundError(exc.args[0]) from None
    _emit(result, as_json, render.render_tag)


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
    _emit(result, as_json, render.render_diff)


segment_app = typer.Typer(help="Audience segments: count, export, profile, overlap.", no_args_is_help=True)
app.add_typer(segment_app, name="segment")
SegmentArg = Annotated[str, typer.Argument(help="a segment id, or an expression such as \"churn_risk >= 0.6\"")]
OptedOutOpt = Annotated[bool, typer.Option(help="keep customers who opted out of marketing (expressions only)")]
DateOpt = Annotated[str | None, typer.Option(help="tag snapshot date (default: the latest)")]


@contextmanager
def _audience(workspace: Path, date: str | None) -> Iterator:
    from rules.segments import Audience, SegmentError, load_segments
    from rules.catalog import rule_paths

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
    _emit(result, as_json, render.render_segment_profile)


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
    from persona.cli.demo import run_demo

    with _errors():
        run_demo(workspace, customers, console=console, progress=lambda: _progress(True))

