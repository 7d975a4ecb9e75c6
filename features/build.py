"""The features stage: compute point-in-time snapshots, apply the Feast repository, materialise online.

Snapshot dates sit on a fixed grid (every `training.cutoff_every_days` days counted from 1970-01-01; by default a
spacing that fits the data's span, `TrainingConfig.grid`) so that a
later run with more data finds the same dates, plus the scoring date (the day after the last activity), which
moves with the data. Each snapshot only reads activity before its date, i.e. the data up to and including the day
before it (`--as-of DATE` asks for the snapshot at the midnight after DATE).

The manifest records, per snapshot date, a fingerprint of the inputs it read (`snapshots.input_fingerprints`). A
later run computes the dates that are new and every date whose inputs changed since (a late row of day D, or a
corrected file re-integrated, changes every date after D); only the attributes group when only the profiles
changed. An incremental run therefore writes the same snapshots as `--full`.

The embedded engine (DuckDB) writes one group at a time, and on large data runs the groups on one bucket of personas
after the other (`features.snapshot_buckets`), so its memory is bounded by a bucket. `engine: spark` computes the
snapshots on Spark from the same feature code (`features.spark_snapshots`); the dates, fingerprints, manifest and
materialisation are the same for both engines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pandas as pd

from features import eventlog, snapshot_buckets, snapshots, spark_snapshots
from features import store as feature_store
from features.model_tags import KEYS
from features.offline import manifest_path
from persona import engine
from persona.errors import InsufficientDataError
from persona.faults import kill_point
from persona.workspace import Workspace, read_json, write_json_atomic

Progress = Callable[[str, float], None]
EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


def snapshot_dates(data_start: pd.Timestamp, data_end: pd.Timestamp, *, every_days: int,
                   min_history_days: int) -> list[pd.Timestamp]:
    """Grid dates with at least `min_history_days` of data before them, then the scoring date."""
    first = data_start + pd.Timedelta(days=min_history_days)
    step = pd.Timedelta(days=every_days)
    k0 = -(-(first - EPOCH) // step)  # ceil
    scoring = (data_end + pd.Timedelta(days=1)).normalize()
    grid = [EPOCH + k * step for k in range(int(k0), int((scoring - EPOCH) // step) + 1)]
    return sorted({*[d for d in grid if d < scoring], scoring})


def data_span(con: duckdb.DuckDBPyConnection, integrated) -> tuple[pd.Timestamp, pd.Timestamp]:
    start, end = con.execute(
        f"SELECT min(ts), max(ts) FROM {snapshots.parquet_sql(integrated / 'transactions.parquet')}").fetchone()
    if start is None:
        raise InsufficientDataError(f"{integrated}: no transactions: nothing to compute features from")
    return pd.Timestamp(start).tz_convert("UTC"), pd.Timestamp(end).tz_convert("UTC")


def build_features(ws: Workspace, *, as_of: pd.Timestamp | None = None, full: bool = False, online: bool = True,
                   progress: Progress | None = None) -> dict:
    """Compute new and stale snapshots (all with `full`), apply the Feast repository, materialise (unless not
    `online`: batch-only use needs the offline snapshots and the registry); return a report.

    `as_of`: a calendar date (UTC); the last snapshot is then the one holding the data up to and including it."""
    t0 = time.perf_counter()
    cfg = ws.config()
    integrated = ws.require_current("integrated", "run `persona integrate` first")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    start, end = data_span(con, integrated)
    if as_of is not None:
        wanted = snapshots.snapshot_for(as_of)
        if wanted > (end + pd.Timedelta(days=1)).normalize():
            raise InsufficientDataError(
                f"--as-of {snapshots.data_through(wanted).date()} is after the end of the data (last activity "
                f"{end.date()}): pass a date up to {end.date()}, or leave --as-of out to use all the data")
        end = min(end, wanted - pd.Timedelta(microseconds=1))
    every, history = cfg.training.grid((end - start) / pd.Timedelta(days=1))
    dates = snapshot_dates(start, end, every_days=every, min_history_days=history)
    if len(dates) < 2:
        raise InsufficientDataError(
            f"too little history for features: data covers {start.date()}..{end.date()}, and the first snapshot "
            f"needs {history} days of history (training.min_history_days): set training.min_history_days to at "
            f"most {max((end - start).days - 1, 0)}")
    offline = ws.root / "features" / "offline"
    manifest_file = manifest_path(ws)
    previous = read_json(manifest_file, {}) or {}
    t = time.perf_counter()
    # Events the online service accepted since count like the integrated ones (the next snapshot sees them).
    logged = eventlog.export(ws, cfg)
    if progress:
        progress("fingerprinting the inputs of each snapshot date", 0.0)
    fingerprints = snapshots.input_fingerprints(integrated, dates, extra_events=logged)
    recorded = recorded_fingerprints(previous, offline)
    plan = plan_snapshots(dates, fingerprints, recorded, full=full)
    for key in set(plan) & set(previous.get("dates", [])) - set(recorded):
        plan[key]["why"] = "no input fingerprint recorded for it (written by an earlier persona or another DuckDB)"
    rows: dict[str, int] = {}
    for groups, todo in _batches(plan).items():
        # A group with no feature columns (no events in a transactions-only workspace) has nothing to serve.
        if cfg.engine == "spark":
            written = spark_snapshots.write_snapshots_spark(
                engine.spark_session(cfg), integrated, todo, offline, scratch=ws.root / "features",
                extra_events=logged, groups=groups, progress=progress, publish_if=_has_features)
        else:  # one group at a time, in buckets of personas on large data: memory bounded by a bucket
            written = snapshot_buckets.write_snapshots_embedded(
                integrated, todo, offline, scratch=ws.root / "features", extra_events=logged, groups=groups,
                progress=progress, publish_if=_has_features)
        for g, n in written.items():
            rows[g] = rows.get(g, 0) + n
    kill_point("features.snapshots_written")
    compute_s = time.perf_counter() - t

    if progress:
        progress("applying the Feast repository", 0.9)
    store = feature_store.open_store(ws, cfg)
    services = feature_store.apply(store, ws, cfg)
    kill_point("features.applied")
    if progress:
        progress("materialising online features", 0.95)
    t = time.perf_counter()
    # The latest snapshot written again under the same date: an incremental load would see nothing newer than its
    # last end, so the online store is loaded again from that snapshot.
    rewritten = str(dates[-1]) in plan and plan[str(dates[-1])]["why"] not in (NEW, SCORING)
    materialised = load_online(ws, cfg, store, end=end + pd.Timedelta(days=1), first_start=dates[-1],
                               force=rewritten) if online else None
    report = {
        "data_start": str(start), "data_end": str(end), "dates": [str(d) for d in dates],
        "grid_dates": [str(d) for d in dates[:-1]], "computed": [d for d in plan],
        "recomputed": {d: p for d, p in plan.items() if p["why"] not in (NEW, SCORING)},
        "rows": rows, "services": services,
        "engine": cfg.engine, "store": cfg.store.profile, "materialized": materialised,
        "fingerprint_method": snapshots.FINGERPRINT_METHOD,
        "fingerprints": {**recorded, **fingerprints},
        "seconds": {"snapshots": round(compute_s, 1), "materialize": round(time.perf_counter() - t, 1),
                    "total": round(time.perf_counter() - t0, 1)},
    }
    write_json_atomic(manifest_file, report)
    return report


def _has_features(columns: list[str]) -> bool:
    """Whether a group's snapshot has feature columns (not in a transactions-only workspace: engagement)."""
    return len(columns) > len(KEYS)


NEW = "not computed yet"
SCORING = "the scoring date, written on every run"


def recorded_fingerprints(manifest: dict, offline: Path) -> dict[str, dict[str, str]]:
    """The fingerprints the last run recorded per snapshot date: none when they were taken another way (another
    DuckDB), or when the offline snapshot files are gone (every date must be written again)."""
    if manifest.get("fingerprint_method") != snapshots.FINGERPRINT_METHOD or not any(offline.glob("*.parquet")):
        return {}
    return manifest.get("fingerprints") or {}


def plan_snapshots(dates: list[pd.Timestamp], current: dict[str, dict[str, str]],
                   recorded: dict[str, dict[str, str]], *, full: bool = False) -> dict[str, dict]:
    """{date: {"groups": [...], "why": "..."}} for every snapshot date to compute: all with `full`, else the new
    ones and those whose inputs changed since their fingerprint was recorded (see `snapshots.stale_groups`)."""
    plan = {}
    for d in dates:  # one step per snapshot date
        key = str(d)
        if full:
            groups, why = snapshots.GROUPS, "--full"
        else:
            groups, why = snapshots.stale_groups(current[key], recorded.get(key))
        if not groups and d == dates[-1]:
            # As before fingerprints: the scoring date is written on every run (the crash tests kill a run while it
            # writes; the day-two loop expects it). Same inputs, same rows: not a change the online store must see.
            groups, why = snapshots.GROUPS, SCORING
        if groups:
            plan[key] = {"groups": list(groups), "why": why}
    return plan


def _batches(plan: dict[str, dict]) -> dict[tuple[str, ...], list[pd.Timestamp]]:
    """The dates of the plan by the groups they need: each set of groups is computed once for all its dates."""
    batches: dict[tuple[str, ...], list[pd.Timestamp]] = {}
    for key, p in plan.items():
        batches.setdefault(tuple(p["groups"]), []).append(pd.Timestamp(key))
    return batches


def load_online(ws: Workspace, cfg, store, *, end: pd.Timestamp, first_start: pd.Timestamp,
                force: bool = False) -> dict:
    """Bring the online store up to the offline snapshots: incrementally when it holds the workspace's last load,
    else (empty, stale, or `force`) in full, then the real-time state of events logged since the snapshot on top;
    a new marker last. Returns the materialisation report with the store's state before the load."""
    state = feature_store.online_state(store, ws)
    full = force or state["state"] != "ok"
    report = feature_store.materialize(store, end.to_pydatetime(), first_start=first_start.to_pydatetime(),
                                       reload=full)
    report["state_before"] = state["state"]
    if full:
        report["replayed_events"] = replay_states(ws, cfg, store, since=first_start)
    report["marker"] = feature_store.mark_loaded(store, ws, as_of=end, what="full" if full else "incremental")
    return report


def replay_states(ws: Workspace, cfg, store, *, since: pd.Timestamp) -> int:
    """Push the real-time features of personas whose last logged event is after `since` (the snapshot date):
    the state the online store held before it was lost. Returns the personas pushed."""
    url = eventlog.default_url(ws, cfg)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return 0
    log = eventlog.open_log(ws, cfg)
    try:
        states = log.states_since(since.to_pydatetime())
    finally:
        log.close()
    if not states:
        return 0
    rows = [{"persona_id": pid, "event_timestamp": st.pushed, **st.values} for pid, st in states]
    frame = pd.DataFrame(rows)
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    feature_store.push_realtime(store, frame)
    return len(rows)
