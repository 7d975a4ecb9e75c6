"""What a training run logs to MLflow for one model tag: its run (parameters, held-out metrics against every
baseline, lineage, reliability tables, figures and the data behind them, the training data's digest), its
registered model, and the `challenger` alias on that version.

Everything an operator needs to judge a version is on its run, so the MLflow UI (or `persona models`) answers
"what was this trained on, what did it beat, what was passed over and why" without this repository.
"""

from __future__ import annotations

import hashlib
import math

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no backend to choose, no global state
from mlflow import MlflowClient
from sklearn.metrics import auc, roc_curve

from features.model_tags import KEYS, ModelTag
from training import models as mdl
from training import tracking
from training.gate import TagResult
from training.metrics import grade
from training.packaging import log_tag_model
from training.split import Split

CURVES_DIR = "curves"  # curves/<output>.json: what the console draws its charts from (serving/console/models.py)
CURVES_SCHEMA = 1
ROC_POINTS = 101  # at most this many (fpr, tpr) points per ROC: a chart's resolution, a few KB per output
DECILES = 10
TOP_FEATURES = 30


def data_hash(frame: pd.DataFrame) -> str:
    digest = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hashlib.sha256(digest.tobytes()).hexdigest()[:16]


def log_tag(client: MlflowClient, tag: ModelTag, horizon_days: int, split: Split, model: mdl.TagModel,
            results: list[TagResult], data: pd.DataFrame, features: list[str], skipped: dict,
            refit: dict | None) -> str:
    """Log one fitted tag as a run (nested in the training run when there is one), register its model and point
    `challenger` at the new version; returns the version."""
    main = float(np.mean([r.value for r in results]))
    with mlflow.start_run(run_name=f"{tag.name}-{split.test.date()}", nested=mlflow.active_run() is not None):
        mlflow.log_params({
            "tag": tag.name, "kind": tag.kind, "metric": tag.metric, "horizon_days": horizon_days,
            "feature_service": tag.service, "features": len(features),
            "train_dates": ",".join(str(d.date()) for d in split.train), "validation_date": str(split.val.date()),
            "test_date": str(split.test.date()), "outputs": len(results),
            "split": "customers" if split.customers else "time",
            "learner": ",".join(sorted({r.details["learner"] for r in results})),
            "calibration": "centred isotonic with Platt tails", "refit": refit is not None,
            **{f"lgbm_{k}": v for k, v in mdl.LearnerParams().__dict__.items()},
        })
        mlflow.log_metric("test_metric", main)
        for r in results:
            prefix = "" if len(results) == 1 else f"{r.tag}."
            for k, v in r.details["metrics"].items():
                mlflow.log_metric(f"{prefix}test_{k}", v)
            for k, v in r.baselines.items():
                mlflow.log_metric(f"{prefix}baseline_{k}_{tag.metric}", v)
            if r.details.get("calibration_auc_change") is not None:
                mlflow.log_metric(f"{prefix}test_calibration_auc_change", r.details["calibration_auc_change"])
        rows = {str(k): int(v) for k, v in data["event_timestamp"].dt.date.value_counts().sort_index().items()}
        mlflow.log_dict({"rows_per_date": rows, "data_hash": data_hash(data[[*KEYS, *features]]),
                         "skipped_outputs": skipped,
                         "selection": {r.tag: {"served": r.details["learner"], "on": str(split.test.date()),
                                               "metric": tag.metric, "candidates": r.details["candidates"],
                                               "failed": r.details["failed"], **r.details["selection"]}
                                       for r in results},
                         "refit": refit}, "lineage.json")
        for r in results:
            if r.details["calibration"] is not None:
                mlflow.log_table(r.details["calibration"], f"reliability/{r.tag}.json")
            mlflow.log_dict(curves(tag.kind, r.details["y"], r.details["score"], calibration=r.details["calibration"],
                                   importance=r.details["importance"], folds=r.details.get("rows", {}).get("folds", 1)),
                            f"{CURVES_DIR}/{r.tag}.json")
        dataset = mlflow.data.from_pandas(data[[*KEYS, *features]].head(1000), name=tag.service,
                                          digest=data_hash(data[[*KEYS, *features]]))
        mlflow.log_input(dataset, context="training")
        mlflow.set_tag("grade", grade(tag.metric, main))
        _plots(tag.kind, results)
        info = log_tag_model(model, input_example=data[features].head(5),
                             registered_model_name=tracking.model_name(tag.name))
    version = str(info.registered_model_version)
    client.set_registered_model_alias(tracking.model_name(tag.name), tracking.CHALLENGER, version)
    return version


def _plots(kind: str, results: list[TagResult]) -> None:
    """Feature importance of the first output; for a probability tag, ROC and calibration of up to six outputs."""
    first = results[0]
    imp = first.details["importance"].head(20)[::-1]
    if len(imp):
        fig = Figure(figsize=(5, 4))
        ax = fig.subplots()
        ax.barh(imp.index, imp.to_numpy())
        ax.set_title(f"{first.tag}: feature importance (gain)")
        fig.tight_layout()
        mlflow.log_figure(fig, "feature_importance.png")
    if kind != "probability":
        return
    fig = Figure(figsize=(9, 4))
    roc, cal = fig.subplots(1, 2)
    for r in results[:6]:
        fpr, tpr, _ = roc_curve(r.details["y"], r.details["score"])
        roc.plot(fpr, tpr, label=f"{r.tag} {r.value:.3f}")
        c = r.details["calibration"]
        cal.plot(c["predicted"], c["observed"], marker="o", label=r.tag)
    roc.plot([0, 1], [0, 1], "k:")
    cal.plot([0, 1], [0, 1], "k:")
    roc.set(title="ROC (held-out)", xlabel="false positive rate", ylabel="true positive rate")
    cal.set(title="calibration (held-out)", xlabel="predicted", ylabel="observed")
    roc.legend(fontsize=7)
    fig.tight_layout()
    mlflow.log_figure(fig, "roc_calibration.png")


# --- the data behind the charts --------------------------------------------------------------------------------
def curves(kind: str, y: np.ndarray, score: np.ndarray, *, calibration: pd.DataFrame | None = None,
           importance: pd.Series | None = None, folds: int = 1) -> dict:
    """What the console charts for one output, from its held-out labels and scores (JSON-able, a few KB).

    roc (probability outputs): at most ROC_POINTS points of the curve, from (0, 0) to (1, 1), and the AUC of the
    pooled held-out scores (with several folds the logged test_auc is the mean over folds, so the two may differ a
    little). deciles: customers sorted by score, highest first; cumulative share of customers, of positives (or of
    actual value) captured and lift, and per decile the mean score and the mean outcome. calibration: the reliability
    table as logged. importance: the TOP_FEATURES largest gains, [] when the estimator has none.
    """
    y = np.asarray(y, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    return {
        "schema": CURVES_SCHEMA, "kind": kind, "rows": int(len(y)), "folds": int(folds),
        "positives": int(y.sum()) if kind == "probability" else None,
        "roc": roc_points(y, score) if kind == "probability" else None,
        "deciles": decile_gains(y, score),
        "calibration": None if calibration is None else {
            k: _floats(calibration[k]) for k in ("predicted", "observed", "n") if k in calibration},
        "importance": [] if importance is None else [
            {"feature": str(k), "gain": _float(v)} for k, v in importance.head(TOP_FEATURES).items()],
    }


def roc_points(y: np.ndarray, score: np.ndarray, points: int = ROC_POINTS) -> dict | None:
    """The ROC curve thinned to at most `points` points, spread evenly along it (by fpr + tpr, so the steep start
    keeps as many points as the flat end), and the AUC of the full curve; None with a single class."""
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return None
    fpr, tpr, _ = roc_curve(y, score)
    area = float(auc(fpr, tpr))
    along = fpr + tpr  # non-decreasing from 0 to 2
    keep = np.unique(np.searchsorted(along, np.linspace(0.0, along[-1], points), side="left").clip(0, len(fpr) - 1))
    keep = np.union1d(keep, [0, len(fpr) - 1])
    return {"fpr": _floats(fpr[keep]), "tpr": _floats(tpr[keep]), "auc": _float(area)}


def decile_gains(y: np.ndarray, score: np.ndarray, bins: int = DECILES) -> dict:
    """Cumulative gains and lift by decile of score (highest first), and per decile the mean score and outcome.

    Ties at a decile's edge are broken by row order (a stable sort), as the top-decile metrics break them.
    """
    y = np.asarray(y, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    n = len(y)
    order = np.argsort(-score, kind="mergesort")
    ends = np.ceil(np.arange(1, bins + 1) * n / bins).astype(np.int64)  # rows in the top k deciles
    starts = np.concatenate([[0], ends[:-1]])
    got = np.concatenate([[0.0], np.cumsum(y[order])])
    scored = np.concatenate([[0.0], np.cumsum(score[order])])
    total = got[-1]
    share = ends / n if n else np.full(bins, np.nan)
    captured = got[ends] / total if total > 0 else np.full(bins, np.nan)
    size = ends - starts
    with np.errstate(invalid="ignore", divide="ignore"):
        lift = captured / share
        mean_score = (scored[ends] - scored[starts]) / size
        mean_outcome = (got[ends] - got[starts]) / size
    return {"share_customers": _floats(share), "share_captured": _floats(captured), "lift": _floats(lift),
            "mean_score": _floats(mean_score), "mean_outcome": _floats(mean_outcome)}


def _float(value: float) -> float | None:
    """Six significant digits (the artifact stays small); None for NaN and infinities, which JSON cannot hold."""
    value = float(value)
    return float(f"{value:.6g}") if math.isfinite(value) else None


def _floats(values) -> list[float | None]:
    return [_float(v) for v in np.asarray(values, dtype=np.float64)]
