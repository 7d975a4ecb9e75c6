"""Feature snapshots on Spark (`engine: spark`): the feature groups of `features.snapshots`, run per bucket of personas.

Why this design. Every feature of a persona is a function of that persona's own records: its transactions, events,
interactions and profile, read up to each snapshot date. So the personas are cut into buckets (all of a persona's
records, of every relation, in one bucket), each bucket is an integrated folder of its own, and the executors run
the very same `snapshots.iter_snapshots` on it, with DuckDB, each writing its bucket's result Parquet. No feature is
written twice: there is no Spark SQL or ibis version of any feature. A translation was not an option anyway: the
groups aggregate in DuckDB and then build numpy cumulative matrices per (persona, period) (running sums, running
max/min, latest values; see `features.transactions`), which neither Spark SQL nor ibis expresses; and two versions
of a feature are a train/serve skew waiting to happen.

What a bucket cannot see on its own, the whole data's vocabulary (`snapshots.Vocabulary`): the categories and
vendor interests that decide the `aff_`, `tx_categories_365d` and `attr_vendor_int_` columns, and which activity
relations exist. It is computed once on Spark (a few distinct values reach the driver) and given to every bucket,
so that every bucket yields the columns, in the order, and the values of one run over everyone. Nothing else in
the groups depends on other personas: windows are counted from the snapshot dates, which the driver plans from the
whole data as before (`features.build`).

Buckets are ranges of persona_id (bounds from Spark's range partitioner: B smallest ids reach the driver), not
hashes: the published file of a group is sorted by (event_timestamp, persona_id), as the embedded engine writes it
and as the readers' fast path expects, so with ranges it is a concatenation of the buckets' sorted results in bucket
order; with hashes it would need a global sort of every feature row. Publishing (`snapshots.write_parts`: one date
of one bucket at a time, merged with the dates already in the file, then an atomic rename) runs in an executor task
per group: the driver plans, counts and starts jobs, and no feature row passes through it (a test runs it with a
512 MB driver allowed 2 MB of results).

Executors must reach the integrated folder, the scratch folder and the workspace's offline folder by the same path:
true on `local[N]`; on a cluster they must be on a shared file system.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from functools import reduce
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features import snapshots
from features.snapshots import (ACTIVITY, GROUPS, PROFILES, ROW_GROUP_ROWS, Vocabulary, parquet_parts,
                                parquet_rows)
from features.transactions import as_of_index
from persona.faults import kill_point
from persona.engine import NANOS_AS_LONG, spark_conf, task_per_item

Progress = Callable[[str, float], None]
LOGGED = "logged_events"
BUCKET = "__persona_bucket"
ROWS_PER_BUCKET = 2_000_000  # input records per bucket: a bucket's DuckDB run holds well under 2 GB


def write_snapshots_spark(spark, integrated: Path, as_of_dates: Sequence[pd.Timestamp], out_dir: Path, *,
                          scratch: Path, extra_events: Path | None = None, groups: Sequence[str] | None = None,
                          buckets: int | None = None, created: pd.Timestamp | None = None,
                          memory_limit: str = "2GB", publish_if: Callable[[list[str]], bool] | None = None,
                          progress: Progress | None = None) -> dict[str, int]:
    """Compute the feature groups (GROUPS order; only `groups` when given) for `as_of_dates` on Spark and write each
    to `out_dir/<group>.parquet` as `snapshots.write_snapshots(snapshots.iter_snapshots(...), out_dir)` does
    (same rows, columns and order; the dates already there merged). Returns the rows written per group.

    `scratch`: a folder the executors reach, for the bucketed inputs and results (removed at the end);
    `buckets`: how many (default: from the records, at least twice the default parallelism); `memory_limit`:
    DuckDB's per bucket task (one thread each: a task holds one core); `publish_if(columns)`: whether a group is
    written (default: every group computed).
    This module is imported on the executors: it must not import Feast (seconds per Python worker)."""
    integrated, out_dir = Path(integrated), Path(out_dir)
    unknown = sorted(set(groups or ()) - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown feature groups {unknown} (expected some of {list(GROUPS)})")
    wanted = tuple(g for g in GROUPS if groups is None or g in groups)
    dates = list(as_of_index(as_of_dates))
    if not (integrated / "transactions.parquet").exists():
        raise FileNotFoundError(f"{integrated / 'transactions.parquet'}: no transactions: "
                                "run `persona integrate` first")
    inputs = {name: integrated / f"{name}.parquet" for name in (*ACTIVITY, PROFILES)
              if (integrated / f"{name}.parquet").exists()}
    if extra_events is not None and Path(extra_events).exists() and parquet_rows(Path(extra_events)):
        inputs[LOGGED] = Path(extra_events)
    stamp = pd.Timestamp.now(tz="UTC") if created is None else pd.Timestamp(created).tz_convert("UTC")
    work = Path(scratch) / f".spark-snapshots-{uuid.uuid4().hex[:12]}"

    def say(message: str, fraction: float) -> None:
        if progress:
            progress(message, fraction)

    try:
        with spark_conf(spark, {**NANOS_AS_LONG, "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS"}):
            frames = {name: _read(spark, path) for name, path in inputs.items()}
            activity = [frames[n] for n in (*ACTIVITY, LOGGED) if n in frames]
            records = sum(parquet_rows(inputs[n]) for n in inputs if n != PROFILES)
            wanted_buckets = buckets or max(2 * spark.sparkContext.defaultParallelism,
                                            math.ceil(records / ROWS_PER_BUCKET))
            say(f"features on Spark: {wanted_buckets} bucket(s) of personas", 0.0)
            bounds = _bounds(activity, wanted_buckets)
            vocabulary = _vocabulary(frames)
            _write_buckets(spark, frames, bounds, work / "inputs")
            n = len(bounds) + 1
            say(f"features on Spark: {len(wanted)} group(s) x {len(dates)} date(s) in {n} bucket(s)", 0.1)
            results = _compute(spark, n, work, names=list(inputs), dates=dates, vocabulary=vocabulary,
                               groups=wanted, logged=LOGGED in inputs, memory_limit=memory_limit)
        say("features on Spark: publishing", 0.8)
        results = {g: cols for g, cols in results.items() if publish_if is None or publish_if(cols)}
        written = _publish(spark, results, work / "results", out_dir, created=stamp)
        for _ in written:
            kill_point("features.group_written")
        say("features computed", 1.0)
        return written
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _read(spark, path: Path):
    """A Parquet input as a Spark DataFrame. Spark cannot read nanosecond timestamps (pandas writes them): they are
    read as longs and floored to microseconds, which loses nothing a feature reads (every group counts time in
    whole microseconds, `transactions.T_US`, against dates at midnight)."""
    from pyspark.sql import functions as F

    frame = spark.read.parquet(str(path))
    for fld in pq.read_schema(parquet_parts(path)[0]):
        if pa.types.is_timestamp(fld.type) and fld.type.unit == "ns":
            name = "`" + fld.name.replace("`", "``") + "`"
            floor_us = f"{name} div 1000 - IF({name} % 1000 < 0, 1, 0)"
            frame = frame.withColumn(fld.name, F.expr(f"timestamp_micros({floor_us})"))
    return frame


def _bounds(activity: list, buckets: int) -> list:
    """The smallest persona_id of each bucket but the first, ascending: ranges with about as many records each
    (Spark's range partitioner samples them; `buckets` values at most reach the driver)."""
    from pyspark.sql import functions as F

    ids = reduce(lambda a, b: a.unionAll(b), [f.select("persona_id") for f in activity]).where(
        F.col("persona_id").isNotNull())
    firsts = (ids.repartitionByRange(buckets, "persona_id")
              .groupBy(F.spark_partition_id().alias("p")).agg(F.min("persona_id").alias("first")).collect())
    return sorted({row["first"] for row in firsts})[1:]


def _bucket_of(bounds: list):
    """The bucket of a record: how many bounds its persona_id is at or above (records without one: the last)."""
    from pyspark.sql import functions as F

    if not bounds:
        return F.lit(0)
    pid, case = F.col("persona_id"), None
    for i, bound in enumerate(bounds):
        case = (F.when if case is None else case.when)(pid < F.lit(bound), F.lit(i))
    return case.otherwise(F.lit(len(bounds)))


def _vocabulary(frames: dict) -> Vocabulary:
    """The whole data's vocabulary (see `snapshots.Vocabulary`), as `snapshots.iter_snapshots` reads it from one
    folder: categories of every row of transactions and of events with the logged events, vendor interests of the
    profiles of personas with any record (a persona and a time). One Spark job; only distinct values come back."""
    from pyspark.sql import functions as F

    relations = tuple(n for n in ACTIVITY if n in frames or (n == "events" and LOGGED in frames))
    kinds = []
    for rel, parts in (("transactions", ["transactions"]), ("events", ["events", LOGGED])):
        kinds += [frames[p].select(F.lit(rel).alias("kind"), F.col("category").cast("string").alias("value"))
                  for p in parts if p in frames and "category" in frames[p].columns]
    profiles = frames.get(PROFILES)
    if profiles is not None and "vendor_interests" in profiles.columns:
        active = reduce(lambda a, b: a.unionAll(b), [
            frames[n].where(F.col("persona_id").isNotNull() & F.col("ts").isNotNull()).select("persona_id")
            for n in (*ACTIVITY, LOGGED) if n in frames]).distinct()
        kinds.append(profiles.join(active, "persona_id", "left_semi")
                     .select(F.lit(PROFILES).alias("kind"),
                             F.explode(F.split(F.col("vendor_interests").cast("string"), r"\|")).alias("value")))
    found: dict[str, list[str]] = {}
    if kinds:
        values = reduce(lambda a, b: a.unionAll(b), kinds).where(F.col("value").isNotNull()).distinct()
        rows = values.limit(snapshots.MAX_VOCABULARY + 1).collect()
        snapshots.check_vocabulary_size(len(rows))
        for row in rows:
            found.setdefault(row["kind"], []).append(row["value"])
    return Vocabulary(relations=relations,
                      categories={rel: tuple(sorted(found[rel])) for rel in ("transactions", "events") if rel in found},
                      vendor_interests=tuple(sorted(found.get(PROFILES, ()))))


def _write_buckets(spark, frames: dict, bounds: list, inputs: Path) -> None:
    """Each input under `inputs/<name>/<BUCKET>=<b>/` (one file per bucket); an input without any record gets one
    empty file with its columns (a bucket without records of an input reads the columns from any file of it)."""
    bucket = _bucket_of(bounds)
    for name, frame in frames.items():
        (frame.withColumn(BUCKET, bucket).repartition(len(bounds) + 1, BUCKET)
         .write.partitionBy(BUCKET).mode("overwrite").parquet(str(inputs / name)))
        if not any((inputs / name).glob("*/*.parquet")):
            spark.createDataFrame([], frame.schema).write.mode("overwrite").parquet(str(inputs / name / f"{BUCKET}=0"))


def _compute(spark, buckets: int, work: Path, *, names: list[str], dates: list[pd.Timestamp], vocabulary: Vocabulary,
             groups: tuple[str, ...], logged: bool, memory_limit: str) -> dict[str, list[str]]:
    """Run every bucket on the executors (a task per bucket); {group: its columns}. Only a row per bucket and group
    (its rows and a hash of its columns) reaches the driver."""
    inputs, results = str(work / "inputs"), str(work / "results")

    def run(b: int) -> pd.DataFrame:
        return pd.DataFrame(compute_bucket(b, inputs=Path(inputs), names=names, results=Path(results), dates=dates,
                                           vocabulary=vocabulary, groups=groups, logged=logged,
                                           memory_limit=memory_limit),
                            columns=["bucket", "grp", "rows", "columns"])

    done = task_per_item(spark, range(buckets), run, "bucket long, grp string, rows long, columns string")
    columns: dict[str, set[str]] = {}
    for row in done:
        columns.setdefault(row["grp"], set()).add(row["columns"])
    differ = sorted(g for g, c in columns.items() if len(c) > 1)
    if differ:  # a bug, not a data problem: the vocabulary is meant to make every bucket's columns the same
        raise RuntimeError(f"feature groups {differ}: the buckets computed different columns")
    return {g: pq.read_schema(next((work / "results" / g).glob("bucket-*.parquet"))).names for g in columns}


def compute_bucket(b: int, *, inputs: Path, names: list[str], results: Path,
                   dates: list[pd.Timestamp], vocabulary: Vocabulary, groups: tuple[str, ...], logged: bool,
                   memory_limit: str) -> list[tuple[int, str, int, str]]:
    """One bucket, on an executor: its records as an integrated folder (links to its files), `iter_snapshots` on
    it, each group's frame written to `results/<group>/bucket-<b>.parquet`; (b, group, rows, hash of the columns) per
    group."""
    out = []
    with tempfile.TemporaryDirectory(prefix=f"persona-bucket-{b}-") as tmp:
        root = Path(tmp)
        for name in names:
            folder = root / f"{name}.parquet"
            folder.mkdir()
            parts = sorted((inputs / name / f"{BUCKET}={b}").glob("*.parquet"))
            for i, part in enumerate(parts):
                (folder / f"part-{i:05d}.parquet").symlink_to(part)
            if not parts:  # no record of this input in the bucket: its columns, no rows
                schema = pq.read_schema(next((inputs / name).glob("*/*.parquet")))
                pq.write_table(schema.empty_table(), folder / "part-00000.parquet")
        for group, frame in snapshots.iter_snapshots(root, dates, threads=1, memory_limit=memory_limit,
                                                     groups=groups, vocabulary=vocabulary,
                                                     extra_events=root / f"{LOGGED}.parquet" if logged else None):
            target = results / group / f"bucket-{b:06d}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pandas(frame, preserve_index=False)
            del frame
            pq.write_table(table, target, row_group_size=ROW_GROUP_ROWS)
            columns = hashlib.sha256("\n".join(table.column_names).encode()).hexdigest()  # not the names: 64 bytes
            out.append((b, group, table.num_rows, columns))
            del table
    return out


def _publish(spark, results: dict[str, list[str]], folder: Path, out_dir: Path, *,
             created: pd.Timestamp) -> dict[str, int]:
    """Each group of `results` merged into `out_dir/<group>.parquet` from its buckets' parts in `folder`, in
    bucket order (`snapshots.write_parts`), a task per group; the rows written per group."""
    todo = [g for g in GROUPS if g in results]
    if not todo:
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = {g: [str(p) for p in sorted((folder / g).glob("bucket-*.parquet"))] for g in todo}
    target = str(out_dir)

    def run(group: str) -> pd.DataFrame:
        rows = snapshots.write_parts([Path(p) for p in parts[group]], Path(target) / f"{group}.parquet",
                                     created=created)
        return pd.DataFrame({"grp": [group], "rows": [rows]})

    done = task_per_item(spark, todo, run, "grp string, rows long")
    written = {row["grp"]: int(row["rows"]) for row in done}
    return {g: written[g] for g in todo}
