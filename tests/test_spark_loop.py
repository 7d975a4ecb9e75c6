"""Issue 13's parity test: the nightly loop on a 20,000-customer generated workspace gives the same results on both
engines. `persona integrate`, `persona features` and `persona rescore` run on one copy with `engine: duckdb` and on
another with `engine: spark` (local[2]); the test compares the personas (same ids), the quarantine counts and
reasons, every published integration output, the feature snapshots (floats within 1e-9 relative) and the tag
snapshot. The models are trained once, on the DuckDB copy, and the Spark copy scores with the same champions (its
persona.yaml points at that copy's MLflow store), so the comparison is of the engines, not of two trainings."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from persona.workspace import SALT_VAR, Workspace
from tests.conftest import SPARK_TEST_CONF
from tests.features.integration.test_spark_integrate import assert_same, report
from tests.features.test_spark_snapshots import assert_same_snapshots

pytestmark = pytest.mark.slow

CUSTOMERS = 20_000
SALT = "fedcba9876543210fedcba9876543210"


def _edit(root: Path, **changes) -> None:
    path = root / "persona.yaml"
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    cfg.update(changes)
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")


def test_the_loop_gives_the_same_results_on_both_engines(tmp_path, spark, monkeypatch):
    from features import store as feature_store
    from features.build import build_features
    from features.generate import generate
    from features.integration.run import integrate
    from rules import history
    from serving.batch import rescore
    from tests.conftest import _promote_every_challenger
    from training.train import train

    monkeypatch.delenv(SALT_VAR, raising=False)  # each copy's secrets.env
    base = tmp_path / "base"
    base.mkdir()
    (base / "secrets.env").write_text(f"{SALT_VAR}={SALT}\n", encoding="utf-8")
    generate(base, CUSTOMERS, seed=11)
    _edit(base, training={"min_positives": 20, "min_negatives": 20, "cutoffs": 2, "blend": False})
    roots = {e: tmp_path / e for e in ("duckdb", "spark")}
    for root in roots.values():
        shutil.copytree(base, root, symlinks=True)
    _edit(roots["spark"], engine="spark", spark={"master": "local[2]", "conf": SPARK_TEST_CONF},
          tracking={"uri": f"sqlite:///{roots['duckdb'] / 'mlflow.db'}"})
    ws = {e: Workspace.open(r) for e, r in roots.items()}

    # integrate: the same staged files, manifest, quarantine, personas and published outputs
    now = pd.Timestamp.now(tz="UTC").floor("s")  # one clock for both: it names the run
    reports = {e: integrate(w, now=now) for e, w in ws.items()}
    assert reports["duckdb"]["personas"] > CUSTOMERS * 0.8
    assert sum(s["quarantined"] for s in reports["duckdb"]["sources"].values()) > 0
    assert_same(ws["duckdb"], ws["spark"])
    assert report(ws["duckdb"]) == report(ws["spark"])

    # features: the same snapshot files
    built = {e: build_features(w, online=False) for e, w in ws.items()}
    assert built["duckdb"]["dates"] == built["spark"]["dates"]
    assert {e: r["engine"] for e, r in built.items()} == {"duckdb": "duckdb", "spark": "spark"}
    assert_same_snapshots(feature_store.offline_dir(ws["duckdb"]), feature_store.offline_dir(ws["spark"]))

    # rescore with the same champions: the same tag snapshot
    train(ws["duckdb"], promote=True, tags=["churn_risk", "high_value"])  # interest's 12 outputs add minutes
    _promote_every_challenger(ws["duckdb"])
    scored = {e: rescore(w, push=False) for e, w in ws.items()}
    assert scored["spark"]["personas"] == scored["duckdb"]["personas"] > CUSTOMERS * 0.8
    assert scored["spark"]["models"] == scored["duckdb"]["models"] and scored["duckdb"]["models"]
    assert {e: r["engine"] for e, r in scored.items()} == {"duckdb": "duckdb", "spark": "spark"}
    assert scored["spark"]["coverage"] == scored["duckdb"]["coverage"]
    a, b = history.read(ws["duckdb"]), history.read(ws["spark"])
    assert list(b.columns) == list(a.columns) and b["persona_id"].tolist() == a["persona_id"].tolist()
    floats = [c for c in a.columns if pd.api.types.is_float_dtype(a[c].dtype)]
    pd.testing.assert_frame_equal(b.drop(columns=floats), a.drop(columns=floats))
    for c in floats:
        np.testing.assert_allclose(b[c].to_numpy(), a[c].to_numpy(), rtol=1e-9, atol=0, equal_nan=True, err_msg=c)
