"""What a training run logs to MLflow for one model tag: its run (parameters, held-out metrics against every
baseline, lineage, reliability tables, figures, the training data's digest), its registered model, and the
`challenger` alias on that version.

Everything an operator needs to judge a version is on its run, so the MLflow UI (or `persona models`) answers
"what was this trained on, what did it beat, what was passed over and why" without this repository.
"""

from __future__ import annotations

import hashlib

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no backend to choose, no global state
from mlflow import MlflowClient
from sklearn.metrics import roc_curve

from features.model_tags import KEYS, ModelTag
from training import models as mdl
from training import tracking
from training.gate import TagResult
from training.metrics import grade
from training.packaging import log_tag_model
from training.split import Split


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
