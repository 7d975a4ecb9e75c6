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

Bytes stay in numpy matrices and Arrow buffers until a store needs Python objects (only SQLite's parameters do).
Chunks are encoded in a worker thread one ahead of the chunk being written: the write waits on SQLite or on the
socket, which release the GIL. SQLite gets each persona's features in one statement, personas in entity-key order (its
B-trees are appended to, not scattered), under a large page cache for the writer's connection, and into an empty
table with Feast's own index made once at the end of the transaction rather than row by row; Redis replies are
read in bulk, and the newer-than-held check is one pipelined round trip per chunk.

It is Feast's internal layout, so it is used only where `features.online_reader.internals_usable` says this Feast
and this online store are the ones it was written for (0.67.x; SQLite or redis-py Redis; no feature-view
versioning, no vector columns); elsewhere `write` goes through Feast's public `write_to_online_store`. Tests write
the same frames both ways and compare the stored bytes and Feast's reads.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime

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
    if str(getattr(cfg.online_store, "redis_type", "redis")).endswith("redis_cluster"):
        return False  # a cluster client has no single connection pool to send raw protocol on
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


def _binary(matrix: np.ndarray, length: np.ndarray) -> pa.Array:
    """Each row's first `length` bytes as an Arrow binary array, built from its buffers (no Python object per
    value): the offsets are the lengths' running sum, the data the kept bytes of the matrix row after row."""
    length = np.asarray(length, dtype=np.int64)
    offsets = np.zeros(len(length) + 1, dtype=np.int64)
    np.cumsum(length, out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise ValueError("online_writer: a chunk's values exceed 2 GB; lower CHUNK_ROWS")
    data = np.ascontiguousarray(matrix, dtype=np.uint8)[np.arange(matrix.shape[1])[None, :] < length[:, None]]
    return pa.Array.from_buffers(pa.binary(), len(length),
                                 [None, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)])


def _fixed(tag: int, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = np.ascontiguousarray(values)
    raw = values.view(np.uint8).reshape(len(values), values.dtype.itemsize)
    return np.hstack([np.full((len(values), 1), tag, dtype=np.uint8), raw]), np.full(len(values), raw.shape[1] + 1)


def _texts(items: list, missing: np.ndarray) -> list:
    """`str` of each item (the text Feast's SQLite store derives from a number), None where missing."""
    out = np.array(list(map(str, items)), dtype=object)
    out[missing] = None
    return out.tolist()


def encode_values(values, dtype, *, text: bool = True) -> tuple[pa.Array, list | None]:
    """Feast's `Value` bytes of a column of feature type `dtype` (an Arrow binary array; b"" where missing) and,
    with `text`, the `value_text` Feast's SQLite store keeps beside them (None where missing; Redis has no use for
    it, and making it is most of the encoding's time)."""
    series = pd.Series(values).reset_index(drop=True)
    missing = series.isna().to_numpy()
    n = len(series)
    if dtype == String:
        strings = pa.array(series.astype(object).where(~missing, None).tolist(), type=pa.string())
        data = strings.cast(pa.binary())
        head = _binary(*_join([(np.full((n, 1), _TAGS[String], np.uint8), np.ones(n, np.int64)),
                               _varints(pc.fill_null(pc.binary_length(data), 0).to_numpy())]))
        joined = pc.fill_null(pc.binary_join_element_wise(head, data, b""), pa.scalar(b"", pa.binary()))
        return joined, strings.to_pylist() if text else None
    if dtype in (Float64, Float32):
        width = np.float64 if dtype == Float64 else np.float32
        numbers = series.to_numpy(dtype=width, na_value=np.nan)
        matrix, length = _fixed(_TAGS[dtype], numbers)
        texts = _texts(numbers.astype(np.float64).tolist(), missing) if text else None  # str() of the double read back
    elif dtype in (Int64, Int32):
        whole = series.where(~missing, 0).to_numpy(dtype=np.int64)  # exact: never through a float
        if dtype == Int32:
            whole = whole.astype(np.int32).astype(np.int64)
        matrix, length = _join([(np.full((n, 1), _TAGS[dtype], np.uint8), np.ones(n, np.int64)), _varints(whole)])
        texts = _texts(whole.tolist(), missing) if text else None
    elif dtype == Bool:
        flags = series.where(~missing, False).astype(bool).to_numpy()
        matrix, length = _fixed(_TAGS[Bool], flags.astype(np.uint8))
        texts = _texts(flags.tolist(), missing) if text else None
    else:
        raise TypeError(f"online_writer: no encoding for feature type {dtype}")
    return _binary(matrix, np.where(missing, 0, length)), texts


def entity_keys(persona_ids: Sequence[str]) -> pa.Array:
    """Feast's serialised entity keys (version 3) of persona ids (an Arrow binary array)."""
    name = defs.JOIN_KEY.encode()
    head = struct.pack("<III", 1, _STRING_TYPE, len(name)) + name  # one key, its name as a string
    ids = pa.array([str(p) for p in persona_ids], type=pa.string()).cast(pa.binary())
    n = len(ids)
    fixed = np.empty((n, 2), dtype=np.uint32)
    fixed[:, 0], fixed[:, 1] = _STRING_TYPE, pc.binary_length(ids).to_numpy()
    lead = _binary(fixed.view(np.uint8).reshape(n, 8), np.full(n, 8))
    return pc.binary_join_element_wise(pa.scalar(head, pa.binary()), lead, ids, b"")


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


def timestamps(micros: np.ndarray) -> pa.Array:
    """Protobuf `Timestamp` bytes (seconds, nanos; zero fields left out) of times in microseconds (Arrow binary)."""
    seconds, nanos = np.divmod(micros, 1_000_000)
    nanos = nanos * 1000
    n = len(micros)
    sec_m, sec_l = _varints(seconds)
    nano_m, nano_l = _varints(nanos)
    one = np.ones(n, np.int64)
    return _binary(*_join([(np.full((n, 1), 0x08, np.uint8), np.where(seconds != 0, one, 0)),
                           (sec_m, np.where(seconds != 0, sec_l, 0)),
                           (np.full((n, 1), 0x10, np.uint8), np.where(nanos != 0, one, 0)),
                           (nano_m, np.where(nanos != 0, nano_l, 0))]))


# --- writing ------------------------------------------------------------------------------------------------------
def write(store: feast.FeatureStore, view: str | feast.FeatureView, frame: pd.DataFrame) -> dict:
    """Write the rows of `frame` (persona_id, event_timestamp, created?, the view's features) to the online store as
    Feast's `write_to_online_store` would; returns {"rows", "written", "seconds", "path"} (`written`: rows stored,
    fewer on Redis when it holds newer ones, and on SQLite when a persona repeats: its last row is what Feast's
    upserts leave). Rows are encoded `CHUNK_ROWS` at a time in a worker thread, one chunk ahead of the one being
    written (memory stays flat whatever the frame's length); SQLite takes them in one transaction per call."""
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
        rows = _sqlite_rows(keys)
        sink = _SqliteSink(store, fv)
    else:
        rows = _redis_rows(store, fv, keys, when)
        sink = _RedisSink(store, fv)

    def chunks():
        for start in range(0, len(rows), CHUNK_ROWS):
            take = rows[start:start + CHUNK_ROWS]
            part = frame.iloc[take]
            encoded = {name: encode_values(part[name], dtype, text=sink.TEXT) for name, dtype in features}
            yield sink.prepare(keys.take(pa.array(take)), when[take], None if created is None else created[take],
                               encoded)

    with sink, contextlib.closing(_ahead(chunks())) as batches:  # the worker is stopped before the sink closes
        for batch in batches:
            sink.send(batch)
    return {"rows": len(frame), "written": int(len(rows)), "seconds": round(time.perf_counter() - t0, 3),
            "path": "bulk"}


def _ahead(items: Iterator) -> Iterator:
    """The items of `items`, made in a worker thread one item ahead of the caller (encoding is numpy, Arrow and
    `str`; writing waits on SQLite or the socket, which release the GIL, so the two overlap). An error in the
    worker is raised here; a caller that stops early stops the worker."""
    slot: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                slot.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((done, None))
        except BaseException as exc:  # handed to the caller, who raises it
            put((None, exc))

    worker = threading.Thread(target=run, name="online_writer-encode", daemon=True)
    worker.start()
    try:
        while True:
            item, exc = slot.get()
            if exc is not None:
                raise exc
            if item is done:
                return
            yield item
    finally:
        stop.set()
        worker.join()


def _sqlite_rows(keys: pa.Array) -> np.ndarray:
    """The frame's rows in the order they are written to SQLite: by entity key (SQLite's BLOB order, byte by byte,
    which Arrow's sort shares), one per persona, its last (what Feast's upserts in frame order leave). Rows then
    arrive in the order of the table's primary key: appended to its B-trees rather than scattered across them."""
    order = pc.sort_indices(keys).to_numpy()  # stable: a persona's rows keep the frame's order
    if len(order) < 2:
        return order
    ordered = keys.take(pa.array(order))
    last = np.ones(len(order), dtype=bool)
    last[:-1] = pc.not_equal(ordered.slice(0, len(order) - 1), ordered.slice(1)).to_numpy(zero_copy_only=False)
    return order[last]


class _SqliteSink:
    """Upserts into Feast's table of the view, one transaction for the whole write: a reader sees the table as it
    was or with the whole write, never part of it. One statement per persona inserts all its features (feature names
    as SQL literals, sorted): half the values to bind and one statement run per persona rather than per value."""

    TEXT = True  # Feast's SQLite table keeps value_text
    MAX_FEATURES = 400  # features per statement: 2 x 400 + 3 values bound, under 999 (the limit of SQLite < 3.32)

    def __init__(self, store: feast.FeatureStore, fv: feast.FeatureView) -> None:
        self.path = sqlite_path(store)
        self.table_name = f"{store.project}_{fv.name}"
        self.table = table = self.table_name.replace('"', '""')
        self.names = sorted(f.name for f in fv.features)  # the primary key's order within a persona
        groups = [self.names[i:i + self.MAX_FEATURES] for i in range(0, len(self.names), self.MAX_FEATURES)]
        self.statements = []
        for group in groups:
            last = 2 * len(group) + 2  # ?1 key, ?2.. value and text per feature, then event_ts, created_ts
            rows = ", ".join("(?1, '{}', ?{}, ?{}, ?{}, ?{})".format(name.replace("'", "''"), 2 + 2 * j, 3 + 2 * j,
                                                                     last, last + 1) for j, name in enumerate(group))
            self.statements.append((group, (
                f'INSERT INTO "{table}" (entity_key, feature_name, value, value_text, event_ts, created_ts) '
                f"VALUES {rows} ON CONFLICT(entity_key, feature_name) DO UPDATE SET value = excluded.value, "
                "value_text = excluded.value_text, event_ts = excluded.event_ts, created_ts = excluded.created_ts")))

    def __enter__(self) -> _SqliteSink:
        self.conn = sqlite3.connect(self.path, timeout=60)
        # this connection's page cache (up to 1 GB, used as needed): a view's indexes stay in memory for the
        # transaction, not spilled to the file and read back; it ends with the connection
        self.conn.execute("PRAGMA cache_size = -1000000")
        self.conn.execute("BEGIN IMMEDIATE")
        # Into an empty table (a first or full load) the table's own indexes (Feast's on entity_key) are dropped and
        # made again from their SQL before the commit: one sort instead of an insert per row, about a third less
        # time. In the same transaction, so no reader ever sees the table without them.
        self.indexes = []
        if self.conn.execute(f'SELECT 1 FROM "{self.table}" LIMIT 1').fetchone() is None:
            self.indexes = self.conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND "
                                             "tbl_name = ? AND sql IS NOT NULL", (self.table_name,)).fetchall()
            for name, _ in self.indexes:
                quoted = name.replace('"', '""')
                self.conn.execute(f'DROP INDEX "{quoted}"')
        return self

    def prepare(self, keys: pa.Array, when: np.ndarray, created: np.ndarray | None, encoded: dict) -> list:
        """A chunk's statement parameters, a row per persona: key, (value, text) per feature, event_ts, created_ts."""
        n = len(keys)
        event_ts = sqlite_times(when)
        created_ts = sqlite_times(created) if created is not None else [None] * n
        key_list = keys.to_numpy(zero_copy_only=False)
        batches = []
        for group, sql in self.statements:
            table = np.empty((n, 2 * len(group) + 3), dtype=object)
            table[:, 0] = key_list
            for j, name in enumerate(group):
                values, texts = encoded[name]
                table[:, 1 + 2 * j] = values.to_numpy(zero_copy_only=False)
                table[:, 2 + 2 * j] = texts
            table[:, -2], table[:, -1] = event_ts, created_ts
            batches.append((sql, table.tolist()))
        return batches

    def send(self, batches: list) -> None:
        for sql, params in batches:
            self.conn.executemany(sql, params)

    def __exit__(self, kind, exc, tb) -> None:
        try:
            if kind is None:
                for _, sql in self.indexes:
                    self.conn.execute(sql)
                self.conn.commit()
            else:
                self.conn.rollback()
        finally:
            self.conn.close()


def _redis_rows(store: feast.FeatureStore, fv: feast.FeatureView, keys: pa.Array, when: np.ndarray) -> np.ndarray:
    """The rows Feast's Redis writer would store: per persona the first row of its latest time in the frame, when
    that time is later than the view's time the hash holds (all of them under `skip_dedup`). The held times are
    read with pipelined HGETs, a chunk per round trip, their replies parsed in bulk."""
    if store.config.online_store.skip_dedup:
        return np.arange(len(keys))
    table = pa.table({"k": keys, "t": pa.array(when, pa.int64()), "i": pa.array(np.arange(len(keys)))})
    ordered = table.take(pc.sort_indices(table, sort_keys=[("k", "ascending"), ("t", "descending")]))  # stable
    first = np.ones(len(keys), dtype=bool)
    if len(keys) > 1:
        k = ordered["k"].combine_chunks()
        first[1:] = pc.not_equal(k.slice(1), k.slice(0, len(keys) - 1)).to_numpy(zero_copy_only=False)
    rows = np.sort(ordered["i"].to_numpy()[first])
    redis_keys = _redis_keys(store, keys.take(pa.array(rows)))
    ts_field = _constant(f"_ts:{fv.name}".encode())
    held: list = []
    with _connection(_redis(store, True)) as conn:
        for start in range(0, len(rows), CHUNK_ROWS):
            part = redis_keys.slice(start, CHUNK_ROWS)
            _send(conn, pc.binary_join_element_wise(b"*3\r\n$4\r\nHGET\r\n", _bulk(part), ts_field, b""))
            held += _bulk_replies(conn, len(part))
    found = [j for j, h in enumerate(held) if h]
    if not found:
        return rows
    from google.protobuf.timestamp_pb2 import Timestamp

    stamps = [Timestamp.FromString(held[j]) for j in found]
    previous = np.array([s.seconds * 1_000_000 + s.nanos // 1000 for s in stamps], dtype=np.int64)
    newer = np.ones(len(rows), dtype=bool)
    newer[found] = when[rows[found]] > previous
    return rows[newer]


def _redis_keys(store: feast.FeatureStore, keys: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(keys, store.project.encode(), b"")


class _RedisSink:
    """HSETs (and EXPIREs under key_ttl_seconds) as Redis protocol built by Arrow, a chunk per round trip on one
    connection of Feast's client; each persona's hash is set by one HSET, so a write stopped part-way leaves every
    persona with all of this view's values or none of them."""

    TEXT = False  # value_text is SQLite's only

    def __init__(self, store: feast.FeatureStore, fv: feast.FeatureView) -> None:
        self.store, self.fv = store, fv
        self.client = _redis(store, True)
        self.ttl = store.config.online_store.key_ttl_seconds
        self.fields = {f.name: _constant(_field(fv.name, f.name)) for f in fv.features}

    def __enter__(self) -> _RedisSink:
        self._hold = _connection(self.client)
        self.conn = self._hold.__enter__()
        return self

    def prepare(self, keys: pa.Array, when: np.ndarray, created: np.ndarray | None,
                encoded: dict) -> tuple[pa.Array, int]:
        """A chunk's commands (an Arrow binary array, a command per persona) and the number of replies due."""
        redis_keys = _bulk(_redis_keys(self.store, keys))
        parts = [b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * (len(encoded) + 1)), redis_keys,
                 _constant(f"_ts:{self.fv.name}".encode()), _bulk(timestamps(when))]
        for name, (values, _) in encoded.items():
            parts += [self.fields[name], _bulk(values)]
        commands = pc.binary_join_element_wise(*parts, b"")
        replies = len(keys)
        if self.ttl:
            expire = pc.binary_join_element_wise(b"*3\r\n$6\r\nEXPIRE\r\n", redis_keys,
                                                 _constant(str(int(self.ttl)).encode()), b"")
            commands = pc.binary_join_element_wise(commands, expire, b"")
            replies *= 2
        return commands, replies

    def send(self, batch: tuple[pa.Array, int]) -> None:
        commands, replies = batch
        _send(self.conn, commands)
        _line_replies(self.conn, replies)

    def __exit__(self, kind, exc, tb) -> None:
        self._hold.__exit__(kind, exc, tb)


def _bulk(values: pa.Array) -> pa.Array:
    """Redis protocol bulk strings (`$<length>\\r\\n<bytes>\\r\\n`) of byte values."""
    size = pc.cast(pc.binary_length(values), pa.string()).cast(pa.binary())
    return pc.binary_join_element_wise(b"$", size, b"\r\n", values, b"\r\n", b"")


def _constant(text: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(text), text)


def _field(view: str, feature: str) -> bytes:
    """Feast's Redis hash field of a feature: murmur3 (32 bit, unsigned, little-endian) of `<view>:<feature>`."""
    return struct.pack("<I", mmh3.hash(f"{view}:{feature}", signed=False))


@contextlib.contextmanager
def _connection(client):
    """One connection of the client's pool, for raw protocol: the pool hands it over with nothing pending to read;
    one left with replies unread (an error part-way) is disconnected, never handed back in that state."""
    conn = client.connection_pool.get_connection()
    try:
        yield conn
    except BaseException:
        conn.disconnect()
        raise
    finally:
        client.connection_pool.release(conn)


def _send(conn, commands: pa.Array) -> None:
    """Send Redis protocol commands, the data buffer of an Arrow binary array, as they are (no copy)."""
    offsets = np.frombuffer(commands.buffers()[1], dtype=np.int32)[commands.offset:commands.offset + len(commands) + 1]
    lo, hi = int(offsets[0]), int(offsets[-1])
    if hi > lo:
        conn.send_packed_command([memoryview(commands.buffers()[2])[lo:hi]], check_health=False)


def _recv(conn) -> bytes:
    import redis

    data = conn._sock.recv(1 << 20)
    if not data:
        conn.disconnect()
        raise redis.ConnectionError("online_writer: Redis closed the connection before replying to every command")
    return data


def _line_replies(conn, count: int) -> None:
    """Read `count` one-line replies (HSET's and EXPIRE's integers, or errors) as they come, counted by their line
    ends rather than parsed one by one; the first error is raised once all are read."""
    import redis

    seen, tail, error = 0, b"", None
    while seen < count:
        data = tail + _recv(conn)
        cut = data.rfind(b"\r\n") + 2  # complete lines up to there; a line split between two reads waits
        done, tail = (data[:cut], data[cut:]) if cut >= 2 else (b"", data)
        seen += done.count(b"\r\n")
        if error is None and (done.startswith(b"-") or b"\n-" in done):
            error = next(line for line in done.split(b"\r\n") if line.startswith(b"-"))
    if seen != count or tail:
        conn.disconnect()
        raise redis.ConnectionError(f"online_writer: more replies than the {count} due")
    if error is not None:
        raise redis.ResponseError(error[1:].decode(errors="replace"))


def _bulk_replies(conn, count: int) -> list:
    """Read `count` replies of HGET (bulk strings: bytes, or None where the field is absent); the first error is
    raised once all are read."""
    import redis

    out: list = []
    buf, pos, error = b"", 0, None
    while len(out) < count:
        end = buf.find(b"\r\n", pos)
        if end >= 0 and buf[pos:pos + 1] == b"$":
            size = int(buf[pos + 1:end])
            if size < 0:
                out.append(None)
                pos = end + 2
                continue
            if end + 4 + size <= len(buf):
                out.append(buf[end + 2:end + 2 + size])
                pos = end + 4 + size
                continue
        elif end >= 0:  # an error (or a reply HGET never gives)
            error = error or buf[pos:end].decode(errors="replace")
            out.append(None)
            pos = end + 2
            continue
        buf, pos = buf[pos:] + _recv(conn), 0
    if pos != len(buf):
        raise redis.ConnectionError("online_writer: more replies than commands sent")
    if error is not None:
        raise redis.ResponseError(error.lstrip("-"))
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
