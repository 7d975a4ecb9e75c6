"""Feast's internals, behind one module: direct online reads, the materialisation marker, deletes, fail-fast Redis.

Everything else in `features.store` goes through Feast's public API. This module alone knows Feast's private helpers
(`FeatureStore._get_provider`, the Redis store's `_get_client` and its key helpers) and its SQLite table layout
(`<project>_<view>`: entity_key, feature_name, value, event_ts): reading through them is several times faster than
`get_online_features` (see `OnlineReader`), and deleting a persona's values needs them (Feast has no public delete).

It was written for Feast 0.67.x (SUPPORTED). On any other version, or an online store other than SQLite and Redis,
the reader falls back to the public `get_online_features` (the same values, slower) and says so once in the log;
`internals=False` forces that path (tests compare the two). Deleting has no public way at all: on another version it
still goes through the internals, then checks through the public read that nothing is left. The marker is this
project's own data (a table of its own in the SQLite file, a key of its own in Redis), so only the Redis client it
goes through depends on Feast.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import feast
import numpy as np
import pandas as pd

from feature_repo import definitions as defs

SUPPORTED = "0.67."  # the Feast versions whose internals this module was written against (a version prefix)
MARKER_KEY = "persona:online_marker:"  # + project: the Redis key of the materialisation marker
MARKER_TABLE = "persona_online_marker"  # its SQLite table in the embedded online store
_EPOCH = datetime(1970, 1, 1)
_MICRO = timedelta(microseconds=1)

logger = logging.getLogger("persona.features")
_warned: set[str] = set()


def internals_usable(store: feast.FeatureStore) -> bool:
    """Whether this Feast and this online store are the ones the fast paths were written for (else warn, once)."""
    kind = store.config.online_store.type
    if not feast.__version__.startswith(SUPPORTED):
        why = (f"feast {feast.__version__} is installed; features/online_reader.py was written for feast "
               f"{SUPPORTED}x: online reads fall back to the public get_online_features (slower), deleting "
               "personas is checked through it, and Redis calls keep the client's own retries")
    elif kind == "redis" and str(getattr(store.config.online_store, "client", "redis")).endswith("glide"):
        why = "the Redis online store uses the glide client: online reads go through get_online_features"
    elif kind not in ("sqlite", "redis"):
        why = f"online store {kind!r}: online reads go through get_online_features"
    else:
        return True
    if why not in _warned:
        _warned.add(why)
        logger.warning("%s", why)
    return False


def sqlite_path(store: feast.FeatureStore) -> Path:
    """The embedded online store's database file (the config's path, relative to the repository folder)."""
    path = Path(store.config.online_store.path)
    return path if path.is_absolute() else Path(store.config.repo_path or ".") / path


def _entity_keys(persona_ids: Sequence[str]) -> list:
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    return [EntityKey(join_keys=[defs.JOIN_KEY], entity_values=[Value(string_val=str(p))]) for p in persona_ids]


def _redis(store: feast.FeatureStore, internals: bool):
    """The redis-py client: Feast's own (one connection pool with its reads), or one of this module's."""
    if internals:
        return store._get_provider().online_store._get_client(store.config.online_store)
    import redis

    # Feast's connection string: `host:port` then `,key=value` options (JSON values: 1.5 is a float)
    first, *options = store.config.online_store.connection_string.split(",")
    host, _, port = first.rpartition(":")
    kwargs = {}
    for option in options:
        key, _, value = option.partition("=")
        with contextlib.suppress(ValueError):
            value = json.loads(value)
        kwargs[key.strip()] = value
    return redis.Redis(host=host, port=int(port), **kwargs)


# --- the materialisation marker (this project's, in the online store itself) -------------------------------------
def write_marker(store: feast.FeatureStore, marker: dict) -> None:
    """Record `marker` (a JSON object with a `generation`) in the online store, replacing the previous one."""
    text = json.dumps(marker, sort_keys=True)
    kind = store.config.online_store.type
    if kind == "redis":
        _redis(store, internals_usable(store)).set(MARKER_KEY + store.project, text)
    elif kind == "sqlite":
        import sqlite3

        path = sqlite_path(store)
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn, conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} (project TEXT PRIMARY KEY, marker TEXT)")
            conn.execute(f"INSERT OR REPLACE INTO {MARKER_TABLE} VALUES (?, ?)", (store.project, text))
    else:
        raise ValueError(f"online store {kind!r}: no materialisation marker support (embedded sqlite or redis)")


def read_marker(store: feast.FeatureStore) -> dict | None:
    """The marker the online store holds now (None: none); raises the store client's error when it does not answer."""
    kind = store.config.online_store.type
    if kind == "redis":
        text = _redis(store, internals_usable(store)).get(MARKER_KEY + store.project)
    elif kind == "sqlite":
        import sqlite3

        path = sqlite_path(store)
        if not path.is_file():
            return None
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)) as conn:
            try:
                row = conn.execute(f"SELECT marker FROM {MARKER_TABLE} WHERE project = ?", (store.project,)).fetchone()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return None
                raise
        text = row[0] if row else None
    else:
        return None
    return json.loads(text) if text else None


def fail_fast(store: feast.FeatureStore) -> None:
    """Make the online store's client give up at its first timeout (Redis): redis-py retries a timed-out call three
    times with backoff by default, so a frozen Redis would hold a request for 4 x the timeout plus the waits."""
    if store.config.online_store.type != "redis" or not internals_usable(store):
        return
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = _redis(store, True)
    no_retry = Retry(NoBackoff(), 0)
    client.connection_pool.connection_kwargs["retry"] = no_retry
    with contextlib.suppress(AttributeError):
        client.retry = no_retry
        for conn in list(getattr(client.connection_pool, "_available_connections", [])):
            conn.retry = no_retry


def delete_personas(store: feast.FeatureStore, persona_ids: Sequence[str]) -> int:
    """Remove every online value (all views, the tags included) of these personas; returns the rows removed.

    Feast has no public delete, and refuses to write null rows over them: this goes through its internals on any
    version. On a version other than SUPPORTED the result is then checked through the public read, and anything left
    (or an internal that is gone) is an error saying so, never a silent partial erasure."""
    if not persona_ids:
        return 0
    checked = not internals_usable(store)
    try:
        removed = _delete(store, persona_ids)
    except Exception as exc:
        if not checked:
            raise
        raise RuntimeError(f"cannot delete personas from the online store with feast {feast.__version__} "
                           f"(features/online_reader.py was written for {SUPPORTED}x): {type(exc).__name__}: {exc}"
                           ) from exc
    if checked:
        left = OnlineReader(store, internals=False).fetch(persona_ids, None, tags=True)
        if (~np.isnan(left.matrix)).any() or any(v is not None for col in left.tags.values() for v in col):
            raise RuntimeError(f"deleting personas from the online store with feast {feast.__version__} left values "
                               f"behind (features/online_reader.py was written for {SUPPORTED}x); rebuild the "
                               "online store (`persona features --reload-online`) after the erasure")
    return removed


def _delete(store: feast.FeatureStore, persona_ids: Sequence[str]) -> int:
    config = store.config
    keys = _entity_keys(persona_ids)
    if config.online_store.type == "redis":
        online = store._get_provider().online_store
        redis_keys = online._generate_redis_keys_for_entities(config, keys)
        return int(online._get_client(config.online_store).delete(*redis_keys))
    if config.online_store.type != "sqlite":
        raise ValueError(f"online store {config.online_store.type!r}: cannot delete personas (sqlite or redis)")
    import sqlite3

    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.infra.online_stores.helpers import compute_table_id

    path = sqlite_path(store)
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


# --- reading ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OnlineRows:
    """What one `OnlineReader.fetch` found for n personas.

    `matrix` (n x len(columns), float64, NaN = no value) holds the features of the views asked for; `stamps` the
    time each persona's row of every snapshot view was written (int64 microseconds since the epoch, 0 = no row);
    `tags` the tag view's values by column (str, float or None) and `tag_stamps` their rows' times, when asked for.
    """

    matrix: np.ndarray
    columns: list[str]
    found: np.ndarray  # bool: a row of the persona in some view (snapshot or tags)
    stamps: dict[str, np.ndarray]
    tags: dict[str, list] | None = None
    tag_stamps: np.ndarray | None = None
    marker: dict | None = None


class OnlineReader:
    """The latest online features, tags and row times of personas, read more directly than `get_online_features`.

    `get_online_features` spends more time than the store's own read resolving references, building a response
    protobuf and converting it to a DataFrame (8 personas x 156 features: ~14 ms, of which ~7 ms is the store's
    read). Here, with Feast's internals (see the module):
    - SQLite (embedded): ONE statement for everything asked (a UNION ALL over Feast's tables `<project>_<view>`, the
      marker's table included), on a read-only connection of this reader's, without per-row timestamp conversion;
      each value parsed once into the matrix. A view asked only for its row time reads one row per persona (its
      first feature: Feast writes a row for every feature of a view, nulls included).
    - Redis (production): ONE pipeline: the marker's GET and one HMGET per persona of every field asked (all views
      of a persona live in one hash: `_ts:<view>` is a view's row time), as Feast's own batched read does.
    Otherwise (`internals=False`, another Feast version) `get_online_features` with its event timestamps (whole
    seconds there). Feast ignores a view's TTL on online reads; so does this. The equality of the two paths, and
    with `get_online_features`, is tested on both profiles (tests/features/test_store*.py, test_online_reader.py).

    Built once for the views registered now (the online engine builds a new one on refresh).
    """

    def __init__(self, store: feast.FeatureStore, *, internals: bool | None = None) -> None:
        self.store = store
        self.internals = internals_usable(store) if internals is None else (internals and internals_usable(store))
        self.views: list[tuple[feast.FeatureView, list[str], int]] = []
        self.columns: list[str] = []
        self.tag_view: feast.FeatureView | None = None
        self.tag_columns: dict[str, str] = {}  # column of the tags view -> "number" | "string"
        for view in store.list_feature_views(allow_cache=False):
            if view.name in defs.GROUPS:
                names = [f.name for f in view.features]
                self.views.append((view, names, len(self.columns)))
                self.columns += names
            elif view.name == defs.TAGS_VIEW:
                self.tag_view = view
                self.tag_columns = {f.name: ("number" if "Float" in str(f.dtype) else "string") for f in view.features}
        self._lock = threading.Lock()
        self._sqlite = None
        self._tables: set[str] | None = None  # SQLite tables that exist (see _existing)
        self._looked = 0.0
        self._statements: dict[tuple, tuple[str, list]] = {}  # SQLite statements by shape (see _fetch_sqlite)
        self._marker_text: tuple[str | None, dict | None] = (None, None)
        kind = store.config.online_store.type
        self.kind = kind if self.internals else "public"
        if self.kind == "sqlite":
            from feast.infra.online_stores.helpers import compute_table_id

            self._table = {v.name: compute_table_id(store.config.project, v, False)
                           for v in [*(v for v, _, _ in self.views), *([self.tag_view] if self.tag_view else [])]}
        elif self.kind == "redis":
            from feast.infra.online_stores.helpers import compute_versioned_name

            online = store._get_provider().online_store
            self._online = online
            self._client = online._get_client(store.config.online_store)
            # the hash fields of each view's features and its `_ts:<view>` (the row time), as Feast writes them
            self._fields = {v.name: online._generate_hset_keys_for_features(
                v, [f.name for f in v.features], fv_name_override=compute_versioned_name(v, False))[1]
                for v in [*(v for v, _, _ in self.views), *([self.tag_view] if self.tag_view else [])]}

    # --- public -----------------------------------------------------------------------------------------------
    def marker(self) -> dict | None:
        """The materialisation marker the online store holds now (None: none, the store was never loaded or lost
        its data). Raises the store client's error when the store does not answer."""
        return read_marker(self.store)

    def read(self, persona_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(matrix n x len(columns) float64, found: whether the store holds any feature value of each persona)."""
        rows = self.fetch(persona_ids)
        return rows.matrix, ~np.isnan(rows.matrix).all(axis=1) if rows.matrix.shape[1] else rows.found

    def frame(self, persona_ids: Sequence[str]) -> pd.DataFrame:
        """persona_id then every feature column (float64), in the order of `columns`."""
        matrix, _ = self.read(persona_ids)
        frame = pd.DataFrame(matrix, columns=self.columns, copy=False)
        frame.insert(0, defs.JOIN_KEY, [str(p) for p in persona_ids])
        return frame

    def fetch(self, persona_ids: Sequence[str], views: Sequence[str] | None = None, *,
              tags: bool | Sequence[str] = False, marker: bool = False) -> OnlineRows:
        """The features of `views` (default: every snapshot view), the row times of every snapshot view, the tag
        view's row (`tags`: True for every column, or the columns wanted) and with `marker` the marker: in one
        round trip to the store (see the class). Tag columns the view lacks come back as None."""
        wanted = [v.name for v, _, _ in self.views] if views is None else list(views)
        parts = [(v, names) for v, names, _ in self.views if v.name in wanted]
        columns = [n for _, names in parts for n in names]
        n = len(persona_ids)
        asked = list(self.tag_columns) if tags is True else list(tags or ())
        held = [c for c in asked if c in self.tag_columns]
        rows = _Builder(n, columns, [v.name for v, _, _ in self.views], asked if tags else None)
        if n == 0:
            return rows.done(self.marker() if marker else None)
        if self.kind == "sqlite":
            found = self._fetch_sqlite(persona_ids, set(wanted), held, marker, rows)
        elif self.kind == "redis":
            found = self._fetch_redis(persona_ids, set(wanted), held, marker, rows)
        else:
            self._fetch_public(persona_ids, set(wanted), held, rows)
            found = self.marker() if marker else None
        return rows.done(found)

    # --- SQLite -------------------------------------------------------------------------------------------------
    def _connection(self):
        import sqlite3

        if self._sqlite is None:
            # read-only; no type detection: values are protobuf blobs, times text, both parsed here
            self._sqlite = sqlite3.connect(f"{sqlite_path(self.store).resolve().as_uri()}?mode=ro", uri=True,
                                           check_same_thread=False)
        return self._sqlite

    def _existing(self, wanted: Sequence[str]) -> set[str]:
        """The SQLite tables that exist, looked up again (at most once a second) while one wanted is missing: a
        view materialised, or the tags pushed, after this reader was built."""
        now = time.monotonic()
        if self._tables is None or (not self._tables.issuperset(wanted) and now - self._looked > 1.0):
            names = self._connection().execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
            self._tables, self._looked = {r[0] for r in names}, now
        return self._tables

    def _fetch_sqlite(self, persona_ids, wanted: set[str], tags: list[str], marker: bool, rows: _Builder
                      ) -> dict | None:
        from feast.infra.key_encoding_utils import serialize_entity_key

        version = self.store.config.entity_key_serialization_version
        blobs = [serialize_entity_key(k, entity_key_serialization_version=version) for k in _entity_keys(persona_ids)]
        row_of = {b: i for i, b in enumerate(blobs)}
        tables = [self._table[v.name] for v, _, _ in self.views]
        tables += [self._table[defs.TAGS_VIEW]] if tags else []  # (no tags view: `tags` is empty)
        tables += [MARKER_TABLE] if marker else []
        with self._lock:  # one connection per reader; the engine reads from one thread, a probe from another
            for attempt in (0, 1):
                existing = self._existing(tables)
                key = (len(blobs), tuple(sorted(wanted)), tuple(tags), marker, frozenset(existing))
                plan = self._statements.get(key)
                if plan is None:
                    if len(self._statements) > 256:  # batch sizes x requests kinds: a few dozen in practice
                        self._statements.clear()
                    plan = self._statements[key] = self._statement(len(blobs), wanted, tags, marker, existing)
                sql, parts = plan
                if not sql:
                    return None
                params = [p for part in parts for p in (blobs if part is None else part)]
                try:
                    got = self._connection().execute(sql, params).fetchall()
                    break
                except Exception as exc:
                    if "no such table" not in str(exc) or attempt:
                        raise
                    self._tables = None  # a view dropped since (reshaped): look again
        found_marker = None
        names = [v.name for v, _, _ in self.views]
        stamp = self._stamp
        for part, key, feature, blob, ts in got:
            if part == -2:
                found_marker = self._marker_of(blob)
                continue
            i = row_of[key]
            if part == -1:
                rows.tag(i, feature, blob, stamp(ts))
            else:
                rows.stamp(names[part], i, stamp(ts))
                if feature is not None:
                    rows.value(i, feature, blob)
        return found_marker

    def _marker_of(self, text: str | None) -> dict | None:
        """The marker's JSON, parsed once per text (it changes once per load of the store); a copy per call."""
        if not text:
            return None
        if self._marker_text[0] != text:
            self._marker_text = (text, json.loads(text))
        return dict(self._marker_text[1])

    def _statement(self, n: int, wanted: set[str], tags: list[str], marker: bool, existing: set[str]
                   ) -> tuple[str, list]:
        """The UNION ALL of one fetch, and its parameters in order (None: the entity keys)."""
        marks = ",".join("?" * n)
        sql, parts = [], []
        for i, (view, names, _) in enumerate(self.views):
            table = self._table[view.name]
            if table not in existing:
                continue
            if view.name in wanted:
                sql.append(f'SELECT {i}, entity_key, feature_name, value, event_ts FROM "{table}" '
                           f"WHERE entity_key IN ({marks})")
                parts.append(None)
            elif names:
                sql.append(f'SELECT {i}, entity_key, NULL, NULL, event_ts FROM "{table}" '
                           f"WHERE feature_name = ? AND entity_key IN ({marks})")
                parts += [[names[0]], None]
        if tags and self._table[defs.TAGS_VIEW] in existing:
            which = "" if len(tags) == len(self.tag_columns) else f"feature_name IN ({','.join('?' * len(tags))}) AND "
            sql.append(f'SELECT -1, entity_key, feature_name, value, event_ts FROM "{self._table[defs.TAGS_VIEW]}" '
                       f"WHERE {which}entity_key IN ({marks})")
            parts += [list(tags), None] if which else [None]
        if marker and MARKER_TABLE in existing:
            sql.append(f"SELECT -2, NULL, NULL, marker, NULL FROM {MARKER_TABLE} WHERE project = ?")
            parts.append([self.store.project])
        return " UNION ALL ".join(sql), parts

    @staticmethod
    def _stamp(value) -> int:
        """Microseconds since the epoch of a row time as Feast's SQLite store writes it: whole epoch seconds (its
        datetime adapter), or naive UTC ISO text (the sqlite3 default, should that adapter go)."""
        if value is None:
            return 0
        if isinstance(value, int):
            return value * 1_000_000
        return (datetime.fromisoformat(value).replace(tzinfo=None) - _EPOCH) // _MICRO

    # --- Redis --------------------------------------------------------------------------------------------------
    def _fetch_redis(self, persona_ids, wanted: set[str], tags: list[str], marker: bool, rows: _Builder
                     ) -> dict | None:
        from google.protobuf.timestamp_pb2 import Timestamp

        config = self.store.config
        redis_keys = self._online._generate_redis_keys_for_entities(config, _entity_keys(persona_ids))
        layout = []  # (view name or None for tags, feature names or None for the time only, fields)
        for view, names, _ in self.views:
            fields = self._fields[view.name]
            layout.append((view.name, names, fields) if view.name in wanted else (view.name, None, fields[-1:]))
        if tags:
            field_of = dict(zip(self.tag_columns, self._fields[defs.TAGS_VIEW]))
            layout.append((None, tags, [field_of[c] for c in tags] + self._fields[defs.TAGS_VIEW][-1:]))
        fields = [f for _, _, fs in layout for f in fs]
        with self._client.pipeline(transaction=False) as pipe:
            if marker:
                pipe.get(MARKER_KEY + self.store.project)
            for key in redis_keys:
                pipe.hmget(key, fields)
            replies = pipe.execute()
        found_marker = None
        if marker:
            text = replies.pop(0)
            found_marker = json.loads(text) if text else None
        ts = Timestamp()
        for i, reply in enumerate(replies):
            at = 0
            for view, names, fs in layout:
                chunk = reply[at:at + len(fs)]
                at += len(fs)
                raw = chunk[-1]
                if not raw:
                    continue
                ts.ParseFromString(raw)
                micros = ts.seconds * 1_000_000 + ts.nanos // 1000
                if view is None:
                    for name, blob in zip(names, chunk):
                        rows.tag(i, name, blob, micros)
                    continue
                rows.stamp(view, i, micros)
                if names is not None:
                    for name, blob in zip(names, chunk):
                        if blob:
                            rows.value(i, name, blob)
        return found_marker

    # --- the public API (another Feast version, another store, or internals=False) -------------------------------
    def _fetch_public(self, persona_ids, wanted: set[str], tags: list[str], rows: _Builder) -> None:
        refs, plan = [], []
        for view, names, _ in self.views:
            asked = names if view.name in wanted else names[:1]  # one feature gives the view's row time
            refs += [f"{view.name}:{n}" for n in asked]
            plan.append((view.name, asked, view.name in wanted))
        if tags:
            refs += [f"{defs.TAGS_VIEW}:{c}" for c in tags]
        got = self.store.get_online_features(features=refs, entity_rows=[{defs.JOIN_KEY: str(p)} for p in persona_ids],
                                             full_feature_names=True).to_dict(include_event_timestamps=True)
        for view, asked, values in plan:
            for name in asked:
                key = f"{view}__{name}"
                for i, (value, seconds) in enumerate(zip(got[key], got[f"{key}__ts"])):
                    if seconds:
                        rows.stamp(view, i, int(seconds) * 1_000_000)
                    if values and value is not None:
                        rows.number(i, name, value)
        if tags:
            for name in tags:
                key = f"{defs.TAGS_VIEW}__{name}"
                for i, (value, seconds) in enumerate(zip(got[key], got[f"{key}__ts"])):
                    if seconds:
                        rows.tag_value(i, name, value, int(seconds) * 1_000_000)


class _Builder:
    """Collects what a read found into the arrays of an `OnlineRows`, parsing Feast's value protobufs once."""

    def __init__(self, n: int, columns: list[str], views: list[str], tags: list[str] | None) -> None:
        from feast.protos.feast.types.Value_pb2 import Value

        self.columns = columns
        self.at = {c: j for j, c in enumerate(columns)}
        self.matrix = np.full((n, len(columns)), np.nan)
        self.found = np.zeros(n, dtype=bool)
        self.stamps = {v: np.zeros(n, dtype=np.int64) for v in views}
        self.tags = {c: [None] * n for c in tags} if tags is not None else None
        self.tag_stamps = np.zeros(n, dtype=np.int64) if tags is not None else None
        self._value = Value()

    def stamp(self, view: str, i: int, micros: int) -> None:
        self.stamps[view][i] = micros
        self.found[i] = True

    def value(self, i: int, name: str, blob: bytes) -> None:
        j = self.at.get(name)
        if j is None or not blob:
            return
        value = self._value
        value.ParseFromString(blob)
        kind = value.WhichOneof("val")
        if kind is not None:
            self.matrix[i, j] = getattr(value, kind)

    def number(self, i: int, name: str, number) -> None:
        j = self.at.get(name)
        if j is not None:
            self.matrix[i, j] = number

    def tag(self, i: int, name: str, blob: bytes | None, micros: int) -> None:
        value = None
        if blob:
            self._value.ParseFromString(blob)
            kind = self._value.WhichOneof("val")
            value = None if kind is None else getattr(self._value, kind)
        self.tag_value(i, name, value, micros)

    def tag_value(self, i: int, name: str, value, micros: int) -> None:
        column = self.tags.get(name)
        if column is None:
            return
        column[i] = value
        self.tag_stamps[i] = micros
        self.found[i] = True

    def done(self, marker: dict | None) -> OnlineRows:
        return OnlineRows(self.matrix, self.columns, self.found, self.stamps, self.tags, self.tag_stamps, marker)
