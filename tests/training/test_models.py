"""The learners: calibrated probabilities mean what they say; the served model computes what evaluation did."""

import numpy as np
import pandas as pd

from training import models as mdl
from training.candidates import Platt, RankCalibrator
from training.metrics import calibration_table, classification_metrics


def synthetic(n, seed):
    rng = np.random.default_rng(seed)
    x = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "noise": rng.normal(size=n)})
    true_p = 1 / (1 + np.exp(-(2.5 * x["a"] - 1.5 + x["b"] ** 2 - 1)))
    return x, (rng.uniform(size=n) < true_p).astype(int), true_p.to_numpy()


def test_platt_maps_distorted_scores_to_observed_rates_and_keeps_the_ranking():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(-1, 1.5, size=60000)
    y = (rng.uniform(size=true_logit.size) < 1 / (1 + np.exp(-true_logit))).astype(int)
    raw = 1 / (1 + np.exp(-(3 * true_logit + 2)))  # over-confident and shifted: not probabilities
    fit, new = slice(0, 20000), slice(20000, None)
    platt = Platt().fit(raw[fit], y[fit])
    calibrated = platt(raw[new])
    assert classification_metrics(y[new], calibrated)["auc"] == classification_metrics(y[new], raw[new])["auc"]
    assert len(np.unique(calibrated)) == len(np.unique(raw[new]))  # nobody is pooled with a neighbour
    assert classification_metrics(y[new], calibrated)["ece"] < 0.01 < 0.1 < classification_metrics(y[new], raw[new])["ece"]
    assert abs(platt.a - 1 / 3) < 0.03  # undoes the distortion: logit(p) = (logit(raw) - 2) / 3


def test_a_backwards_score_is_not_calibrated_into_a_decreasing_map():
    y = np.array([1, 1, 1, 0, 0, 0] * 50)
    score = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9] * 50)
    platt = Platt().fit(score, y)
    assert (platt.a, platt.b) == (1.0, 0.0)  # identity: calibration never reverses a ranking


def test_the_rank_calibrator_follows_a_non_logistic_distortion_and_keeps_every_customer_distinct():
    rng = np.random.default_rng(1)
    p_true = rng.beta(0.6, 1.8, size=60000)
    y = (rng.uniform(size=p_true.size) < p_true).astype(int)
    raw = np.sqrt(p_true)  # a concave distortion: Platt's sigmoid of the logit cannot undo it
    fit, new = slice(0, 20000), slice(20000, None)
    cal = RankCalibrator().fit(raw[fit], y[fit])
    calibrated = cal(raw[new])
    assert cal.method == "centred isotonic"
    assert classification_metrics(y[new], calibrated)["auc"] == classification_metrics(y[new], raw[new])["auc"]
    assert len(np.unique(calibrated)) == len(np.unique(raw[new]))
    assert (np.diff(cal(np.sort(raw[new]))) >= 0).all()
    table = calibration_table(y[new], calibrated)
    assert np.allclose(table["predicted"], table["observed"], atol=0.02)
    platt = Platt().fit(raw[fit], y[fit])(raw[new])
    assert classification_metrics(y[new], calibrated)["ece"] < classification_metrics(y[new], platt)["ece"]


def test_few_positives_fall_back_to_platt():
    rng = np.random.default_rng(2)
    score = rng.uniform(size=400)
    y = (rng.uniform(size=400) < score / 8).astype(int)  # about 25 positives
    assert RankCalibrator().fit(score, y).method == "platt"


def test_calibrated_lightgbm_probabilities_match_observed_rates_on_new_data():
    x_tr, y_tr, _ = synthetic(20000, 0)
    x_val, y_val, _ = synthetic(10000, 1)
    x_te, y_te, true_p = synthetic(20000, 2)
    params = mdl.LearnerParams(learning_rate=0.5, num_leaves=64, min_child_samples=5, max_trees=60)
    model = mdl.fit_classifier(x_tr, y_tr, x_val, y_val, params)
    calibrated = model.predict_proba(x_te)[:, 1]
    raw = model.raw(x_te.to_numpy(dtype=np.float32))
    assert classification_metrics(y_te, calibrated)["auc"] == classification_metrics(y_te, raw)["auc"]
    assert len(np.unique(calibrated)) == len(np.unique(raw))
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
    assert first.model.model.booster_.model_to_string() == again.model.model.booster_.model_to_string()
    np.testing.assert_array_equal(first.predict_proba(x_val), again.predict_proba(x_val))
    value = [mdl.fit_regressor(x_tr, np.abs(x_tr["a"].to_numpy()), x_val, np.abs(x_val["a"].to_numpy()), params)
             for _ in range(2)]
    np.testing.assert_array_equal(value[0].predict(x_val), value[1].predict(x_val))


def test_linear_and_blend_candidates_score_a_customer_alone_exactly_as_in_a_batch():
    """Online scoring sees one customer, batch scoring thousands: the same bits either way (no BLAS product whose
    summation order depends on the number of rows)."""
    from training.candidates import Blend, Linear

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 40)).astype(np.float32)  # over 8 columns: numpy sums rows in blocks
    x[rng.uniform(size=x.shape) < 0.1] = np.nan
    y, spend = (rng.uniform(size=400) < 0.3).astype(int), rng.gamma(1.0, 10.0, size=400)
    for kind, target in (("probability", y), ("value", spend)):
        members = {"a": Linear(kind, range(25), 1).fit(x, target), "b": Linear(kind, range(15, 40), 1).fit(x, target)}
        if kind == "probability":
            members = {k: mdl.Calibrated(m, RankCalibrator().fit(m.score(x), y)) for k, m in members.items()}
        blend = Blend(kind, members, 1).fit(x, target)
        for model in (*members.values(), blend):
            scores = model.predict_proba(x)[:, 1] if kind == "probability" else model.predict(x)
            alone = np.array([(model.predict_proba(x[i:i + 1])[:, 1] if kind == "probability"
                               else model.predict(x[i:i + 1]))[0] for i in range(len(x))])
            np.testing.assert_array_equal(scores, alone)
    reference = Linear("probability", range(40), 1).fit(x, y)
    filled = np.where(np.isnan(x), reference.pipeline[0].statistics_, x).astype(np.float64)
    np.testing.assert_allclose(reference.score(x), reference.pipeline.predict_proba(filled)[:, 1], rtol=1e-12)


def test_a_linear_candidate_does_not_extrapolate_past_what_it_was_trained_on():
    from training.candidates import Linear

    rng = np.random.default_rng(5)
    x = rng.normal(size=(2000, 3)).astype(np.float32)
    x[:, 2] = (rng.uniform(size=2000) < 0.01).astype(np.float32)  # a counter that is almost always 0 in training
    y = (rng.uniform(size=2000) < 1 / (1 + np.exp(-(x[:, 0] + 0.5 * x[:, 2])))).astype(int)
    model = Linear("probability", range(3), 1).fit(x, y)
    row = np.array([[0.0, 0.0, 1.0]], dtype=np.float32)
    live = np.array([[0.0, 0.0, 40.0]], dtype=np.float32)  # 40 events live: beyond anything seen
    assert model.score(live)[0] == model.score(row)[0]
