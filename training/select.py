"""Which candidate serves a model tag's output, from its held-out metric per customer group.

Candidates (training/candidates.py): LightGBM, logistic / linear regression, the buy-till-you-die families the tag
names (features/model_tags.py) and their blend are each fitted on the training dates, calibrated on the validation
date and scored on the held-out date; the best serves, whatever its family (the RFM heuristic is a baseline only),
except that a learned model must lead the best buy-till-you-die model by more than the noise (`select`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from training.metrics import classification_metrics, regression_metrics
from training.split import FOLDS, customer_fold

# Candidate families in the order that wins a tie on the held-out metric: the simpler model first. A family a
# registry entry names that is not listed here (features/model_tags.py `process`) ranks after these, by name.
PREFERENCE = ["bg_nbd", "bg_nbd_gamma_gamma", "bg_nbd_covariates", "logistic_regression", "linear_regression",
              "lightgbm", "blend"]
# Families built on the buy-till-you-die process (see `select`): refitted on the scoring date's own summaries, they
# hold for customers of any age; the learned families hold for customers like the labelled ones. The default of
# `select`; training passes the process families of the tag's registry entry.
PROCESS = ("bg_nbd", "bg_nbd_gamma_gamma", "bg_nbd_covariates")


@dataclass(frozen=True)
class Selection:
    served: str
    best: str  # the highest mean held-out metric
    passed_over: dict[str, float]  # learned candidates above the served one, within a standard error: their lead
    standard_error: float | None


def _rank(name: str) -> tuple[int, str]:
    """Where a family stands on a tie: its place in PREFERENCE, else after every listed family (by name, so that
    the order never depends on the order candidates were fitted in)."""
    return (PREFERENCE.index(name), "") if name in PREFERENCE else (len(PREFERENCE), name)


def select(per_group: dict[str, np.ndarray], process: Sequence[str] = PROCESS) -> Selection:
    """The candidate to serve from its held-out metric per customer group (the folds of a customer split, or the
    held-out date's customers in FOLDS groups): the best by mean, except that a learned model must lead the best
    process model (a family in `process`: the tag's buy-till-you-die families) by more than one standard error of
    their paired difference over the groups.

    Why: the held-out date is the newest one with a fully observed label window, so its customers are younger than
    the scoring date's by at least a horizon; on a short log that is a large part of their lives. A learned model
    is fitted and judged on such customers and extrapolates on the older ones it then scores, while the process
    models are refitted on the scoring date's summaries. On the CDNOW development cutoff, learned value models that
    led BG/NBD x Gamma-Gamma by 0.002-0.01 Spearman on the held-out date (within one standard error) captured
    less of the next period's spend in their top decile than it did. A lead larger than the noise is kept.
    """
    mean = {n: float(np.nanmean(v)) if np.isfinite(v).any() else -np.inf for n, v in per_group.items()}
    best = min(mean, key=lambda n: (-mean[n], _rank(n)))  # the highest mean; on a tie, the simpler family
    fitted = [n for n in mean if n in process]
    if best in process or not fitted:
        return Selection(best, best, {}, None)
    fallback = min(fitted, key=lambda n: (-mean[n], _rank(n)))
    diff = per_group[best] - per_group[fallback]
    diff = diff[np.isfinite(diff)]
    if len(diff) < 2:
        return Selection(best, best, {}, None)
    se = float(diff.std(ddof=1) / np.sqrt(len(diff)))
    if diff.mean() > se:
        return Selection(best, best, {}, se)
    lead = {n: mean[n] - mean[fallback] for n in mean if n not in process and mean[n] > mean[fallback]}
    return Selection(fallback, best, lead, se)


def fold_mean(metrics: list[dict]) -> dict:
    """Metrics of the folds of a customer split averaged (row counts summed); one fold's metrics as they are."""
    if len(metrics) == 1:
        return metrics[0]

    def mean(k: str) -> float:  # a fold where a metric is undefined (no spend at all) does not count
        values = np.asarray([m[k] for m in metrics], dtype=np.float64)
        return float(values[np.isfinite(values)].mean()) if np.isfinite(values).any() else float("nan")
    return {k: int(sum(m[k] for m in metrics)) if k == "rows" else mean(k) for k in metrics[0]}


def per_group(kind: str, persona_id: pd.Series, y: np.ndarray, scores: dict[str, np.ndarray],
              names: Sequence[str]) -> dict[str, np.ndarray]:
    """Time split (one model per candidate): each candidate's held-out metric over the held-out date's customers
    in FOLDS groups, for `select` (a customer split's groups are its folds). `persona_id`, `y` and `scores` are of
    the held-out rows, in the same order."""
    metric = (lambda y, v: classification_metrics(y, v)["auc"] if len(np.unique(y)) == 2 else np.nan) \
        if kind == "probability" else (lambda y, v: regression_metrics(y, v)["spearman"])
    group = customer_fold(persona_id) % FOLDS
    return {n: np.array([metric(y[group == g], scores[n][group == g]) for g in range(FOLDS)]) for n in names}
