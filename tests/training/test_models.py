"""The learners: calibrated probabilities mean what they say; the served model computes what evaluation did."""

import numpy as np
import pandas as pd

from training import models as mdl
from training.metrics import calibration_table, classification_metrics


def synthetic(n, seed):
    rng = np.random.default_rng(seed)
    x = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "noise": rng.normal(size=n)})
    true_p = 1 / (1 + np.exp(-(2.5 * x["a"] - 1.5 + x["b"] ** 2 - 1)))
    return x, (rng.uniform(size=n) < true_p).astype(int), true_p.to_numpy()


def test_calibrated_probabilities_match_observed_rates_on_new_data():
    x_tr, y_tr, _ = synthetic(20000, 0)
    x_val, y_val, _ = synthetic(10000, 1)
    x_te, y_te, true_p = synthetic(20000, 2)
    # A deliberately over-confident learner (few, deep, fast trees) whose raw scores are not probabilities.
    params = mdl.LearnerParams(learning_rate=0.5, num_leaves=64, min_child_samples=5, max_trees=60)
    model = mdl.fit_classifier(x_tr, y_tr, x_val, y_val, params)
    calibrated = model.predict_proba(x_te)[:, 1]
    raw = model.model.predict_proba(x_te.to_numpy(dtype=np.float32))[:, 1]
    assert classification_metrics(y_te, calibrated)["ece"] < 0.02
    assert classification_metrics(y_te, calibrated)["ece"] < classification_metrics(y_te, raw)["ece"]
    table = calibration_table(y_te, calibrated)
    assert np.allclose(table["predicted"], table["observed"], atol=0.05)
    assert abs(calibrated.mean() - true_p.mean()) < 0.01


def test_tag_model_predict_is_the_evaluation_function():
    x_tr, y_tr, _ = synthetic(5000, 3)
    x_val, y_val, _ = synthetic(3000, 4)
    est = mdl.fit_classifier(x_tr, y_tr, x_val, y_val, mdl.LearnerParams(max_trees=50))
    tag = mdl.TagModel("churn_risk", "probability", ["a", "b", "noise"], {"churn_risk": est}, 90)
    served = tag.predict(None, x_val[["noise", "b", "a"]].assign(extra=1.0))  # column order and extras ignored
    np.testing.assert_allclose(served["churn_risk"].to_numpy(), est.predict_proba(x_val)[:, 1])
    missing = x_val.drop(columns=["b"])
    try:
        tag.predict(None, missing)
    except ValueError as exc:
        assert "lacks feature" in str(exc) and "'b'" in str(exc)
    else:
        raise AssertionError("a missing feature must be refused")


def test_same_data_and_seed_give_the_same_model_bit_for_bit():
    """What the promotion gate's tie relies on (a retrained challenger scores exactly as its champion): LightGBM runs
    deterministic, with a fixed histogram layout rather than one it picks by timing the machine."""
    x_tr, y_tr, _ = synthetic(5000, 5)
    x_val, y_val, _ = synthetic(3000, 6)
    params = mdl.LearnerParams(max_trees=40)
    first, again = (mdl.fit_classifier(x_tr, y_tr, x_val, y_val, params) for _ in range(2))
    assert first.model.booster_.model_to_string() == again.model.booster_.model_to_string()
    np.testing.assert_array_equal(first.predict_proba(x_val), again.predict_proba(x_val))
    value = [mdl.fit_regressor(x_tr, np.abs(x_tr["a"].to_numpy()), x_val, np.abs(x_val["a"].to_numpy()), params)
             for _ in range(2)]
    np.testing.assert_array_equal(value[0].predict(x_val), value[1].predict(x_val))
