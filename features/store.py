"""The Feast feature store: render its configuration, apply the repository, materialise, read and push features.

One contract for training and serving: a model of tag T reads the FeatureService `T_v1` both through
`historical_features` (point-in-time correct, for training) and `online_features` (latest values, for serving).
The definitions live in `feature_repo/definitions.py`; the infrastructure only in the rendered feature_store.yaml,
whose commented templates are `feature_repo/feature_store.<profile>.yaml`. Everything here goes through Feast's public
API; what needs its internals (the direct online reader, the materialisation marker, deleting personas, fail-fast
Redis calls) is `features.online_reader`, with a version check; its callers import it directly.

The offline store follows persona.yaml's `engine:`: DuckDB (the default) or Feast's Spark offline store on the
`spark:` cluster, both reading the same Parquet snapshots (declared as FileSource or SparkSource to match).
Materialisation and online reads do not depend on it: the bulk writer reads the snapshots with DuckDB directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import weakref
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import feast
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
from feast.infra.offline_stores.file_source import FileSource

from feature_repo import definitions as defs
from features import feature_log, model_tags, online_writer
from features.online_reader import read_marker, write_marker
from persona.engine import session_conf, spark_conf as session_settings
from persona.config import PersonaConfig
from persona.workspace import Workspace, read_json, write_json_atomic, write_text_atomic

TEMPLATES = Path(__file__).resolve().parents[1] / "feature_repo"
REDIS_VAR = "PERSONA_REDIS"
REGISTRY_VAR = "PERSONA_REGISTRY_URL"
STORE_DIR = "feature_store"
BATCH_TIMEOUT_S = 60.0  # Redis calls of batch jobs (materialise, push): bulk pipelines, but never a hang forever
ONLINE_STATE = "online.json"  # <ws>/state/: the generation of the last completed load of the online store
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def store_dir(ws: Workspace) -> Path:
    """Where the rendered feature_store.yaml and the embedded profile's databases live."""
    return ws.root / STORE_DIR


def offline_dir(ws: Workspace) -> Path:
    """Where the snapshot writer puts `<group>.parquet`, the offline store read in place."""
    return ws.root / "features" / "offline"


# --- configuration ------------------------------------------------------------------------------------------
def _from_env_or_config(var: str, configured: str, key: str) -> str:
    # A value from the environment is written as a ${VAR} reference, which Feast expands when it loads the file
    # (os.path.expandvars), so a password in it never lands in the workspace. A literal from persona.yaml is
    # written as is, and so must not hold a `$`: Feast would try to expand it.
    if os.environ.get(var):
        return "${" + var + "}"
    if "$" in configured:
        raise ValueError(f"persona.yaml store.{key}: a '$' in the value would be expanded by Feast; "
                         f"set ${var} to the value instead")
    return configured


def spark_conf(cfg: PersonaConfig) -> dict[str, str]:
    """The Spark settings of the workspace's session as Feast's Spark offline store is given them (`spark_conf`).

    The settings `persona.engine.spark_session` builds its session with (`session_conf`), so that whichever of
    persona and Feast starts Spark first in a process, the other's getOrCreate joins that one session. The UTC
    session time zone also matters to Feast itself: its point-in-time SQL compares timestamps with UTC literals.
    """
    conf = session_conf(cfg)
    dollars = sorted(k for k, v in conf.items() if "$" in v)
    if dollars:
        raise ValueError(f"persona.yaml spark: the values of {dollars} hold a '$', which Feast would expand as an "
                         "environment variable when it loads feature_store.yaml; write them without one")
    return conf


def offline_store(cfg: PersonaConfig, *, serving: bool = False) -> dict:
    """The `offline_store` mapping of feature_store.yaml for the workspace's engine.

    The serving variant is always DuckDB: the online service reads online only and writes feature logs as Parquet,
    which Feast's Spark store cannot (it has no write_logged_features), and it should not start a JVM.
    """
    if cfg.engine == "spark" and not serving:
        return {"type": "spark", "spark_conf": spark_conf(cfg)}
    return {"type": "duckdb"}


def engine_of(store: feast.FeatureStore) -> defs.Engine:
    """The engine whose offline store a Feast store was opened with (the source type its views must declare)."""
    return "spark" if store.config.offline_store.type == "spark" else "duckdb"


def render_store_yaml(ws: Workspace, cfg: PersonaConfig, *, timeout: float = BATCH_TIMEOUT_S,
                      serving: bool = False) -> str:
    """The text of feature_store.yaml: the profile's commented template with its __TOKENS__ filled in.

    `timeout` bounds every Redis call (connect and reply) of the production profile: a frozen Redis then fails a
    call after that many seconds instead of hanging it (redis-py waits forever by default). `serving`: the online
    service's variant, whose offline store is DuckDB whatever the engine (see `offline_store`).
    """
    store = cfg.store
    folder = store_dir(ws)
    if store.profile == "embedded":
        # The production settings are not used (nor checked) here: a `$` in them must not stop the embedded store.
        values = {"__REGISTRY__": f"sqlite:///{folder / 'registry.db'}", "__ONLINE_PATH__": str(folder / "online.db")}
    else:
        # Feast passes `key=value` pairs after the address to redis-py, JSON-decoded (so 1.5 arrives as a float)
        options = f",socket_timeout={timeout:g},socket_connect_timeout={timeout:g}"
        values = {
            "__REGISTRY__": _from_env_or_config(REGISTRY_VAR, store.registry_url, "registry_url"),
            "__REDIS__": _from_env_or_config(REDIS_VAR, store.redis, "redis") + options,
            "__KEY_TTL_SECONDS__": store.key_ttl_seconds,
        }
    values["__PROJECT__"] = store.project
    values["__OFFLINE_STORE__"] = offline_store(cfg, serving=serving)
    text = (TEMPLATES / f"feature_store.{store.profile}.yaml").read_text(encoding="utf-8")
    for token, value in values.items():
        # JSON scalars are YAML scalars: strings come out quoted (paths with ': ' or '#' stay intact), None as null.
        text = text.replace(token, json.dumps(value))
    return text


def open_store(ws: Workspace, cfg: PersonaConfig, *, serving: bool = False) -> feast.FeatureStore:
    """Render `<ws>/feature_store/feature_store.yaml` atomically and open the store it describes.

    `serving`: the online service's variant (`feature_store.serving.yaml`), whose Redis calls time out after
    `serving.store_timeout_seconds` (batch jobs allow BATCH_TIMEOUT_S: a bulk write takes longer than a read).
    The embedded registry and its data sources live in the workspace: a workspace copied or moved elsewhere has its
    registered paths moved with it on first open (see `_relocate`). Otherwise opening connects to nothing.
    """
    folder = store_dir(ws)
    name = "feature_store.serving.yaml" if serving else "feature_store.yaml"
    target = folder / name
    text = render_store_yaml(ws, cfg, timeout=cfg.serving.store_timeout_seconds if serving else BATCH_TIMEOUT_S,
                             serving=serving)
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        write_text_atomic(target, text)
    store = feast.FeatureStore(repo_path=str(folder), fs_yaml_file=target)
    if cfg.store.profile == "embedded" and (folder / "registry.db").is_file():
        _relocate(store, ws, cfg)
    return store


def _tags_view_like(view: feast.FeatureView, history: Path, engine: defs.Engine) -> feast.FeatureView:
    """The `tags` view with the columns of a registered one, on `history` read by `engine`."""
    kinds = {f.name: ("number" if "Float" in str(f.dtype) else "string") for f in view.features}
    return defs.tags_view(kinds, history, defs.persona_entity(), engine=engine)


def _relocate(store: feast.FeatureStore, ws: Workspace, cfg: PersonaConfig) -> None:
    """Point registered data sources at this workspace's files if the registry names another folder.

    Feast stores absolute source paths; a copied workspace would otherwise materialise (and read for training) the
    original's snapshots. Only the embedded registry (a file of the workspace) is rewritten: a production registry
    is shared by every process of the project, whose sources are wherever that project's workspace is.
    """
    views = [v for v in store.list_feature_views(allow_cache=False) if getattr(v.batch_source, "path", None)]
    offline, tags = offline_dir(ws), ws.root / "tags"
    moved = [v for v in views if not Path(v.batch_source.path).is_relative_to(ws.root)]
    if not moved:
        return
    if any(v.name in defs.GROUPS for v in moved) and snapshot_files(ws):
        apply(store, ws, cfg)  # re-registers every snapshot view on this workspace's files
    tag_view = next((v for v in moved if v.name == defs.TAGS_VIEW), None)
    if tag_view is not None:
        store.apply([defs.persona_entity(), _tags_view_like(tag_view, tags, engine_of(store))])
    store.refresh_registry()
    _SERVICES.pop(store, None)


# --- repository ---------------------------------------------------------------------------------------------
def snapshot_files(ws: Workspace) -> dict[str, Path]:
    """The snapshot groups that have a file, in the order of definitions.GROUPS."""
    folder = offline_dir(ws)
    return {g: folder / f"{g}.parquet" for g in defs.GROUPS if (folder / f"{g}.parquet").is_file()}


def apply(store: feast.FeatureStore, ws: Workspace, cfg: PersonaConfig, *,
          ttl: timedelta = defs.DEFAULT_TTL) -> list[str]:
    """Register the entity, one view per snapshot file (typed from its Parquet schema) and the services.

    Views and services no longer backed by a file are removed. Returns the service names.
    """
    files = snapshot_files(ws)
    if not files:
        raise FileNotFoundError(f"{offline_dir(ws)}: no feature snapshots (expected <group>.parquet for groups "
                                f"{list(defs.GROUPS)}; run `persona features`)")
    snapshots = {g: (path, pq.read_schema(path)) for g, path in files.items()}
    # one service per model tag of the registry, read now (features/model_tags.py: the groups each reads)
    engine = engine_of(store)
    entity, views, services = defs.repository(snapshots, model_tags.feature_services(), ttl=ttl,
                                              log_dir=feature_log.log_root(ws), engine=engine)
    registered = {v.name: v for v in store.list_feature_views()}
    # The `tags` view is written by `persona rescore`; after a change of engine its source type follows here too.
    tags = registered.get(defs.TAGS_VIEW)
    retyped = ([_tags_view_like(tags, Path(tags.batch_source.path), engine)]
               if tags is not None and _source_kind(tags) != engine else [])
    # Feast keeps a view's materialisation intervals across a schema change, so a new column (a new category)
    # would never be loaded for dates already materialised, and Redis ignores rewrites of a persona at the same
    # snapshot time. A view whose features changed is therefore dropped (with its online values) and re-created:
    # the next materialize() loads it in full.
    reshaped = [old for name, old in registered.items() if name in views and _signature(old) != _signature(views[name])]
    # after a change of engine, the sources declared for the other one go first (see _sources_of_other_engine)
    dropped = [*reshaped, *_sources_of_other_engine(store, engine)]
    if dropped:
        store.apply([], objects_to_delete=dropped, partial=False)
    stale = [v for name, v in registered.items() if name not in views and name != defs.TAGS_VIEW]
    stale += [s for s in store.list_feature_services() if s.name not in services]
    store.apply([entity, *views.values(), *retyped, *services.values()], objects_to_delete=stale, partial=False)
    store.refresh_registry()  # a thread-mode registry cache would otherwise serve the old objects for a while
    _SERVICES.pop(store, None)
    return sorted(services)


def _signature(view: feast.FeatureView) -> list[tuple[str, str]]:
    return sorted((f.name, str(f.dtype)) for f in view.features)


def _sources_of_other_engine(store: feast.FeatureStore, engine: defs.Engine, names: Sequence[str] | None = None
                             ) -> list[feast.data_source.DataSource]:
    """Registered Parquet sources declared for the other engine (all, or those of `names`), to delete before the
    new declarations are applied: Feast 0.67's SQL registry reads a registered source back with the class of the
    one applied over it (registry/sql.py, _apply_object), which fails when the class changed (a SparkSource reading
    a FileSource's row asserts spark_options). Views keep their own copy of their source and their materialisation
    intervals, so nothing else is lost."""
    other = FileSource if engine == "spark" else SparkSource
    return [s for s in store.list_data_sources(allow_cache=False)
            if isinstance(s, other) and (names is None or s.name in names)]


def _source_kind(view: feast.FeatureView) -> defs.Engine:
    """The engine a registered view's offline source is declared for."""
    return "spark" if isinstance(view.batch_source, SparkSource) else "duckdb"


# --- offline → online ---------------------------------------------------------------------------------------
def _utc(value: datetime | pd.Timestamp) -> datetime:
    ts = pd.Timestamp(value)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()


def _rows_between(view: feast.FeatureView, start: datetime, end: datetime) -> int:
    """Personas with a snapshot row in [start, end] (Feast's materialisation window is inclusive at both ends)."""
    path = view.batch_source.path
    ts = pads.field(defs.TIMESTAMP)
    table = pads.dataset(path, format="parquet").to_table(
        columns=[defs.JOIN_KEY], filter=(ts >= pd.Timestamp(start)) & (ts <= pd.Timestamp(end)))
    return int(pc.count_distinct(table[defs.JOIN_KEY]).as_py())


def materialize(store: feast.FeatureStore, end: datetime, *, first_start: datetime | None = None,
                reload: bool = False) -> dict:
    """Load the latest snapshot values up to `end` into the online store.

    A view never materialised gets everything from `first_start` (default: the epoch) up to `end`; afterwards only
    what is newer than the last end (materialize_incremental). Snapshots are cumulative (a persona present at one
    date is present at every later one), so the last snapshot date is a sufficient `first_start`: the online store
    keeps one row per persona, and loading older dates only overwrites it again. `reload`: every view in full,
    whatever was loaded before (an emptied store). Returns per view the mode, window and personas written, and the
    seconds taken.
    """
    t0 = time.perf_counter()
    end = _utc(end)
    begin = EPOCH if first_start is None else _utc(first_start)
    report: dict = {"end": end.isoformat(), "views": {}}
    full, incremental = [], []
    # Only the snapshot views: the `tags` view's source is the tag history, which `persona rescore` pushes itself
    # (its files have no event_timestamp column to materialise from).
    for view in [v for v in store.list_feature_views() if v.name in defs.GROUPS]:
        last = None if reload else max((e for _, e in view.materialization_intervals), default=None)
        if last is None:
            full.append(view)
            start, mode = begin, "full"
        elif _utc(last) >= end:
            report["views"][view.name] = {"mode": "up_to_date", "start": _utc(last).isoformat(), "rows": 0}
            continue
        else:
            incremental.append(view)
            start, mode = _utc(last), "incremental"
        report["views"][view.name] = {"mode": mode, "start": start.isoformat(), "rows": _rows_between(view, start, end)}
    if online_writer.usable(store):
        # the same rows as Feast's materialisation (each persona's latest in the window), written in Feast's layout by
        # the bulk writer, then recorded as materialised in the registry as Feast records it
        for view in [*full, *incremental]:
            start = datetime.fromisoformat(report["views"][view.name]["start"])
            online_writer.write(store, view, online_writer.latest_rows(view, start, end))
            store.registry.apply_materialization(view, store.project, start, end, commit=True)
        report["path"] = "bulk"
    else:
        # Feast prints the views it materialises to stdout; a library must not write there (`persona features
        # --json` prints JSON), and the report returned says the same per view.
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), _feast_spark_settings(store):
            if full:
                store.materialize(start_date=begin, end_date=end, feature_views=[v.name for v in full])
            if incremental:
                store.materialize_incremental(end_date=end, feature_views=[v.name for v in incremental])
        report["path"] = "feast"
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return report


# --- the materialisation marker -----------------------------------------------------------------------------
# A marker in the online store itself says it was loaded, and by which load (a generation number that only grows).
# Redis restarted empty, or an older copy restored, is then told apart from a store that simply lacks a persona:
# no marker (empty) or an older generation than the workspace last wrote (stale) means the store must be rebuilt
# before it is read as the truth.
def online_state(store: feast.FeatureStore, ws: Workspace) -> dict:
    """Whether the online store holds the workspace's last load: {"state": "ok" | "empty" | "stale", "marker",
    "expected"}. `empty`: no marker (never loaded, or the store lost its data); `stale`: an older load than the
    workspace last wrote (an old copy restored). Raises the store client's error when the store does not answer."""
    expected = read_json(ws.state / ONLINE_STATE, None)
    found = read_marker(store)
    state = classify_marker(found, expected)
    return {"state": state, "marker": found, "expected": expected}


def classify_marker(found: dict | None, expected: dict | None) -> str:
    if not found:
        return "empty"
    if expected and int(found.get("generation", 0)) < int(expected.get("generation", 0)):
        return "stale"
    return "ok"


def mark_loaded(store: feast.FeatureStore, ws: Workspace, *, as_of: datetime | str | None, what: str) -> dict:
    """After a load of the online store: a new generation in the store first, then in the workspace (so a reader
    comparing the two never sees the store behind the workspace for a load that did complete)."""
    previous = read_json(ws.state / ONLINE_STATE, None) or {}
    marker = {"generation": int(previous.get("generation", 0)) + 1, "as_of": None if as_of is None else str(as_of),
              "loaded": datetime.now(timezone.utc).isoformat(timespec="seconds"), "what": what}
    write_marker(store, marker)
    write_json_atomic(ws.state / ONLINE_STATE, marker)
    return marker


# --- reading ------------------------------------------------------------------------------------------------
# Feast rebuilds a FeatureService from its protobuf on every registry lookup, even from its cache: about 10 ms,
# ten times the online read of one persona. Lookups here bypass Feast's own cache (allow_cache=False): Feast 0.67
# memoises listings per registry protobuf by (object address, version_id), and the SQL registry's protobuf has no
# version_id, so a new protobuf allocated at a freed one's address (after an apply) returns the old listing. Services are kept per store for the registry's own cache TTL (the
# staleness Feast already accepts), and dropped when this process applies.
_SERVICES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _service(store: feast.FeatureStore, service: str) -> feast.FeatureService:
    cached = _SERVICES.setdefault(store, {})
    hit = cached.get(service)
    ttl = store.config.registry.cache_ttl_seconds
    if hit is not None and (ttl == 0 or time.monotonic() - hit[0] < ttl):
        return hit[1]
    try:
        found = store.get_feature_service(service, allow_cache=False)
    except feast.errors.FeatureServiceNotFoundException:
        known = sorted(s.name for s in store.list_feature_services())
        raise KeyError(f"no feature service {service!r} in Feast project {store.project!r} "
                       f"(registered: {known}; run `persona features` to apply the repository)") from None
    cached[service] = (time.monotonic(), found)
    return found


def service_features(service: feast.FeatureService) -> list[str]:
    """The feature columns a service returns, in its views' order."""
    return [f.name for p in service.feature_view_projections for f in p.features]


def historical_features(store: feast.FeatureStore, service: str, entity_df: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time features of a service for (persona_id, event_timestamp) rows, in the rows' order.

    Each row gets, per view, the latest snapshot dated at or before its timestamp (within the view's TTL), never
    a later one. Other columns of `entity_df` are passed through.
    """
    missing = [c for c in (defs.JOIN_KEY, defs.TIMESTAMP) if c not in entity_df.columns]
    if missing:
        raise ValueError(f"entity_df lacks columns {missing} (expected {defs.JOIN_KEY}, {defs.TIMESTAMP})")
    chosen = _service(store, service)
    features = service_features(chosen)
    clash = [c for c in entity_df.columns if c in features]
    if clash:
        raise ValueError(f"entity_df columns {clash} have the names of features of {service!r}; "
                         "drop or rename them (the features are read from the store)")
    order = "__persona_row"
    frame = entity_df.reset_index(drop=True)
    frame = frame.assign(**{defs.JOIN_KEY: frame[defs.JOIN_KEY].astype(str),
                            defs.TIMESTAMP: pd.to_datetime(frame[defs.TIMESTAMP], utc=True)})
    if frame.empty:
        return frame.assign(**{f: pd.Series(dtype="float64") for f in features})
    # Only the keys go to Feast: the other columns (labels, anything of any type) never reach the offline store's
    # SQL, where a column named like a feature or of a type it cannot load breaks the point-in-time join.
    keys = frame[[defs.JOIN_KEY, defs.TIMESTAMP]].assign(**{order: range(len(frame))})
    with _feast_spark_settings(store):
        found = store.get_historical_features(entity_df=keys, features=chosen).to_df()
    # Join the features back onto the rows by position: Feast returns rows in its own order, and the file offline
    # store drops a row that predates every snapshot of a persona instead of giving it nulls.
    found = found[[order, *features]].set_index(order).reindex(range(len(frame)))
    return pd.concat([frame, found.reset_index(drop=True)], axis=1)


# Settings of the shared Spark session that Feast's Spark store depends on or changes, set for its queries only.
# Its point-in-time SQL compares timestamps with naive UTC literals (offline_utils.get_feature_view_query_context:
# to_naive_utc(...).isoformat()), so the session must read them as UTC even where persona.yaml's spark.conf sets
# another time zone; and it switches spark.sql.parser.quotedRegexColumnNames on for the whole session
# (spark.py get_spark_session_or_start_new_with_repoconfig), under which a backticked column in any other SELECT of
# the process would be read as a regular expression.
_FEAST_SPARK_SETTINGS = {"spark.sql.session.timeZone": "UTC", "spark.sql.parser.quotedRegexColumnNames": None}


@contextlib.contextmanager
def _feast_spark_settings(store: feast.FeatureStore):
    """Run a Feast offline query with the session settings it needs, then put the session's own back."""
    if engine_of(store) != "spark":
        yield
        return
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    if session is None:  # start (or join) it as Feast would, from spark_conf, so that its settings can be read
        builder = SparkSession.builder
        for key, value in (store.config.offline_store.spark_conf or {}).items():
            builder = builder.config(key, value)
        session = builder.getOrCreate()
    with session_settings(session, _FEAST_SPARK_SETTINGS):
        yield


def online_features(store: feast.FeatureStore, service: str, persona_ids: Sequence[str]) -> pd.DataFrame:
    """The latest materialised (or pushed) features of a service for personas; unknown personas get nulls."""
    found = _service(store, service)
    columns = [defs.JOIN_KEY, *service_features(found)]
    rows = [{defs.JOIN_KEY: str(p)} for p in persona_ids]
    if not rows:  # Feast fails on an empty request (IndexError)
        return pd.DataFrame({c: pd.Series(dtype="object" if c == defs.JOIN_KEY else "float64") for c in columns})
    frame = store.get_online_features(features=found, entity_rows=rows).to_df()
    return frame[columns]


def push_realtime(store: feast.FeatureStore, frame: pd.DataFrame) -> None:
    """Write rows of the realtime view (persona_id, event_timestamp, rt_*) to the online store at once.

    Online only: Feast's offline write for a Parquet source rewrites the whole snapshot file in place (not
    atomically, racing the snapshot writer that owns it), and the next snapshot recomputes these values from the
    raw events anyway. Naive timestamps are taken as UTC.

    Rows should carry the time of the events they summarise (now, typically): Redis keeps a persona's newest values
    and silently ignores a row dated at or before what it holds (the materialised snapshot's date included), while
    SQLite (embedded) overwrites whatever it holds.
    """
    try:
        view = store.get_feature_view(defs.REALTIME, allow_registry_cache=True)
    except feast.errors.FeatureViewNotFoundException:
        raise KeyError(f"no {defs.REALTIME!r} feature view in Feast project {store.project!r}: push_realtime needs "
                       f"the realtime snapshot ({defs.REALTIME}.parquet) applied first (run `persona features`)"
                       ) from None
    features = {f.name: defs.NUMPY_DTYPES[f.dtype] for f in view.features}
    expected = [defs.JOIN_KEY, defs.TIMESTAMP, *features]
    missing = [c for c in expected if c not in frame.columns]
    unknown = [c for c in frame.columns if c not in expected and c != defs.CREATED]
    if missing or unknown:
        raise ValueError(f"push_realtime: frame columns do not match the realtime view: missing {missing}, "
                         f"unknown {unknown} (expected {expected})")
    frame = frame.reset_index(drop=True)  # Feast rejects a frame whose index would become a column
    when = pd.to_datetime(frame[defs.TIMESTAMP], utc=True)
    created = pd.to_datetime(frame[defs.CREATED], utc=True) if defs.CREATED in frame.columns else when
    out = pd.DataFrame({defs.JOIN_KEY: frame[defs.JOIN_KEY].astype(str), defs.TIMESTAMP: when,
                        defs.CREATED: created})
    for name, dtype in features.items():
        try:
            out[name] = frame[name].astype(dtype)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"push_realtime: column {name!r} cannot be read as {dtype} ({exc})") from None
    store.push(defs.PUSH_SOURCE, out, to=feast.data_source.PushMode.ONLINE)


def push_tags(store: feast.FeatureStore, frame: pd.DataFrame, when: datetime, *, chunk: int = 50_000,
              progress=None) -> dict:
    """Write the latest tags (persona_id, then string or float columns) to the online `tags` view.

    The view is (re-)registered when its columns differ from the frame's, so a changed tag set needs no manual step.
    Rows are dated `when` (the snapshot date); the online store keeps one row per persona.
    """
    t0 = time.perf_counter()
    columns = {c: ("number" if pd.api.types.is_float_dtype(frame[c].dtype) else "string")
               for c in frame.columns if c != defs.JOIN_KEY}
    history = Path(store.repo_path).parent / "tags"
    view = defs.tags_view(columns, history, defs.persona_entity(), engine=engine_of(store))
    try:
        current = store.get_feature_view(defs.TAGS_VIEW)
    except feast.errors.FeatureViewNotFoundException:
        current = None
    if current is None or _signature(current) != _signature(view) or _source_kind(current) != engine_of(store):
        if current is not None:
            switched = _sources_of_other_engine(store, engine_of(store), [view.batch_source.name])
            store.apply([], objects_to_delete=[current, *switched], partial=False)
        store.apply([defs.persona_entity(), view])
        store.refresh_registry()
    rows = frame.reset_index(drop=True)
    rows = rows.assign(**{defs.JOIN_KEY: rows[defs.JOIN_KEY].astype(str),
                          defs.TIMESTAMP: pd.Timestamp(_utc(when)), defs.CREATED: pd.Timestamp.now(tz="UTC")})
    for c, kind in columns.items():
        rows[c] = rows[c].astype("float64") if kind == "number" else rows[c].astype(object).where(rows[c].notna(), None)
    # not from the registry cache: a view applied a moment ago was seen missing there under load
    fv = store.get_feature_view(defs.TAGS_VIEW, allow_registry_cache=False)
    for start in range(0, len(rows), chunk):
        online_writer.write(store, fv, rows.iloc[start:start + chunk])
        if progress:
            progress("pushing tags online", min(1.0, (start + chunk) / max(len(rows), 1)))
    return {"view": defs.TAGS_VIEW, "rows": int(len(rows)), "columns": len(columns),
            "seconds": round(time.perf_counter() - t0, 2)}
