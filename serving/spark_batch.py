"""Batch rescoring on Spark (`engine: spark`): the steps of `serving.batch`, run by the executors, through the same
scoring functions.

    feature files at the date (Spark; the groups stacked and grouped by persona) -> mapInPandas: model_outputs
    (champions loaded once per task) -> persisted -> rule statistics fitted with exact aggregates (rules.spark_fit)
    -> mapInPandas: Scorer.rule_tags
    -> sorted into ranges of personas, each range's task writes a part with pyarrow (history.to_arrow) -> one task
    concatenates the parts into part-0.parquet -> the driver writes _meta.json and publishes the folder as
    `history.write` does

Nothing but small aggregates reaches the driver: counts, a few order statistics, exact sums, the coverage and the
number of rows written. The snapshot is the one the embedded engine writes (same rows in the same order, same
Arrow schema, same metadata): every reader of `rules.history` reads it as it is. It is one Parquet file because
the readers open `date=<day>/part-0.parquet` by name, so one executor task writes it from the sorted parts, a row
group at a time.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from feature_repo import definitions as defs
from features import store as feature_store
from persona.faults import kill_point
from persona.workspace import Workspace, write_parquet_parts
from rules import catalog, history, segments, spark_fit
from serving import scoring

ROW_GROUP = 262_144  # rows per Parquet row group, as history.write writes them
SPARK_TYPE = {"bool": "boolean", "category": "string", "number": "double", "list": "array<string>"}


def run(ws: Workspace, cfg, date: pd.Timestamp, models: scoring.ModelSet, say, timings: dict[str, float], *,
        snapshot_meta) -> tuple[int, dict, Path]:
    """The steps of `serving.batch.rescore` on the workspace's Spark session: the snapshot's personas, its metadata
    (built by `snapshot_meta`, the embedded path's own builder, passed in: serving.batch imports this module) and its
    folder. Spark is lazy: "read_features" times the plan, "models" the reading and scoring."""
    from pyspark import StorageLevel

    from persona import engine
    from persona.errors import InsufficientDataError
    from training import tracking

    spark = engine.spark_session(cfg)
    say("reading features", 0.05)
    t = time.perf_counter()
    features = read_features(spark, ws, date)
    outputs = models.outputs()
    tagset = catalog.load_rules(ws, cfg, [*features.columns, *outputs])
    timings["read_features"] = time.perf_counter() - t

    say("scoring models", 0.1)
    t = time.perf_counter()
    scored = score(features, models, tracking.tracking_uri(ws, cfg)).persist(StorageLevel.MEMORY_AND_DISK)
    tagged = None
    try:
        n = scored.count()
        timings["models"] = time.perf_counter() - t
        if not n:
            raise InsufficientDataError(f"no persona has features at {date.date()}")

        say("fitting and evaluating rule tags", 0.6)
        t = time.perf_counter()
        stats = spark_fit.fit(scored, tagset)
        tagged = with_opt_out(spark, ws, tag(scored, tagset, stats, outputs, str(date.date())))
        tagged = tagged.persist(StorageLevel.MEMORY_AND_DISK)
        columns = tagged.columns
        tag_ids = [c["id"] for c in tagset.catalog() if c["id"] in columns]
        kinds = {tg.id: tg.value_type for tg in tagset.tags}
        cover = coverage(tagged, tag_ids, {**kinds, **{o: "number" for o in outputs}}, n)
        meta = snapshot_meta(date, n, models, outputs, stats, tagset, columns, cover)
        timings["rules"] = time.perf_counter() - t
        kill_point("rescore.tagged")

        say("writing the tag snapshot", 0.8)
        t = time.perf_counter()
        folder = publish(ws, meta["date"], lambda path: write_part(tagged, path, tagset, meta["tags"]), meta)
        timings["write"] = time.perf_counter() - t
    finally:
        scored.unpersist()
        if tagged is not None:
            tagged.unpersist()
    return n, meta, folder


def read_features(spark, ws: Workspace, date: pd.Timestamp):
    """Every snapshot group's features at `date`, one row per persona, typed as `features.offline.offline_frame`
    types them (float32 columns stay float32, every other feature is a double; a persona missing from a group has
    nulls there). A Spark DataFrame: nothing is read on the driver.

    The groups are stacked (each with the other groups' columns null) and grouped by persona in one shuffle, each
    column taking its one value (a persona has one row per group and date, so `max` over a column sees at most one
    non-null value and returns it, NaN included): one exchange of the rows instead of a full outer join per group."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import FloatType

    frames, fields = [], []
    for path in feature_store.snapshot_files(ws).values():
        df = spark.read.parquet(str(path))
        wanted = [f for f in df.schema.fields if f.name not in defs.KEY_COLUMNS]
        if not wanted:
            continue
        at = F.col(defs.TIMESTAMP) == F.lit(date.to_pydatetime()).cast("timestamp")
        typed = [F.col(f.name) if isinstance(f.dataType, FloatType) else F.col(f.name).cast("double").alias(f.name)
                 for f in wanted]
        frames.append(df.where(at).select(F.col(defs.JOIN_KEY).cast("string").alias(defs.JOIN_KEY), *typed))
        fields += [(f.name, "float" if isinstance(f.dataType, FloatType) else "double") for f in wanted]
    if not frames:
        raise FileNotFoundError(f"{feature_store.offline_dir(ws)}: no feature snapshots (run `persona features`)")
    if len(frames) == 1:
        return frames[0]
    stacked = functools.reduce(lambda a, b: a.unionByName(b), [
        frame.select(defs.JOIN_KEY, *[F.col(name) if name in frame.columns else F.lit(None).cast(kind).alias(name)
                                      for name, kind in fields]) for frame in frames])
    return stacked.groupBy(defs.JOIN_KEY).agg(*[F.max(name).alias(name) for name, _ in fields])


def score(features, models: scoring.ModelSet, tracking_uri: str):
    """`features` with one double column per model output, by `scoring.model_outputs` on each Arrow batch; every task
    loads the champion versions of `models` from the MLflow registry once, as `scoring.ChampionLoader` loads them."""
    from pyspark.sql.types import DoubleType, StructField, StructType

    versions, tags, outputs = models.versions(), list(models.models), models.outputs()
    schema = StructType([*features.schema.fields, *[StructField(o, DoubleType()) for o in outputs]])

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import mlflow
        from mlflow import MlflowClient

        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        loaded = scoring.ChampionLoader(MlflowClient(tracking_uri, tracking_uri), tags).load(versions)
        for batch in batches:
            out = scoring.model_outputs(batch, len(batch), loaded)
            yield batch.assign(**{o: out[o] for o in outputs})

    return features.mapInPandas(run, schema)


def tag(scored, tagset, stats: dict, outputs: Sequence[str], as_of: str):
    """persona_id, the model outputs and every rule tag, by `scoring.Scorer.rule_tags` on each Arrow batch with the
    fitted `stats` (shipped with the function). Category tags travel as strings, list tags as arrays of strings."""
    from pyspark.sql.types import _parse_datatype_string, DoubleType, StringType, StructField, StructType

    kinds = {t.id: t.value_type for t in tagset.tags if t.id not in outputs}
    schema = StructType([StructField(defs.JOIN_KEY, StringType()), *[StructField(o, DoubleType()) for o in outputs],
                         *[StructField(t, _parse_datatype_string(SPARK_TYPE[k])) for t, k in kinds.items()]])

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        scorer = scoring.Scorer(scoring.ModelSet(), tagset, stats, as_of=as_of)
        for batch in batches:
            scores = {o: batch[o].to_numpy(dtype=np.float64) for o in outputs}
            tags = scorer.rule_tags(batch, scores, len(batch))
            out = {defs.JOIN_KEY: batch[defs.JOIN_KEY], **scores}
            for t, kind in kinds.items():
                out[t] = _to_spark(tags[t], kind)
            yield pd.DataFrame(out, index=batch.index)

    return scored.mapInPandas(run, schema)


def _to_spark(values, kind: str):
    if kind == "number":
        return np.asarray(values, dtype=np.float64)
    if kind == "list":
        return pd.Series([list(v) if v is not None else None for v in values], dtype=object)
    return pd.Series(values).astype(object).where(pd.Series(values).notna(), None)  # bool and category: None for NA


def with_opt_out(spark, ws: Workspace, tagged):
    """`tagged` with `segments.OPT_OUT_COLUMN`, as `segments.opted_out_of` gives it (a profile whose consent is
    false opted out; unknown consent or no profile is no opt-out), by a join with the profiles."""
    from pyspark.sql import functions as F

    current = ws.require_current("integrated", "run `persona integrate`")
    path = current / "profiles.parquet"
    found = pq.read_schema(path)  # the footer only
    if "consent_marketing" not in found.names:
        return tagged.withColumn(segments.OPT_OUT_COLUMN, F.lit(False))
    # Only the two columns, by an explicit schema: Spark refuses other columns' types (nanosecond timestamps).
    kinds = {f.name: _ddl(f.type, path) for f in found if f.name in (defs.JOIN_KEY, "consent_marketing")}
    prof = spark.read.schema(", ".join(f"`{c}` {k}" for c, k in kinds.items())).parquet(str(path))
    consent = (prof.select(F.col(defs.JOIN_KEY).cast("string").alias(defs.JOIN_KEY),
                           F.col("consent_marketing").cast("boolean").alias("_consent"))
               .dropDuplicates([defs.JOIN_KEY]))
    return (tagged.join(consent, on=defs.JOIN_KEY, how="left")
            .withColumn(segments.OPT_OUT_COLUMN, F.coalesce(~F.col("_consent"), F.lit(False)))
            .drop("_consent")
            .select(*tagged.columns, segments.OPT_OUT_COLUMN))


def _ddl(kind: pa.DataType, path: Path) -> str:
    if pa.types.is_boolean(kind):
        return "boolean"
    if pa.types.is_integer(kind):
        return "bigint"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "string"
    raise TypeError(f"{path}: persona_id and consent_marketing should be strings, integers or booleans; found {kind}")


def coverage(out, tag_ids: Sequence[str], kinds: Mapping[str, str], n: int) -> dict[str, float]:
    """`history.coverage` by one Spark aggregate: the share of personas with a value of each tag (a list tag counts
    when it holds at least one value; NaN is no value, as pandas counts it)."""
    from pyspark.sql import functions as F

    exprs = []
    for t in tag_ids:
        c = F.col(f"`{t}`")
        kind = kinds[t]
        has = ((F.size(c) > 0) if kind == "list" else (c.isNotNull() & ~F.isnan(c)) if kind == "number"
               else c.isNotNull())  # isnan(null) is false, not null
        exprs.append(F.sum(F.when(has, 1).otherwise(0)).alias(t))
    if not exprs:
        return {}
    row = out.agg(*exprs).first()
    return {t: float(int(row[t] or 0) / max(n, 1)) for t in tag_ids}


def write_part(out, path: Path, tagset, meta_tags: Sequence[Mapping]) -> int:
    """Write `out` sorted by persona_id as one Parquet file at `path`. The executors sort it into ranges of personas
    and write each range as a part side by side, each Arrow batch typed as the embedded engine types its frame
    (categoricals with the declared values, nullable booleans, tuples) and converted by `history.to_arrow`; one task
    then concatenates the parts in range order, a row group at a time, into the file `history.write` would write.
    The parts live in a hidden sibling folder of `path`'s (a leftover `history.clean_partial` removes). Returns the
    rows."""
    from pyspark import TaskContext
    from pyspark.sql import functions as F

    from persona.engine import task_per_item

    dtypes = {t["id"]: t["value_type"] for t in meta_tags}
    categories = {t.id: t.dtype for t in tagset.tags if t.id in dtypes and dtypes[t.id] == "category"}
    folder = path.parent.with_name(f"{path.parent.name}.parts")
    where = str(folder)

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        writer, rows = None, 0
        try:
            for batch in batches:
                table = history.to_arrow(_embedded_frame(batch, dtypes, categories))
                if writer is None:
                    schema = _schema(table, dtypes)
                    writer = pq.ParquetWriter(f"{where}/{TaskContext.get().partitionId():06d}.parquet", schema,
                                              compression="zstd")
                writer.write_table(table.cast(schema))
                rows += table.num_rows
        finally:
            if writer is not None:
                writer.close()
        yield pd.DataFrame({"rows": [rows], "written": [writer is not None]})

    folder.mkdir()
    try:
        done = (out.orderBy(defs.JOIN_KEY).mapInPandas(run, "rows long, written boolean")
                .agg(F.sum("rows").alias("rows"), F.max(F.col("written").cast("int")).alias("written")).first())
        if not done["written"]:
            raise RuntimeError(f"{path}: no persona to write")
        parts = sorted(folder.glob("*.parquet"))

        def concatenate(_) -> pd.DataFrame:
            rows = write_parquet_parts(parts, path, pq.read_schema(parts[0]), row_group=ROW_GROUP)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            return pd.DataFrame({"rows": [rows]})

        rows = int(task_per_item(out.sparkSession, [0], concatenate, "rows long")[0]["rows"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if rows != int(done["rows"]):
        raise RuntimeError(f"{path}: {rows} rows written from parts holding {int(done['rows'])}")
    return rows


def _embedded_frame(batch: pd.DataFrame, dtypes: Mapping[str, str], categories: Mapping) -> pd.DataFrame:
    frame = batch.copy()
    for name, kind in dtypes.items():
        if name not in frame.columns:
            continue
        col = frame[name]
        if kind == "category":
            frame[name] = pd.Categorical(col.where(col.notna(), None), dtype=categories[name])
        elif kind == "bool":
            frame[name] = pd.array(col.where(col.notna(), None).tolist(), dtype="boolean")
        elif kind == "list":
            frame[name] = pd.Series([tuple(v) if v is not None else None for v in col], index=col.index, dtype=object)
    return frame


def _schema(table: pa.Table, dtypes: Mapping[str, str]) -> pa.Schema:
    """The table's schema, with list tags typed list<string> even where a batch holds no list (to_arrow then finds
    only nulls and cannot tell)."""
    fields = [pa.field(f.name, pa.list_(pa.string())) if dtypes.get(f.name) == "list" else f for f in table.schema]
    return pa.schema(fields)


def publish(ws: Workspace, date: str, write_rows, meta: dict) -> Path:
    """`history.write` with the rows written by `write_rows(path)` (the executors) instead of a table in memory: the
    hidden `.tmp-` folder, `_meta.json` last, the move into the version store and one rename of the `date=` link."""
    base = history.root(ws)
    base.mkdir(parents=True, exist_ok=True)
    store = history.versions(ws)
    store.mkdir(exist_ok=True)
    history.clean_partial(ws)
    history._collect(ws)
    token = uuid.uuid4().hex[:12]
    tmp = base / f".tmp-{token}"
    tmp.mkdir()
    version = store / f"{date}.{token}"
    try:
        write_rows(tmp / history.PART)
        with open(tmp / history.META, "w", encoding="utf-8") as fh:
            json.dump(dict(meta), fh, ensure_ascii=False, indent=1, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, version)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    kill_point("tags.written")
    history._link(ws, date, version)
    kill_point("tags.linked")
    return history.root(ws) / f"date={date}"


def read_chunks(ws: Workspace, date: str, rows: int) -> Iterator[pd.DataFrame]:
    """The snapshot of `date` in frames of at most `rows` rows, typed as `history.read` types it (categoricals,
    tuples for list tags), for pushing online without holding the whole snapshot."""
    part = pq.ParquetFile(history.root(ws) / f"date={date}" / history.PART)
    lists = [f.name for f in part.schema_arrow if pa.types.is_list(f.type)]
    for batch in part.iter_batches(batch_size=rows):
        frame = batch.to_pandas()
        for name in lists:
            frame[name] = frame[name].map(lambda v: tuple(v) if v is not None else ())
        yield frame
