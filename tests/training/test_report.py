"""The data behind the Models page's charts (training/report.py `curves`): small arrays written here, checked against
scikit-learn and against what a chart needs (a ROC from (0, 0) to (1, 1), gains that only grow and end at 1)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from training.metrics import calibration_table
from training.report import DECILES, ROC_POINTS, TOP_FEATURES, curves, decile_gains, roc_points


def _probability(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.2).astype(np.int64)
    return y, rng.random(n) + 0.4 * y


def test_roc_runs_from_origin_to_one_one_with_sklearns_auc():
    y, score = _probability(20_000)
    roc = roc_points(y, score)
    assert (roc["fpr"][0], roc["tpr"][0]) == (0.0, 0.0) and (roc["fpr"][-1], roc["tpr"][-1]) == (1.0, 1.0)
    assert len(roc["fpr"]) == len(roc["tpr"]) <= ROC_POINTS
    assert np.all(np.diff(roc["fpr"]) >= 0) and np.all(np.diff(roc["tpr"]) >= 0)
    assert roc["auc"] == pytest.approx(roc_auc_score(y, score), abs=1e-6)


def test_roc_of_a_tiny_perfect_ranking_and_of_one_class():
    assert roc_points(np.array([0, 0, 1]), np.array([0.1, 0.2, 0.9])) == \
        {"fpr": [0.0, 0.0, 1.0], "tpr": [0.0, 1.0, 1.0], "auc": 1.0}
    assert roc_points(np.array([1, 1, 1]), np.array([0.1, 0.2, 0.9])) is None  # no ROC without negatives


def test_gains_grow_end_at_one_and_lift_the_top_decile():
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0] * 10)
    score = np.where(y == 1, 0.9, 0.1) + np.arange(100) * 1e-4  # positives on top
    g = decile_gains(y, score)
    assert g["share_customers"] == pytest.approx([k / 10 for k in range(1, 11)])
    assert g["share_captured"][:2] == pytest.approx([0.5, 1.0]) and g["share_captured"][-1] == 1.0
    assert np.all(np.diff(g["share_captured"]) >= 0)
    assert g["lift"][0] == pytest.approx(5.0) and g["lift"][-1] == pytest.approx(1.0)
    assert g["mean_outcome"][:3] == pytest.approx([1.0, 1.0, 0.0])


def test_value_gains_share_of_actual_value_and_means_per_decile():
    actual = np.array([100.0, 0, 50, 0, 0, 10, 0, 0, 40, 0])
    predicted = np.array([90.0, 1, 60, 2, 3, 20, 4, 5, 30, 6])  # ranks 100, 50, 40, 10 first
    c = curves("value", actual, predicted)
    assert c["roc"] is None and c["positives"] is None and c["calibration"] is None
    g = c["deciles"]
    assert g["share_captured"][:4] == pytest.approx([0.5, 0.75, 0.95, 1.0]) and g["share_captured"][-1] == 1.0
    assert g["mean_score"][0] == 90.0 and g["mean_outcome"][0] == 100.0


def test_fewer_rows_than_deciles_leave_empty_deciles_as_none():
    g = decile_gains(np.array([1.0, 0.0, 2.0]), np.array([0.3, 0.2, 0.1]))
    assert len(g["share_captured"]) == DECILES and g["share_captured"][-1] == 1.0
    assert None in g["mean_score"]  # a decile with no customer has no mean (JSON has no NaN)
    zero = decile_gains(np.zeros(20), np.arange(20.0))
    assert zero["share_captured"] == [None] * DECILES  # nothing to capture: no share


def test_curves_of_a_probability_output_are_small_json_with_calibration_and_top_features():
    y, score = _probability(50_000, seed=1)
    p = np.clip(score / score.max(), 0, 1)
    importance = pd.Series(np.arange(60.0)[::-1], index=[f"f{i}" for i in range(60)])
    c = curves("probability", y, p, calibration=calibration_table(y, p), importance=importance, folds=1)
    text = json.dumps(c, allow_nan=False)  # strict JSON: a browser's JSON.parse takes it
    assert len(text) < 8_000
    assert c["rows"] == 50_000 and c["positives"] == int(y.sum())
    assert [f["feature"] for f in c["importance"]] == [f"f{i}" for i in range(TOP_FEATURES)]
    assert c["importance"][0]["gain"] == 59.0
    assert len(c["calibration"]["predicted"]) == len(c["calibration"]["observed"]) == 10
    assert sum(c["calibration"]["n"]) == 50_000
    assert curves("probability", y, p)["importance"] == []  # an estimator without importance
