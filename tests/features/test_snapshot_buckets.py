"""Snapshots on the embedded engine in buckets of personas: the same offline files as one pass over everyone (records
without a persona, logged events, vendor interests, a bucket without records of a relation, incremental re-runs,
inputs in folders of parts), and the whole data's vocabulary read in DuckDB as Spark reads it."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import build, snapshot_buckets, snapshots, spark_snapshots
from features.integration.run import integrate
from persona import engine
from persona.workspace import Workspace
from tests.features.test_fingerprint import _workspace
from tests.features.test_spark_snapshots import DATES, integrated_folder

UTC = "UTC"
CREATED = pd.Timestamp("2026-05-01 08:00", tz=UTC)
ONE_PASS = 10**9  # records per bucket: everything in one pass


def write(path: Path, frame: pd.DataFrame) -> None:
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)


def append(path: Path, rows: pd.DataFrame) -> None:
    """`rows` added to a Parquet file (missing columns null)."""
    write(path, pd.concat([pd.read_parquet(path), rows], ignore_index=True))


def run(integrated: Path, out: Path, records_per_bucket: int, dates=DATES, **kwargs) -> dict[str, int]:
    return snapshot_buckets.write_snapshots_embedded(integrated, dates, out, scratch=out.parent, created=CREATED,
                                                     records_per_bucket=records_per_bucket, **kwargs)


def assert_same_files(expected: Path, actual: Path) -> None:
    """The same group files, Arrow schemas, rows in order and values (floats within 1e-12: DuckDB may add a
    persona's amounts in another order, and a net spend of 0 then comes out as 1e-14)."""
    names = sorted(p.name for p in expected.glob("*.parquet"))
    assert names and names == sorted(p.name for p in actual.glob("*.parquet"))
    for name in names:
        assert pq.read_schema(actual / name).equals(pq.read_schema(expected / name)), name
        pd.testing.assert_frame_equal(pd.read_parquet(actual / name), pd.read_parquet(expected / name),
                                      check_exact=False, rtol=1e-12, atol=1e-12, obj=name)


@pytest.fixture
def integrated(tmp_path) -> Path:
    """The Spark tests' folder (values one persona holds, logged events beside it, vendor interests), plus records
    without a persona whose categories no persona has, and a persona whose only record has no time (its vendor
    interest is no column: it has no activity)."""
    d = integrated_folder(tmp_path / "integrated", 30, seed=3)
    t = pd.Timestamp("2026-01-10", tz=UTC)
    append(d / "transactions.parquet", pd.DataFrame({
        "persona_id": [None, "P9999999"], "ts": [t, pd.NaT], "amount": [5.0, 7.0], "channel": "online",
        "category": ["Orphan Only", "Timeless"], "order_id": ["x1", "x2"]}))
    append(d / "events.parquet", pd.DataFrame({
        "persona_id": [None], "ts": [t], "event_type": ["product_view"], "category": ["orphan event"]}))
    append(d / "profiles.parquet", pd.DataFrame({"persona_id": ["P9999999"], "vendor_interests": ["timeless"]}))
    return d


def test_buckets_write_the_files_of_one_pass(integrated, tmp_path):
    logged = tmp_path / "logged.parquet"
    (tmp_path / snapshot_buckets.SCRATCH / "affinity").mkdir(parents=True)  # a killed run's leftovers
    records = snapshot_buckets.activity_records(integrated, logged)
    assert len(snapshot_buckets.persona_bounds(integrated, 3, extra_events=logged)) == 2

    one = run(integrated, tmp_path / "one", ONE_PASS, extra_events=logged)
    many = run(integrated, tmp_path / "many", records // 3 + 1, extra_events=logged)
    assert many == one == {g: pq.read_metadata(tmp_path / "one" / f"{g}.parquet").num_rows for g in snapshots.GROUPS}
    assert_same_files(tmp_path / "one", tmp_path / "many")
    assert not (tmp_path / snapshot_buckets.SCRATCH).exists()
    aff = pq.read_schema(tmp_path / "many" / "affinity.parquet").names
    attr = pq.read_schema(tmp_path / "many" / "attributes.parquet").names
    # what only records without a persona, the logged events or one persona hold makes columns in every bucket
    assert {"aff_buy_orphan_only_90d", "aff_view_orphan_event_30d", "aff_view_logged_only_30d",
            "aff_buy_rare_cat_90d", "aff_buy_timeless_90d"} <= set(aff)
    assert "attr_vendor_int_falconry" in attr and "attr_vendor_int_timeless" not in attr


def test_one_pass_is_the_streamed_iter_snapshots(integrated, tmp_path):
    logged = tmp_path / "logged.parquet"
    snapshots.write_snapshots(snapshots.iter_snapshots(integrated, DATES, extra_events=logged), tmp_path / "ref",
                              created=CREATED)
    rows = run(integrated, tmp_path / "one", ONE_PASS, extra_events=logged,
               publish_if=lambda cols: not any(c.startswith("rt_") for c in cols))
    assert "realtime" not in rows and not (tmp_path / "one" / "realtime.parquet").exists()
    (tmp_path / "ref" / "realtime.parquet").unlink()
    assert_same_files(tmp_path / "ref", tmp_path / "one")


def test_buckets_without_records_of_a_relation(tmp_path):
    """A persona a bucket: one with transactions only, one with every relation, one with logged events only, one
    whose records are all after every date (no row at all)."""
    d = tmp_path / "integrated"
    d.mkdir()
    ts = pd.to_datetime(["2026-01-05", "2026-02-10 12:00", "2026-03-01", "2026-07-01", "2026-03-20"], utc=True,
                        format="ISO8601")
    write(d / "transactions.parquet", pd.DataFrame({
        "persona_id": ["A", "A", "B", "D", "A"], "channel": ["online", "store", "store", "online", "online"],
        "ts": ts, "amount": [10.0, 20.5, 30.0, 40.0, -20.5], "category": ["home", "beauty", "home", "late", None],
        "is_return": [False, False, False, False, True]}))
    write(d / "events.parquet", pd.DataFrame({
        "persona_id": ["B", "B", "B"], "channel": "app",
        "ts": pd.to_datetime(["2026-02-01", "2026-03-30", "2026-01-20"], utc=True),
        "event_type": ["product_view", "cart_add", "search"], "category": ["toys", "toys", None]}))
    write(d / "interactions.parquet", pd.DataFrame({
        "persona_id": ["B"], "channel": "social", "ts": pd.to_datetime(["2026-02-02"], utc=True), "action": ["like"]}))
    write(d / "profiles.parquet", pd.DataFrame({
        "persona_id": ["A", "B", "C", "D"], "gender": ["female", "male", None, "female"],
        "vendor_interests": ["garden", None, "books|music", "late|home"],
        "birth_date": [pd.Timestamp("1990-01-01").date()] * 4}))
    logged = tmp_path / "logged.parquet"
    write(logged, pd.DataFrame({"persona_id": ["C"], "ts": pd.to_datetime(["2026-02-15"], utc=True),
                                "event_type": ["product_view"], "category": ["logged"]}))
    assert snapshot_buckets.persona_bounds(d, 100, extra_events=logged) == ["B", "C", "D"]

    one = run(d, tmp_path / "one", ONE_PASS, extra_events=logged)
    many = run(d, tmp_path / "many", 1, extra_events=logged)
    assert many == one
    assert_same_files(tmp_path / "one", tmp_path / "many")
    attr = pd.read_parquet(tmp_path / "many" / "attributes.parquet")
    assert "D" not in set(attr["persona_id"]) and "attr_vendor_int_late" in attr.columns


def test_incremental_runs_merge_the_same_way(integrated, tmp_path):
    """A late transaction of a day between two dates, and a profile changed: the dates the plan recomputes (only
    attributes for the profiles) merged into the files of the first run, by one pass and by buckets alike."""
    logged = tmp_path / "logged.parquet"
    small = snapshot_buckets.activity_records(integrated, logged) // 2 + 1
    before = snapshots.input_fingerprints(integrated, DATES, extra_events=logged)
    run(integrated, tmp_path / "one", ONE_PASS, extra_events=logged)
    shutil.copytree(tmp_path / "one", tmp_path / "many")

    append(integrated / "transactions.parquet", pd.DataFrame({
        "persona_id": ["P0000004"], "ts": pd.to_datetime(["2026-03-10"], utc=True), "amount": [99.0],
        "channel": "store", "category": ["beauty"], "order_id": ["late"]}))
    profiles = pd.read_parquet(integrated / "profiles.parquet")
    profiles.loc[profiles["persona_id"] == "P0000006", "vendor_interests"] = "kites|home"
    write(integrated / "profiles.parquet", profiles)
    plan = build.plan_snapshots(DATES, snapshots.input_fingerprints(integrated, DATES, extra_events=logged), before)
    assert plan[str(DATES[0])]["groups"] == ["attributes"] and len(plan[str(DATES[-1])]["groups"]) == 5
    batches: dict[tuple, list] = {}
    for key, p in plan.items():
        batches.setdefault(tuple(p["groups"]), []).append(pd.Timestamp(key))
    for groups, dates in batches.items():
        run(integrated, tmp_path / "one", ONE_PASS, dates, extra_events=logged, groups=groups)
        run(integrated, tmp_path / "many", small, dates, extra_events=logged, groups=groups)
    assert_same_files(tmp_path / "one", tmp_path / "many")
    assert "attr_vendor_int_kites" in pq.read_schema(tmp_path / "many" / "attributes.parquet").names


def test_inputs_in_folders_of_parts(integrated, tmp_path):
    """Spark writes an input as a folder of parts: the same snapshots, fingerprints and end of data as from files."""
    logged = tmp_path / "logged.parquet"
    folders = tmp_path / "folders"
    folders.mkdir()
    for name in ("transactions", "events", "interactions", "profiles"):
        table = pq.read_table(integrated / f"{name}.parquet")
        (folders / f"{name}.parquet").mkdir()
        half = table.num_rows // 2
        pq.write_table(table.slice(0, half), folders / f"{name}.parquet" / "part-00000.parquet")
        pq.write_table(table.slice(half), folders / f"{name}.parquet" / "part-00001.parquet")
    records = snapshot_buckets.activity_records(integrated, logged)
    assert snapshot_buckets.activity_records(folders, logged) == records
    small = records // 2 + 1
    run(integrated, tmp_path / "files", ONE_PASS, extra_events=logged)
    run(folders, tmp_path / "parts", small, extra_events=logged)
    assert_same_files(tmp_path / "files", tmp_path / "parts")
    assert snapshots.input_fingerprints(folders, DATES, extra_events=logged) == snapshots.input_fingerprints(
        integrated, DATES, extra_events=logged)
    assert snapshots.data_end(folders) == snapshots.data_end(integrated)


def test_vocabulary_of_the_whole_data(integrated, tmp_path, monkeypatch):
    vocabulary = snapshot_buckets.read_vocabulary(integrated, extra_events=tmp_path / "logged.parquet")
    assert vocabulary.relations == ("transactions", "events", "interactions")
    assert {"Orphan Only", "Timeless", "Rare-Cat", "only after every date"} <= set(
        vocabulary.categories["transactions"])
    assert {"orphan event", "logged only", "Only Here!"} <= set(vocabulary.categories["events"])
    assert "interactions" not in vocabulary.categories  # no group reads their categories
    assert "falconry" in vocabulary.vendor_interests and "timeless" not in vocabulary.vendor_interests
    # without logged events, events still exist; without events, logged events alone make the relation
    assert "logged only" not in snapshot_buckets.read_vocabulary(integrated).categories["events"]
    (integrated / "events.parquet").unlink()
    alone = snapshot_buckets.read_vocabulary(integrated, extra_events=tmp_path / "logged.parquet")
    assert alone.relations == ("transactions", "events", "interactions")
    assert alone.categories["events"] == ("beauty", "logged only")
    monkeypatch.setattr(snapshots, "MAX_VOCABULARY", 5)
    with pytest.raises(ValueError, match="more than 5 distinct categories"):
        snapshot_buckets.read_vocabulary(integrated)


@pytest.mark.slow
def test_vocabulary_is_the_one_spark_reads(spark, integrated, tmp_path):
    logged = tmp_path / "logged.parquet"
    with engine.spark_conf(spark, engine.NANOS_AS_LONG):
        frames = {name: spark_snapshots._read(spark, integrated / f"{name}.parquet")
                  for name in (*snapshots.ACTIVITY, snapshots.PROFILES)}
        frames[spark_snapshots.LOGGED] = spark_snapshots._read(spark, logged)
        on_spark = spark_snapshots._vocabulary(frames)
    assert snapshot_buckets.read_vocabulary(integrated, extra_events=logged) == on_spark


def test_bounds_cut_records_evenly(tmp_path):
    d = tmp_path / "integrated"
    d.mkdir()
    ids = np.repeat([f"P{i:03d}" for i in range(100)], 3)
    write(d / "transactions.parquet", pd.DataFrame({"persona_id": [*ids, None], "ts": pd.Timestamp("2026-01-01",
                                                                                                   tz=UTC)}))
    bounds = snapshot_buckets.persona_bounds(d, 4)
    assert bounds == ["P025", "P050", "P075"]
    assert snapshot_buckets.persona_bounds(d, 1) == []


@pytest.mark.slow
def test_build_features_in_buckets_writes_what_one_pass_writes(tmp_path, salt, monkeypatch):
    """`persona features` end to end on a transactions-only workspace (no engagement group: it has no feature), one
    pass and then forced into buckets: the same files and the same rows in the report."""
    one = tmp_path / "one"
    _workspace(one)
    integrate(Workspace.open(one))
    many = tmp_path / "many"
    shutil.copytree(one, many, symlinks=True)
    first = build.build_features(Workspace.open(one), online=False)
    records = snapshot_buckets.activity_records(Workspace.open(many).require_current("integrated", ""))
    monkeypatch.setattr(snapshot_buckets, "RECORDS_PER_BUCKET", records // 3 + 1)
    second = build.build_features(Workspace.open(many), online=False)
    assert second["rows"] == first["rows"] and "engagement" not in second["rows"]
    assert not (many / "features" / "offline" / "engagement.parquet").exists()
    assert not (many / "features" / snapshot_buckets.SCRATCH).exists()
    for path in sorted((one / "features" / "offline").glob("*.parquet")):  # created_timestamp: each run's clock
        pd.testing.assert_frame_equal(
            pd.read_parquet(many / "features" / "offline" / path.name).drop(columns="created_timestamp"),
            pd.read_parquet(path).drop(columns="created_timestamp"), check_exact=False, rtol=1e-12, atol=1e-12,
            obj=path.name)
