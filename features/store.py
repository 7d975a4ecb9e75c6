"""The Feast feature store: render its configuration, apply the repository, materialise, read and push features.

One contract for training and serving: a model of tag T reads the FeatureService `T_v1` both through
`historical_features` (point-in-time correct, for training) and `online_features` (latest values, for serving).
The definitions live in `feature_repo/definitions.py`; the infrastructure only in the rendered feature_store.yaml,
whose commented templates are `feature_repo/feature_store.<profile>.yaml`.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
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

from feature_repo import definitions as defs
from persona.config import PersonaConfig
from persona.workspace import Workspace, read_json, write_json_atomic, write_text_atomic

FEATURE_SERVICES: dict[str, tuple[str, ...]] = {
    "churn_risk": ("attributes", "transactions", "engagement", "realtime"),
    "high_value": ("attributes", "transactions", "engagement"),
    "interest": ("attributes", "transactions", "engagement", "affinity", "realtime"),
}
TEMPLATES = Path(__file__).resolve().parents[1] / "feature_repo"
REDIS_VAR = "PERSONA_REDIS"
REGISTRY_VAR = "PERSONA_REGISTRY_URL"
STORE_DIR = "feature_store"
BATCH_TIMEOUT_S = 60.0  # Redis calls of batch jobs (materialise, push): bulk pipelines, but never a hang forever
MARKER_KEY = "persona:online_marker:"  # + project: the Redis key of the materialisation marker
MARKER_TABLE = "persona_online_marker"  # its SQLite table in the embedded online store
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


def render_store_yaml(ws: Workspace, cfg: PersonaConfig, *, timeout: float = BATCH_TIMEOUT_S) -> str:
    """The text of feature_store.yaml: the profile's commented template with its __TOKENS__ filled in.

    `timeout` bounds every Redis call (connect and reply) of the production profile: a frozen Redis then fails a
    call after that many seconds instead of hanging it (redis-py waits forever by default).
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
    text = render_store_yaml(ws, cfg, timeout=cfg.serving.store_timeout_seconds if serving else BATCH_TIMEOUT_S)
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        write_text_atomic(target, text)
    store = feast.FeatureStore(repo_path=str(folder), fs_yaml_file=target)
    if cfg.store.profile == "embedded" and (folder / "registry.db").is_file():
        _relocate(store, ws, cfg)
    return store


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
        kinds = {f.name: ("number" if "Float" in str(f.dtype) else "string") for f in tag_view.features}
        store.apply([defs.persona_entity(), defs.tags_view(kinds, tags, defs.persona_entity())])
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
    entity, views, services = defs.repository(snapshots, FEATURE_SERVICES, ttl=ttl)
    registered = {v.name: v for v in store.list_feature_views()}
    # Feast keeps a view's materialisation intervals across a schema change, so a new column (a new category)
    # would never be loaded for dates already materialised, and Redis ignores rewrites of a persona at the same
    # snapshot time. A view whose features changed is therefore dropped (with its online values) and re-created:
    # the next materialize() loads it in full.
    reshaped = [old for name, old in registered.items() if name in views and _signature(old) != _signature(views[name])]
    if reshaped:
        store.apply([], objects_to_delete=reshaped, partial=False)
    stale = [v for name, v in registered.items() if name not in views and name != defs.TAGS_VIEW]
    stale += [s for s in store.list_feature_services() if s.name not in services]
    store.apply([entity, *views.values(), *services.values()], objects_to_delete=stale, partial=False)
    store.refresh_registry()  # a thread-mode registry cache would otherwise serve the old objects for a while
    _SERVICES.pop(store, None)
    return sorted(services)


def _signature(view: feast.FeatureView) -> list[tuple[str, str]]:
    return sorted((f.name, str(f.dtype)) for f in view.features)


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
    # Feast prints the views it materialises to stdout; a library must not write there (`persona features --json`
    # prints JSON), and the report returned says the same per view.
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        if full:
            store.materialize(start_date=begin, end_date=end, feature_views=[v.name for v in full])
        if incremental:
            store.materialize_incremental(end_date=end, feature_views=[v.name for v in incremental])
    report["seconds"] = round(time.perf_counter() - t0, 3)
    return report


# --- the materialisation marker -----------------------------------------------------------------------------
# A marker in the online store itself says it was loaded, and by which load (a generation number that only grows).
# Redis restarted empty, or an older copy restored, is then told apart from a store that simply lacks a persona:
# no marker (empty) or an older generation than the workspace last wrote (stale) means the store must be rebuilt
# before it is read as the truth.
def _sqlite_path(store: feast.FeatureStore) -> Path:
    path = Path(store.config.online_store.path)
    return path if path.is_absolute() else Path(store.config.repo_path or ".") / path


def write_marker(store: feast.FeatureStore, marker: dict) -> None:
    """Record `marker` (a JSON object with a `generation`) in the online store, replacing the previous one."""
    text = json.dumps(marker, sort_keys=True)
    kind = store.config.online_store.type
    if kind == "redis":
        online = store._get_provider().online_store
        online._get_client(store.config.online_store).set(MARKER_KEY + store.project, text)
    elif kind == "sqlite":
        import sqlite3

        path = _sqlite_path(store)
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn, conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} (project TEXT PRIMARY KEY, marker TEXT)")
            conn.execute(f"INSERT OR REPLACE INTO {MARKER_TABLE} VALUES (?, ?)", (store.project, text))
    else:
        raise ValueError(f"online store {kind!r}: no materialisation marker support (embedded sqlite or redis)")


def online_state(store: feast.FeatureStore, ws: Workspace) -> dict:
    """Whether the online store holds the workspace's last load: {"state": "ok" | "empty" | "stale", "marker",
    "expected"}. `empty`: no marker (never loaded, or the store lost its data); `stale`: an older load than the
    workspace last wrote (an old copy restored). Raises the store client's error when the store does not answer."""
    expected = read_json(ws.state / ONLINE_STATE, None)
    found = OnlineReader(store).marker()
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


def fail_fast(store: feast.FeatureStore) -> None:
    """Make the online store's client give up at its first timeout (Redis): redis-py retries a timed-out call three
    times with backoff by default, so a frozen Redis would hold a request for 4 x the timeout plus the waits."""
    if store.config.online_store.type != "redis":
        return
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = store._get_provider().online_store._get_client(store.config.online_store)
    no_retry = Retry(NoBackoff(), 0)
    client.connection_pool.connection_kwargs["retry"] = no_retry
    with contextlib.suppress(AttributeError):
        client.retry = no_retry
        for conn in list(getattr(client.connection_pool, "_available_connections", [])):
            conn.retry = no_retry


def delete_personas(store: feast.FeatureStore, persona_ids: Sequence[str]) -> int:
    """Remove every online value (all views, the tags included) of these personas; returns the rows removed."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    if not persona_ids:
        return 0
    config = store.config
    keys = [EntityKey(join_keys=[defs.JOIN_KEY], entity_values=[Value(string_val=str(p))]) for p in persona_ids]
    if config.online_store.type == "redis":
        online = store._get_provider().online_store
        redis_keys = online._generate_redis_keys_for_entities(config, keys)
        return int(online._get_client(config.online_store).delete(*redis_keys))
    if config.online_store.type != "sqlite":
        raise ValueError(f"online store {config.online_store.type!r}: cannot delete personas (sqlite or redis)")
    import sqlite3

    from feast.infra.online_stores.helpers import compute_table_id

    path = _sqlite_path(store)
    if not path.is_file():
        return 0
    blobs = [serialize_entity_key(k, entity_key_serialization_version=config.entity_key_serialization_version)
             for k in keys]
    marks = ",".join("?" * len(blobs))
    removed = 0
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn, conn:
        conn.execute("PRAGMA secure_delete = ON")  # erased values must not linger in free pages of the file
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for view in store.list_feature_views():
            table = compute_table_id(config.project, view, False)
            if table in tables:
                removed += conn.execute(f'DELETE FROM "{table}" WHERE entity_key IN ({marks})', blobs).rowcount
    return removed


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
    found = store.get_historical_features(entity_df=keys, features=chosen).to_df()
    # Join the features back onto the rows by position: Feast returns rows in its own order, and the file offline
    # store drops a row that predates every snapshot of a persona instead of giving it nulls.
    found = found[[order, *features]].set_index(order).reindex(range(len(frame)))
    return pd.concat([frame, found.reset_index(drop=True)], axis=1)


class OnlineReader:
    """The latest online features of every snapshot view for personas, as one float64 matrix (NaN = no value).

    What `get_online_features` answers for these views, read more directly. `get_online_features` spends more time
    than the store's own read resolving references, building a response protobuf and converting it to a DataFrame
    (8 personas x 156 features: ~14 ms, of which ~7 ms is the online store's read). Here:
    - Redis (production): one pipeline of HMGETs for all views, as Feast's own batched read does, values parsed
      straight into the matrix (8 personas: ~11 ms through `online_read`, one round trip per view);
    - any other store: one `online_read` per view through Feast's provider, values taken off the returned
      protobufs into the matrix;
    - SQLite (embedded): one query per view on Feast's own table (`<project>_<view>`: entity key, feature name,
      serialized value), on a connection of this reader's without per-row timestamp conversion, each value parsed
      once into the matrix. Feast's `online_read` spends ~60% of its time converting and regrouping rows it then
      hands back as dicts: 8 personas read in ~2 ms instead of ~5.
    Feast ignores a view's TTL on online reads; so does this. The equality with `get_online_features` is tested
    on both profiles (tests/features/test_store*.py).

    Built once for the views registered now (the online engine builds a new one on refresh).
    """

    def __init__(self, store: feast.FeatureStore) -> None:
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.infra.online_stores.helpers import compute_table_id
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        self.store = store
        self._key, self._value, self._serialize = EntityKey, Value, serialize_entity_key
        self._provider = store._get_provider()  # what get_online_features reads through
        self.views: list[tuple[feast.FeatureView, list[str], int]] = []
        self.columns: list[str] = []
        for view in store.list_feature_views(allow_cache=False):
            if view.name in defs.GROUPS:
                names = [f.name for f in view.features]
                self.views.append((view, names, len(self.columns)))
                self.columns += names
        self._sqlite = None
        self._sqlite_path: Path | None = None
        self._redis = None
        config = store.config
        versioned = bool(getattr(config.registry, "enable_online_feature_view_versioning", False))
        if config.online_store.type == "redis" and not versioned:
            from feast.infra.online_stores.helpers import compute_versioned_name

            online = self._provider.online_store
            # the hash fields Feast's Redis store keeps each view's features under (and its `_ts:<view>` field)
            self._redis = (online, [(start, len(names), online._generate_hset_keys_for_features(
                view, list(names), fv_name_override=compute_versioned_name(view, False))[1])
                for view, names, start in self.views])
        if config.online_store.type == "sqlite":
            path = Path(config.online_store.path)
            self._sqlite_path = path if path.is_absolute() else Path(config.repo_path or ".") / path
            self._tables = [(compute_table_id(config.project, view, versioned),
                             {name: start + j for j, name in enumerate(names)}) for view, names, start in self.views]
        self._lock = threading.Lock()

    def _connection(self):
        import sqlite3

        if self._sqlite is None:
            with self._lock:
                if self._sqlite is None:
                    # read-only; no type detection: the values are protobuf blobs parsed below
                    self._sqlite = sqlite3.connect(f"{self._sqlite_path.resolve().as_uri()}?mode=ro", uri=True,
                                                   check_same_thread=False)
        return self._sqlite

    def marker(self) -> dict | None:
        """The materialisation marker the online store holds now (None: none, the store was never loaded or lost
        its data). Raises the store client's error when the store does not answer."""
        if self._redis is not None:
            online = self._redis[0]
            text = online._get_client(self.store.config.online_store).get(MARKER_KEY + self.store.project)
        elif self._sqlite_path is not None:
            conn = self._connection()
            try:
                with self._lock:
                    row = conn.execute(f"SELECT marker FROM {MARKER_TABLE} WHERE project = ?",
                                       (self.store.project,)).fetchone()
            except Exception as exc:
                if "no such table" in str(exc):
                    return None
                raise
            text = row[0] if row else None
        else:
            return None
        return json.loads(text) if text else None

    def read(self, persona_ids: Sequence[str]) -> tuple:
        """(matrix n x len(columns) float64, found: whether the store holds any feature value of each persona)."""
        import numpy as np

        keys = [self._key(join_keys=[defs.JOIN_KEY], entity_values=[self._value(string_val=str(p))])
                for p in persona_ids]
        out = np.full((len(keys), len(self.columns)), np.nan)
        found = np.zeros(len(keys), dtype=bool)
        if not keys:
            return out, found
        if self._sqlite_path is not None:
            self._read_sqlite(keys, out, found)
            return out, found
        if self._redis is not None:
            self._read_redis(keys, out, found)
            return out, found
        for view, names, start in self.views:
            rows = self._provider.online_read(config=self.store.config, table=view, entity_keys=keys,
                                              requested_features=names)
            for i, (_, values) in enumerate(rows):
                if not values:
                    continue
                for j, name in enumerate(names, start):
                    number = _number(values.get(name))
                    if number is not None:
                        out[i, j] = number
                        found[i] = True
        return out, found

    def _read_sqlite(self, keys: list, out, found) -> None:
        version = self.store.config.entity_key_serialization_version
        blobs = [self._serialize(k, entity_key_serialization_version=version) for k in keys]
        row_of = {b: i for i, b in enumerate(blobs)}
        marks = ",".join("?" * len(blobs))
        conn = self._connection()
        value = self._value()
        for table, column_of in self._tables:
            try:
                with self._lock:  # one connection per reader; the engine reads from one thread, a probe from another
                    rows = conn.execute(f'SELECT entity_key, feature_name, value FROM "{table}" '
                                        f"WHERE entity_key IN ({marks})", blobs).fetchall()
            except Exception as exc:
                if "no such table" in str(exc):  # a view applied but never materialised: no values yet
                    continue
                raise
            for key, name, blob in rows:
                j = column_of.get(name)
                if j is None:
                    continue
                value.ParseFromString(blob)
                number = _number(value)
                if number is not None:
                    i = row_of[key]
                    out[i, j] = number
                    found[i] = True

    def _read_redis(self, keys: list, out, found) -> None:
        # Feast's Redis store answers get_online_features with one pipeline of HMGETs for all views (its
        # `_read_features_per_fv`); `online_read` takes one round trip per view. This is the former, with the values
        # parsed straight into the matrix instead of into dicts of protobufs with a datetime each.
        online, views = self._redis
        config = self.store.config
        redis_keys = online._generate_redis_keys_for_entities(config, keys)
        replies = online._read_hash_fields(config, [(k, fields) for _, _, fields in views for k in redis_keys])
        value = self._value()
        at = 0
        for start, width, _ in views:
            for i in range(len(keys)):
                reply = replies[at]
                at += 1
                for j, blob in enumerate(reply[:width], start):
                    if blob:
                        value.ParseFromString(blob)
                        number = _number(value)
                        if number is not None:
                            out[i, j] = number
                            found[i] = True

    def frame(self, persona_ids: Sequence[str]) -> pd.DataFrame:
        """persona_id then every feature column (float64), in the order of `columns`."""
        matrix, _ = self.read(persona_ids)
        frame = pd.DataFrame(matrix, columns=self.columns, copy=False)
        frame.insert(0, defs.JOIN_KEY, [str(p) for p in persona_ids])
        return frame


def _number(value) -> float | int | None:
    """The scalar a Feast value protobuf holds (None: no value); the views hold numbers only."""
    kind = None if value is None else value.WhichOneof("val")
    return None if kind is None else getattr(value, kind)


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
    view = defs.tags_view(columns, history, defs.persona_entity())
    try:
        current = store.get_feature_view(defs.TAGS_VIEW)
    except feast.errors.FeatureViewNotFoundException:
        current = None
    if current is None or _signature(current) != _signature(view):
        if current is not None:
            store.apply([], objects_to_delete=[current], partial=False)
        store.apply([defs.persona_entity(), view])
        store.refresh_registry()
    rows = frame.reset_index(drop=True)
    rows = rows.assign(**{defs.JOIN_KEY: rows[defs.JOIN_KEY].astype(str),
                          defs.TIMESTAMP: pd.Timestamp(_utc(when)), defs.CREATED: pd.Timestamp.now(tz="UTC")})
    for c, kind in columns.items():
        rows[c] = rows[c].astype("float64") if kind == "number" else rows[c].astype(object).where(rows[c].notna(), None)
    for start in range(0, len(rows), chunk):
        # not from the registry cache: a view applied a moment ago was seen missing there under load
        store.write_to_online_store(defs.TAGS_VIEW, rows.iloc[start:start + chunk], allow_registry_cache=False)
        if progress:
            progress("pushing tags online", min(1.0, (start + chunk) / max(len(rows), 1)))
    return {"view": defs.TAGS_VIEW, "rows": int(len(rows)), "columns": len(columns),
            "seconds": round(time.perf_counter() - t0, 2)}
