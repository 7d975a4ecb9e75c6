"""End to end: integrate -> features -> train, MLflow registration, the promotion gate, eligibility, BYO data."""

import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from features.build import build_features
from features.generate import generate
from features.integration.run import integrate
from persona.cli import app
from persona.workspace import Workspace
from training import tracking
from training.train import train

pytestmark = pytest.mark.slow


def _configure(root, **training):
    path = root / "persona.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["training"] = {"min_positives": 20, "min_negatives": 20, **training}
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_demo")
    generate(root, 1500, seed=3)
    _configure(root, cutoffs=3)
    ws = Workspace.open(root)
    integrate(ws)
    build_features(ws)
    return ws


def test_train_registers_every_tag_and_the_gate_promotes_only_a_better_challenger(demo):
    first = train(demo, promote=True)
    tags = {m["tag"] for m in first["models"]}
    assert {"churn_risk", "high_value"} <= tags and any(t.startswith("interest_") for t in tags)
    for m in first["models"]:
        assert m["metric"] in {"auc", "spearman"} and m["baselines"] and m["version"]
    for tag, verdict in first["promotions"].items():
        assert verdict["gate"] in {"promoted", "refused"} and verdict["reason"], tag
        outputs = [m for m in first["models"] if m["tag"] == tag or m["tag"].startswith(f"{tag}_")]
        if not all(m["beats_baselines"] for m in outputs):  # what loses to a baseline is never promoted
            assert not verdict["promoted"] and verdict["failed"] == "baseline", (tag, verdict["reason"])

    client = tracking.connect(demo, demo.config())
    name = tracking.model_name("churn_risk")
    version = first["models"][0]["version"]
    if not first["promotions"]["churn_risk"]["promoted"]:  # an operator's choice, as in the MLflow UI
        client.set_registered_model_alias(name, tracking.CHAMPION, version)

    # Same data, same seed: the challenger loses to a baseline again or ties the champion: not promoted.
    second = train(demo, promote=True, tags=["churn_risk"])
    gate = second["promotions"]["churn_risk"]
    assert not gate["promoted"] and gate["failed"] in {"baseline", "margin", "bootstrap"}, gate["reason"]
    assert tracking.alias_version(client, name, tracking.CHAMPION) == version
    assert tracking.alias_version(client, name, tracking.CHALLENGER) == second["models"][0]["version"]

    listed = CliRunner().invoke(app, ["models", "-w", str(demo.root), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = [r for r in __import__("json").loads(listed.stdout)["models"] if r["model"] == name]
    assert {tuple(r["aliases"]) for r in rows} >= {("champion",), ("challenger",)}
    assert all(r["metric"] == "auc" and r["held_out"] for r in rows)
    assert all(r["gate"] in {"promoted", "refused"} and r["gate_reason"] for r in rows
               if r["version"] == second["models"][0]["version"])


def test_a_tag_without_enough_positives_is_refused_with_the_reason(tmp_path):
    generate(tmp_path, 400, seed=5)
    _configure(tmp_path, min_positives=100_000)
    ws = Workspace.open(tmp_path)
    integrate(ws)
    build_features(ws)
    result = train(ws, tags=["churn_risk"])
    assert result["models"] == []
    assert "not eligible" in result["skipped"]["churn_risk"] and "min_positives" in result["skipped"]["churn_risk"]


def test_a_single_transactions_file_trains_churn_and_value(tmp_path):
    rng = np.random.default_rng(1)
    n = 900
    rate = rng.gamma(1.5, 1 / 60, size=n)  # purchases per day
    stop = rng.uniform(0, 900, size=n)  # some customers stop buying
    rows = []
    for cid in range(n):  # test data: a few thousand rows
        t = rng.exponential(1 / rate[cid])
        while t < min(stop[cid], 730):
            rows.append((f"c{cid}", pd.Timestamp("2024-10-01") + pd.Timedelta(days=float(t)),
                         round(float(rng.lognormal(4, 0.6)), 2)))
            t += rng.exponential(1 / rate[cid])
    frame = pd.DataFrame(rows, columns=["customer", "paid_at", "total"])
    frame.to_csv(tmp_path / "orders.csv", index=False)
    runner = CliRunner()
    init = runner.invoke(app, ["init", "-w", str(tmp_path), "--transactions", str(tmp_path / "orders.csv"),
                               "--customer-id", "customer", "--timestamp", "paid_at", "--amount", "total"])
    assert init.exit_code == 0, init.output
    _configure(tmp_path, cutoffs=3)
    ws = Workspace.open(tmp_path)
    integrate(ws)
    build_features(ws)
    result = train(ws, tags=["churn_risk", "high_value"])
    assert {m["tag"] for m in result["models"]} == {"churn_risk", "high_value"}, result["skipped"]


def test_a_run_that_fails_in_any_tag_registers_and_promotes_nothing(demo, monkeypatch):
    from training import train as train_mod

    client = tracking.connect(demo, demo.config())
    before = {m.name: len(client.search_model_versions(f"name = '{m.name}'"))
              for m in client.search_registered_models()}
    real = train_mod.Trainer.fit_tag

    def failing(self, spec):
        if spec.tag == "high_value":  # the second tag, after churn_risk has been fitted
            raise RuntimeError("disk full")
        return real(self, spec)

    monkeypatch.setattr(train_mod.Trainer, "fit_tag", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        train(demo, promote=True, tags=["churn_risk", "high_value"])
    after = {m.name: len(client.search_model_versions(f"name = '{m.name}'"))
             for m in client.search_registered_models()}
    assert after == before


def test_a_candidate_that_cannot_be_fitted_is_reported_and_the_best_other_serves(demo, monkeypatch):
    from training import candidates

    def no_convergence(*args, **kwargs):
        raise candidates.ConvergenceError("BG/NBD did not converge in 500 iterations (forced by the test)")

    monkeypatch.setattr(candidates, "fit_btyd", no_convergence)
    result = train(demo, tags=["churn_risk"])
    (row,) = result["models"]
    assert "bg_nbd" not in row["baselines"] and "did not converge" in row["failed"]["bg_nbd"]
    assert row["learner"] in {"lightgbm", "logistic_regression", "blend"}
    assert "bg_nbd_covariates" not in row["baselines"]  # built on BG/NBD: it cannot compete either


def test_a_classical_champion_serves_through_the_same_pyfunc(demo):
    """Whatever family wins, the registered model scores the held-out rows as its evaluation did (the refit keeps
    the family), through the pyfunc serving loads."""
    import mlflow

    from training import candidates, models as mdl

    result = train(demo, tags=["high_value"])
    (row,) = result["models"]
    loaded = mlflow.pyfunc.load_model(f"models:/{tracking.model_name('high_value')}/{row['version']}")
    model = loaded.unwrap_python_model()
    assert isinstance(model, mdl.TagModel) and model.learners["high_value"] == row["learner"]
    assert model.evaluation is not None and model.evaluation.learners == model.learners
    # a BG/NBD x Gamma-Gamma estimator computes from the matrix like any other
    est = candidates.BtydValue(model.btyd, None, {c: i for i, c in enumerate(model.columns)}, 180,
                               "tx_aov_365d" if "tx_aov_365d" in model.columns else None)
    x = np.zeros((3, len(model.columns)), dtype=np.float32)
    assert np.isfinite(est.predict(x)).all()


def test_a_six_month_log_trains_with_the_defaults_by_cross_fitting_customers(tmp_path):
    """Six months of a sparse shop (most customers buy once): too short for a time split with a 60-day horizon,
    so the held-out date's customers are scored out of fold; the defaults fit the span; $0 orders and refunds are
    in the file; every candidate competes and the chosen one is refitted."""
    rng = np.random.default_rng(4)
    n = 1500
    first = rng.uniform(0, 90, size=n)  # a cohort joining over the first quarter
    rate = rng.gamma(0.8, 1 / 40, size=n)
    life = rng.exponential(60, size=n)
    rows = []
    for cid in range(n):  # test data: a few thousand rows
        t = first[cid]
        while t < min(first[cid] + life[cid], 181):
            amount = 0.0 if rng.uniform() < 0.03 else round(float(rng.lognormal(3, 0.5)), 2)
            rows.append((f"c{cid}", pd.Timestamp("2025-01-01") + pd.Timedelta(days=float(t)), amount))
            if rng.uniform() < 0.02:
                rows.append((f"c{cid}", pd.Timestamp("2025-01-01") + pd.Timedelta(days=float(t) + 3), -amount))
            t += rng.exponential(1 / rate[cid])
    pd.DataFrame(rows, columns=["customer", "paid_at", "total"]).to_csv(tmp_path / "orders.csv", index=False)
    init = CliRunner().invoke(app, ["init", "-w", str(tmp_path), "--transactions", str(tmp_path / "orders.csv"),
                                    "--customer-id", "customer", "--timestamp", "paid_at", "--amount", "total"])
    assert init.exit_code == 0, init.output
    path = tmp_path / "persona.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["labels"] = {**(cfg.get("labels") or {}), "churn_horizon_days": 60, "value_horizon_days": 60}
    cfg["training"] = {**(cfg.get("training") or {}), "min_positives": 20, "min_negatives": 20}
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False))
    ws = Workspace.open(tmp_path)
    integrate(ws)
    build_features(ws)
    result = train(ws, tags=["churn_risk", "high_value", "interest"])
    assert "no category" in result["skipped"]["interest"]
    assert {m["tag"] for m in result["models"]} == {"churn_risk", "high_value"}, result["skipped"]
    client = tracking.connect(ws, ws.config())
    for m in result["models"]:
        run = client.get_run(client.get_model_version(tracking.model_name(m["tag"]), m["version"]).run_id)
        assert run.data.params["split"] == "customers" and run.data.params["refit"] == "True"
        assert m["rows"]["folds"] == 5 and m["learner"] in {"lightgbm", "logistic_regression", "linear_regression",
                                                             "bg_nbd", "bg_nbd_gamma_gamma", "bg_nbd_covariates", "blend"}
        if m["metric"] == "auc":  # calibration kept the ranking
            assert run.data.metrics["test_calibration_auc_change"] < 0.001


def test_a_new_model_tag_trains_from_its_registry_entry_alone(demo, monkeypatch, tmp_path):
    """Adding a model tag is one registry entry plus its label function: the feature store registers its service,
    and training plans, labels, fits, judges, logs and registers it as any other, with no code naming it. In a copy
    of the module's workspace, so that the other tests never meet its service or model, whatever their order."""
    import mlflow

    from features import model_tags
    from features import store as feature_store
    from features.model_tags import ModelTag
    from tests.features.conftest import repeat_labels

    ws = Workspace.open(tmp_path / "ws")  # a copy has its own Feast registry and MLflow store (tests/conftest.py)
    shutil.copytree(demo.root, ws.root, symlinks=True)
    toy = ModelTag("repeat_buyer", "probability", "auc", 60, repeat_labels, ("attributes", "transactions"),
                   baselines={"rfm_heuristic": "rfm_value"})
    monkeypatch.setattr(model_tags, "MODEL_TAGS", (*model_tags.MODEL_TAGS, toy))
    cfg = ws.config()
    assert "repeat_buyer_v1" in feature_store.apply(feature_store.open_store(ws, cfg), ws, cfg)

    result = train(ws, tags=["repeat_buyer"])
    (row,) = result["models"]
    assert row["tag"] == "repeat_buyer" and row["metric"] == "auc" and "rfm_heuristic" in row["baselines"]
    assert row["learner"] in {"lightgbm", "logistic_regression", "blend"}  # no buy-till-you-die family named
    client = tracking.connect(ws, cfg)
    name = tracking.model_name("repeat_buyer")
    run = client.get_run(client.get_model_version(name, row["version"]).run_id)
    assert run.data.params["feature_service"] == "repeat_buyer_v1" and run.data.params["horizon_days"] == "60"
    model = mlflow.pyfunc.load_model(f"models:/{name}/{row['version']}").unwrap_python_model()
    assert list(model.estimators) == ["repeat_buyer"]
    assert model.features and all(f.startswith(("attr_", "tx_")) for f in model.features)  # its groups only
    demo_models = {m.name for m in tracking.connect(demo, demo.config()).search_registered_models()}
    assert name not in demo_models  # the module's workspace is as it was
