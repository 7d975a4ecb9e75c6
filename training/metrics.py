"""Evaluation of model tags on a held-out period: the metrics vendors show, and a quality grade from them."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

# AUC bands for the grade, as predictive-trait vendors show them (poor / fair / good / excellent).
AUC_GRADES = ((0.8, "excellent"), (0.7, "good"), (0.6, "fair"))
SPEARMAN_GRADES = ((0.6, "excellent"), (0.45, "good"), (0.3, "fair"))


def _top_decile(score: np.ndarray) -> np.ndarray:
    k = max(1, int(np.ceil(len(score) * 0.1)))
    top = np.zeros(len(score), dtype=bool)
    top[np.argsort(-score, kind="mergesort")[:k]] = True
    return top


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Mean predicted vs observed rate per probability decile."""
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
    frame = pd.DataFrame({"bin": idx, "y": y, "p": p})
    return frame.groupby("bin").agg(predicted=("p", "mean"), observed=("y", "mean"), n=("y", "size")).reset_index()


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUC, PR-AUC, Brier, log loss, top-decile lift and capture, expected calibration error."""
    y = np.asarray(y, dtype=np.int64)
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    top = _top_decile(p)
    base = y.mean()
    cal = calibration_table(y, p)
    ece = float((cal["n"] * (cal["predicted"] - cal["observed"]).abs()).sum() / cal["n"].sum())
    return {
        "auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "lift_top_decile": float(y[top].mean() / base) if base > 0 else float("nan"),
        "capture_top_decile": float(y[top].sum() / y.sum()) if y.sum() > 0 else float("nan"),
        "ece": ece,
        "positive_rate": float(base),
        "rows": int(len(y)),
    }


def regression_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Spearman rank correlation, share of actual spend captured by the predicted top decile, error on log spend."""
    actual = np.asarray(actual, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    top = _top_decile(predicted)
    total = actual.sum()
    return {
        "spearman": float(spearmanr(actual, predicted).statistic),
        "capture_top_decile": float(actual[top].sum() / total) if total > 0 else float("nan"),
        "rmse_log_spend": float(np.sqrt(np.mean((np.log1p(np.maximum(predicted, 0)) - np.log1p(actual)) ** 2))),
        "mae": float(np.mean(np.abs(predicted - actual))),
        "rows": int(len(actual)),
    }


def grade(metric: str, value: float) -> str:
    """poor / fair / good / excellent from AUC (probabilities) or Spearman (value)."""
    bands = AUC_GRADES if metric == "auc" else SPEARMAN_GRADES
    for floor, name in bands:
        if value >= floor:
            return name
    return "poor"
