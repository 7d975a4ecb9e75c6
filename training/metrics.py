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
    """AUC, PR-AUC, Brier, log loss, top-decile lift and capture, expected calibration error.

    The ranking metrics read the scores as they are: baselines score on other scales (the RFM churn score is
    negative), and clipping them into (0, 1) would tie them all. Only the probability metrics clip.
    """
    y = np.asarray(y, dtype=np.int64)
    score = np.asarray(p, dtype=np.float64)
    p = np.clip(score, 1e-6, 1 - 1e-6)
    top = _top_decile(score)
    base = y.mean()
    cal = calibration_table(y, p)
    ece = float((cal["n"] * (cal["predicted"] - cal["observed"]).abs()).sum() / cal["n"].sum())
    return {
        "auc": float(roc_auc_score(y, score)),
        "pr_auc": float(average_precision_score(y, score)),
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


# --- paired bootstrap for the promotion gate -----------------------------------------------------------------------
# Each score is ranked once (the index of its distinct value); a resample is a matrix of drawn row indices, and one
# bincount per resample chunk gives how often each distinct value was drawn, from which cumulative sums give every
# resample's average ranks. So AUC (Mann-Whitney on the ranks) and Spearman (Pearson on the ranks) of B resamples
# take a few passes over a B x n index matrix, with no Python loop per row or per resample. Ranks are kept doubled
# (2 x an average rank is an integer) and sums exact (int64, or float64 of integers below 2**53), so the figures are
# the same on every machine: no BLAS, no dependence on summation order or thread count.
BOOTSTRAP_CELLS = 4_000_000  # resamples x rows drawn at once (32 MB of int64 indices)


def bootstrap_indices(n: int, resamples: int, seed: int):
    """Yield (chunk of resamples) x n matrices of row indices, each row one resample (n draws with replacement).
    Chunk sizes depend on n only, so the draws depend on nothing but (n, resamples, seed)."""
    rng = np.random.default_rng(seed)
    step = max(1, min(resamples, BOOTSTRAP_CELLS // max(n, 1)))
    for start in range(0, resamples, step):
        yield rng.integers(0, n, size=(min(step, resamples - start), n))


class _Ranking:
    """One score ranked once: the index of each row's distinct value (ascending)."""

    def __init__(self, values: np.ndarray) -> None:
        distinct, self.group = np.unique(np.asarray(values, dtype=np.float64), return_inverse=True)
        self.size = len(distinct)

    def per_value(self, idx: np.ndarray, code: np.ndarray | None = None, width: int = 1,
                  weights: np.ndarray | None = None) -> np.ndarray:
        """Per resample (row of idx), the draws of each distinct value (B x size, or B x size x width when code
        splits each value into `width` classes), or the sum of weights (B x n, one per draw) over those draws."""
        keys = (self.group if code is None else code)[idx] + (np.arange(len(idx)) * self.size * width)[:, None]
        out = np.bincount(keys.ravel(), weights=None if weights is None else weights.ravel(),
                          minlength=len(idx) * self.size * width)
        return out.reshape(len(idx), self.size, width) if width > 1 else out.reshape(len(idx), self.size)

    @staticmethod
    def centred_ranks(drawn: np.ndarray) -> np.ndarray:
        """2 x average rank - (resample size + 1) of each distinct value, from its draws (B x size)."""
        ranks = 2 * (np.cumsum(drawn, axis=1) - drawn) + drawn + 1
        return ranks - (drawn.sum(axis=1, keepdims=True) + 1)


def _auc(y: np.ndarray, score: _Ranking, idx: np.ndarray) -> np.ndarray:
    split = score.per_value(idx, code=score.group * 2 + y, width=2)  # B x values x (negatives, positives)
    drawn = split.sum(axis=2)
    ranks = 2 * (np.cumsum(drawn, axis=1) - drawn) + drawn + 1
    pos = split[:, :, 1].sum(axis=1)
    neg = idx.shape[1] - pos
    u2 = (ranks * split[:, :, 1]).sum(axis=1) - pos * (pos + 1)  # 2 x Mann-Whitney U (ties count one half)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((pos > 0) & (neg > 0), u2 / (2.0 * pos * neg), np.nan)


def _spearman(y_drawn_ranks: np.ndarray, y_var: np.ndarray, score: _Ranking, idx: np.ndarray) -> np.ndarray:
    """y_drawn_ranks: the centred doubled rank of y for every draw (B x n); y_var: their sum of squares (B)."""
    drawn = score.per_value(idx)
    centred = _Ranking.centred_ranks(drawn)
    cross = score.per_value(idx, weights=y_drawn_ranks).astype(np.int64)  # sums of integers: exact
    cov = (centred * cross).sum(axis=1)
    var = np.sqrt((drawn * centred * centred).sum(axis=1).astype(np.float64)) * np.sqrt(y_var.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(var > 0, cov / var, np.nan)


class _Target:
    """The held-out truth of one output, prepared for either metric."""

    def __init__(self, metric: str, y: np.ndarray) -> None:
        if metric not in ("auc", "spearman"):
            raise ValueError(f"unknown rank metric {metric!r} (expected 'auc' or 'spearman')")
        self.metric = metric
        self.y = np.asarray(y, dtype=np.int64) if metric == "auc" else None
        self.ranking = None if metric == "auc" else _Ranking(y)

    def for_draws(self, idx: np.ndarray):
        """What every score's metric on these resamples shares (the ranks of y for Spearman)."""
        if self.ranking is None:
            return None
        drawn = self.ranking.per_value(idx)
        centred = _Ranking.centred_ranks(drawn)
        per_draw = np.take_along_axis(centred, self.ranking.group[idx], axis=1)
        return per_draw, (drawn * centred * centred).sum(axis=1)

    def metric_of(self, score: _Ranking, idx: np.ndarray, shared) -> np.ndarray:
        return _auc(self.y, score, idx) if self.ranking is None else _spearman(*shared, score, idx)


def rank_metric(metric: str, y: np.ndarray, score: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
    """`auc` (y in {0, 1}) or `spearman` of score against y for every resample (rows of drawn indices idx;
    default: each row once, which equals sklearn's roc_auc_score / scipy's spearmanr on the arrays)."""
    target = _Target(metric, y)
    idx = np.arange(len(y))[None, :] if idx is None else idx
    return target.metric_of(_Ranking(score), idx, target.for_draws(idx))


def paired_bootstrap(metric: str, outputs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], *,
                     resamples: int = 200, seed: int = 0) -> np.ndarray:
    """Bootstrap distribution of (challenger - champion) of the metric averaged over outputs.

    outputs: (y, challenger score, champion score) per output, all on the same held-out rows, so each resample
    draws the same rows for both models and every output (a paired bootstrap). Resamples where some output's
    metric is undefined (a single class drawn) are dropped.
    """
    n = len(outputs[0][0])
    if any(len(a) != n for out in outputs for a in out):
        raise ValueError("paired bootstrap: every output must be scored on the same held-out rows")
    prepared = [(_Target(metric, y), _Ranking(a), _Ranking(b)) for y, a, b in outputs]
    diffs = []
    for idx in bootstrap_indices(n, resamples, seed):
        per_output = []
        for target, a, b in prepared:
            shared = target.for_draws(idx)
            per_output.append(target.metric_of(a, idx, shared) - target.metric_of(b, idx, shared))
        diffs.append(np.mean(per_output, axis=0))
    diffs = np.concatenate(diffs) if diffs else np.empty(0)
    return diffs[np.isfinite(diffs)]
