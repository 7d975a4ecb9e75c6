"""Snapshots: the date grid, the end of data, all groups from an integrated folder (full and bring-your-own), and
merging writes (a recomputed date replaces its rows, other dates stay, files are replaced atomically)."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import snapshots
from features.snapshots import GROUPS, compute_snapshots, data_end, snapshot_grid, write_snapshots

UTC = "UTC"


def _write(path, frame: pd.DataFrame) -> None:
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)


@pytest.fixture
def integrated(tmp_path):
    """An integrated folder with the published schemas, three personas and a fourth only in profiles."""
    d = tmp_path / "integrated" / "current"
    d.mkdir(parents=True)
    ts = pd.to_datetime(["2026-01-05 10:00", "2026-02-10 12:00", "2026-03-01 09:00", "2026-03-20 18:00",
                         "2026-03-30 23:59:59"], utc=True, format="ISO8601")
    _write(d / "transactions.parquet", pd.DataFrame({
        "persona_id": ["A", "A", "B", "B", "C"], "channel": ["online", "store", "online", "online", "store"],
        "source": "s", "file_id": "f", "row": np.arange(5, dtype=np.int64), "ts": ts,
        "order_id": [f"o{i}" for i in range(5)], "amount": [10.0, 20.0, 30.0, 40.0, 50.0],
        "quantity": 1.0, "category": ["apparel", "beauty", "apparel", "home", "books"],
        "discount": [0.0, 2.0, None, 0.0, 5.0], "status": ["paid", None, "paid", "returned", None],
        "city": None, "store_id": None, "is_return": [None, False, None, None, True]}))
    _write(d / "events.parquet", pd.DataFrame({
        "persona_id": ["A", "B", "B"], "channel": "app", "source": "e", "file_id": "f",
        "row": np.arange(3, dtype=np.int64), "ts": pd.to_datetime(["2026-03-31 23:30", "2026-03-15 00:00", "2026-04-02 00:00"], utc=True),
        "event_type": ["product_view", "session_start", "cart_add"], "category": ["beauty", None, "home"],
        "platform": "ios"}))
    _write(d / "interactions.parquet", pd.DataFrame({
        "persona_id": ["C"], "channel": "social", "source": "x", "file_id": "f", "row": np.zeros(1, dtype=np.int64),
        "ts": pd.to_datetime(["2026-02-01"], utc=True), "action": ["like"], "category": ["books"]}))
    _write(d / "profiles.parquet", pd.DataFrame({
        "persona_id": ["A", "B", "C", "D"], "gender": ["female", "male", None, "female"],
        "birth_date": [pd.Timestamp("1990-01-01").date()] * 4, "city": "x", "consent_enrichment": True,
        "consent_marketing": [True, False, True, True],
        "first_seen": pd.to_datetime(["2020-01-01"] * 4, utc=True), "last_seen": pd.to_datetime(["2030-01-01"] * 4, utc=True),
        "records": np.arange(4, dtype=np.int64), "income_band": ["low", "high", None, "middle"],
        "vendor_interests": ["beauty|skincare", None, "home", None], "partner_spend_beauty": [1.0, None, 2.0, None],
        "city_population": 1e6, "city_income_index": 100.0, "city_tier": 1.0}))
    return d


def test_grid_ends_the_day_after_the_data():
    end = pd.Timestamp("2026-09-30 15:59:37", tz=UTC)
    grid = snapshot_grid(end, every_days=30, count=3)
    assert grid == [pd.Timestamp("2026-08-02", tz=UTC), pd.Timestamp("2026-09-01", tz=UTC),
                    pd.Timestamp("2026-10-01", tz=UTC)]
    assert snapshot_grid(pd.Timestamp("2026-09-30 23:59:59.999", tz=UTC), every_days=7, count=1) == [
        pd.Timestamp("2026-10-01", tz=UTC)]
    with pytest.raises(ValueError):
        snapshot_grid(end, every_days=0, count=3)


def test_data_end_is_the_last_transaction_or_event(integrated):
    assert data_end(integrated) == pd.Timestamp("2026-04-02", tz=UTC)
    (integrated / "events.parquet").unlink()
    assert data_end(integrated) == pd.Timestamp("2026-03-30 23:59:59", tz=UTC)


def test_all_groups_for_all_dates(integrated):
    dates = [pd.Timestamp("2026-03-01", tz=UTC), pd.Timestamp("2026-04-01", tz=UTC)]
    seen = []
    frames = compute_snapshots(integrated, dates, progress=lambda msg, frac: seen.append(frac))
    assert tuple(frames) == GROUPS and seen[-1] == 1.0
    for group, frame in frames.items():
        assert list(frame.columns[:2]) == ["persona_id", "event_timestamp"]
        assert set(frame["event_timestamp"]) <= set(dates)
        assert all(frame[c].dtype in (np.float32, np.float64, np.int64) for c in frame.columns[2:]), group
    tx = frames["transactions"].set_index(["persona_id", frames["transactions"]["event_timestamp"].dt.month])
    assert sorted(tx.index) == [("A", 3), ("A", 4), ("B", 4), ("C", 4)]  # B's first order is on 1 March itself
    assert tx.loc[("A", 4), "tx_count_all"] == 2 and tx.loc[("B", 4), "tx_return_rate_365d"] == 0.5
    attr = frames["attributes"].set_index(["persona_id", frames["attributes"]["event_timestamp"].dt.month])
    assert "D" not in attr.index.get_level_values(0)  # a profile without activity gets no row
    assert attr.loc[("A", 4), "attr_n_channels_365d"] == 3  # online, store, app
    assert attr.loc[("C", 3), "attr_n_channels_365d"] == 1  # social only, before the store return
    assert not any(c.startswith(("attr_first", "attr_last", "attr_records")) for c in attr.columns)
    eng = frames["engagement"]
    assert set(eng["persona_id"]) == {"A", "B", "C"}
    rt = frames["realtime"].set_index(["persona_id", frames["realtime"]["event_timestamp"].dt.month])
    assert rt.loc[("A", 4), "rt_views_1h"] == 1
    assert rt.loc[("A", 4), "rt_last_event_ts"] == pd.Timestamp("2026-03-31 23:30", tz=UTC).value // 10**9


def test_bring_your_own_transactions_only(tmp_path):
    d = tmp_path / "byo"
    d.mkdir()
    _write(d / "transactions.parquet", pd.DataFrame({
        "persona_id": ["A", "B"], "ts": pd.to_datetime(["2026-01-01", "2026-01-02"], utc=True), "amount": [1.0, 2.0]}))
    frames = compute_snapshots(d, [pd.Timestamp("2026-02-01", tz=UTC)])
    assert "engagement" not in frames
    assert list(frames["attributes"].columns) == ["persona_id", "event_timestamp", "attr_n_channels_365d"]
    assert list(frames["affinity"].columns) == ["persona_id", "event_timestamp"]
    assert list(frames["realtime"].columns) == ["persona_id", "event_timestamp", "rt_last_event_ts"]
    assert len(frames["transactions"]) == 2


def _frame(dates, value: float, extra: str | None = None) -> pd.DataFrame:
    rows = [{"persona_id": p, "event_timestamp": d, "x_value": np.float32(value)} for d in dates for p in ("A", "B")]
    frame = pd.DataFrame(rows).astype({"x_value": np.float32})
    if extra:
        frame[extra] = np.float32(1)
    return frame


def test_write_merges_dates_and_replaces_recomputed_ones(tmp_path):
    d1, d2, d3 = (pd.Timestamp(f"2026-0{m}-01", tz=UTC) for m in (1, 2, 3))
    t1, t2 = pd.Timestamp("2026-03-05", tz=UTC), pd.Timestamp("2026-04-05", tz=UTC)
    paths = write_snapshots({"g": _frame([d1, d2], 1.0)}, tmp_path, created=t1)
    assert paths == {"g": tmp_path / "g.parquet"}
    # d2 again with new values and a new column (a category that appeared), and a new date d3
    write_snapshots(iter([("g", _frame([d3, d2], 2.0, extra="x_new"))]), tmp_path, created=t2)
    out = pq.read_table(tmp_path / "g.parquet").to_pandas()
    assert out["event_timestamp"].tolist() == [d1, d1, d2, d2, d3, d3]  # ordered, one copy of d2
    assert out["x_value"].tolist() == [1, 1, 2, 2, 2, 2]
    assert out["created_timestamp"].tolist() == [t1, t1, t2, t2, t2, t2]
    assert out["x_new"].isna().tolist() == [True, True, False, False, False, False]
    assert str(out["event_timestamp"].dtype) == "datetime64[us, UTC]"  # what Feast's DuckDB store can filter
    assert pq.ParquetFile(tmp_path / "g.parquet").metadata.num_row_groups == 3  # one per date
    assert [p.name for p in tmp_path.iterdir()] == ["g.parquet"]  # no temporary file left


def test_a_failed_write_leaves_the_previous_file(tmp_path, monkeypatch):
    d1, d2 = pd.Timestamp("2026-01-01", tz=UTC), pd.Timestamp("2026-02-01", tz=UTC)
    write_snapshots({"g": _frame([d1], 1.0)}, tmp_path)
    before = (tmp_path / "g.parquet").read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(snapshots, "conform", boom)
    with pytest.raises(OSError, match="disk full"):
        write_snapshots({"g": _frame([d1, d2], 9.0)}, tmp_path)
    assert (tmp_path / "g.parquet").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["g.parquet"]


def test_a_date_is_included_whole_by_the_snapshot_at_the_next_midnight(integrated):
    day = pd.Timestamp("2026-03-30", tz=UTC)
    snap = snapshots.snapshot_for(day)
    assert snap == pd.Timestamp("2026-03-31", tz=UTC) and snapshots.snapshot_for("2026-03-30") == snap
    assert snapshots.data_through(snap) == day
    with pytest.raises(ValueError, match="expected a calendar date"):
        snapshots.snapshot_for(pd.Timestamp("2026-03-30 12:00", tz=UTC))
    # C's store return at 2026-03-30 23:59:59 is in the snapshot for 30 March; A's view at 31 March 23:30 is not
    frames = compute_snapshots(integrated, [snap], groups=["transactions", "realtime"])
    assert tuple(frames) == ("transactions", "realtime")
    assert frames["transactions"].set_index("persona_id").loc["C", "tx_return_rate_365d"] == 1.0
    assert frames["realtime"].set_index("persona_id").loc["A", "rt_views_24h"] == 0
    before = compute_snapshots(integrated, [snapshots.snapshot_for("2026-03-29")], groups=["transactions"])
    assert "C" not in set(before["transactions"]["persona_id"])
    with pytest.raises(ValueError, match="unknown feature groups"):
        compute_snapshots(integrated, [snap], groups=["nope"])
