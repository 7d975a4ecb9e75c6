"""Train every model tag on rolling snapshot dates, evaluate it against its baselines on a held-out period,
log and register it in MLflow, and (with promote) move `champion` when the challenger wins.

Time-based protocol, per tag with horizon H, over the feature snapshot dates:
- test: the latest date whose label window [date, date + H) is fully observed;
- validation (early stopping, calibration): the latest date whose window ends by the test date;
- training: the `training.cutoffs` dates before it, also with windows ending by the test date.
So nothing the model is trained or tuned on overlaps the held-out period, and no feature sees past its date.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import duckdb
import matplotlib

matplotlib.use("Agg")  # headless: figures go to MLflow, never a window
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from features import store as feature_store  # noqa: E402
from persona.config import PersonaConfig  # noqa: E402
from persona.errors import InsufficientDataError  # noqa: E402
from persona.workspace import Workspace, read_json  # noqa: E402
from training import labels as lab  # noqa: E402
from training import models as mdl  # noqa: E402
from training import tracking  # noqa: E402
from training.metrics import calibration_table, classification_metrics, grade, regression_metrics  # noqa: E402

Progress = Callable[[str, float], None]
KEYS = ["persona_id", "event_timestamp"]
MAX_TRAIN_ROWS = 200_000  # label rows over all training dates; beyond it, a seeded sample (see sample_labels)
MAX_EVAL_ROWS = 300_000  # label rows of the validation date and of the held-out date, each
LINEAR_ROWS = 100_000  # the linear baselines converge on far fewer rows
PIP_REQUIREMENTS = ["lightgbm==4.7.0", "scikit-learn==1.9.1", "pandas>=2.3,<3", "numpy>=2.4,<3", "scipy"]


class EligibilityError(InsufficientDataError):
    """A tag cannot be trained; the message says exactly what is missing."""


@dataclass(frozen=True)
class TagSpec:
    tag: str
    kind: str  # probability | value
    metric: str  # auc | spearman
    horizon_days: int


def tag_specs(cfg: PersonaConfig) -> list[TagSpec]:
    return [
        TagSpec("churn_risk", "probability", "auc", cfg.labels.churn_horizon_days),
        TagSpec("high_value", "value", "spearman", cfg.labels.value_horizon_days),
        TagSpec("interest", "probability", "auc", cfg.labels.interest_horizon_days),
    ]


@dataclass
class Split:
    train: list[pd.Timestamp]
    val: pd.Timestamp
    test: pd.Timestamp


def plan_split(dates: list[pd.Timestamp], *, data_end: pd.Timestamp, horizon_days: int, cutoffs: int,
               tag: str) -> Split:
    """Choose train / validation / test snapshot dates for a horizon (see the module docstring)."""
    h = pd.Timedelta(days=horizon_days)
    labelled = lab.labelled_dates(dates, data_end=data_end, horizon_days=horizon_days)
    if not labelled:
        raise EligibilityError(f"{tag}: no snapshot date has a fully observed {horizon_days}-day label window "
                               f"(data ends {data_end.date()}); needs more history")
    test = labelled[-1]
    before = [d for d in labelled if d + h <= test]
    if len(before) < 2:
        span = (data_end - dates[0]).days if dates else 0
        raise EligibilityError(
            f"{tag}: too little history: a {horizon_days}-day horizon needs two training dates whose windows end "
            f"before the held-out date {test.date()}, found {len(before)} (snapshots cover {span} days; "
            f"need about {2 * horizon_days + 60} days after the first snapshot date)")
    return Split(train=before[:-1][-cutoffs:], val=before[-1], test=test)


@dataclass
class TagResult:
    tag: str
    metric: str
    value: float
    baselines: dict[str, float]
    version: str | None = None
    grade: str = ""
    details: dict = field(default_factory=dict)


def _check_counts(tag: str, y: np.ndarray, period: str, date: str, cfg: PersonaConfig) -> None:
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    if pos < cfg.training.min_positives or neg < cfg.training.min_negatives:
        raise EligibilityError(
            f"{tag}: not eligible: {pos} positives and {neg} negatives in the {period} ({date}); needs at least "
            f"{cfg.training.min_positives} positives and {cfg.training.min_negatives} negatives "
            "(training.min_positives / min_negatives)")


def sample_labels(labels: pd.DataFrame, split: Split, seed: int) -> pd.DataFrame:
    """A seeded sample of the label rows, taken *before* the point-in-time join so that memory and time stay
    bounded by the sample (at 1M customers the full join of every date is tens of GB): at most MAX_TRAIN_ROWS
    over the training dates and MAX_EVAL_ROWS on each of the validation and held-out dates."""
    when = pd.to_datetime(labels["event_timestamp"], utc=True)
    parts = []
    for dates, cap in ((split.train, MAX_TRAIN_ROWS), ([split.val], MAX_EVAL_ROWS), ([split.test], MAX_EVAL_ROWS)):
        part = labels[when.isin(pd.to_datetime(pd.Series(dates), utc=True))]
        parts.append(part.sample(cap, random_state=seed) if len(part) > cap else part)
    return pd.concat(parts, ignore_index=True)


def _data_hash(frame: pd.DataFrame) -> str:
    digest = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hashlib.sha256(digest.tobytes()).hexdigest()[:16]


def _features_of(frame: pd.DataFrame, exclude: set[str]) -> list[str]:
    return [c for c in frame.columns if c not in exclude and c not in KEYS and frame[c].dtype.kind in "biuf"]


class Trainer:
    """Holds the workspace's data handles for one `persona train` run."""

    def __init__(self, ws: Workspace, cfg: PersonaConfig, *, progress: Progress | None = None) -> None:
        self.ws, self.cfg, self.progress = ws, cfg, progress
        manifest = read_json(ws.root / "features" / "manifest.json")
        if not manifest:
            raise FileNotFoundError(f"{ws.root / 'features'}: no feature snapshots yet (run `persona features`)")
        self.dates = [pd.Timestamp(d) for d in manifest["dates"]]
        self.data_end = pd.Timestamp(manifest["data_end"])
        integrated = ws.require_current("integrated", "run `persona integrate`")
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        self.tx = f"read_parquet('{integrated / 'transactions.parquet'}')"
        self.store = feature_store.open_store(ws, cfg)
        self.client = tracking.connect(ws, cfg)
        self.held_out: dict[str, pd.DataFrame] = {}  # the held-out rows each tag was scored on, for the gate

    def _say(self, what: str, frac: float) -> None:
        if self.progress:
            self.progress(what, frac)

    def dataset(self, spec: TagSpec, split: Split, labels: pd.DataFrame) -> pd.DataFrame:
        """Labels joined to point-in-time features read through the tag's FeatureService."""
        entities = labels[KEYS].copy()
        entities["event_timestamp"] = pd.to_datetime(entities["event_timestamp"], utc=True)
        feats = feature_store.historical_features(self.store, f"{spec.tag}_v1", entities)
        feats["event_timestamp"] = pd.to_datetime(feats["event_timestamp"], utc=True)
        labels = labels.assign(event_timestamp=pd.to_datetime(labels["event_timestamp"], utc=True))
        return feats.merge(labels, on=KEYS, how="inner")

    # --- one tag ------------------------------------------------------------------------------------------
    def train_tag(self, spec: TagSpec) -> list[TagResult]:
        cfg = self.cfg
        split = plan_split(self.dates, data_end=self.data_end, horizon_days=spec.horizon_days,
                           cutoffs=cfg.training.cutoffs, tag=spec.tag)
        dates = [*split.train, split.val, split.test]
        if spec.tag == "churn_risk":
            labels = lab.churn_labels(self.con, self.tx, dates=dates, horizon_days=spec.horizon_days)
            outputs = {"churn_risk": "label"}
        elif spec.tag == "high_value":
            labels = lab.value_labels(self.con, self.tx, dates=dates, horizon_days=spec.horizon_days)
            outputs = {"high_value": "label"}
        else:
            population = lab.value_labels(self.con, self.tx, dates=dates, horizon_days=spec.horizon_days)[KEYS]
            labels = lab.interest_labels(self.con, self.tx, dates=dates, horizon_days=spec.horizon_days,
                                         population=population)
            cats = [c for c in labels.columns if c not in KEYS]
            labels = labels.rename(columns={c: f"label_{c}" for c in cats})
            outputs = {f"interest_{c}": f"label_{c}" for c in cats}
        data = self.dataset(spec, split, sample_labels(labels, split, cfg.training.seed))
        label_cols = set(outputs.values())
        features = _features_of(data, label_cols)
        when = data["event_timestamp"]
        train = data[when.isin(split.train)]
        val = data[when == split.val]
        test = data[when == split.test]

        bg, gg = mdl.fit_btyd(train[when[train.index] == split.train[-1]]) \
            if set(mdl.BTYD_INPUTS) <= set(features) else (None, None)
        shell = mdl.TagModel(spec.tag, spec.kind, features, {}, spec.horizon_days, btyd=bg)
        x_test = shell.model_frame(test)
        estimators, results, skipped = {}, [], {}
        x_tr, x_val = shell.model_frame(train), shell.model_frame(val)
        linear = mdl.LinearInputs(train[features], test[features], max_rows=LINEAR_ROWS, seed=cfg.training.seed)
        for i, (out, col) in enumerate(outputs.items()):
            self._say(f"training {out}", i / len(outputs))
            try:
                if spec.kind == "probability":
                    for period, frame, date in (("training dates", train, split.train[-1]), ("validation date", val, split.val),
                                                ("held-out date", test, split.test)):
                        _check_counts(out, frame[col].to_numpy(), period, str(date.date()), cfg)
            except EligibilityError as exc:
                if len(outputs) == 1:
                    raise
                skipped[out] = str(exc)
                continue
            y_tr, y_val, y_te = train[col].to_numpy(), val[col].to_numpy(), test[col].to_numpy()
            params = mdl.LearnerParams(seed=cfg.training.seed)
            if spec.kind == "probability":
                est = mdl.fit_classifier(x_tr, y_tr, x_val, y_val, params)
                score = est.predict_proba(x_test)[:, 1]
                metrics = classification_metrics(y_te, score)
                baselines = {"logistic_regression": mdl.logistic_baseline(linear, y_tr, cfg.training.seed)}
                if spec.tag == "churn_risk":
                    baselines["rfm_heuristic"] = mdl.rfm_churn_score(test)
                    if bg is not None:
                        baselines["bg_nbd"] = mdl.btyd_churn_score(bg, test, spec.horizon_days)
                else:
                    cat = out.removeprefix("interest_")
                    baselines["rfm_heuristic"] = mdl.rfm_interest_score(test, cat)
                    if bg is not None:
                        baselines["bg_nbd"] = mdl.btyd_interest_score(bg, test, cat, spec.horizon_days)
                base_scores = {k: classification_metrics(y_te, v)["auc"] for k, v in baselines.items()}
            else:
                est = mdl.fit_regressor(x_tr, y_tr, x_val, y_val, params)
                score = est.predict(x_test)
                metrics = regression_metrics(y_te, score)
                baselines = {"linear_regression": mdl.linear_value_baseline(linear, y_tr),
                             "rfm_heuristic": mdl.rfm_value_score(test)}
                if bg is not None:
                    baselines["bg_nbd_gamma_gamma"] = mdl.btyd_value_score(bg, gg, test, spec.horizon_days)
                base_scores = {k: regression_metrics(y_te, v)["spearman"] for k, v in baselines.items()}
            estimators[out] = est
            value = metrics[spec.metric]
            results.append(TagResult(out, spec.metric, value, base_scores, grade=grade(spec.metric, value), details={
                "metrics": metrics, "score": score, "y": y_te, "importance": mdl.feature_importance(est),
                "rows": {"train": len(train), "validation": len(val), "test": len(test)},
                "calibration": calibration_table(y_te, score) if spec.kind == "probability" else None,
            }))
        if not estimators:
            raise EligibilityError(f"{spec.tag}: no output is eligible: " + "; ".join(skipped.values()))
        model = mdl.TagModel(spec.tag, spec.kind, features, estimators, spec.horizon_days, btyd=bg)
        self.held_out[spec.tag] = test[KEYS + features]
        version = self._log(spec, split, model, results, data, features, skipped)
        for r in results:
            r.version = version
        return results

    # --- MLflow -------------------------------------------------------------------------------------------
    def _log(self, spec: TagSpec, split: Split, model: mdl.TagModel, results: list[TagResult],
             data: pd.DataFrame, features: list[str], skipped: dict) -> str:
        main = float(np.mean([r.value for r in results]))
        with mlflow.start_run(run_name=f"{spec.tag}-{split.test.date()}", nested=mlflow.active_run() is not None):
            mlflow.log_params({
                "tag": spec.tag, "kind": spec.kind, "metric": spec.metric, "horizon_days": spec.horizon_days,
                "feature_service": f"{spec.tag}_v1", "features": len(features),
                "train_dates": ",".join(str(d.date()) for d in split.train), "validation_date": str(split.val.date()),
                "test_date": str(split.test.date()), "outputs": len(results), "learner": "lightgbm",
                **{f"lgbm_{k}": v for k, v in mdl.LearnerParams().__dict__.items()},
            })
            mlflow.log_metric("test_metric", main)
            for r in results:
                prefix = "" if len(results) == 1 else f"{r.tag}."
                for k, v in r.details["metrics"].items():
                    mlflow.log_metric(f"{prefix}test_{k}", v)
                for k, v in r.baselines.items():
                    mlflow.log_metric(f"{prefix}baseline_{k}_{spec.metric}", v)
            rows = {str(k): int(v) for k, v in data["event_timestamp"].dt.date.value_counts().sort_index().items()}
            mlflow.log_dict({"rows_per_date": rows, "data_hash": _data_hash(data[KEYS + features]),
                             "skipped_outputs": skipped}, "lineage.json")
            dataset = mlflow.data.from_pandas(data[KEYS + features].head(1000), name=f"{spec.tag}_v1",
                                              digest=_data_hash(data[KEYS + features]))
            mlflow.log_input(dataset, context="training")
            mlflow.set_tag("grade", grade(spec.metric, main))
            self._plots(spec, results)
            example = data[features].head(5)
            info = mlflow.pyfunc.log_model(
                name="model", python_model=model, input_example=example,
                signature=infer_signature(example, model.predict(None, example)),
                pip_requirements=PIP_REQUIREMENTS, registered_model_name=tracking.model_name(spec.tag))
        version = str(info.registered_model_version)
        self.client.set_registered_model_alias(tracking.model_name(spec.tag), tracking.CHALLENGER, version)
        return version

    def _plots(self, spec: TagSpec, results: list[TagResult]) -> None:
        first = results[0]
        fig, ax = plt.subplots(figsize=(5, 4))
        imp = first.details["importance"].head(20)[::-1]
        ax.barh(imp.index, imp.to_numpy())
        ax.set_title(f"{first.tag}: feature importance (gain)")
        fig.tight_layout()
        mlflow.log_figure(fig, "feature_importance.png")
        plt.close(fig)
        if spec.kind != "probability":
            return
        fig, (roc, cal) = plt.subplots(1, 2, figsize=(9, 4))
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
        plt.close(fig)

    # --- promotion ----------------------------------------------------------------------------------------
    def promote(self, spec: TagSpec, results: list[TagResult]) -> dict:
        """Move `champion` to the challenger only if it beats the champion on the challenger's held-out period."""
        name = tracking.model_name(spec.tag)
        challenger = results[0].version
        champion = tracking.alias_version(self.client, name, tracking.CHAMPION)
        new = float(np.mean([r.value for r in results]))
        if champion is None:
            self.client.set_registered_model_alias(name, tracking.CHAMPION, challenger)
            return {"promoted": True, "reason": "no champion yet", "challenger": new}
        if champion == challenger:
            return {"promoted": False, "reason": "challenger is already champion", "challenger": new}
        test = self.held_out[spec.tag]
        try:
            old_model = mlflow.pyfunc.load_model(f"models:/{name}@{tracking.CHAMPION}")
            predictions = old_model.predict(test)
        except Exception as exc:  # a champion that cannot score today's features cannot be compared
            return {"promoted": False, "reason": f"champion v{champion} cannot score the held-out data: {exc}",
                    "challenger": new}
        old_scores = []
        for r in results:
            if r.tag not in predictions.columns:
                continue
            m = (classification_metrics(r.details["y"], predictions[r.tag].to_numpy())["auc"] if spec.kind == "probability"
                 else regression_metrics(r.details["y"], predictions[r.tag].to_numpy())["spearman"])
            old_scores.append(m)
        old = float(np.mean(old_scores)) if old_scores else float("-inf")
        if new > old:
            self.client.set_registered_model_alias(name, tracking.CHAMPION, challenger)
            return {"promoted": True, "reason": f"beats champion v{champion} on the same held-out period",
                    "challenger": new, "champion": old}
        return {"promoted": False, "reason": f"does not beat champion v{champion} ({new:.4f} <= {old:.4f})",
                "challenger": new, "champion": old}


def train(ws: Workspace, *, promote: bool = False, tags: list[str] | None = None,
          progress: Progress | None = None) -> dict:
    """Train (and optionally promote) every model tag; returns the comparison table and what was skipped."""
    cfg = ws.config()
    t0 = time.perf_counter()
    trainer = Trainer(ws, cfg, progress=progress)
    rows, skipped, promotions = [], {}, {}
    specs = [s for s in tag_specs(cfg) if not tags or s.tag in tags]
    with mlflow.start_run(run_name=f"train-{pd.Timestamp.now(tz='UTC'):%Y%m%dT%H%M%S}"):
        mlflow.log_param("data_end", str(trainer.data_end))
        for spec in specs:
            try:
                results = trainer.train_tag(spec)
            except EligibilityError as exc:
                skipped[spec.tag] = str(exc)
                continue
            for r in results:
                rows.append({"tag": r.tag, "metric": r.metric, "value": round(r.value, 4),
                             "baselines": {k: round(v, 4) for k, v in r.baselines.items()},
                             "beats_baselines": all(r.value > v for v in r.baselines.values()),
                             "grade": r.grade, "version": r.version, "rows": r.details["rows"]})
            if promote:
                promotions[spec.tag] = trainer.promote(spec, results)
    out = {"models": rows, "skipped": skipped, "data_end": str(trainer.data_end),
           "seconds": round(time.perf_counter() - t0, 1)}
    if promote:
        out["promotions"] = promotions
    return out


def format_json(result: dict) -> str:
    return json.dumps(result, default=str)
