"""Feature snapshots on the embedded engine with memory bounded by a bucket of personas, not by the data.

Small data runs `snapshots.iter_snapshots` once over everyone, written one group at a time. Past RECORDS_PER_BUCKET
activity records, the personas are cut into ranges of persona_id with about as many records each, and the same
`iter_snapshots` runs on one range after the other, reading the integrated files themselves (a filter on
persona_id, so DuckDB skips the row groups of other personas: integrate publishes them sorted by persona_id). This
is the Spark engine's design (`features.spark_snapshots`), run sequentially in-process: each bucket is given the
whole data's `Vocabulary` (read here with DuckDB, as Spark reads it), writes its group frames as Parquet parts, and
each group's file is then assembled from its parts in bucket order (`snapshots.write_parts`), merged with the dates
already in it. Same rows, columns, order and values as one pass (floats up to the order DuckDB adds a persona's
amounts in): every feature of a persona is a function of its own records, except the columns, which the vocabulary
decides.

Records without a persona only ever count for the vocabulary (every feature query reads records with a persona and
a time): the vocabulary holds them, and no bucket reads them.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features import snapshots
from features.snapshots import (ACTIVITY, GROUPS, PROFILES, ROW_GROUP_ROWS, Vocabulary, parquet_parts, parquet_rows,
                                parquet_sql)
from features.transactions import as_of_index
from persona.faults import kill_point

Progress = Callable[[str, float], None]
# Activity records per bucket (transactions, events, interactions, logged events), as the Spark engine's. A bucket's
# run holds its personas' group frames (rows = personas x dates) and DuckDB's aggregates of their records: the whole
# `persona features` peaked at ~0.8 GB RSS with buckets of 2M records (generated data, 19 dates), ~1 GB with 4M and
# ~0.55 GB with 0.3M, each bucket costing a few seconds more; one pass over 2M records is about as big, so smaller
# data runs once.
RECORDS_PER_BUCKET = 2_000_000
SCRATCH = ".snapshot-buckets"  # beside the offline folder: each bucket's group frames until they are assembled


def write_snapshots_embedded(integrated: Path, as_of_dates: Sequence[pd.Timestamp], out_dir: Path, *,
                             scratch: Path, extra_events: Path | None = None, groups: Sequence[str] | None = None,
                             records_per_bucket: int | None = None, created: pd.Timestamp | None = None,
                             publish_if: Callable[[list[str]], bool] | None = None,
                             progress: Progress | None = None, threads: int = 2,
                             memory_limit: str = "3GB") -> dict[str, int]:
    """Compute the feature groups (GROUPS order; only `groups` when given) for `as_of_dates` and write each to
    `out_dir/<group>.parquet` as `snapshots.write_snapshots(snapshots.iter_snapshots(...), out_dir)` does; returns
    the rows written per group.

    In one pass up to `records_per_bucket` activity records (default RECORDS_PER_BUCKET), else in buckets of about
    that many, one at a time, with their results in `scratch/SCRATCH` (removed at the end, and at the start: a killed
    run's). `publish_if(columns)`: whether a group is written (default: every group computed)."""
    integrated, out_dir = Path(integrated), Path(out_dir)
    records_per_bucket = RECORDS_PER_BUCKET if records_per_bucket is None else records_per_bucket
    if records_per_bucket < 1:
        raise ValueError(f"records_per_bucket must be at least 1, got {records_per_bucket}")
    work = Path(scratch) / SCRATCH
    shutil.rmtree(work, ignore_errors=True)
    if not (integrated / "transactions.parquet").exists():  # before counting: the error iter_snapshots gives
        raise FileNotFoundError(f"{integrated / 'transactions.parquet'}: no transactions: "
                                "run `persona integrate` first")
    buckets = math.ceil(activity_records(integrated, extra_events) / records_per_bucket)
    options = dict(extra_events=extra_events, groups=groups, threads=threads, memory_limit=memory_limit)
    if buckets <= 1:
        rows: dict[str, int] = {}

        def published() -> Iterator[tuple[str, pd.DataFrame]]:
            for group, frame in snapshots.iter_snapshots(integrated, as_of_dates, progress=progress, **options):
                if publish_if is None or publish_if(list(frame.columns)):
                    rows[group] = len(frame)
                    yield group, frame
                del frame  # released before the next group is computed

        snapshots.write_snapshots(published(), out_dir, created=created)
        return rows
    try:
        return _write_in_buckets(integrated, as_of_dates, out_dir, work=work, buckets=buckets, created=created,
                                 publish_if=publish_if, progress=progress, **options)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _write_in_buckets(integrated: Path, as_of_dates: Sequence[pd.Timestamp], out_dir: Path, *, work: Path,
                      buckets: int, extra_events: Path | None, groups: Sequence[str] | None,
                      created: pd.Timestamp | None, publish_if: Callable[[list[str]], bool] | None,
                      progress: Progress | None, threads: int, memory_limit: str) -> dict[str, int]:
    stamp = pd.Timestamp.now(tz="UTC") if created is None else pd.Timestamp(created).tz_convert("UTC")
    dates = list(as_of_index(as_of_dates))
    bounds = persona_bounds(integrated, buckets, extra_events=extra_events, threads=threads,
                            memory_limit=memory_limit)
    vocabulary = read_vocabulary(integrated, extra_events=extra_events, threads=threads, memory_limit=memory_limit)
    ranges = list(zip([None, *bounds], [*bounds, None]))
    parts: dict[str, list[Path]] = {}
    columns: dict[str, list[str]] = {}
    for b, personas in enumerate(ranges):
        def step(message: str, fraction: float, b: int = b) -> None:
            if progress:
                progress(f"{message} (bucket {b + 1} of {len(ranges)})", 0.9 * (b + fraction) / len(ranges))

        for group, frame in snapshots.iter_snapshots(integrated, dates, progress=step, extra_events=extra_events,
                                                     groups=groups, threads=threads, memory_limit=memory_limit,
                                                     vocabulary=vocabulary, personas=personas):
            if columns.setdefault(group, list(frame.columns)) != list(frame.columns):
                # a bug, not a data problem: the vocabulary is meant to make every bucket's columns the same
                raise RuntimeError(f"feature group {group}: bucket {b} computed other columns than bucket 0")
            path = work / group / f"bucket-{b:06d}.parquet"
            _write_part(frame, path)
            del frame
            parts.setdefault(group, []).append(path)
    written: dict[str, int] = {}
    for group in (g for g in GROUPS if g in parts):
        if publish_if is None or publish_if(columns[group]):
            if progress:
                progress(f"features: writing {group} from {len(parts[group])} bucket(s)", 0.9)
            out_dir.mkdir(parents=True, exist_ok=True)
            written[group] = snapshots.write_parts(parts[group], out_dir / f"{group}.parquet", created=stamp)
            pa.default_memory_pool().release_unused()  # Arrow keeps freed memory for reuse: give it back
            kill_point("features.group_written")
        shutil.rmtree(work / group, ignore_errors=True)
    if progress:
        progress("features computed", 1.0)
    return written


def _write_part(frame: pd.DataFrame, path: Path) -> None:
    """One bucket's frame of a group, in (event_timestamp, persona_id) order, each date in row groups of its own (so
    that `write_parts`, reading one date of one part at a time, decodes only that date)."""
    if not frame["event_timestamp"].is_monotonic_increasing:
        frame = frame.sort_values(["event_timestamp", "persona_id"], kind="stable")
    ts = pd.DatetimeIndex(frame["event_timestamp"]).as_unit("ns").asi8
    cuts = np.flatnonzero(np.diff(ts)) + 1
    table = pa.Table.from_pandas(frame, preserve_index=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, table.schema) as writer:
        for lo, hi in zip([0, *cuts], [*cuts, table.num_rows]):
            writer.write_table(table.slice(lo, hi - lo), row_group_size=ROW_GROUP_ROWS)


def _activity(integrated: Path, extra_events: Path | None) -> dict[str, Path]:
    """Each activity input that exists (`logged_events`: `extra_events`, when it has rows), a file or a folder."""
    found = {name: integrated / f"{name}.parquet" for name in ACTIVITY if (integrated / f"{name}.parquet").exists()}
    if extra_events is not None and Path(extra_events).exists() and parquet_rows(Path(extra_events)):
        found[snapshots.LOGGED_EVENTS] = Path(extra_events)
    return found


def activity_records(integrated: Path, extra_events: Path | None = None) -> int:
    """The activity records (transactions, events, interactions, logged events), from the files' metadata."""
    return sum(parquet_rows(path) for path in _activity(Path(integrated), extra_events).values())


def _connect(threads: int, memory_limit: str) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(config={"threads": threads, "memory_limit": memory_limit})


def persona_bounds(integrated: Path, buckets: int, *, extra_events: Path | None = None, threads: int = 2,
                   memory_limit: str = "3GB") -> list:
    """The first persona_id of each bucket but the first, ascending: up to `buckets` ranges of persona_id with
    about as many activity records each (fewer when a few personas hold most records)."""
    union = " UNION ALL ".join(f"SELECT persona_id FROM {parquet_sql(path)} WHERE persona_id IS NOT NULL"
                               for path in _activity(Path(integrated), extra_events).values())
    con = _connect(threads, memory_limit)
    try:
        rows = con.execute(f"""
            WITH n AS (SELECT persona_id, count(*) AS n FROM ({union}) GROUP BY persona_id),
                 c AS (SELECT persona_id, sum(n) OVER (ORDER BY persona_id) - n AS before, sum(n) OVER () AS total
                       FROM n)
            SELECT min(persona_id) FROM c GROUP BY (before * {int(buckets)}) // total ORDER BY 1""").fetchall()
    finally:
        con.close()
    return [r[0] for r in rows[1:]]


def read_vocabulary(integrated: Path, *, extra_events: Path | None = None, threads: int = 2,
                    memory_limit: str = "3GB") -> Vocabulary:
    """The whole data's vocabulary (see `snapshots.Vocabulary`) as one `iter_snapshots` over everyone reads it, in
    DuckDB: the categories of every transaction and of every event with the logged events, the vendor interests of
    the profiles of personas with any record (a persona and a time); what `spark_snapshots` reads on Spark."""
    integrated = Path(integrated)
    files = _activity(integrated, extra_events)
    relations = tuple(n for n in ACTIVITY if n in files or (n == "events" and snapshots.LOGGED_EVENTS in files))
    kinds = [f"SELECT '{rel}' AS kind, CAST(category AS VARCHAR) AS value FROM {parquet_sql(files[name])}"
             for rel, names in (("transactions", ["transactions"]), ("events", ["events", snapshots.LOGGED_EVENTS]))
             for name in names if name in files and _has_column(files[name], "category")]
    profiles = integrated / f"{PROFILES}.parquet"
    if files and profiles.exists() and _has_column(profiles, "vendor_interests"):
        active = " UNION ALL ".join(f"SELECT persona_id FROM {parquet_sql(path)} "
                                    "WHERE persona_id IS NOT NULL AND ts IS NOT NULL" for path in files.values())
        kinds.append(f"""SELECT '{PROFILES}' AS kind,
                             unnest(string_split(CAST(vendor_interests AS VARCHAR), '|')) AS value
                         FROM {parquet_sql(profiles)} WHERE persona_id IN ({active})""")
    found: dict[str, list[str]] = {}
    if kinds:
        con = _connect(threads, memory_limit)
        try:
            rows = con.execute(f"SELECT DISTINCT kind, value FROM ({' UNION ALL '.join(kinds)}) "
                               f"WHERE value IS NOT NULL LIMIT {snapshots.MAX_VOCABULARY + 1}").fetchall()
        finally:
            con.close()
        snapshots.check_vocabulary_size(len(rows))
        for kind, value in rows:
            found.setdefault(kind, []).append(value)
    return Vocabulary(relations=relations,
                      categories={rel: tuple(sorted(found[rel])) for rel in ("transactions", "events") if rel in found},
                      vendor_interests=tuple(sorted(found.get(PROFILES, ()))))


def _has_column(path: Path, name: str) -> bool:
    """Whether any file of an input has the column (a scan by name gives nulls in the others)."""
    return any(name in pq.read_schema(p).names for p in parquet_parts(path))
