"""Batch rescoring on Spark (`engine: spark`): the rule statistics fitted on Spark are numpy's, the snapshot is the
one the embedded engine writes (personas, scores, tags, metadata, coverage), and a driver with 2 MB of results and
512 MB of memory rescores a population larger than that (nothing is collected)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from rules import history, load_tagset, spark_fit
from persona.workspace import Workspace
from tests.conftest import spark_or_skip

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


# --- the statistics -------------------------------------------------------------------------------------------------

def test_order_statistics_give_numpys_quantiles_and_medians_to_the_bit():
    rng = np.random.default_rng(7)
    for trial in range(2000):
        n = int(rng.integers(1, 80))
        x = rng.normal(size=n) * 10.0 ** int(rng.integers(-3, 6))
        if trial % 3 == 0:
            x = np.round(x)  # ties
        qs = [0.0, 0.5, 1.0] if trial % 7 == 0 else sorted(rng.random(3).tolist())
        ordered = np.sort(x)
        ranks = {int(k) for side in spark_fit._neighbours(n, qs) for k in side} | {(n - 1) // 2, n // 2}
        order = {k: float(ordered[k]) for k in ranks}
        assert spark_fit.quantile_from(order, n, qs) == np.quantile(x, qs).tolist(), (n, qs)
        assert spark_fit.median_from(order, n) == float(np.median(x)), n


def test_exact_sums_are_exact_and_the_mean_correctly_rounded():
    rng = np.random.default_rng(8)
    for _ in range(300):
        x = rng.gamma(2.0, 100.0, size=int(rng.integers(1, 3000))) * rng.choice([-1.0, 1.0])
        exact = sum((Fraction(v) for v in x), Fraction(0))
        parts = spark_fit.exact_sum_parts(x)
        assert sum((Fraction(int(v)) * Fraction(2) ** e for e, v in parts), Fraction(0)) == exact
        mean = spark_fit.mean_from(exact, len(x))
        assert mean == float(exact / len(x)) and mean == pytest.approx(float(np.mean(x)), rel=1e-13)
    assert spark_fit.exact_sum_parts(np.array([0.0, np.nan])) == []


TAGS = """
tags:
  - id: a_level
    name: {zh: 甲, en: A level}
    category: consumption
    kind: bucket
    input: a
    quantiles: [0.1, 0.5, 0.9]
    labels: [low, mid, high, top]
    population: b > 0
  - id: seg_mean
    name: {zh: 乙, en: Mean segment}
    category: consumption
    kind: rfm
    recency: a
    frequency: b
    monetary: c
    split: mean
    population: b > 0
  - id: seg_median
    name: {zh: 丙, en: Median segment}
    category: consumption
    kind: rfm
    recency: a
    frequency: b
    monetary: c
    split: median
    population: b > 0
  - id: c_level
    name: {zh: 丁, en: C level among the not low}
    category: consumption
    kind: bucket
    input: c
    quantiles: [0.25, 0.75]
    labels: [lo, mid, hi]
    population: a_level != "low"
"""


@pytest.fixture
def small_tagset(tmp_path):
    path = tmp_path / "tags.yaml"
    path.write_text(TAGS, encoding="utf-8")
    return load_tagset([path], columns={"a": "number", "b": "number", "c": "number"})


def test_fit_levels_wait_for_the_tags_a_fit_reads(small_tagset):
    assert spark_fit.fit_levels(small_tagset) == [["a_level", "seg_mean", "seg_median"], ["c_level"]]


def _same_stats(got: dict, want: dict) -> None:
    """Equal to the bit, except a mean, which may differ from numpy's pairwise sum in its last bits."""
    assert got.keys() == want.keys()
    for tag, entry in want.items():
        if entry.get("split") == "mean":
            assert {k: v for k, v in got[tag].items() if k not in ("recency", "frequency", "monetary")} == \
                   {k: v for k, v in entry.items() if k not in ("recency", "frequency", "monetary")}
            for role in ("recency", "frequency", "monetary"):
                want_value = entry[role]
                assert got[tag][role] == (None if want_value is None else pytest.approx(want_value, rel=1e-13,
                                                                                         abs=0)), (tag, role)
        else:
            assert got[tag] == entry, tag


def test_statistics_fitted_on_spark_are_the_tag_sets(spark, small_tagset):
    rng = np.random.default_rng(3)
    n = 5000
    frame = pd.DataFrame({"a": rng.gamma(2, 30, n).round(1), "b": rng.poisson(2, n).astype(float),
                          "c": rng.lognormal(5, 1, n)})
    frame.loc[rng.random(n) < 0.1, "a"] = np.nan
    frame.loc[rng.random(n) < 0.1, "c"] = np.nan
    want = small_tagset.fit(frame)
    got = spark_fit.fit(spark.createDataFrame(frame).repartition(3), small_tagset)
    _same_stats(got, want)
    assert want["c_level"]["population"] < want["a_level"]["population"] < n

    # nobody in the population: the same empty statistics
    none = frame.assign(b=0.0)
    _same_stats(spark_fit.fit(spark.createDataFrame(none), small_tagset), small_tagset.fit(none))


# --- rescoring ------------------------------------------------------------------------------------------------------

def _copy(trained_workspace: Path, root: Path, *, engine: str, conf: dict | None = None) -> Workspace:
    shutil.copytree(trained_workspace, root, symlinks=True)
    if engine == "spark":
        path = root / "persona.yaml"
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
        cfg["engine"] = "spark"
        cfg["spark"] = {"master": "local[2]", "app_name": "persona-tests", "conf": conf or {}}
        path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return Workspace.open(root)


def test_rescoring_on_spark_writes_the_embedded_snapshot(spark, trained_workspace, tmp_path):
    from serving.batch import rescore

    embedded = _copy(trained_workspace, tmp_path / "duckdb", engine="duckdb")
    on_spark = _copy(trained_workspace, tmp_path / "spark", engine="spark")
    want = rescore(embedded, push=False)
    got = rescore(on_spark, push=True)  # pushing reads the written snapshot back in chunks
    print(f"\nrescore wall time: duckdb {want['seconds']['total']} s, spark {got['seconds']['total']} s")

    assert got["date"] == want["date"] and got["personas"] == want["personas"] and got["tags"] == want["tags"]
    assert got["models"] == want["models"] and got["coverage"] == want["coverage"]
    assert got["pushed"]["rows"] == got["personas"]

    a, b = history.read(embedded), history.read(on_spark)
    assert list(b.columns) == list(a.columns) and b.dtypes.to_dict() == a.dtypes.to_dict()
    assert b["persona_id"].tolist() == a["persona_id"].tolist()
    floats = [c for c in a.columns if pd.api.types.is_float_dtype(a[c].dtype)]
    pd.testing.assert_frame_equal(b.drop(columns=floats), a.drop(columns=floats))
    for c in floats:
        np.testing.assert_allclose(b[c].to_numpy(), a[c].to_numpy(), rtol=1e-9, atol=0, equal_nan=True, err_msg=c)
    folder = history.root(on_spark) / f"date={got['date']}"
    assert pq.read_schema(folder / history.PART).equals(pq.read_schema(history.root(embedded) / f"date={want['date']}"
                                                                       / history.PART))
    assert sorted(p.name for p in folder.iterdir()) == [history.META, history.PART]  # nothing else in the folder
    assert not [p for p in history.root(on_spark).iterdir() if p.name.startswith(".")]  # nothing half-written

    meta_a, meta_b = history.read_meta(embedded), history.read_meta(on_spark)
    assert meta_b.keys() == meta_a.keys()
    for key in meta_a:
        if key == "stats":
            _same_stats(meta_b["stats"], meta_a["stats"])
        elif key != "created":
            assert meta_b[key] == meta_a[key], key

    # the readers above the history: the tag listing reads the Spark snapshot's coverage
    from rules import catalog

    listing = {t["id"]: t["coverage"] for t in catalog.listing(on_spark)["tags"]}
    assert listing == {t["id"]: t["coverage"] for t in catalog.listing(embedded)["tags"]}


def _scale_features(ws: Workspace, copies: int) -> int:
    """Every feature snapshot file repeated `copies` times under new persona ids; returns the personas per date."""
    from features import store as feature_store

    per_date = 0
    for path in feature_store.snapshot_files(ws).values():
        table = pq.read_table(path)
        ids = table.column("persona_id").cast(pa.string())
        parts = [table.set_column(table.schema.get_field_index("persona_id"), "persona_id",
                                  pc.binary_join_element_wise(ids, pa.scalar(f"x{k}"), "-"))
                 for k in range(copies)]
        pq.write_table(pa.concat_tables(parts), path)
        per_date = max(per_date, table.num_rows)
    return per_date


def test_nothing_is_collected_to_a_small_driver(trained_workspace, tmp_path):
    spark_or_skip()
    copies = 40  # ~60,000 personas: their features alone are tens of MB, far over the 2 MB of results allowed
    ws = _copy(trained_workspace, tmp_path / "ws", engine="spark", conf={
        "spark.driver.memory": "512m", "spark.driver.maxResultSize": "2m", "spark.ui.enabled": "false",
        "spark.sql.autoBroadcastJoinThreshold": "1m", "spark.sql.shuffle.partitions": "4",
        "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"})
    _scale_features(ws, copies)
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(ROOT)!r})
        from persona.workspace import Workspace
        from serving.batch import rescore
        result = rescore(Workspace.open({str(ws.root)!r}), push=False)
        print(json.dumps({{"personas": result["personas"], "seconds": result["seconds"]}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PERSONA_SALT"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=1800,
                         env={**env, "PYSPARK_PYTHON": sys.executable})
    problems = [line for line in out.stderr.splitlines() if "Exception" in line or "Error" in line]
    assert out.returncode == 0, "\n".join(problems[:10]) or out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    snap = pq.read_metadata(history.root(ws) / f"date={history.latest_date(ws)}" / history.PART)
    assert summary["personas"] == snap.num_rows and snap.num_rows > 50_000
    print(f"\n{snap.num_rows} personas on a 512 MB / 2 MB-result driver: {summary['seconds']}")
