"""Crash safety: each stage's CLI killed at each of its kill points (persona.faults) keeps the previous published
output whole and readable, and the next run cleans up what the killed one left and gives what an uninterrupted run
gives.

One copy of the session's trained workspace per stage, killed at every point in turn: each killed run first cleans
up after the one before it (checked), and a last run without kill point ends the chain. The CLI runs in processes
forked from a multiprocessing fork server that has imported persona's modules once: a fresh process per run, as a
cron job would start, without paying the ~12 s of Feast / MLflow imports a dozen times. The unit tests of the same
steps are in tests/persona/test_workspace.py and tests/rules/test_history.py.
"""

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from persona.faults import EXIT_CODE, KILL_VAR
from persona.workspace import SALT_VAR, Workspace, read_json
from rules import history

pytestmark = pytest.mark.slow

PRELOAD = ["persona.cli", "features.integration.run", "features.build", "serving.batch"]


@pytest.fixture(scope="module")
def cli() -> multiprocessing.context.BaseContext:
    """A fork-server context with persona's modules imported in the server (nothing in them runs at import)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _run_cli(args: list[str], kill_at: str | None, out: str) -> None:
    """The child: output to `out` (.err for stderr), the kill point in the environment, then the CLI as `persona`
    runs it."""
    for fd, path in ((1, out), (2, out + ".err")):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
    os.environ.pop(SALT_VAR, None)  # the workspace's secrets.env, as for a real run
    os.environ.pop(KILL_VAR, None)
    if kill_at:
        os.environ[KILL_VAR] = kill_at
    from persona.cli import app

    app(args, prog_name="persona")  # exits: 0, 2 on a known error, 137 at the kill point


def persona(cli, ws: Path, *args: str, kill_at: str | None = None) -> dict | None:
    """Run `persona <args> -w ws --json` in a new process; its report, or None when killed (which is checked)."""
    out = ws.parent / f"{ws.name}.out"
    proc = cli.Process(target=_run_cli, args=([*args, "-w", str(ws), "--json"], kill_at, str(out)))
    proc.start()
    proc.join(600)
    if proc.is_alive():
        proc.kill()
        proc.join()
    expected = EXIT_CODE if kill_at else 0
    if proc.exitcode != expected:
        err = Path(f"{out}.err")
        pytest.fail(f"persona {' '.join(args)} (kill at {kill_at}) exited {proc.exitcode}, expected {expected}:\n"
                    + (err.read_text(errors="replace")[-3000:] if err.exists() else "(no output)"), pytrace=False)
    return None if kill_at else json.loads(out.read_text(encoding="utf-8"))


def copy(trained: Path, tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    shutil.copytree(trained, root, symlinks=True)
    return root


def frames_equal(a: pd.DataFrame, b: pd.DataFrame, drop: tuple[str, ...] = ()) -> None:
    """Equal as sets of rows (row order is no promise of the outputs), leaving out run-specific columns."""
    a, b = a.drop(columns=[c for c in drop if c in a]), b.drop(columns=[c for c in drop if c in b])
    assert sorted(a.columns) == sorted(b.columns)
    cols = sorted(a.columns)
    key = lambda f: f[cols].astype(str).sort_values(cols).reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(key(a), key(b))


# --- integrate ----------------------------------------------------------------------------------------------------
RUN_FIELDS = ("run_id", "run_seq", "seconds")  # what differs between two runs on the same data


def same_run(report: dict) -> dict:
    """A report without what differs between two runs on the same data (ids, numbers, timings at any depth)."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in RUN_FIELDS}
        return value

    return strip(report)


def complete_run(folder: Path, files: set[str]) -> dict:
    """The run's report, after checking it holds every output and each one reads."""
    assert {p.name for p in folder.iterdir()} == files
    for f in files - {"report.json"}:
        pq.read_metadata(folder / f)
    return read_json(folder / "report.json")


def leftovers(top: Path) -> list[str]:
    """What nothing reads in a stage folder: hidden entries, and run folders `current` does not follow."""
    runs = top / "runs"
    current = (top / "current").resolve()
    hidden = [p.name for p in [*top.iterdir(), *runs.iterdir()] if p.name.startswith(".")]
    return hidden + [p.name for p in runs.iterdir() if not p.name.startswith(".") and p.name > current.name]


def test_integrate_killed_at_each_step(cli, trained_workspace, tmp_path):
    """`current` always names a complete run; killed runs' folders go, their number is taken over, never doubled."""
    # An uninterrupted second run on a copy: what the killed chain must end at.
    reference_root = copy(trained_workspace, tmp_path, "reference")
    reference = persona(cli, reference_root, "integrate")
    ref_dir = Workspace.open(reference_root).current("integrated")
    files = {p.name for p in ref_dir.iterdir()}

    root = copy(trained_workspace, tmp_path, "ws")
    ws = Workspace.open(root)
    top = ws.stage_dir("integrated")
    first = ws.current("integrated")
    first_report = complete_run(first, files)

    persona(cli, root, "integrate", kill_at="integrated.building")
    assert ws.current("integrated") == first and complete_run(first, files) == first_report
    [building] = leftovers(top)
    assert building.startswith(".000002-") and building.endswith(".building")

    persona(cli, root, "integrate", kill_at="integrated.renamed")
    assert ws.current("integrated") == first and complete_run(first, files) == first_report
    [unpublished] = leftovers(top)  # the .building folder went; this run's folder is in runs/, not current
    assert unpublished.startswith("000002-")

    persona(cli, root, "integrate", kill_at="integrated.linked")
    second = ws.current("integrated")
    assert second.name.startswith("000002-") and second.name != unpublished  # its number, taken over
    assert complete_run(second, files)["run_seq"] == 2
    assert leftovers(top) == [] and sorted(p.name for p in (top / "runs").iterdir()) == [first.name, second.name]

    report = persona(cli, root, "integrate")
    third = ws.current("integrated")
    assert third.name == report["run_id"] and report["run_seq"] == 3
    assert leftovers(top) == [] and [p.name for p in top.iterdir() if p.name.startswith(".")] == []
    runs = sorted(p.name for p in (top / "runs").iterdir())
    assert runs == [first.name, second.name, third.name] and len({r[:6] for r in runs}) == len(runs)
    assert same_run(complete_run(third, files)) == same_run(reference)
    for f in sorted(files - {"report.json"}):
        frames_equal(pd.read_parquet(third / f), pd.read_parquet(ref_dir / f), drop=("run_id", "at"))


# --- features -----------------------------------------------------------------------------------------------------
MANIFEST_FIELDS = ("data_start", "data_end", "dates", "grid_dates", "services", "store")


def offline(root: Path) -> dict[str, pd.DataFrame]:
    """Every offline snapshot file, read whole (so a torn file fails here); no temporary file beside them."""
    folder = root / "features" / "offline"
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]
    return {p.name: pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))}


def created(frames: dict[str, pd.DataFrame]) -> dict[str, pd.Timestamp]:
    return {name: frame["created_timestamp"].max() for name, frame in frames.items()}


def test_features_killed_at_each_step(cli, trained_workspace, tmp_path):
    """Every offline file reads whole at every kill point; the manifest, written last, names the previous run."""
    root = copy(trained_workspace, tmp_path, "ws")
    manifest = root / "features" / "manifest.json"
    before_manifest = read_json(manifest)
    before = offline(root)

    for point in ("features.group_written", "features.snapshots_written", "features.applied"):
        stamps = created(offline(root))
        persona(cli, root, "features", "--no-online", kill_at=point)
        assert read_json(manifest) == before_manifest, point  # the manifest comes last: still the previous run's
        now = offline(root)
        assert now.keys() == before.keys(), point
        rewritten = [n for n, t in created(now).items() if t > stamps[n]]
        assert len(rewritten) == (1 if point == "features.group_written" else len(now)), (point, rewritten)
        for name, frame in now.items():  # rewritten files hold the same rows, with a newer created_timestamp
            frames_equal(frame, before[name], drop=("created_timestamp",))

    report = persona(cli, root, "features", "--no-online")
    assert {k: report[k] for k in MANIFEST_FIELDS} == {k: before_manifest[k] for k in MANIFEST_FIELDS}
    assert read_json(manifest)["computed"] == report["computed"] == [before_manifest["dates"][-1]]
    for name, frame in offline(root).items():  # what the uninterrupted build of the fixture wrote
        frames_equal(frame, before[name], drop=("created_timestamp",))


# --- rescore ------------------------------------------------------------------------------------------------------
META_FIELDS = ("date", "as_of", "personas", "models", "outputs", "stats", "rules_hash", "unavailable", "tags",
               "coverage")


def tags_state(ws: Workspace) -> tuple[list[str], str, list[str]]:
    """What tags/ shows (its entries), the version the date links to, and the version store."""
    base = history.root(ws)
    links = [os.path.basename(os.readlink(p)) for p in base.iterdir() if p.is_symlink()]
    assert len(links) == 1
    return sorted(p.name for p in base.iterdir()), links[0], sorted(p.name for p in history.versions(ws).iterdir())


def test_rescore_killed_at_each_step(cli, trained_workspace, tmp_path):
    """The date always shows one complete snapshot; versions no link names go at the next write, not before."""
    from serving.batch import rescore

    root = copy(trained_workspace, tmp_path, "ws")
    ws = Workspace.open(root)
    first = rescore(ws, push=False)  # the published snapshot the killed runs must leave alone, and the reference
    snapshot, meta = history.read(ws), history.read_meta(ws)
    date = first["date"]
    shown, v0, store = tags_state(ws)
    assert shown == [f"date={date}"] and store == [v0]

    def killed_at(point: str) -> tuple[str, list[str]]:
        """Kill a rescore at `point`; the snapshot reads the same rows, tags/ shows only the date link."""
        persona(cli, root, "rescore", "--no-push", kill_at=point)
        assert history.list_dates(ws) == [date]
        pd.testing.assert_frame_equal(history.read(ws), snapshot)
        shown_now, linked, versions = tags_state(ws)
        assert shown_now == shown
        return linked, versions

    assert killed_at("rescore.tagged") == (v0, [v0])
    linked, store = killed_at("tags.written")  # a complete version, never linked
    assert linked == v0 and len(store) == 2
    [v1] = set(store) - {v0}
    v2, store = killed_at("tags.linked")  # linked: the new snapshot (of the same rows)
    assert v2 not in (v0, v1) and store == sorted([v0, v2])  # the unlinked v1 collected; v0, just replaced, kept
    v3, store = killed_at("rescore.written")
    assert v3 != v2 and store == sorted([v2, v3])

    result = persona(cli, root, "rescore", "--no-push")
    assert result["date"] == date and result["cleaned"] == []
    pd.testing.assert_frame_equal(history.read(ws), snapshot)
    shown_now, v4, store = tags_state(ws)
    assert shown_now == shown and store == sorted([v3, v4])  # the documented rest: the version just replaced
    again = history.read_meta(ws)
    assert {k: again[k] for k in META_FIELDS} == {k: meta[k] for k in META_FIELDS}
    [(n,)] = duckdb.sql(f"SELECT count(*) FROM read_parquet('{history.root(ws)}/*/*.parquet', "
                        "hive_partitioning=true)").fetchall()
    assert n == len(snapshot)  # DuckDB reads the snapshot once, through the link
