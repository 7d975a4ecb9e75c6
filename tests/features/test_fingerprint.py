"""Snapshots follow the data: per-date fingerprints of what a snapshot read, the plan they give (which dates and
groups to compute again, and why), and a corrected source file re-integrated on a small bring-your-own workspace
(only the dates after the corrected day are recomputed, and the result is what --full writes)."""

import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from features import build, snapshots
from features.snapshots import GROUPS, input_fingerprints, stale_groups

UTC = "UTC"
D1, D2, D3 = (pd.Timestamp(d, tz=UTC) for d in ("2026-02-01", "2026-03-01", "2026-04-01"))


def _write(path, frame: pd.DataFrame) -> None:
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)


def _transactions(amounts=(10.0, 20.0, 30.0, 40.0)) -> pd.DataFrame:
    return pd.DataFrame({
        "persona_id": ["A", "A", "B", "B"],
        # the last one is at D2 itself: a snapshot at D2 reads ts < D2, so it belongs to D3 only
        "ts": pd.to_datetime(["2026-01-10", "2026-02-15 23:59:59", "2026-02-20", "2026-03-01"], utc=True, format="ISO8601"),
        "amount": list(amounts), "category": ["x", "y", "x", "z"]})


@pytest.fixture
def integrated(tmp_path):
    d = tmp_path / "current"
    d.mkdir()
    _write(d / "transactions.parquet", _transactions())
    _write(d / "profiles.parquet", pd.DataFrame({
        "persona_id": ["A", "B"], "gender": ["female", "male"], "last_seen": pd.to_datetime(["2026-03-01"] * 2, utc=True),
        "phone_hash": ["h1", "h2"]}))
    return d


def test_a_row_of_day_d_changes_every_date_after_d_and_none_before(integrated):
    before = input_fingerprints(integrated, [D1, D2, D3])
    assert list(before) == [str(D1), str(D2), str(D3)]
    assert [before[str(d)]["transactions"].split(":")[0] for d in (D1, D2, D3)] == ["1", "3", "4"]
    assert {fp["profiles"] for fp in before.values()} == {before[str(D1)]["profiles"]}

    _write(integrated / "transactions.parquet", _transactions(amounts=(10.0, 21.0, 30.0, 40.0)))  # 15 February
    after = input_fingerprints(integrated, [D1, D2, D3])
    assert after[str(D1)] == before[str(D1)]
    assert after[str(D2)]["transactions"] != before[str(D2)]["transactions"]
    assert after[str(D3)]["transactions"] != before[str(D3)]["transactions"]

    # a change at D2 itself is in D3's snapshot, not in D2's
    _write(integrated / "transactions.parquet", _transactions(amounts=(10.0, 20.0, 30.0, 41.0)))
    edge = input_fingerprints(integrated, [D1, D2, D3])
    assert edge[str(D2)] == before[str(D2)] and edge[str(D3)] != before[str(D3)]


def test_row_order_does_not_matter_and_a_late_row_counts(integrated):
    before = input_fingerprints(integrated, [D1, D2, D3])
    _write(integrated / "transactions.parquet", _transactions().iloc[::-1])
    assert input_fingerprints(integrated, [D1, D2, D3]) == before

    late = pd.concat([_transactions(), _transactions().iloc[[0]].assign(ts=pd.Timestamp("2026-01-20", tz=UTC))])
    _write(integrated / "transactions.parquet", late)
    after = input_fingerprints(integrated, [D1, D2, D3])
    assert [after[str(d)]["transactions"].split(":")[0] for d in (D1, D2, D3)] == ["2", "4", "5"]
    groups, why = stale_groups(after[str(D1)], before[str(D1)])
    assert groups == GROUPS and why == "transactions changed (1 -> 2 rows before this date)"


def test_profiles_and_logged_events_are_inputs_too(integrated, tmp_path):
    before = input_fingerprints(integrated, [D1, D2])
    # a column attributes never read (activity summaries, hashed identifiers) changes nothing
    profiles = pq.read_table(integrated / "profiles.parquet").to_pandas()
    _write(integrated / "profiles.parquet", profiles.assign(last_seen=pd.Timestamp("2026-05-01", tz=UTC),
                                                             phone_hash=["h9", "h8"]))
    assert input_fingerprints(integrated, [D1, D2]) == before
    _write(integrated / "profiles.parquet", profiles.assign(gender=["female", "female"]))
    after = input_fingerprints(integrated, [D1, D2])
    assert all(after[k]["transactions"] == before[k]["transactions"] for k in after)
    groups, why = stale_groups(after[str(D1)], before[str(D1)])
    assert groups == ("attributes",) and why == "profiles changed (2 rows, edited)"

    logged = tmp_path / "logged.parquet"
    _write(logged, pd.DataFrame({"persona_id": ["A"], "ts": pd.to_datetime(["2026-02-10"], utc=True),
                                 "event_type": ["product_view"], "category": ["x"]}))
    with_log = input_fingerprints(integrated, [D1, D2], extra_events=logged)
    assert with_log[str(D1)]["logged_events"] == "0:0000000000000000"
    assert with_log[str(D2)]["logged_events"].startswith("1:")
    assert stale_groups(with_log[str(D1)], after[str(D1)]) == (GROUPS, "logged_events appeared")


def test_plan_new_changed_unchanged_and_full():
    dates = [D1, D2, D3]
    current = {str(D1): {"transactions": "1:aa"}, str(D2): {"transactions": "3:bb"}, str(D3): {"transactions": "4:cc"}}
    recorded = {str(D1): {"transactions": "1:aa"}, str(D2): {"transactions": "3:b0"}}
    plan = build.plan_snapshots(dates, current, recorded)
    assert plan == {str(D2): {"groups": list(GROUPS), "why": "transactions changed (3 rows before this date, edited)"},
                    str(D3): {"groups": list(GROUPS), "why": build.NEW}}
    assert list(build.plan_snapshots(dates, current, recorded, full=True)) == [str(d) for d in dates]
    # nothing changed: only the scoring date (the last), which every run writes
    assert build.plan_snapshots(dates, current, current) == {str(D3): {"groups": list(GROUPS), "why": build.SCORING}}


def test_fingerprints_of_another_method_or_without_files_are_not_trusted(tmp_path):
    manifest = {"fingerprint_method": snapshots.FINGERPRINT_METHOD, "fingerprints": {str(D1): {"transactions": "1:aa"}}}
    assert build.recorded_fingerprints(manifest, tmp_path) == {}  # no snapshot files: everything is written again
    (tmp_path / "transactions.parquet").write_bytes(b"")
    assert build.recorded_fingerprints(manifest, tmp_path) == manifest["fingerprints"]
    assert build.recorded_fingerprints({**manifest, "fingerprint_method": "other"}, tmp_path) == {}


# --- a corrected source file, end to end --------------------------------------------------------------------------
def _workspace(root) -> None:
    """A bring-your-own workspace: 30 customers' orders from January to June 2026, snapshots every 30 days."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(5)
    n = 240
    days = pd.date_range("2026-01-01", "2026-06-30", freq="D")
    pd.DataFrame({"order": [f"o{i}" for i in range(n)], "cust": [f"c{i}" for i in rng.integers(0, 30, n)],
                  "ts": pd.Series(rng.choice(days, n)).dt.strftime("%Y-%m-%dT%H:%M:%S"),
                  "amt": rng.integers(1, 100, n).astype(float)}).to_csv(root / "orders.csv", index=False)
    cfg = {"version": 1, "name": "t", "sources": {"orders": {
        "channel": "online", "kind": "transactions", "path": "orders.csv", "key": ["order"],
        "timestamp": {"column": "ts", "format": "iso"}, "identifiers": {"customer_id": "cust"},
        "fields": {"amount": "amt", "order_id": "order"}}},
        "identity": {"identifiers": {"customer_id": {"normalise": "id", "account": True}}},
        "training": {"min_history_days": 30, "cutoff_every_days": 30}}
    (root / "persona.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")


def _offline(root) -> dict[str, pd.DataFrame]:
    out = {}
    for path in sorted((root / "features" / "offline").glob("*.parquet")):
        frame = pq.read_table(path).to_pandas().drop(columns="created_timestamp")
        out[path.stem] = frame.sort_values(["event_timestamp", "persona_id"]).reset_index(drop=True)
    return out


@pytest.mark.slow
def test_a_corrected_file_recomputes_the_dates_after_the_correction_like_full(tmp_path, salt):
    from features.integration.run import integrate
    from persona.workspace import Workspace

    root = tmp_path / "ws"
    _workspace(root)
    ws = Workspace.open(root)
    integrate(ws)
    first = build.build_features(ws, online=False)
    assert first["computed"] == first["dates"] and first["recomputed"] == {}
    again = build.build_features(ws, online=False)
    assert again["computed"] == [first["dates"][-1]] and again["recomputed"] == {}  # nothing changed but the scoring date

    orders = pd.read_csv(root / "orders.csv")
    fixed = orders.index[orders["ts"].str.startswith("2026-04-1")][0]
    day = pd.Timestamp(orders.loc[fixed, "ts"][:10], tz=UTC)
    orders.loc[fixed, "amt"] = orders.loc[fixed, "amt"] + 500
    orders.to_csv(root / "orders.csv", index=False)
    integrate(ws)
    report = build.build_features(ws, online=False)
    dates = [pd.Timestamp(d) for d in report["dates"]]
    assert report["computed"] == [str(d) for d in dates if d > day]
    assert set(report["recomputed"]) == set(report["computed"])
    assert all(p["why"].startswith("transactions changed") and p["groups"] == list(GROUPS)
               for p in report["recomputed"].values())

    full = tmp_path / "full"
    shutil.copytree(root, full, symlinks=True)
    build.build_features(Workspace.open(full), full=True, online=False)
    incremental, recomputed = _offline(root), _offline(full)
    assert incremental.keys() == recomputed.keys()
    for group in incremental:
        pd.testing.assert_frame_equal(incremental[group], recomputed[group], obj=group)
