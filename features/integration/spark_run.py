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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.integration import aggregates as aggregates_sql
from features.integration import oneid, spark_oneid
from features.integration.ingest import ARROW_STR
from features.integration.survivorship import CANDIDATE_COLUMNS, survive_order, survive_sql
from persona.config import PersonaConfig
from persona.workspace import Workspace

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
    """`oneid.resolve(mentions, ..., on="value_hash")` of the staged mentions, on Spark; the same Resolution (nodes
    in identifier order, mention_persona by mention key, audit in the embedded order). The mentions and the
    mention -> persona table stay in `scratch` for `aggregates`."""
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
    nodes = _read(scratch / "nodes").sort_values("node", kind="stable").drop(columns="node")
    mp = pq.read_table(scratch / "mention_persona")
    keys = mp["mention_key"].to_numpy(zero_copy_only=False).view(np.uint64)
    order = np.argsort(keys, kind="stable")
    mention_persona = pd.DataFrame({"mention_key": keys[order], "persona_id": pd.arrays.ArrowStringArray(
        pc.take(mp["persona_id"], pa.array(order)).combine_chunks().cast(pa.string()))})
    audit = (_read(scratch / "audit").sort_values([f"_o{i}" for i in range(4)], kind="stable")
             .drop(columns=[f"_o{i}" for i in range(4)]))
    # The embedded resolver's dtypes: Arrow strings for what it factorises or formats, Python ones otherwise.
    nodes = nodes.astype({"id_type": "string", "value_hash": ARROW_STR, "persona_id": ARROW_STR,
                          "status": "string"}).reset_index(drop=True)
    return oneid.Resolution(nodes, mention_persona, audit.astype("string").reset_index(drop=True),
                            found.aliases, found.next_seq, found.stats)


def aggregates(spark, ws: Workspace, cfg: PersonaConfig, rows_files: list[str], channel_of: pd.DataFrame,
               scratch: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The row-scale steps of building profiles (`features.integration.aggregates`) on Spark, after `resolve` in the
    same `scratch`: activity per persona
    and channel, when each identifier was last seen, the survivorship winners; each written by the executors and
    read back (sized by personas and identifiers), with timestamps as the embedded engine's (naive, UTC, ns)."""
    from pyspark.sql import functions as F

    # The staged rows hold nanosecond timestamps, which Spark reads only as longs (nanoseconds since the epoch).
    spark.conf.set("spark.sql.legacy.parquet.nanosAsLong", "true")
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
        frames = {}
        for key, sql in out.items():
            spark.sql(sql).write.parquet(str(scratch / key))
            table = pq.read_table(scratch / key)
            frames[key] = table.to_pandas() if key == "node_seen" else aggregates_sql.compact(table)
    finally:
        for name in names.values():
            spark.catalog.dropTempView(name)
    for key, cols in (("activity", ["first_ts", "last_ts"]), ("node_seen", ["last_seen"]), ("winners", ["ts"])):
        for col in cols if key in frames else []:
            frames[key][col] = pd.to_datetime(frames[key][col], unit="ns")
    winners = frames.get("winners")
    if winners is None or not len(winners):
        winners = pd.DataFrame(columns=CANDIDATE_COLUMNS)
    return frames["activity"], frames["node_seen"], winners


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
