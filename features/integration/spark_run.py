"""`persona integrate`'s identity resolution on Spark: the staged mentions read by the executors, OneID resolved by
`spark_oneid.resolve`, and its outputs handed to the rest of the run as `oneid.Resolution` (what the embedded
resolver returns), through Parquet files in a scratch folder of the workspace, never through the driver's memory
as Spark rows.

Mention keys are unsigned 64-bit hashes; Spark has no unsigned type and reads them as decimal(20,0), so they are
carried as the signed long with the same 64 bits (joins and groupings on a long are cheap, on a decimal are not) and
turned back into uint64 when the outputs are read.
"""

from __future__ import annotations

import shutil
import uuid
from decimal import Decimal
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.integration import aggregates as aggregates_sql
from features.integration import oneid, profile_ranges, spark_oneid
from features.integration.ingest import ARROW_STR
from features.integration.survivorship import survive_order, survive_sql
from persona.config import PersonaConfig
from persona.engine import NANOS_AS_LONG, spark_conf, task_per_item
from persona.workspace import Workspace, write_parquet_parts

SCRATCH = ".tmp/spark_integrate"  # under the workspace root; removed at the end, and at the start after a killed run
_MENTIONS = "mention_key decimal(20,0), id_type string, value_hash string"
_PREVIOUS = "id_type string, value_hash string, persona_id string"
_ROWS = "source string, mention_key decimal(20,0), ts long"
_AUDIT = ["event", "persona_id", "other_persona_id", "reason", "id_type", "value_hash"]


def signed(col):
    """A decimal(20,0) column of unsigned 64-bit keys as the signed long with the same bits."""
    from pyspark.sql import functions as F

    half, whole = (F.lit(Decimal(2 ** n)).cast("decimal(20,0)") for n in (63, 64))
    return F.when(col >= half, col - whole).otherwise(col).cast("long")


def read_mentions(spark, files: list[str], forgotten: Mapping[str, set[str]] | None):
    """The distinct (mention_key as long, id_type, value_hash) of the staged mention files, without any mention
    that carries a forgotten identifier (as `staging.drop_forgotten`)."""
    from pyspark.sql import functions as F

    mentions = (spark.read.schema(_MENTIONS).parquet(*files)
                .select(signed(F.col("mention_key")).alias("mention_key"), "id_type", "value_hash").distinct())
    rows = [(t, h) for t, hashes in (forgotten or {}).items() for h in sorted(hashes)]
    if rows:
        gone = spark.createDataFrame(rows, "id_type string, value_hash string")
        hit = mentions.join(F.broadcast(gone), ["id_type", "value_hash"], "left_semi").select("mention_key")
        mentions = mentions.join(hit.distinct(), "mention_key", "left_anti")
    return mentions


@contextmanager
def scratch_folder(ws: Workspace, enabled: bool = True) -> Iterator[Path | None]:
    """A fresh folder under the workspace for the Spark steps of one run (None when not `enabled`); removed at the
    end, and at the start when a killed run left one."""
    if not enabled:
        yield None
        return
    root = ws.root / SCRATCH
    shutil.rmtree(root, ignore_errors=True)
    folder = root / uuid.uuid4().hex[:12]
    try:
        yield folder
    finally:
        shutil.rmtree(root, ignore_errors=True)


def resolve(spark, ws: Workspace, cfg: PersonaConfig, mention_files: list[str], *,
            forgotten: Mapping[str, set[str]] | None, blocked: dict[str, set[str]], previous_map: Path | None,
            previous_aliases: pd.DataFrame | None, next_seq: int, scratch: Path) -> oneid.Resolution:
    """`oneid.resolve(mentions, ..., on="value_hash")` of the staged mentions, on Spark; the same Resolution (audit
    in the embedded order) but for `nodes` (None) and `mention_persona` (empty): the identifiers (with their
    identifier order, `node`), the mentions and the mention -> persona table stay in `scratch` for `identity_map`,
    `aggregates`, `unattributed`, `publish_activity` and `evaluate`."""
    from pyspark.sql import functions as F

    read_mentions(spark, mention_files, forgotten).write.parquet(str(scratch / "mentions"))  # read once per run
    mentions = spark.read.parquet(str(scratch / "mentions"))
    previous = (spark.read.schema(_PREVIOUS).parquet(str(previous_map)) if previous_map is not None else None)
    found = spark_oneid.resolve(spark, mentions, cfg.identity, blocked=blocked, previous=previous,
                                previous_aliases=previous_aliases, next_seq=next_seq, scratch=str(scratch / "work"))
    found.nodes.select("node", "id_type", "value_hash", "persona_id", "status").write.parquet(str(scratch / "nodes"))
    found.mention_persona.write.parquet(str(scratch / "mention_persona"))
    found.audit.select(*_AUDIT, *(F.col("order")[i].alias(f"_o{i}") for i in range(4))).write.parquet(
        str(scratch / "audit"))
    # mention -> persona stays in `scratch` for the executors (activity, publishing, evaluation): the driver
    # keeps an empty table with its columns, which DuckDB reads the published columns' types from.
    mention_persona = pd.DataFrame({"mention_key": np.array([], dtype=np.uint64),
                                    "persona_id": pd.array([], dtype=ARROW_STR)})
    audit = (_read(scratch / "audit").sort_values([f"_o{i}" for i in range(4)], kind="stable")
             .drop(columns=[f"_o{i}" for i in range(4)]))
    return oneid.Resolution(None, mention_persona, audit.astype("string").reset_index(drop=True),
                            found.aliases, found.next_seq, found.stats)


def aggregates(spark, ws: Workspace, cfg: PersonaConfig, rows_files: list[str], channel_of: pd.DataFrame,
               scratch: Path) -> dict[str, str]:
    """The row-scale steps of building profiles (`features.integration.aggregates`) on Spark, after `resolve` in the
    same `scratch`: activity per persona and channel and the survivorship winners, each sorted by persona_id, and
    when each identifier was last seen, written by the executors under scratch/profiles for `profile_ranges`
    (timestamps as nanosecond longs); returns their folders by name ("winners" absent when no source maps a
    profile attribute). Nothing comes back to the driver."""
    # The staged rows hold nanosecond timestamps, which Spark reads only as longs (nanoseconds since the epoch).
    with spark_conf(spark, NANOS_AS_LONG):
        return _aggregates(spark, cfg, rows_files, channel_of, scratch)


def _aggregates(spark, cfg: PersonaConfig, rows_files: list[str], channel_of: pd.DataFrame,
                scratch: Path) -> dict[str, str]:
    from pyspark.sql import functions as F

    views = {"rows": spark.read.schema(_ROWS).parquet(*rows_files)
             .select("source", signed(F.col("mention_key")).alias("mention_key"), "ts"),
             "mp": spark.read.parquet(str(scratch / "mention_persona")),
             "mentions": spark.read.parquet(str(scratch / "mentions")),  # as `resolve` left them
             "src": spark.createDataFrame(channel_of[["source", "channel"]])}
    for name in cfg.sources:
        files = [p for p in rows_files if Path(p).parent.name == name]
        if files:  # keyed by ("source", name): a source may be called "rows"
            frame = spark.read.option("mergeSchema", "true").parquet(*files)
            views[("source", name)] = _timestamps(frame.withColumn("mention_key", signed(F.col("mention_key"))),
                                                  files[0])
    names: dict = {}
    for i, (key, frame) in enumerate(views.items()):
        names[key] = f"persona_{i}_{uuid.uuid4().hex[:8]}"
        frame.createOrReplaceTempView(names[key])
    try:
        out = {"activity": aggregates_sql.activity_sql(names["rows"], names["mp"], names["src"]),
               "node_seen": aggregates_sql.node_seen_sql(names["mentions"], names["rows"])}
        order = survive_order(cfg.profile.attributes, list(cfg.sources))
        candidates = aggregates_sql.candidates_sql(cfg, lambda s: names.get(("source", s)), names["mp"])
        if candidates is not None and not order.empty:
            names["trust"] = f"persona_trust_{uuid.uuid4().hex[:8]}"
            spark.createDataFrame(order).createOrReplaceTempView(names["trust"])
            out["winners"] = survive_sql(candidates, names["trust"])
        folders = {}
        for key, sql in out.items():
            frame = spark.sql(sql)
            folders[key] = str(scratch / "profiles" / key)
            (frame if key == "node_seen" else frame.orderBy("persona_id")).write.parquet(folders[key])
    finally:
        for name in names.values():
            spark.catalog.dropTempView(name)
    return folders


def identity_map(spark, scratch: Path, values: Path, previous_map: Path | None,
                 reachable: Callable[[pd.DataFrame], pd.Series], schema: pa.Schema, target: Path,
                 then: Callable[[Path], None] | None = None) -> int:
    """The identity map `target` (`schema`: the embedded engine's file) built by the executors: `resolve`'s
    identifiers in identifier order with the raw value of each from the files staged in this run (`values`, one
    Parquet file per staged file) or else from `previous_map`, and `reachable(frame)` of each batch (the phones that
    can be called); written in range-sorted parts, concatenated in one task, which then runs `then(target)`.
    Returns how many identifiers have no known value: the only number that reaches the driver; no raw value does."""
    from pyspark.sql import functions as F

    known = spark.read.schema("id_type string, value string, value_hash string").parquet(str(values / "*.parquet")) \
        if values.is_dir() and any(values.glob("*.parquet")) else None
    if previous_map is not None and "value" in pq.read_schema(previous_map).names:
        earlier = (spark.read.parquet(str(previous_map)).where(F.col("value").isNotNull())
                   .select("id_type", "value", "value_hash"))
        known = earlier if known is None else known.unionByName(earlier)
    nodes = spark.read.parquet(str(scratch / "nodes"))
    if known is None:
        joined = nodes.withColumn("value", F.lit(None).cast("string"))
    else:  # a hash is of one normalised value: any copy of it will do
        joined = nodes.join(known.dropDuplicates(["id_type", "value_hash"]), ["id_type", "value_hash"], "left")

    def check(batches):
        for batch in batches:
            flag = reachable(batch)
            yield batch.assign(reachable=flag.astype(object).where(flag.notna(), None))

    out = "node long, " + ", ".join(f"{f.name} {_spark_type(f)}" for f in schema)
    folder = scratch / "identity_map"
    (joined.select("node", *schema.names[:-1]).mapInPandas(check, out).orderBy("node").drop("node")
     .write.parquet(str(folder)))
    parts = [str(p) for p in sorted(folder.glob("part-*.parquet"))]
    place = str(target)

    def write(_) -> pd.DataFrame:
        unknown = 0

        def tally(table: pa.Table) -> None:  # identifiers with no known value, counted as they are written
            nonlocal unknown
            unknown += table["value"].null_count

        rows = write_parquet_parts(parts, Path(place), schema, visit=tally)
        if then is not None:
            then(Path(place))
        return pd.DataFrame({"rows": [rows], "unknown": [unknown]})

    return int(task_per_item(spark, [0], write, "rows long, unknown long")[0]["unknown"])


def profile_identifiers(spark, identity_map: Path, inputs: dict[str, str], per_range: int) -> list[str]:
    """inputs["identifiers"] written by the executors (`profile_ranges.identifiers_sql`: the linked identifiers of
    `identity_map` with inputs["node_seen"]); returns the first persona of each range of `per_range` (a string per
    range reaches the driver)."""
    names = {key: f"persona_{key}_{uuid.uuid4().hex[:8]}" for key in ("map", "seen", "ids")}
    spark.read.parquet(str(identity_map)).createOrReplaceTempView(names["map"])
    spark.read.parquet(inputs["node_seen"]).createOrReplaceTempView(names["seen"])
    try:
        spark.sql(profile_ranges.identifiers_sql(names["map"], names["seen"])).write.parquet(inputs["identifiers"])
        spark.read.parquet(inputs["identifiers"]).createOrReplaceTempView(names["ids"])
        return [r[0] for r in spark.sql(profile_ranges.range_starts_sql(names["ids"], per_range)).collect()]
    finally:
        for name in names.values():
            spark.catalog.dropTempView(name)


def _timestamps(frame, sample: str):
    """A source's nanosecond timestamp columns other than `ts` (a birth date parsed as a timestamp), read as longs
    under nanosAsLong, back as Spark timestamps (microseconds, floored): survivorship casts them to text, which
    the profile parses back to a date."""
    from pyspark.sql import functions as F

    for field in pq.read_schema(sample):
        if field.name != "ts" and pa.types.is_timestamp(field.type) and field.type.unit == "ns":
            micros = F.floor(F.col(field.name).cast("decimal(20,0)") / 1000).cast("long")
            frame = frame.withColumn(field.name, F.timestamp_micros(micros))
    return frame


def _read(folder: Path) -> pd.DataFrame:
    return aggregates_sql.compact(pq.read_table(folder))


# --- publishing the activity tables ----------------------------------------------------------------------------------
ORDER = ["persona_id", "ts", "source", "file_id", "row"]  # the published activity's order, as the embedded COPY
_SPARK_TYPES = {pa.string(): "string", pa.large_string(): "string", pa.int64(): "long", pa.int32(): "int",
                pa.int16(): "short", pa.int8(): "byte", pa.float64(): "double", pa.float32(): "float",
                pa.bool_(): "boolean", pa.date32(): "date"}


def unattributed(spark, rows_files: list[str], scratch: Path) -> dict[str, int]:
    """Staged rows per source whose mention no persona holds (the embedded `ANTI JOIN mp`): one row per source
    reaches the driver."""
    from pyspark.sql import functions as F

    with spark_conf(spark, NANOS_AS_LONG):
        rows = spark.read.schema(_ROWS).parquet(*rows_files).select("source", signed(F.col("mention_key"))
                                                                      .alias("mention_key"))
        mp = spark.read.parquet(str(scratch / "mention_persona"))
        return {row["source"]: int(row["count"])
                for row in rows.join(mp, "mention_key", "left_anti").groupBy("source").count().collect()}


def publish_activity(spark, kinds: Mapping[str, list[str]], schemas: Mapping[str, pa.Schema],
                     channel_of: pd.DataFrame, scratch: Path, out: Path) -> dict[str, int]:
    """`out/<kind>.parquet` for each kind of `kinds` (its staged rows files): every row with its persona and channel,
    in ORDER, with the columns and types of `schemas[kind]` (what the embedded engine's COPY writes, read by DuckDB
    from the files' footers). The executors join and sort (range partitions, sorted parts in partition order); then
    a task per kind concatenates its parts into the one file readers expect, a row group at a time. Rows never pass
    through the driver: it gets a row count per kind."""
    with spark_conf(spark, NANOS_AS_LONG):  # staged timestamps are nanoseconds: read as longs
        parts = _sorted_activity(spark, kinds, schemas, channel_of, scratch)
    todo = list(parts)
    target, wanted = str(out), {k: schemas[k] for k in todo}

    def run(kind: str) -> pd.DataFrame:
        rows = write_parquet_parts(parts[kind], Path(target) / f"{kind}.parquet", wanted[kind])
        return pd.DataFrame({"kind": [kind], "rows": [rows]})

    done = task_per_item(spark, todo, run, "kind string, rows long")
    return {row["kind"]: int(row["rows"]) for row in done}


def _sorted_activity(spark, kinds: Mapping[str, list[str]], schemas: Mapping[str, pa.Schema],
                     channel_of: pd.DataFrame, scratch: Path) -> dict[str, list[str]]:
    """Each kind's rows joined to their persona and channel and sorted in ORDER, as Parquet parts in order."""
    from pyspark.sql import functions as F

    mp = spark.read.parquet(str(scratch / "mention_persona"))
    src = F.broadcast(spark.createDataFrame(channel_of[["source", "channel"]]))
    parts: dict[str, list[str]] = {}
    for kind, files in kinds.items():
        schema = schemas[kind]
        columns = [f for f in schema if f.name not in ("persona_id", "channel")]
        by_source: dict[str, list[str]] = {}
        for path in files:
            by_source.setdefault(Path(path).parent.name, []).append(path)
        frames = []
        for paths in by_source.values():
            frame = spark.read.option("mergeSchema", "true").parquet(*paths)
            frames.append(frame.select(signed(F.col("mention_key")).alias("mention_key"), *(
                (F.col(f.name) if f.name in frame.columns else F.lit(None)).cast(_spark_type(f)).alias(f.name)
                for f in columns)))
        rows = frames[0]
        for frame in frames[1:]:
            rows = rows.unionByName(frame)
        folder = scratch / "activity" / kind
        (rows.join(mp, "mention_key").join(src, "source").select(*schema.names)
         .orderBy(*ORDER).write.parquet(str(folder)))
        parts[kind] = [str(p) for p in sorted(folder.glob("part-*.parquet"))]
    return parts


def _spark_type(field: pa.Field) -> str:
    """The Spark type a column travels as: nanosecond timestamps as longs (Spark has no nanoseconds)."""
    if pa.types.is_timestamp(field.type):
        if field.type.unit != "ns":
            raise ValueError(f"activity column {field.name!r}: timestamp[{field.type.unit}] where staging writes "
                             "nanoseconds")
        return "long"
    if field.type not in _SPARK_TYPES:
        raise ValueError(f"activity column {field.name!r} of type {field.type}: not one the Spark engine publishes")
    return _SPARK_TYPES[field.type]


# --- resolution quality against a generator's ground truth ------------------------------------------------------------
def evaluate(spark, pairs: list[tuple[str, str, str, str]], scratch: Path) -> dict:
    """`oneid.pairwise_scores` over the units of `run._evaluate` (distinct (mention, true person) of the staged rows
    with a truth file: `pairs` of (rows file, truth file, source, file_id)), counted on the executors. Each file's
    units come from a task of its own (its staged rows joined to its truth on the row number, locally: no shuffle
    of the rows); then the units of every file, made distinct and given their personas, give the pairs per
    (person, persona), per persona and per person, summed as exact integers, so the scores are the embedded ones.
    Four numbers reach the driver."""
    from pyspark.sql import functions as F

    folder = str(scratch / "units_by_file")
    todo = [(i, rows, truth) for i, (rows, truth, _, _) in enumerate(pairs)]
    task_per_item(spark, todo, partial(_file_units, folder=folder), "units long")
    units = (spark.read.schema("mention_key decimal(20,0), person_id string").parquet(folder)
             .select(signed(F.col("mention_key")).alias("mention_key"), "person_id").distinct()
             .join(spark.read.parquet(str(scratch / "mention_persona")), "mention_key", "left"))
    units.write.parquet(str(scratch / "units"))
    units = spark.read.parquet(str(scratch / "units"))

    def pairs_of(*keys: str):
        grouped = units.where(F.col(keys[-1]).isNotNull()).groupBy(*keys).count()
        return grouped.select(F.coalesce(F.sum(F.expr("count * (count - 1) div 2")), F.lit(0)).cast("long"))

    tp, pred, true = (pairs_of(*k).first()[0] for k in (("person_id", "persona_id"), ("persona_id",), ("person_id",)))
    return {"precision": tp / pred if pred else 1.0, "recall": tp / true if true else 1.0, "units": units.count()}


def _file_units(item: tuple[int, str, str], folder: str) -> pd.DataFrame:
    """One staged file's distinct (mention_key, person_id): its rows joined to its truth file on `row`, written as
    folder/<index>.parquet; returns how many."""
    index, rows_file, truth_file = item
    rows = pq.read_table(rows_file, columns=["row", "mention_key"])
    truth = pq.read_table(truth_file, columns=["row", "person_id"])
    truth = truth.cast(pa.schema([("row", rows.schema.field("row").type), ("person_id", pa.string())]))
    units = rows.join(truth, "row", join_type="inner", use_threads=False).select(["mention_key", "person_id"])
    units = units.group_by(["mention_key", "person_id"], use_threads=False).aggregate([])
    Path(folder).mkdir(parents=True, exist_ok=True)
    pq.write_table(units, Path(folder) / f"{index:06d}.parquet")
    return pd.DataFrame({"units": [units.num_rows]})
