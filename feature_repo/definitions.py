"""The Feast repository of persona: one entity, one FeatureView per snapshot group, one FeatureService per model.

Nothing here reads a file or touches a store: the snapshot columns depend on the data (one `aff_view_<category>_30d`
per category), so `features.store.apply` reads each snapshot's Parquet schema and passes it to these builders.
Every public function returns new Feast objects and is safe to call at any time.

The sources follow the workspace's `engine:`: Parquet files declared as FileSource for DuckDB (the default), as
SparkSource on the very same paths for Feast's Spark offline store, which refuses any other source type.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Literal

import pyarrow as pa
from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.data_format import ParquetFormat
from feast.feature_logging import LoggingConfig
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource  # imports no pyspark
from feast.infra.offline_stores.file_source import FileLoggingDestination
from feast.types import Bool, Float32, Float64, Int32, Int64, String

ENTITY = "persona"
JOIN_KEY = "persona_id"
TIMESTAMP = "event_timestamp"
CREATED = "created_timestamp"
KEY_COLUMNS = (JOIN_KEY, TIMESTAMP, CREATED)
Engine = Literal["duckdb", "spark"]  # persona.yaml `engine:`, which picks the offline store and so the source type

# Snapshot group -> the prefix every feature of that group carries. Prefixes keep feature names unique across views,
# so services can be read without Feast's `view__feature` names and a model sees the same column names everywhere.
GROUPS: dict[str, str] = {
    "attributes": "attr_",
    "transactions": "tx_",
    "engagement": "eng_",
    "affinity": "aff_",
    "realtime": "rt_",
}
REALTIME = "realtime"
PUSH_SOURCE = "realtime_push"
# The latest batch tags of every persona, written online by `persona rescore` (and by the service after an event),
# for programs that read the online store directly. Its columns follow the tag set, so it is built from the rescored
# frame rather than from a snapshot file; its offline source is the dated tag history (`<ws>/tags`).
TAGS_VIEW = "tags"

# Point-in-time lookback. Feast joins an entity row at time D to the latest snapshot row in [D - ttl, D]; anything
# older counts as missing. Snapshots are 30 days apart by default (training.cutoff_every_days, at least 7), and a
# scoring date can sit up to a spacing after the last grid date, so the TTL must comfortably exceed the spacing
# or an entity dated just before the next snapshot would find nothing. 400 days covers a yearly spacing too.
# The same TTL is where the first incremental materialisation starts (end - ttl); online reads ignore it.
DEFAULT_TTL = timedelta(days=400)

_FEAST_TYPES = {
    pa.float32(): Float32,
    pa.float64(): Float64,
    pa.int32(): Int32,
    pa.int64(): Int64,
    pa.bool_(): Bool,
}
# The pandas dtype a pushed column must have to be stored as its feature's type.
NUMPY_DTYPES = {Float32: "float32", Float64: "float64", Int32: "int32", Int64: "int64", Bool: "bool"}


def persona_entity() -> Entity:
    """The one entity: a resolved customer (OneID), joined on `persona_id`."""
    return Entity(name=ENTITY, join_keys=[JOIN_KEY], value_type=ValueType.STRING,
                  description="a resolved customer (OneID persona)")


def check_keys(path: Path, schema: pa.Schema) -> None:
    """Raise ValueError naming the file unless it has a string persona_id and UTC timestamps Feast can filter.

    Nanosecond timestamps are refused: DuckDB 2.0 (the offline store) cannot cast timestamp[ns, tz] when Feast
    filters a materialisation window, so they would fail only later, inside materialisation.
    """
    missing = [c for c in KEY_COLUMNS if c not in schema.names]
    if missing:
        raise ValueError(f"{path}: snapshot lacks key columns {missing} (expected {list(KEY_COLUMNS)} then features)")
    key = schema.field(JOIN_KEY).type
    if not (pa.types.is_string(key) or pa.types.is_large_string(key)):
        raise ValueError(f"{path}: column {JOIN_KEY!r} has type {key}; expected string")
    for name in (TIMESTAMP, CREATED):
        ts = schema.field(name).type
        if not pa.types.is_timestamp(ts) or ts.tz not in ("UTC", "+00:00", "Etc/UTC") or ts.unit == "ns":
            raise ValueError(f"{path}: column {name!r} has type {ts}; expected timestamp[us, tz=UTC] "
                             "(pandas: .astype('datetime64[us, UTC]'))")


def feature_fields(group: str, path: Path, schema: pa.Schema) -> list[Field]:
    """The Feast schema of one snapshot file: every column but the keys, typed from its Parquet type.

    Raises ValueError naming the file and column when a key is missing, a feature lacks the group's prefix, or a
    type has no Feast equivalent used here (features are numeric).
    """
    prefix = GROUPS[group]
    check_keys(path, schema)
    fields = []
    for column in schema:
        if column.name in KEY_COLUMNS:
            continue
        if not column.name.startswith(prefix):
            raise ValueError(f"{path}: column {column.name!r} of group {group!r} must start with {prefix!r} "
                             "(feature names are unique across groups by prefix)")
        dtype = _FEAST_TYPES.get(column.type)
        if dtype is None:
            raise ValueError(f"{path}: column {column.name!r} has type {column.type}; expected one of "
                             f"{sorted(str(t) for t in _FEAST_TYPES)}")
        fields.append(Field(name=column.name, dtype=dtype))
    if not fields:
        raise ValueError(f"{path}: snapshot of group {group!r} has no feature columns")
    return fields


def parquet_source(name: str, path: Path, *, engine: Engine, description: str, created: bool = True
                   ) -> FileSource | SparkSource:
    """A Parquet file (or folder) as the offline store of `engine` reads it: FileSource for DuckDB, SparkSource for
    Spark. Rows are dated by `event_timestamp` (ties broken by the newest `created_timestamp` when `created`)."""
    if engine not in ("duckdb", "spark"):
        raise ValueError(f"unknown engine {engine!r} (expected 'duckdb' or 'spark')")
    created_column = CREATED if created else None
    if engine == "spark":
        # Spark reads timestamp[us, tz=UTC] as TimestampType (it refuses nanoseconds; check_keys refuses them first)
        return SparkSource(name=name, path=str(path), file_format="parquet", timestamp_field=TIMESTAMP,
                           created_timestamp_column=created_column, description=description)
    return FileSource(name=name, path=str(path), file_format=ParquetFormat(), timestamp_field=TIMESTAMP,
                      created_timestamp_column=created_column, description=description)


def snapshot_source(group: str, path: Path, *, engine: Engine = "duckdb") -> FileSource | SparkSource:
    """The offline source of a group: its snapshot Parquet, rows dated by the snapshot's as-of date."""
    return parquet_source(f"{group}_snapshots", path, engine=engine,
                          description=f"point-in-time snapshots of the {group} features")


def group_view(group: str, path: Path, schema: pa.Schema, entity: Entity, *, ttl: timedelta = DEFAULT_TTL,
               engine: Engine = "duckdb") -> FeatureView:
    """The FeatureView of one snapshot group; the realtime group reads through a PushSource wrapping its file.

    The entity column is declared in the schema so that Feast never has to open the file to infer its type.
    """
    if group not in GROUPS:
        raise ValueError(f"unknown feature group {group!r} (expected one of {list(GROUPS)})")
    batch = snapshot_source(group, path, engine=engine)
    source = PushSource(name=PUSH_SOURCE, batch_source=batch) if group == REALTIME else batch
    return FeatureView(
        name=group,
        entities=[entity],
        ttl=ttl,
        schema=[Field(name=JOIN_KEY, dtype=String), *feature_fields(group, path, schema)],
        source=source,
        online=True,
        description=f"{group} features of a persona, one row per snapshot date",
        tags={"group": group},
    )


def tags_view(columns: Mapping[str, str], history_path: Path, entity: Entity, *, engine: Engine = "duckdb"
              ) -> FeatureView:
    """The online view of the latest tags: `columns` maps a tag (or score) to "string" or "number".

    Its offline source (the Hive-partitioned tag history) is declared for the engine's store like the snapshots,
    but nothing reads it offline: `persona rescore` writes the view online itself, and no service includes it.
    """
    types = {"string": String, "number": Float64}
    bad = {c: k for c, k in columns.items() if k not in types}
    if bad:
        raise ValueError(f"tags view: columns {bad} must be 'string' or 'number'")
    source = parquet_source("tag_history", history_path, engine=engine, created=False,
                            description="dated tag snapshots written by persona rescore")
    return FeatureView(
        name=TAGS_VIEW, entities=[entity], ttl=timedelta(0), online=True, source=source,
        schema=[Field(name=JOIN_KEY, dtype=String), *(Field(name=c, dtype=types[k]) for c, k in columns.items())],
        description="the latest rule and model tags of a persona (persona rescore)", tags={"group": TAGS_VIEW},
    )


def feature_service(tag: str, views: Iterable[FeatureView], *, version: int = 1, log_dir: Path | None = None
                    ) -> FeatureService:
    """The service a model of `tag` reads, for training and serving alike: `<tag>_v<version>`.

    With `log_dir`, the service declares Feast feature logging to Parquet files under `log_dir/<service>/`: what the
    online service served is written there (`features.feature_log`) to compare with what training reads. The
    destination is a file one on either engine: Feast 0.67 has no Spark logging destination, and the online service
    writes its logs through its own store, whose offline store is always DuckDB (features.store.offline_store).
    """
    views = list(views)
    name = f"{tag}_v{version}"
    logging = None if log_dir is None else LoggingConfig(destination=FileLoggingDestination(path=str(log_dir / name)))
    return FeatureService(name=name, features=views, logging_config=logging,
                          description=f"features of the {tag} model: {', '.join(v.name for v in views)}",
                          tags={"tag": tag})


def repository(snapshots: Mapping[str, tuple[Path, pa.Schema]], services: Mapping[str, Iterable[str]], *,
               ttl: timedelta = DEFAULT_TTL, log_dir: Path | None = None, engine: Engine = "duckdb"
               ) -> tuple[Entity, dict[str, FeatureView], dict[str, FeatureService]]:
    """Every object of the repository, from the snapshot files present (group -> (path, schema)).

    A service lists the groups it wants that have a file; a service with none of them is left out. `log_dir`: where
    the services log what is served (see `feature_service`). `engine`: whose offline store reads the sources.
    """
    entity = persona_entity()
    views = {g: group_view(g, path, schema, entity, ttl=ttl, engine=engine) for g, (path, schema) in snapshots.items()}
    built = {}
    for tag, groups in services.items():
        present = [views[g] for g in groups if g in views]
        if present:
            service = feature_service(tag, present, log_dir=log_dir)
            built[service.name] = service
    return entity, views, built
