"""The Feast store on the embedded profile (SQLite online store, SQL registry on SQLite, DuckDB offline store).

Small snapshot files are written here, so every expected value is known: a persona's value in a group is
`scale[group] * (10 * k + offset[persona])`, with k = 1 for the snapshot dated D1 and 2 for D2. The check_* helpers
are shared with tests/features/test_store_production.py, which runs them against Redis and PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import feast
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import store as fs
from features import online_reader
from persona.config import PersonaConfig, parse_config
from persona.workspace import Workspace

D1 = pd.Timestamp("2024-03-01", tz="UTC")
D2 = pd.Timestamp("2024-04-01", tz="UTC")
K = {D1: 1, D2: 2}
# Group -> (float feature, its scale). Transactions also has an int64 count (= k) to check types survive the store.
FEATURE = {"attributes": ("attr_score", 1.0), "transactions": ("tx_amount_90d", 10.0),
           "engagement": ("eng_visits_30d", 100.0), "affinity": ("aff_view_books_30d", 0.5),
           "realtime": ("rt_views_1h", 1000.0)}
TX_COUNT = "tx_count_90d"
OFFSET = {"a": 1, "b": 2, "late": 3}
# Snapshot rows: a and b at both dates, `late` only at D2.
ROWS = [("a", D1), ("b", D1), ("a", D2), ("b", D2), ("late", D2)]
WRITTEN = ("attributes", "transactions", "engagement", "realtime")  # no affinity: services must skip it
ALL = ("attributes", "transactions", "engagement", "affinity", "realtime")
SERVICES = {  # what each model reads, spelled out here rather than taken from features.store
    "churn_risk_v1": ("attributes", "transactions", "engagement", "realtime"),
    "high_value_v1": ("attributes", "transactions", "engagement"),
    "interest_v1": ("attributes", "transactions", "engagement", "affinity", "realtime"),
}

MINIMAL_CONFIG = {
    "version": 1,
    "name": "shop",
    "sources": {
        "orders": {
            "channel": "online", "kind": "transactions", "path": "raw/orders.csv", "key": ["order_id"],
            "timestamp": {"column": "order_time", "format": "iso"},
            "identifiers": {"phone": "buyer_phone"},
            "fields": {"order_id": "order_id", "amount": "amount"},
        },
    },
    "identity": {"identifiers": {"phone": {"normalise": "phone"}}},
}


def make_config(**store) -> PersonaConfig:
    return parse_config({**MINIMAL_CONFIG, "store": {"project": "persona_test", **store}})


def value(group: str, persona: str, when: pd.Timestamp) -> float:
    return FEATURE[group][1] * (10 * K[when] + OFFSET[persona])


def features_of(groups) -> list[str]:
    out = []
    for g in groups:
        out.append(FEATURE[g][0])
        if g == "transactions":
            out.append(TX_COUNT)
    return out


def write_snapshot(root: Path, group: str, rows=ROWS, *, key_type: pa.DataType = pa.string(),
                   ts_type: pa.DataType = pa.timestamp("us", tz="UTC"), extra: str | None = None) -> Path:
    """`<root>/features/offline/<group>.parquet` in the snapshot writer's layout (`extra`: one more int64 feature,
    7 * k)."""
    name, _ = FEATURE[group]
    ids = [p for p, _ in rows]
    columns = {
        "persona_id": pa.array([OFFSET[p] for p in ids] if pa.types.is_integer(key_type) else ids, key_type),
        "event_timestamp": pa.array([w for _, w in rows], ts_type),
        "created_timestamp": pa.array([w for _, w in rows], ts_type),
        name: pa.array([value(group, p, w) for p, w in rows], pa.float64()),
    }
    if group == "transactions":
        columns[TX_COUNT] = pa.array([K[w] for _, w in rows], pa.int64())
    if extra:
        columns[extra] = pa.array([7 * K[w] for _, w in rows], pa.int64())
    path = root / "features" / "offline" / f"{group}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


@dataclass
class Applied:
    ws: Workspace
    cfg: PersonaConfig
    store: feast.FeatureStore
    services: list[str]


def build(root: Path, cfg: PersonaConfig, groups=WRITTEN) -> Applied:
    """A workspace with snapshots of `groups`, its store opened and the repository applied."""
    for g in groups:
        write_snapshot(root, g)
    ws = Workspace.open(root)
    store = fs.open_store(ws, cfg)
    return Applied(ws, cfg, store, fs.apply(store, ws, cfg))


# --- checks shared with the production profile ------------------------------------------------------------------
def check_services(applied: Applied, groups=WRITTEN) -> None:
    """Every service whose groups have a snapshot exists, with exactly those groups, in the service's order."""
    expected = {name: [g for g in wanted if g in groups] for name, wanted in SERVICES.items()}
    expected = {name: views for name, views in expected.items() if views}
    assert applied.services == sorted(expected)
    registered = {s.name: s for s in applied.store.list_feature_services()}
    assert sorted(registered) == sorted(expected)
    for name, views in expected.items():
        service = registered[name]
        assert [p.name for p in service.feature_view_projections] == views, name
        assert fs.service_features(service) == features_of(views), name
    assert sorted(v.name for v in applied.store.list_feature_views()) == sorted(groups)


def check_point_in_time(applied: Applied) -> None:
    """Each row gets the latest snapshot at or before its time, never a later one; rows are kept and ordered."""
    day = timedelta(days=1)
    rows = [  # (persona, time, the snapshot date it must see, or None for nulls)
        ("a", D2 + 5 * day, D2),  # after the last snapshot
        ("a", D1 - day, None),  # before every snapshot: nulls, not dropped
        ("a", D1, D1),  # exactly at a snapshot
        ("a", D1 + 10 * day, D1),  # between: the earlier one
        ("a", D2 - pd.Timedelta(microseconds=1), D1),  # an instant before D2: still D1
        ("a", D2, D2),
        ("b", D1 + 3 * day, D1),
        ("late", D1 + 3 * day, None),  # its only snapshot (D2) is later: nulls
        ("late", D2 + day, D2),
        ("nobody", D2, None),  # unknown persona
        ("a", D1 + 10 * day, D1),  # duplicate rows stay duplicate rows
    ]
    entity_df = pd.DataFrame({"persona_id": [p for p, _, _ in rows], "event_timestamp": [t for _, t, _ in rows],
                              "label": np.arange(len(rows)), "note": ["x", None] * 5 + ["y"]},
                             index=np.arange(len(rows))[::-1])  # a non-default index must not matter
    service = "churn_risk_v1"
    got = fs.historical_features(applied.store, service, entity_df)
    groups = SERVICES[service]
    assert list(got.columns) == ["persona_id", "event_timestamp", "label", "note", *features_of(groups)]
    assert len(got) == len(rows)
    assert got["label"].tolist() == list(range(len(rows)))
    assert got["persona_id"].tolist() == [p for p, _, _ in rows]
    assert (got["event_timestamp"] == pd.Series([t for _, t, _ in rows])).all()
    for i, (persona, _, seen) in enumerate(rows):
        for g in groups:
            name = FEATURE[g][0]
            if seen is None:
                assert pd.isna(got.at[i, name]), (i, name)
            else:
                assert got.at[i, name] == value(g, persona, seen), (i, name)
        assert (pd.isna(got.at[i, TX_COUNT]) if seen is None else got.at[i, TX_COUNT] == K[seen]), i


def online(applied: Applied, personas, service="churn_risk_v1") -> pd.DataFrame:
    """The service's online features of personas, indexed by persona, after checking rows and columns."""
    got = fs.online_features(applied.store, service, personas)
    assert got["persona_id"].tolist() == list(personas)
    assert list(got.columns) == ["persona_id", *features_of(SERVICES[service])]
    # the serving path's direct read gives the same values (NaN where Feast answers None)
    matrix, found = online_reader.OnlineReader(applied.store).read(personas)
    fast = online_reader.OnlineReader(applied.store).frame(personas)
    assert fast["persona_id"].tolist() == list(personas) and matrix.dtype == np.float64
    for name in got.columns[1:]:
        want = pd.to_numeric(got[name], errors="raise").astype("float64").to_numpy()
        np.testing.assert_array_equal(fast[name].to_numpy(), want, err_msg=name)
    assert found.tolist() == fast.drop(columns="persona_id").notna().any(axis=1).tolist()
    return got.set_index("persona_id")


def assert_online(got: pd.DataFrame, expected: dict[str, pd.Timestamp | None], groups=SERVICES["churn_risk_v1"]):
    for persona, seen in expected.items():
        for g in groups:
            name = FEATURE[g][0]
            want = None if seen is None else value(g, persona, seen)
            assert (pd.isna(got.at[persona, name]) if want is None else got.at[persona, name] == want), \
                (persona, name, got.at[persona, name], want)


def check_materialize_online(applied: Applied) -> None:
    """A first materialize loads everything up to its end; the next ones only what is newer (or nothing)."""
    day = timedelta(days=1)
    first = fs.materialize(applied.store, (D1 + day).to_pydatetime())
    assert {v: r["mode"] for v, r in first["views"].items()} == {g: "full" for g in WRITTEN}
    assert all(r["rows"] == 2 for r in first["views"].values())  # a and b at D1
    got = online(applied, ["a", "b", "late", "nobody"])
    assert_online(got, {"a": D1, "b": D1, "late": None, "nobody": None})

    second = fs.materialize(applied.store, D2 + day)
    for view, report in second["views"].items():
        assert report == {"mode": "incremental", "start": (D1 + day).isoformat(), "rows": 3}, view
    got = online(applied, ["nobody", "late", "a", "b"])
    assert_online(got, {"a": D2, "b": D2, "late": D2, "nobody": None})
    assert got.at["a", TX_COUNT] == 2 and pd.isna(got.at["nobody", TX_COUNT])

    third = fs.materialize(applied.store, D2 + day)
    assert {r["mode"] for r in third["views"].values()} == {"up_to_date"}
    assert all(r["rows"] == 0 for r in third["views"].values())


def check_push(applied: Applied) -> None:
    """A pushed realtime row is served at once; other groups and other personas are untouched."""
    fs.materialize(applied.store, D2 + timedelta(days=1))  # whatever was materialised before, now up to D2
    before = online(applied, ["a", "b"])
    assert before.at["a", "rt_views_1h"] == value("realtime", "a", D2)
    now = pd.Timestamp.now(tz="UTC")
    fs.push_realtime(applied.store, pd.DataFrame(
        {"persona_id": ["a", "fresh"], "event_timestamp": [now, now], "rt_views_1h": [7.5, 3.0]}, index=[5, 9]))
    after = online(applied, ["a", "b", "fresh"])
    assert after.at["a", "rt_views_1h"] == 7.5
    assert after.at["fresh", "rt_views_1h"] == 3.0
    assert_online(after, {"b": D2}, groups=SERVICES["churn_risk_v1"])
    assert_online(after, {"a": D2}, groups=SERVICES["high_value_v1"])
    assert_online(after, {"fresh": None}, groups=SERVICES["high_value_v1"])
    with pytest.raises(ValueError, match="missing \\['rt_views_1h'\\], unknown \\['rt_other'\\]"):
        fs.push_realtime(applied.store, pd.DataFrame(
            {"persona_id": ["a"], "event_timestamp": [now], "rt_other": [1.0]}))


def check_reshape(applied: Applied) -> None:
    """A snapshot gaining a column (a new category) re-creates its view, whose next materialize loads it in full:
    the new feature is served for dates already materialised, and the other views are left alone."""
    day = timedelta(days=1)
    fs.materialize(applied.store, D2 + day)
    write_snapshot(applied.ws.root, "transactions", extra="tx_refunds_90d")
    assert fs.apply(applied.store, applied.ws, applied.cfg) == applied.services
    report = fs.materialize(applied.store, D2 + day)
    assert report["views"]["transactions"] == {"mode": "full", "start": fs.EPOCH.isoformat(), "rows": 3}
    assert {v: r["mode"] for v, r in report["views"].items() if v != "transactions"} == \
        {g: "up_to_date" for g in WRITTEN if g != "transactions"}
    got = fs.online_features(applied.store, "high_value_v1", ["a", "late", "nobody"]).set_index("persona_id")
    assert list(got.columns) == ["attr_score", "tx_amount_90d", TX_COUNT, "tx_refunds_90d", "eng_visits_30d"]
    assert got["tx_refunds_90d"].tolist()[:2] == [14, 14] and pd.isna(got.at["nobody", "tx_refunds_90d"])
    assert_online(got, {"a": D2, "late": D2, "nobody": None}, groups=SERVICES["high_value_v1"])
    hist = fs.historical_features(applied.store, "high_value_v1",
                                  pd.DataFrame({"persona_id": ["a", "a"], "event_timestamp": [D1, D2]}))
    assert hist["tx_refunds_90d"].tolist() == [7, 14]


# --- the embedded profile ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def applied(tmp_path_factory) -> Applied:
    """One applied workspace for the read-only checks (apply, historical) and the push check."""
    return build(tmp_path_factory.mktemp("ws"), make_config())


def test_open_store_renders_the_embedded_profile(tmp_path):
    # A production-only setting with a '$' (refused on the production profile) does not matter here.
    cfg = make_config(redis="host:6379,password=a$b")
    store = fs.open_store(Workspace.open(tmp_path), cfg)
    folder = tmp_path / "feature_store"
    assert (folder / "feature_store.yaml").is_file()
    assert store.project == "persona_test"
    assert store.config.online_store.type == "sqlite"
    assert store.config.online_store.path == str(folder / "online.db")
    assert store.config.registry.registry_type == "sql"
    assert store.config.registry.path == f"sqlite:///{folder / 'registry.db'}"
    assert store.config.offline_store.type == "duckdb"
    assert store.config.entity_key_serialization_version == 3
    assert not (folder / "registry.db").exists()  # opening connects to nothing


def test_apply_registers_each_service_with_its_present_groups(applied):
    check_services(applied)


def test_apply_follows_the_snapshot_files(tmp_path):
    """Services skip groups without a file (and vanish with none); views and services lose a file's removal."""
    applied = build(tmp_path, make_config(), groups=("affinity", "realtime"))
    check_services(applied, groups=("affinity", "realtime"))  # high_value_v1 has none of its groups
    (tmp_path / "features" / "offline" / "affinity.parquet").unlink()
    applied.services = fs.apply(applied.store, applied.ws, applied.cfg)
    check_services(applied, groups=("realtime",))
    (tmp_path / "features" / "offline" / "realtime.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="no feature snapshots"):
        fs.apply(applied.store, applied.ws, applied.cfg)


def test_historical_features_are_point_in_time_correct(applied):
    check_point_in_time(applied)


def test_historical_features_edge_cases(applied):
    empty = fs.historical_features(applied.store, "high_value_v1",
                                   pd.DataFrame({"persona_id": [], "event_timestamp": []}))
    assert empty.empty and list(empty.columns) == ["persona_id", "event_timestamp",
                                                   *features_of(SERVICES["high_value_v1"])]
    with pytest.raises(ValueError, match="attr_score"):  # a column named like a feature would be ambiguous
        fs.historical_features(applied.store, "high_value_v1",
                               pd.DataFrame({"persona_id": ["a"], "event_timestamp": [D2], "attr_score": [1.0]}))
    with pytest.raises(ValueError, match="lacks columns \\['event_timestamp'\\]"):
        fs.historical_features(applied.store, "high_value_v1", pd.DataFrame({"persona_id": ["a"]}))
    with pytest.raises(KeyError, match="no feature service 'nope_v1'"):
        fs.historical_features(applied.store, "nope_v1", pd.DataFrame({"persona_id": ["a"], "event_timestamp": [D2]}))


def test_materialize_serves_the_latest_snapshot_online_and_is_incremental(tmp_path):
    applied = build(tmp_path, make_config())
    check_materialize_online(applied)
    assert online(applied, []).empty


def test_a_snapshot_gaining_a_feature_is_reloaded_in_full(tmp_path):
    check_reshape(build(tmp_path, make_config()))


def test_push_realtime_changes_online_values_at_once(applied):
    check_push(applied)


def test_push_realtime_needs_the_realtime_view(tmp_path):
    applied = build(tmp_path, make_config(), groups=("attributes",))
    with pytest.raises(KeyError, match="realtime.parquet"):
        fs.push_realtime(applied.store, pd.DataFrame(
            {"persona_id": ["a"], "event_timestamp": [D2], "rt_views_1h": [1.0]}))


@pytest.mark.parametrize(("kind", "bad", "message"), [
    ("ns timestamps", {"ts_type": pa.timestamp("ns", tz="UTC")},
     r"column 'event_timestamp' has type timestamp\[ns, tz=UTC\]; expected timestamp\[us, tz=UTC\]"),
    ("naive timestamps", {"ts_type": pa.timestamp("us")},
     r"column 'event_timestamp' has type timestamp\[us\]; expected timestamp\[us, tz=UTC\]"),
    ("integer persona_id", {"key_type": pa.int64()}, r"column 'persona_id' has type int64; expected string"),
])
def test_apply_refuses_a_snapshot_naming_the_file(tmp_path, kind, bad, message):
    write_snapshot(tmp_path, "attributes")
    path = write_snapshot(tmp_path, "engagement", **bad)
    ws = Workspace.open(tmp_path)
    cfg = make_config()
    store = fs.open_store(ws, cfg)
    with pytest.raises(ValueError, match=message) as err:
        fs.apply(store, ws, cfg)
    assert str(err.value).startswith(f"{path}: "), kind
    assert not (tmp_path / "feature_store" / "registry.db").exists()  # refused before anything was registered
