"""Bulk writes to the online store in Feast's own layout, built column by column (the load's hot path).

Feast's writer (`write_to_online_store`, `materialize`) turns every value into a protobuf object in Python and
writes it with one call per value (SQLite) or one packed command per row (Redis): a few thousand persona-rows a
second, so the first load of a million personas took minutes per view. This module writes the same bytes, made with
numpy and Arrow a column at a time:

- a value is Feast's `Value` protobuf: one tag byte then the value (fixed width for doubles, floats and flags, a
  varint for integers, a length-prefixed UTF-8 string); a missing value is Feast's empty `Value` (no bytes);
- an entity key is Feast's serialised `EntityKey` (version 3: counts, types and lengths as little-endian u32);
- SQLite: one row per (entity_key, feature_name) in `<project>_<view>` with `value`, `value_text` (the text Feast
  derives from the value), `event_ts` and `created_ts` as the epoch seconds Feast's sqlite3 adapter stores, upserted as
  Feast upserts them, in one transaction per view;
- Redis: one hash per persona (`<entity key><project>`), fields the murmur3 hash of `<view>:<feature>`, and
  `_ts:<view>` the row's `Timestamp` protobuf; a row is written only when it is newer than the view's timestamp
  the hash holds (Feast's rule). The commands are Redis protocol bytes built by Arrow per column and sent in chunks
  on one connection of Feast's own client.

It is Feast's internal layout, so it is used only where `features.online_reader.internals_usable` says this Feast
and this online store are the ones it was written for (0.67.x; SQLite or redis-py Redis; no feature-view
versioning, no vector columns); elsewhere `write` goes through Feast's public `write_to_online_store`. Tests write
the same frames both ways and compare the stored bytes and Feast's reads.
"""

from __future__ import annotations

import sqlite3
import struct
import time
from collections.abc import Sequence
from datetime import datetime
from itertools import repeat

import feast
import mmh3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from feast.types import Bool, Float32, Float64, Int32, Int64, String

from feature_repo import definitions as defs
from features.online_reader import _redis, internals_usable, sqlite_path

CHUNK_ROWS = 20_000  # rows encoded and written at a time (a Redis round trip: a few MB of commands)
# Feast's Value protobuf: (field number << 3 | wire type) of each feature type's field
_TAGS = {Float64: 0x29, Float32: 0x35, Int64: 0x20, Int32: 0x18, Bool: 0x38, String: 0x12}
_STRING_TYPE = 2  # ValueType.STRING in an entity key


def usable(store: feast.FeatureStore) -> bool:
    """Whether the bulk writer writes this store (else `write` uses Feast's public writer)."""
    cfg = store.config
    if getattr(cfg.registry, "enable_online_feature_view_versioning", False):
        return False
    if cfg.online_store.type == "sqlite" and (getattr(cfg.online_store, "vector_enabled", False)
                                              or getattr(cfg.online_store, "enable_openai_compatible_store", False)):
        return False
    return cfg.entity_key_serialization_version == 3 and internals_usable(store)


# --- encoding, a column at a time ---------------------------------------------------------------------------------
def _varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Protobuf varints of int64 values (negatives as their 64-bit two's complement, as protobuf writes int32 and
    int64): a (n, 10) byte matrix and each one's length."""
    v = np.ascontiguousarray(values, dtype=np.int64).view(np.uint64)
    groups = np.stack([(v >> np.uint64(7 * k)) & np.uint64(0x7F) for k in range(10)], axis=1).astype(np.uint8)
    length = np.ones(len(v), dtype=np.int64)
    for k in range(1, 10):
        length[(v >> np.uint64(7 * k)) != 0] = k + 1
    groups[np.arange(10)[None, :] < (length - 1)[:, None]] |= 0x80
    return groups, length


def _join(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Byte strings given as (matrix, lengths) pieces, end to end per row: one matrix and the lengths."""
    n = len(parts[0][1])
    total = sum(length for _, length in parts)
    out = np.zeros((n, max(int(total.max(initial=0)), 1)), dtype=np.uint8)
    at = np.zeros(n, dtype=np.int64)
    rows = np.arange(n)
    for matrix, length in parts:
        for j in range(matrix.shape[1]):
            take = j < length
            out[rows[take], at[take] + j] = matrix[take, j]
        at += length
    return out, total


def _as_bytes(matrix: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Each row's first `length` bytes as a Python bytes object (an object array), one numpy view per length."""
    out = np.empty(len(length), dtype=object)
    out[length == 0] = b""
    for size in np.unique(length[length > 0]).tolist():
        take = length == size
        out[take] = np.ascontiguousarray(matrix[take, :size]).view(f"V{size}").ravel().tolist()
    return out


def _fixed(tag: int, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    raw = np.ascontiguousarray(values).view(np.uint8).reshape(len(values), -1)
    return np.hstack([np.full((len(values), 1), tag, dtype=np.uint8), raw]), np.full(len(values), raw.shape[1] + 1)


def encode_values(values, dtype) -> tuple[np.ndarray, list]:
    """Feast's `Value` bytes of a column of feature type `dtype` (an object array; b"" where missing) and the
    `value_text` Feast's SQLite store keeps beside them (None where missing)."""
    series = pd.Series(values).reset_index(drop=True)
    missing = series.isna().to_numpy()
    n = len(series)
    if dtype == String:
        text = pa.array(series.astype(object).where(~missing, None).tolist(), type=pa.string())
        data = text.cast(pa.binary())
        head = _as_bytes(*_join([(np.full((n, 1), _TAGS[String], np.uint8), np.ones(n, np.int64)),
                                 _varints(pc.fill_null(pc.binary_length(data), 0).to_numpy())]))
        joined = pc.binary_join_element_wise(pa.array(head.tolist(), pa.binary()), data, b"")
        out = np.array(joined.to_pylist(), dtype=object)
        out[missing] = b""
        return out, text.to_pylist()
    if dtype in (Float64, Float32):
        width = np.float64 if dtype == Float64 else np.float32
        numbers = series.to_numpy(dtype=width, na_value=np.nan)
        matrix, length = _fixed(_TAGS[dtype], numbers)
        texts = numbers.astype(np.float64).astype(str).astype(object)  # str() of the double Python reads back
    elif dtype in (Int64, Int32):
        whole = series.where(~missing, 0).to_numpy(dtype=np.int64)  # exact: never through a float
        if dtype == Int32:
            whole = whole.astype(np.int32).astype(np.int64)
        matrix, length = _join([(np.full((n, 1), _TAGS[dtype], np.uint8), np.ones(n, np.int64)), _varints(whole)])
        texts = whole.astype(str).astype(object)
    elif dtype == Bool:
        flags = series.where(~missing, False).astype(bool).to_numpy()
        matrix, length = _fixed(_TAGS[Bool], flags.astype(np.uint8))
        texts = np.where(flags, "True", "False").astype(object)
    else:
        raise TypeError(f"online_writer: no encoding for feature type {dtype}")
    length = np.where(missing, 0, length)
    texts[missing] = None
    return _as_bytes(matrix, length), texts.tolist()


def entity_keys(persona_ids: Sequence[str]) -> np.ndarray:
    """Feast's serialised entity keys (version 3) of persona ids (an object array of bytes)."""
    name = defs.JOIN_KEY.encode()
    head = struct.pack("<III", 1, _STRING_TYPE, len(name)) + name  # one key, its name as a string
    ids = pa.array([str(p) for p in persona_ids], type=pa.string()).cast(pa.binary())
    n = len(ids)
    sizes = pc.binary_length(ids).to_numpy().astype(np.uint32)
    fixed = np.empty((n, 2), dtype=np.uint32)
    fixed[:, 0], fixed[:, 1] = _STRING_TYPE, sizes
    lead = _as_bytes(fixed.view(np.uint8).reshape(n, 8), np.full(n, 8))
    joined = pc.binary_join_element_wise(pa.scalar(head, pa.binary()), pa.array(lead.tolist(), pa.binary()), ids,
                                         b"")
    return np.array(joined.to_pylist(), dtype=object)


def _micros(values) -> np.ndarray:
    """Times as microseconds since the epoch (naive ones taken as UTC), int64."""
    stamps = pd.to_datetime(pd.Series(values).reset_index(drop=True), utc=True)
    return stamps.dt.tz_localize(None).to_numpy(dtype="datetime64[us]").astype(np.int64)


def sqlite_times(micros: np.ndarray) -> list:
    """What Feast's SQLite store keeps for naive UTC datetimes: the sqlite3 adapter Feast registers stores
    `int(datetime.timestamp())`, whole seconds of the naive time read as local time (UTC on a server in UTC). Taken
    per distinct time (a load has a handful: its snapshot dates), the same call as Feast's."""
    distinct, inverse = np.unique(micros, return_inverse=True)
    seconds = [int(pd.Timestamp(m, unit="us").to_pydatetime().timestamp()) for m in distinct.tolist()]
    return np.asarray(seconds, dtype=np.int64)[inverse].tolist()


def timestamps(micros: np.ndarray) -> np.ndarray:
    """Protobuf `Timestamp` bytes (seconds, nanos; zero fields left out) of times in microseconds."""
    seconds, nanos = np.divmod(micros, 1_000_000)
    nanos = nanos * 1000
    n = len(micros)
    sec_m, sec_l = _varints(seconds)
    nano_m, nano_l = _varints(nanos)
    one = np.ones(n, np.int64)
    return _as_bytes(*_join([(np.full((n, 1), 0x08, np.uint8), np.where(seconds != 0, one, 0)),
                             (sec_m, np.where(seconds != 0, sec_l, 0)),
                             (np.full((n, 1), 0x10, np.uint8), np.where(nanos != 0, one, 0)),
                             (nano_m, np.where(nanos != 0, nano_l, 0))]))


# --- writing ------------------------------------------------------------------------------------------------------
def write(store: feast.FeatureStore, view: str | feast.FeatureView, frame: pd.DataFrame) -> dict:
    """Write the rows of `frame` (persona_id, event_timestamp, created?, the view's features) to the online store as
    Feast's `write_to_online_store` would; returns {"rows", "written", "seconds", "path"} (`written`: rows stored,
    fewer on Redis when it holds newer ones). Rows are encoded and written `CHUNK_ROWS` at a time (memory stays flat
    whatever the frame's length); SQLite takes them in one transaction per call."""
    t0 = time.perf_counter()
    fv = view if isinstance(view, feast.FeatureView) else store.get_feature_view(view, allow_registry_cache=False)
    frame = frame.reset_index(drop=True)
    if not usable(store):
        store.write_to_online_store(fv.name, frame, allow_registry_cache=False)
        return {"rows": len(frame), "written": len(frame), "seconds": round(time.perf_counter() - t0, 3),
                "path": "feast"}
    features = [(f.name, f.dtype) for f in fv.features]
    missing = [name for name in [defs.JOIN_KEY, defs.TIMESTAMP, *(f for f, _ in features)] if name not in frame]
    if missing:
        raise ValueError(f"online_writer: the frame lacks columns of view {fv.name!r}: {missing}")
    keys = entity_keys(frame[defs.JOIN_KEY].tolist())
    when = _micros(frame[defs.TIMESTAMP])
    created = _micros(frame[defs.CREATED]) if defs.CREATED in frame.columns else None
    if store.config.online_store.type == "sqlite":
        rows = np.arange(len(frame))  # Feast's SQLite writer upserts in order: the last row of a persona stays
        sink = _SqliteSink(store, fv)
    else:
        rows = _redis_rows(store, fv, keys, when)
        sink = _RedisSink(store, fv)
    with sink:
        for start in range(0, len(rows), CHUNK_ROWS):
            take = rows[start:start + CHUNK_ROWS]
            part = frame.iloc[take]
            encoded = {name: encode_values(part[name], dtype) for name, dtype in features}
            sink.write(keys[take], when[take], None if created is None else created[take], encoded)
    return {"rows": len(frame), "written": int(len(rows)), "seconds": round(time.perf_counter() - t0, 3),
            "path": "bulk"}


class _SqliteSink:
    """Upserts into Feast's table of the view, one transaction for the whole write."""

    def __init__(self, store: feast.FeatureStore, fv: feast.FeatureView) -> None:
        self.path = sqlite_path(store)
        table = f"{store.project}_{fv.name}".replace('"', '""')
        self.sql = (f'INSERT INTO "{table}" (entity_key, feature_name, value, value_text, event_ts, created_ts) '
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
                    "value = excluded.value, value_text = excluded.value_text, event_ts = excluded.event_ts, "
                    "created_ts = excluded.created_ts")

    def __enter__(self) -> _SqliteSink:
        self.conn = sqlite3.connect(self.path, timeout=60)
        self.conn.execute("BEGIN IMMEDIATE")
        return self

    def write(self, keys: np.ndarray, when: np.ndarray, created: np.ndarray | None, encoded: dict) -> None:
        event_ts = sqlite_times(when)
        created_ts = sqlite_times(created) if created is not None else [None] * len(keys)
        key_list = keys.tolist()
        for name, (values, texts) in encoded.items():  # rows built by zip and consumed by sqlite3, both in C
            self.conn.executemany(self.sql, zip(key_list, repeat(name), values.tolist(), texts, event_ts, created_ts))

    def __exit__(self, kind, exc, tb) -> None:
        try:
            if kind is None:
                self.conn.commit()
            else:
                self.conn.rollback()
        finally:
            self.conn.close()


def _redis_rows(store: feast.FeatureStore, fv: feast.FeatureView, keys: np.ndarray, when: np.ndarray) -> np.ndarray:
    """The rows Feast's Redis writer would store: per persona the first row of its latest time in the frame, when
    that time is later than the view's time the hash holds (all of them under `skip_dedup`)."""
    frame = pd.DataFrame({"k": keys, "t": when})
    if store.config.online_store.skip_dedup:
        return np.arange(len(keys))
    rows = frame.groupby("k", sort=False)["t"].idxmax().to_numpy()
    rows.sort()
    client = _redis(store, True)
    redis_keys = _redis_keys(store, keys[rows])
    ts_field = _constant(f"_ts:{fv.name}".encode())
    held: list = []
    for start in range(0, len(rows), CHUNK_ROWS):
        part = redis_keys[start:start + CHUNK_ROWS]
        held += _send(client, pc.binary_join_element_wise(b"*3\r\n$4\r\nHGET\r\n", _bulk(part), ts_field, b""),
                      len(part))
    found = [j for j, h in enumerate(held) if h]
    if not found:
        return rows
    from google.protobuf.timestamp_pb2 import Timestamp

    stamps = [Timestamp.FromString(held[j]) for j in found]
    previous = np.array([s.seconds * 1_000_000 + s.nanos // 1000 for s in stamps], dtype=np.int64)
    newer = np.ones(len(rows), dtype=bool)
    newer[found] = when[rows[found]] > previous
    return rows[newer]


def _redis_keys(store: feast.FeatureStore, keys: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(pa.array(keys.tolist(), type=pa.binary()), store.project.encode(), b"")


class _RedisSink:
    """HSETs (and EXPIREs under key_ttl_seconds) as Redis protocol built by Arrow, a chunk per round trip."""

    def __init__(self, store: feast.FeatureStore, fv: feast.FeatureView) -> None:
        self.store, self.fv = store, fv
        self.client = _redis(store, True)
        self.ttl = store.config.online_store.key_ttl_seconds

    def __enter__(self) -> _RedisSink:
        return self

    def write(self, keys: np.ndarray, when: np.ndarray, created: np.ndarray | None, encoded: dict) -> None:
        redis_keys = _bulk(_redis_keys(self.store, keys))
        parts = [b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * (len(encoded) + 1)), redis_keys,
                 _constant(f"_ts:{self.fv.name}".encode()), _bulk(timestamps(when))]
        for name, (values, _) in encoded.items():
            parts += [_constant(_field(self.fv.name, name)), _bulk(values)]
        commands = pc.binary_join_element_wise(*parts, b"")
        replies = len(keys)
        if self.ttl:
            expire = pc.binary_join_element_wise(b"*3\r\n$6\r\nEXPIRE\r\n", redis_keys,
                                                 _constant(str(int(self.ttl)).encode()), b"")
            commands = pc.binary_join_element_wise(commands, expire, b"")
            replies *= 2
        _send(self.client, commands, replies)

    def __exit__(self, kind, exc, tb) -> None:
        return None


def _bulk(values) -> pa.Array:
    """Redis protocol bulk strings (`$<length>\\r\\n<bytes>\\r\\n`) of byte values."""
    data = values if isinstance(values, pa.Array) else pa.array(list(values), type=pa.binary())
    size = pc.cast(pc.binary_length(data), pa.string()).cast(pa.binary())
    return pc.binary_join_element_wise(b"$", size, b"\r\n", data, b"\r\n", b"")


def _constant(text: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(text), text)


def _field(view: str, feature: str) -> bytes:
    """Feast's Redis hash field of a feature: murmur3 (32 bit, unsigned, little-endian) of `<view>:<feature>`."""
    return struct.pack("<I", mmh3.hash(f"{view}:{feature}", signed=False))


def _send(client, commands: pa.Array, replies: int) -> list:
    """Send Redis protocol commands (the bytes of an Arrow binary array, sent as one buffer) on one pooled connection
    of the client and read the `replies`; a Redis error is raised once every reply is read."""
    import redis

    offsets = np.frombuffer(commands.buffers()[1], dtype=np.int32)[commands.offset:commands.offset + len(commands) + 1]
    lo, hi = int(offsets[0]), int(offsets[-1])
    payload = commands.buffers()[2].slice(lo, hi - lo).to_pybytes() if hi > lo else b""
    out: list = []
    error = None
    conn = client.connection_pool.get_connection("HSET")
    try:
        conn.send_packed_command([payload], check_health=False)
        for _ in range(replies):
            try:
                out.append(conn.read_response())
            except redis.ResponseError as exc:  # a reply that is an error: the rest are still to be read
                error = error or exc
                out.append(None)
    except BaseException:
        conn.disconnect()  # replies may be pending: never hand this connection back in that state
        raise
    finally:
        client.connection_pool.release(conn)
    if error is not None:
        raise error
    return out


# --- loading the latest snapshot rows -----------------------------------------------------------------------------
def latest_rows(view: feast.FeatureView, start: datetime, end: datetime) -> pd.DataFrame:
    """Each persona's latest row of the view's Parquet source with a time in [start, end] (the newest `created`
    among rows of the same time), as Feast's materialisation takes them."""
    import duckdb

    source = view.batch_source
    columns = ", ".join(f'"{c}"' for c in [defs.JOIN_KEY, defs.TIMESTAMP, defs.CREATED, *(f.name for f in view.features)])
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(
            f"SELECT {columns} FROM read_parquet(?) WHERE {defs.TIMESTAMP} >= ? AND {defs.TIMESTAMP} <= ? "
            f"QUALIFY row_number() OVER (PARTITION BY {defs.JOIN_KEY} "
            f"ORDER BY {defs.TIMESTAMP} DESC, {defs.CREATED} DESC) = 1",
            [source.path, pd.Timestamp(start), pd.Timestamp(end)]).df()
    finally:
        con.close()
