"""The held-out metrics: ranking and calibration of probabilities, rank correlation and capture of values, and the
grade each metric's value earns."""

import numpy as np
import pytest

from training.metrics import calibration_table, classification_metrics, grade, regression_metrics


def test_classification_metrics_and_calibration():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=20000)
    y = (rng.uniform(size=p.size) < p).astype(int)  # perfectly calibrated by construction
    m = classification_metrics(y, p)
    assert 0.81 < m["auc"] < 0.86 and m["ece"] < 0.02  # calibrated uniform scores: AUC = 5/6
    assert m["lift_top_decile"] > 1.5 and 0 < m["capture_top_decile"] < 1
    cal = calibration_table(y, p)
    assert np.allclose(cal["predicted"], cal["observed"], atol=0.03)
    assert grade("auc", m["auc"]) == "excellent" and grade("auc", 0.65) == "fair" and grade("auc", 0.55) == "poor"


def test_regression_metrics():
    actual = np.array([0, 0, 10, 100, 1000.0] * 20)
    m = regression_metrics(actual, actual * 2)
    # The top 10 of 100 rows are half of the twenty 1000s: 10,000 of 22,200.
    assert m["spearman"] == pytest.approx(1.0) and m["capture_top_decile"] == pytest.approx(10000 / 22200)
    assert grade("spearman", 0.5) == "good"
