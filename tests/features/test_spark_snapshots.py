"""Feature snapshots on Spark: the same files as the embedded engine (every group, several dates, a vocabulary that
only some buckets hold), no group where the embedded engine has none, and nothing collected to a small driver."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import snapshots, spark_snapshots
from tests.conftest import spark_or_skip

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
UTC = "UTC"
DATES = [pd.Timestamp("2026-02-01", tz=UTC), pd.Timestamp("2026-03-01", tz=UTC),
         pd.Timestamp("2026-03-15 12:00", tz=UTC), pd.Timestamp("2026-04-01", tz=UTC)]


def _write(path: Path, frame: pd.DataFrame) -> None:
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)


def integrated_folder(d: Path, personas: int, *, seed: int = 0, events: bool = True) -> Path:
    """An integrated folder in the published schemas with `personas` personas, and values only one or two personas
    have: a category, a channel, an event category, a vendor interest, a logged event's category (`logged.parquet`
    beside the folder). Timestamps carry nanoseconds; some records are returns, some after every date."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True)
    ids = np.array([f"P{i:07d}" for i in range(personas)])
    start, span = pd.Timestamp("2025-06-01", tz=UTC).value, 330 * 86_400 * 10**9

    def stamps(n: int) -> pd.DatetimeIndex:
        return pd.DatetimeIndex(start + rng.integers(0, span, n), tz=UTC)  # nanoseconds, not whole microseconds

    n = personas * 8
    tx = pd.DataFrame({
        "persona_id": rng.choice(ids, n), "channel": rng.choice(["online", "store"], n), "source": "s", "file_id": "f",
        "row": np.arange(n, dtype=np.int64), "ts": stamps(n), "order_id": [f"o{i}" for i in range(n)],
        "amount": rng.choice([0.0, 9.99, 25.5, 120.0, -25.5], n), "quantity": 1.0,
        "category": rng.choice(["Apparel", "beauty", "Home & Garden"], n),
        "discount": rng.choice([0.0, 2.5, np.nan], n), "status": rng.choice(["paid", "returned", None], n),
        "city": None, "store_id": None, "is_return": rng.choice([True, False, None], n)})
    tx.loc[3, ["persona_id", "category", "channel"]] = [ids[7], "Rare-Cat", "kiosk"]  # one persona's vocabulary
    tx.loc[4, "category"] = "only after every date"
    tx.loc[4, "ts"] = pd.Timestamp("2026-06-01", tz=UTC)
    _write(d / "transactions.parquet", tx)
    if events:
        m = personas * 20
        ev = pd.DataFrame({
            "persona_id": rng.choice(ids[: personas * 3 // 4], m), "channel": "app", "source": "e", "file_id": "f",
            "row": np.arange(m, dtype=np.int64), "ts": stamps(m),
            "event_type": rng.choice(["session_start", "product_view", "search", "cart_add"], m),
            "category": rng.choice(["Apparel", "beauty", None], m), "platform": "ios"})
        ev.loc[5, ["persona_id", "category", "event_type"]] = [ids[-1], "Only Here!", "product_view"]
        _write(d / "events.parquet", ev)
        k = personas * 2
        _write(d / "interactions.parquet", pd.DataFrame({
            "persona_id": rng.choice(ids, k), "channel": "social", "source": "x", "file_id": "f",
            "row": np.arange(k, dtype=np.int64), "ts": stamps(k), "action": "like", "category": "books"}))
        log = pa.table({"persona_id": pa.array([ids[2], ids[2]]),
                        "ts": pa.array(pd.to_datetime(["2026-02-20 10:00", "2026-03-31 23:30"], utc=True),
                                       pa.timestamp("us", tz=UTC)),
                        "event_type": pa.array(["product_view", "cart_add"]),
                        "category": pa.array(["logged only", "beauty"]), "source": pa.array(["api", "api"]),
                        "channel": pa.array(["event_log", "event_log"])})
        pq.write_table(log, d.parent / "logged.parquet")
    interests = rng.choice(["beauty|skincare", "home", None, "sports|books"], personas).astype(object)
    interests[11] = "falconry|home"
    _write(d / "profiles.parquet", pd.DataFrame({
        "persona_id": ids, "gender": rng.choice(["female", "male", None], personas),
        "birth_date": [pd.Timestamp("1980-01-01").date()] * personas, "city": "x",
        "consent_marketing": rng.choice([True, False], personas),
        "first_seen": pd.to_datetime(["2020-01-01"] * personas, utc=True), "records": np.ones(personas, np.int64),
        "income_band": rng.choice(["low", "high", None], personas), "vendor_interests": interests,
        "partner_spend_beauty": rng.choice([1.0, np.nan], personas), "city_tier": 1.0}))
    return d


def assert_same_snapshots(embedded: Path, spark: Path) -> None:
    """The same group files, columns (names and types, in order) and rows in order; floats within 1e-9 relative
    (plus 1e-9 absolute: a net spend of 0 may come out as 4.5e-13 when DuckDB adds in another order)."""
    assert sorted(p.name for p in spark.glob("*.parquet")) == sorted(p.name for p in embedded.glob("*.parquet"))
    for path in sorted(embedded.glob("*.parquet")):
        a = pq.read_table(path).drop(["created_timestamp"])
        b = pq.read_table(spark / path.name).drop(["created_timestamp"])
        assert b.schema.equals(a.schema), path.name
        assert b.num_rows == a.num_rows > 0, path.name
        for name in a.column_names:
            x, y = a.column(name).to_numpy(), b.column(name).to_numpy()
            if x.dtype.kind == "f":
                np.testing.assert_allclose(y, x, rtol=1e-9, atol=1e-9, equal_nan=True, err_msg=f"{path.name} {name}")
            else:
                assert (x == y).all(), f"{path.name} {name}"


def _embedded(integrated: Path, out: Path, **kwargs) -> float:
    t = time.perf_counter()
    snapshots.write_snapshots(snapshots.iter_snapshots(integrated, DATES, **kwargs), out)
    return time.perf_counter() - t


def test_spark_writes_the_embedded_snapshots(spark, tmp_path):
    integrated = integrated_folder(tmp_path / "integrated", 60)
    logged = tmp_path / "logged.parquet"
    t_duck = _embedded(integrated, tmp_path / "duckdb", extra_events=logged)
    t = time.perf_counter()
    rows = spark_snapshots.write_snapshots_spark(spark, integrated, DATES, tmp_path / "spark", scratch=tmp_path,
                                                 extra_events=logged, buckets=4)
    t_spark = time.perf_counter() - t
    print(f"\n60 personas x {len(DATES)} dates: duckdb {t_duck:.1f} s, spark (local[2], 4 buckets) {t_spark:.1f} s")
    assert_same_snapshots(tmp_path / "duckdb", tmp_path / "spark")
    assert rows == {g: pq.read_metadata(tmp_path / "spark" / f"{g}.parquet").num_rows for g in snapshots.GROUPS}
    aff = pq.read_schema(tmp_path / "spark" / "affinity.parquet").names
    attr = pq.read_schema(tmp_path / "spark" / "attributes.parquet").names
    # the values one persona holds made columns in every bucket, as in one run over everyone
    assert {"aff_buy_rare_cat_90d", "aff_view_only_here_30d", "aff_view_logged_only_30d",
            "aff_buy_only_after_every_date_90d"} <= set(aff)
    assert "attr_vendor_int_falconry" in attr
    assert not list(tmp_path.glob(".spark-snapshots-*")), "the scratch folder is removed"

    # a second run merges: one date again replaces its rows, the others stay
    again = spark_snapshots.write_snapshots_spark(spark, integrated, DATES[-1:], tmp_path / "spark",
                                                  scratch=tmp_path, extra_events=logged, groups=["realtime"],
                                                  buckets=3)
    kept = pq.read_table(tmp_path / "spark" / "realtime.parquet")
    assert kept.num_rows == rows["realtime"] and again["realtime"] < rows["realtime"]


def test_no_events_gives_no_engagement_on_either_engine(spark, tmp_path):
    integrated = integrated_folder(tmp_path / "integrated", 30, seed=1, events=False)
    _embedded(integrated, tmp_path / "duckdb")
    spark_snapshots.write_snapshots_spark(spark, integrated, DATES, tmp_path / "spark", scratch=tmp_path, buckets=3)
    assert not (tmp_path / "spark" / "engagement.parquet").exists()
    assert_same_snapshots(tmp_path / "duckdb", tmp_path / "spark")
    with pytest.raises(FileNotFoundError, match="run `persona integrate` first"):
        spark_snapshots.write_snapshots_spark(spark, tmp_path / "nothing", DATES, tmp_path / "x", scratch=tmp_path)


def test_nothing_is_collected_to_a_small_driver(tmp_path):
    spark_or_skip()
    integrated = integrated_folder(tmp_path / "integrated", 4000, seed=2)
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        sys.path.insert(0, {str(ROOT)!r})
        import pandas as pd
        from persona import engine
        from persona.config import SparkConfig
        from features import spark_snapshots
        spark = engine.spark_session(SparkConfig(master="local[2]", conf={{
            "spark.driver.memory": "512m", "spark.driver.maxResultSize": "2m", "spark.ui.enabled": "false",
            "spark.sql.autoBroadcastJoinThreshold": "1m", "spark.sql.shuffle.partitions": "4",
            "spark.driver.host": "127.0.0.1"}}))
        # 4,000 personas (32,000 transactions, 80,000 events): the affinity snapshot alone is ~5 MB as float32, so
        # collecting it, or the inputs, would pass the 2 MB allowed.
        dates = [pd.Timestamp(d) for d in {[str(d) for d in DATES]!r}]
        rows = spark_snapshots.write_snapshots_spark(spark, Path({str(integrated)!r}), dates,
                                                     Path({str(tmp_path / 'spark')!r}), scratch=Path({str(tmp_path)!r}),
                                                     extra_events=Path({str(tmp_path / 'logged.parquet')!r}))
        print(json.dumps(rows))
        spark.stop()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=1200,
                         env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    problems = [line for line in out.stderr.splitlines() if "Exception" in line or "Error" in line]
    assert out.returncode == 0, "\n".join(problems[:10]) or out.stderr[-3000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(rows) == set(snapshots.GROUPS)
    assert rows["transactions"] == pq.read_metadata(tmp_path / "spark" / "transactions.parquet").num_rows > 4000
