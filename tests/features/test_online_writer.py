"""The bulk online writer (features/online_writer.py) writes what Feast's own writer writes: the same protobuf bytes
per value type, entity keys and timestamps; the same SQLite rows; the same Redis hashes, including Feast's rule that
a row not newer than the one held is not written. Each store is written both ways and the stored bytes compared, then
read back through Feast."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
import redis
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import extract_text_and_num
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import python_values_to_proto_values
from feast.types import Bool, Float32, Float64, Int32, Int64, String
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from features import online_reader, online_writer
from features import store as fs
from tests.features.test_store import D1, D2, build, make_config

CASES = [
    (Float64, ValueType.DOUBLE, np.array([1.5, np.nan, 0.0, -2.25e-300, 1e16, 123456789.123, -0.0])),
    (Float32, ValueType.FLOAT, np.array([0.1, np.nan, -3.5, 3.4e38], dtype="float32")),
    (Int64, ValueType.INT64, np.array([0, 1, -1, 127, 128, 300, 2**62, -2**63, 2**63 - 1])),
    (Int32, ValueType.INT32, np.array([0, 5, -2, 2**31 - 1, -2**31], dtype="int32")),
    (Bool, ValueType.BOOL, np.array([True, False, True])),
    (String, ValueType.STRING, np.array(["a", None, "", "x" * 200, "中文 e-mail@x.cn", "y" * 20000], dtype=object)),
]


@pytest.mark.parametrize(("dtype", "value_type", "values"), CASES, ids=[str(c[0]) for c in CASES])
def test_values_encode_as_feast_encodes_them(dtype, value_type, values):
    encoded, texts = online_writer.encode_values(values, dtype)
    protos = python_values_to_proto_values(list(values), value_type)
    assert encoded.tolist() == [p.SerializeToString() for p in protos]
    assert texts == [extract_text_and_num(p, False)[0] for p in protos]


def test_missing_values_of_nullable_columns_are_feasts_empty_value():
    encoded, texts = online_writer.encode_values(pd.array([3, None, -4], dtype="Int64"), Int64)
    assert encoded.tolist() == [Value(int64_val=3).SerializeToString(), b"", Value(int64_val=-4).SerializeToString()]
    assert texts == ["3", None, "-4"]


def test_entity_keys_and_timestamps_are_feasts():
    ids = ["P1", "中文id", "", "x" * 300]
    want = [serialize_entity_key(EntityKey(join_keys=["persona_id"], entity_values=[Value(string_val=i)]), 3)
            for i in ids]
    assert online_writer.entity_keys(ids).tolist() == want
    times = pd.to_datetime(["2024-01-01 00:00:00", "2024-01-01 00:00:00.123456", "1970-01-01 00:00:00",
                            "2030-05-05 01:02:03", "1969-12-31 23:59:59.5"], utc=True, format="ISO8601")
    expected = []
    for t in times:
        proto = Timestamp()
        proto.FromDatetime(t.to_pydatetime())
        expected.append(proto.SerializeToString())
    assert online_writer.timestamps(online_writer._micros(times)).tolist() == expected


# --- stores written both ways -------------------------------------------------------------------------------------
def _frame(n: int, when: pd.Timestamp, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    amount = rng.normal(size=n) * 100
    amount[rng.random(n) < 0.2] = np.nan
    return pd.DataFrame({"persona_id": [f"p{i}" for i in range(n)], "event_timestamp": when,
                         "created_timestamp": when + pd.Timedelta(seconds=int(rng.integers(0, 100))),
                         "tx_amount_90d": amount, "tx_count_90d": rng.integers(-5, 10**6, size=n)})


def _tags(n: int) -> pd.DataFrame:
    labels = np.array(["high", None, "low", "中"], dtype=object)
    return pd.DataFrame({"persona_id": [f"p{i}" for i in range(n)], "band": labels[np.arange(n) % 4],
                         "churn_risk": np.where(np.arange(n) % 5 == 0, np.nan, np.arange(n) / n)})


def _sqlite_rows(store, view: str) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(online_reader.sqlite_path(store))) as conn:
        return conn.execute(f'SELECT entity_key, feature_name, value, value_text, event_ts, created_ts '
                            f'FROM "{store.project}_{view}" ORDER BY entity_key, feature_name').fetchall()


def _feast_path(monkeypatch):
    monkeypatch.setattr(online_writer, "usable", lambda store: False)


def test_sqlite_rows_equal_feasts(tmp_path, monkeypatch):
    bulk, feast_ = build(tmp_path / "bulk", make_config()), build(tmp_path / "feast", make_config())
    for when, seed in ((D1, 1), (D2, 2)):  # a second write over the first: upserts
        frame = _frame(300, when, seed)
        assert online_writer.write(bulk.store, "transactions", frame)["path"] == "bulk"
        with monkeypatch.context() as m:
            _feast_path(m)
            assert online_writer.write(feast_.store, "transactions", frame)["path"] == "feast"
    assert _sqlite_rows(bulk.store, "transactions") == _sqlite_rows(feast_.store, "transactions")
    fs.push_tags(bulk.store, _tags(50), D2.to_pydatetime())
    with monkeypatch.context() as m:
        _feast_path(m)
        fs.push_tags(feast_.store, _tags(50), D2.to_pydatetime())
    assert len(_sqlite_rows(bulk.store, "tags")) == 100
    assert [r[:4] for r in _sqlite_rows(bulk.store, "tags")] == [r[:4] for r in _sqlite_rows(feast_.store, "tags")]
    people = [f"p{i}" for i in range(0, 300, 7)]
    got = fs.online_features(bulk.store, "high_value_v1", people)
    assert got.equals(fs.online_features(feast_.store, "high_value_v1", people))


def test_materialize_loads_what_feasts_materialisation_loads(tmp_path, monkeypatch):
    bulk, feast_ = build(tmp_path / "bulk", make_config()), build(tmp_path / "feast", make_config())
    report = fs.materialize(bulk.store, D2 + timedelta(days=1))
    with monkeypatch.context() as m:
        _feast_path(m)
        assert fs.materialize(feast_.store, D2 + timedelta(days=1))["path"] == "feast"
    assert report["path"] == "bulk"
    for view in ("attributes", "transactions", "engagement", "realtime"):
        assert _sqlite_rows(bulk.store, view) == _sqlite_rows(feast_.store, view), view
    # the registry records the window as Feast does: the next run is incremental and finds nothing new
    again = fs.materialize(bulk.store, D2 + timedelta(days=1))
    assert {r["mode"] for r in again["views"].values()} == {"up_to_date"}


def _fail_on_a_later_chunk(monkeypatch) -> None:
    """Writes die while encoding a later chunk, the first ones written."""
    calls = {"n": 0}
    real = online_writer.encode_values

    def failing(values, dtype, **kw):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("killed mid-write")
        return real(values, dtype, **kw)

    monkeypatch.setattr(online_writer, "CHUNK_ROWS", 40)
    monkeypatch.setattr(online_writer, "encode_values", failing)


def test_a_failed_sqlite_write_leaves_nothing_of_itself(tmp_path, monkeypatch):
    applied = build(tmp_path, make_config())
    online_writer.write(applied.store, "transactions", _frame(100, D1, 1))
    before = _sqlite_rows(applied.store, "transactions")
    _fail_on_a_later_chunk(monkeypatch)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        online_writer.write(applied.store, "transactions", _frame(100, D2, 2))
    assert _sqlite_rows(applied.store, "transactions") == before


def _schema_of(store, view: str) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(online_reader.sqlite_path(store))) as conn:
        return conn.execute("SELECT type, name, sql FROM sqlite_master WHERE tbl_name = ? ORDER BY name",
                            (f"{store.project}_{view}",)).fetchall()


def test_a_first_load_leaves_feasts_table_and_indexes_as_feast_made_them_also_when_it_fails(tmp_path, monkeypatch):
    applied = build(tmp_path, make_config())
    made = _schema_of(applied.store, "transactions")
    assert any(kind == "index" and sql for kind, _, sql in made)  # Feast's index on entity_key, dropped meanwhile
    real = online_writer.encode_values
    _fail_on_a_later_chunk(monkeypatch)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        online_writer.write(applied.store, "transactions", _frame(100, D1, 1))
    assert _schema_of(applied.store, "transactions") == made and _sqlite_rows(applied.store, "transactions") == []
    monkeypatch.setattr(online_writer, "encode_values", real)
    online_writer.write(applied.store, "transactions", _frame(100, D1, 1))
    assert _schema_of(applied.store, "transactions") == made and len(_sqlite_rows(applied.store, "transactions")) == 200
    with contextlib.closing(sqlite3.connect(online_reader.sqlite_path(applied.store))) as conn:
        plan = conn.execute(f'EXPLAIN QUERY PLAN SELECT * FROM "{applied.store.project}_transactions" '
                            "WHERE entity_key = x'00'").fetchall()
    assert "INDEX" in str(plan)


def test_a_persona_repeated_in_a_frame_keeps_its_last_row_as_feasts_upserts_do(tmp_path, monkeypatch):
    bulk, feast_ = build(tmp_path / "bulk", make_config()), build(tmp_path / "feast", make_config())
    frame = pd.concat([_frame(60, D1, 1), _frame(30, D2, 2).iloc[::-1], _frame(45, D1, 3)], ignore_index=True)
    monkeypatch.setattr(online_writer, "CHUNK_ROWS", 25)  # personas of one key order spread over several chunks
    assert online_writer.write(bulk.store, "transactions", frame)["written"] == 60
    with monkeypatch.context() as m:
        _feast_path(m)
        online_writer.write(feast_.store, "transactions", frame)
    assert _sqlite_rows(bulk.store, "transactions") == _sqlite_rows(feast_.store, "transactions")


def test_a_reader_sees_the_table_before_or_after_a_sqlite_write_never_part_of_it(tmp_path, monkeypatch):
    applied = build(tmp_path, make_config())
    online_writer.write(applied.store, "transactions", _frame(100, D1, 1))
    before = _sqlite_rows(applied.store, "transactions")
    seen = []
    real = online_writer.encode_values

    def reading(values, dtype, **kw):  # a reader on its own connection while chunks are being written
        seen.append(_sqlite_rows(applied.store, "transactions"))
        return real(values, dtype, **kw)

    monkeypatch.setattr(online_writer, "CHUNK_ROWS", 20)
    monkeypatch.setattr(online_writer, "encode_values", reading)
    online_writer.write(applied.store, "transactions", _frame(100, D2, 2))
    after = _sqlite_rows(applied.store, "transactions")
    assert len(seen) == 10 and after != before
    assert all(rows == before for rows in seen)


def test_an_empty_frame_writes_nothing(tmp_path):
    applied = build(tmp_path, make_config())
    online_writer.write(applied.store, "transactions", _frame(50, D1, 1))
    before = _sqlite_rows(applied.store, "transactions")
    assert online_writer.write(applied.store, "transactions", _frame(0, D2, 2))["written"] == 0
    assert _sqlite_rows(applied.store, "transactions") == before


def test_a_frame_missing_a_feature_is_refused_by_name(tmp_path):
    applied = build(tmp_path, make_config())
    with pytest.raises(ValueError, match="tx_count_90d"):
        online_writer.write(applied.store, "transactions", _frame(5, D1, 1).drop(columns="tx_count_90d"))


# --- Redis ----------------------------------------------------------------------------------------------------------
@pytest.fixture
def redis_pair(production_servers, tmp_path):
    """Two applied workspaces on the production profile (a project each), dropped afterwards."""
    from tests.features.test_store_production import _drop_project

    made = []
    for name in ("bulk", "feast"):
        cfg = make_config(profile="production", project=f"persona_test_{uuid.uuid4().hex[:10]}",
                          redis=production_servers["redis"], registry_url=production_servers["registry_url"])
        made.append(build(tmp_path / name, cfg))
    yield made
    for applied in made:
        _drop_project(applied)


def _hashes(applied, ids) -> list[dict]:
    store = applied.store
    host, _, port = store.config.online_store.connection_string.split(",")[0].rpartition(":")
    client = redis.Redis(host=host, port=int(port))
    keys = online_writer.entity_keys(ids).tolist()
    return [client.hgetall(k + store.project.encode()) for k in keys]


@pytest.mark.production
def test_redis_hashes_equal_feasts_including_what_is_not_newer(redis_pair, monkeypatch):
    bulk, feast_ = redis_pair
    first = _frame(200, D2, 1)
    older = _frame(200, D1, 2)  # older than what is held: Feast skips every row
    same = _frame(200, D2, 3)  # as old as what is held: skipped too
    newer = _frame(200, D2 + timedelta(days=1), 4).iloc[::3]
    dupes = pd.concat([_frame(20, D2 + timedelta(days=3), 5), _frame(20, D2 + timedelta(days=2), 6),
                       _frame(20, D2 + timedelta(days=3), 7)])  # within one frame: the first of the latest time
    for frame in (first, older, same, newer, dupes):
        assert online_writer.write(bulk.store, "transactions", frame)["path"] == "bulk"
        with monkeypatch.context() as m:
            _feast_path(m)
            online_writer.write(feast_.store, "transactions", frame)
    ids = [f"p{i}" for i in range(200)]
    assert _hashes(bulk, ids) == _hashes(feast_, ids)
    got = fs.online_features(bulk.store, "high_value_v1", ids[:30])
    assert got["tx_amount_90d"].iloc[0] == pytest.approx(dupes["tx_amount_90d"].iloc[0], nan_ok=True)
    assert got.equals(fs.online_features(feast_.store, "high_value_v1", ids[:30]))
    fs.push_tags(bulk.store, _tags(30), D2.to_pydatetime())
    with monkeypatch.context() as m:
        _feast_path(m)
        fs.push_tags(feast_.store, _tags(30), D2.to_pydatetime())
    assert _hashes(bulk, ids[:30]) == _hashes(feast_, ids[:30])


@pytest.mark.production
def test_a_redis_write_killed_part_way_leaves_each_persona_old_or_new(redis_pair, monkeypatch):
    bulk, feast_ = redis_pair
    ids = [f"p{i}" for i in range(200)]
    first, newer = _frame(200, D1, 1), _frame(200, D2, 2)
    with monkeypatch.context() as m:
        _feast_path(m)
        online_writer.write(feast_.store, "transactions", first)
        old = _hashes(feast_, ids)
        online_writer.write(feast_.store, "transactions", newer)
        new = _hashes(feast_, ids)
    online_writer.write(bulk.store, "transactions", first)
    calls = {"n": 0}
    real = online_writer.encode_values

    def failing(values, dtype, **kw):  # dies encoding the fourth chunk: up to three were sent
        calls["n"] += 1
        if calls["n"] > 6:
            raise RuntimeError("killed mid-write")
        return real(values, dtype, **kw)

    monkeypatch.setattr(online_writer, "CHUNK_ROWS", 30)
    monkeypatch.setattr(online_writer, "encode_values", failing)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        online_writer.write(bulk.store, "transactions", newer)
    got = _hashes(bulk, ids)
    assert all(h in (o, n) for h, o, n in zip(got, old, new))
    assert sum(h == n for h, n in zip(got, new)) == 90  # the three chunks encoded before the failure
    monkeypatch.undo()
    # the rest: the 90 written hold a time as new as theirs, so Feast's rule skips them
    assert online_writer.write(bulk.store, "transactions", newer)["written"] == 110
    assert _hashes(bulk, ids) == new


@pytest.mark.production
def test_a_redis_error_reply_is_raised_and_the_connection_stays_usable(redis_pair):
    bulk, _ = redis_pair
    store = bulk.store
    client = online_reader._redis(store, True)
    client.set(online_writer.entity_keys(["p3"]).tolist()[0] + store.project.encode(), b"not a hash")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        online_writer.write(store, "transactions", _frame(10, D1, 1))
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):  # the check passes under skip_dedup; HSET refuses
        with pytest.MonkeyPatch.context() as m:
            m.setattr(store.config.online_store, "skip_dedup", True)
            online_writer.write(store, "transactions", _frame(10, D1, 1))
    assert len([h for h in _hashes(bulk, [f"p{i}" for i in range(10) if i != 3]) if h]) == 9  # the others written
    assert online_writer.write(store, "transactions", _frame(10, D2, 1).iloc[4:])["written"] == 6


class _Trickle:
    """A connection whose socket hands over the given bytes a few at a time (replies split anywhere)."""

    def __init__(self, data: bytes, step: int) -> None:
        self._sock = self
        self.parts = [data[i:i + step] for i in range(0, len(data), step)]

    def recv(self, size: int) -> bytes:
        return self.parts.pop(0) if self.parts else b""

    def disconnect(self) -> None:
        self.parts = []


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_replies_split_across_reads_are_read_whole(step):
    online_writer._line_replies(_Trickle(b":1\r\n:0\r\n:12\r\n", step), 3)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE Operation"):
        online_writer._line_replies(_Trickle(b":1\r\n-WRONGTYPE Operation\r\n:1\r\n", step), 3)
    held = b"\x08\x80\r\n\x10\x01"  # a Timestamp whose bytes hold a line end
    got = online_writer._bulk_replies(_Trickle(b"$-1\r\n$6\r\n" + held + b"\r\n$0\r\n\r\n", step), 3)
    assert got == [None, held, b""]
    with pytest.raises(redis.ConnectionError):
        online_writer._bulk_replies(_Trickle(b"$-1\r\n", step), 2)
