"""Connected components on Spark (features/integration/spark_graph.py) give the partition scipy gives OneID, on
graphs written here: random ones, a long chain (the most rounds), stars, isolated nodes, self-loops and repeated
edges; and a graph of 450,000 edges (7 MB) is resolved by a driver of 512 MB allowed 2 MB of results (nothing collected).
Spark runs on local[2] (Java 17, pyspark from the dev group)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as scipy_components

from tests.conftest import spark_or_skip

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]


def _smallest_member(src: np.ndarray, dst: np.ndarray, nodes: np.ndarray) -> dict[int, int]:
    """scipy's components, each labelled by its smallest node (scipy numbers them in order of discovery)."""
    n = int(max(nodes.max(initial=0), src.max(initial=0), dst.max(initial=0))) + 1
    _, label = scipy_components(coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n)), directed=False)
    present = np.union1d(nodes, np.union1d(src, dst))
    smallest = {}
    for node in sorted(present.tolist()):
        smallest.setdefault(int(label[node]), node)
    return {node: smallest[int(label[node])] for node in present.tolist()}


def _spark_labels(spark, src, dst, nodes=None, *, scratch) -> dict[int, int]:
    from features.integration.spark_graph import connected_components

    edges = spark.createDataFrame([(int(a), int(b)) for a, b in zip(src, dst)], "src long, dst long")
    extra = None if nodes is None else spark.createDataFrame([(int(x),) for x in nodes], "node long")
    rows = connected_components(edges, extra, scratch=str(scratch)).collect()
    return {r["node"]: r["component"] for r in rows}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_graphs_give_scipys_partition(spark, seed, tmp_path):
    rng = np.random.default_rng(seed)
    n = 400
    src, dst = rng.integers(0, n, size=300), rng.integers(0, n, size=300)  # many small components, some loops
    isolated = np.array([n + 5, n + 9])
    got = _spark_labels(spark, src, dst, isolated, scratch=tmp_path)
    assert got == _smallest_member(src, dst, isolated)


def test_a_long_chain_stars_and_repeats_converge_to_the_smallest_node(spark, tmp_path):
    chain = np.arange(1000, 1200)  # a path of 200 nodes given in shuffled order: the deepest case
    order = np.random.default_rng(4).permutation(len(chain) - 1)
    src, dst = chain[:-1][order], chain[1:][order]
    star_src, star_dst = np.full(30, 5000), np.arange(5001, 5031)
    loops = np.array([7000, 7000])
    all_src = np.concatenate([src, star_src, star_dst, loops[:1]])
    all_dst = np.concatenate([dst, star_dst, star_src, loops[1:]])
    got = _spark_labels(spark, np.concatenate([all_src, all_src]), np.concatenate([all_dst, all_dst]),
                       scratch=tmp_path)
    assert {got[int(x)] for x in chain} == {1000}
    assert {got[int(x)] for x in [5000, *range(5001, 5031)]} == {5000}
    assert got[7000] == 7000
    assert got == _smallest_member(all_src, all_dst, np.array([], dtype=np.int64))


def test_nothing_is_collected_to_a_small_driver(tmp_path):
    spark_or_skip()
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(ROOT)!r})
        from persona import engine
        from persona.config import SparkConfig
        from features.integration.spark_graph import connected_components
        from pyspark.sql import functions as F
        spark = engine.spark_session(SparkConfig(master="local[2]", conf={{
            "spark.driver.memory": "512m", "spark.driver.maxResultSize": "2m", "spark.ui.enabled": "false",
            "spark.sql.autoBroadcastJoinThreshold": "1m", "spark.sql.shuffle.partitions": "4", "spark.driver.host": "127.0.0.1"}}))
        # 500,000 nodes linked i -> i+1 inside blocks of 10: 50,000 components of 10 (7 MB of edges as longs).
        # Spark collects a broadcast join's small side through the driver: at most 1 MB here (the threshold set
        # above), so any result over 2 MB would be data collected.
        ids = spark.range(0, 500_000)
        edges = ids.select(F.col("id").alias("src"), (F.col("id") + 1).alias("dst")).where(F.col("id") % 10 != 9)
        labels = connected_components(edges, scratch={str(tmp_path / 'scratch')!r})
        summary = labels.agg(F.count("*").alias("nodes"), F.countDistinct("component").alias("components"),
                             F.sum((F.col("component") != F.col("node") - F.col("node") % 10).cast("int"))
                             .alias("wrong")).first().asDict()
        print(json.dumps(summary))
        spark.stop()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    problems = [line for line in out.stderr.splitlines() if "Exception" in line or "Error" in line]
    assert out.returncode == 0, "\n".join(problems[:10]) or out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary == {"nodes": 500_000, "components": 50_000, "wrong": 0}
