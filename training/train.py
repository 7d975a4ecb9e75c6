"""Train every model tag on rolling snapshot dates, evaluate it against its baselines on a held-out period,
log and register it in MLflow, and (with promote) move `champion` when the challenger wins.

Time-based protocol, per tag with horizon H, over the feature snapshot dates:
- test: the latest date whose label window [date, date + H) is fully observed;
- validation (early stopping, calibration): the latest date whose window ends by the test date;
- training: the `training.cutoffs` dates before it, also with windows ending by the test date.
So nothing the model is trained or tuned on overlaps the held-out period, and no feature sees past its date.

Promotion gate (`gate`, applied by `promote_challenger`): a challenger becomes `champion` only if
1. every output beats every one of its baselines on the held-out metric (the table `train` returns). A multi-output
   tag (interest) needs *all* its outputs to pass: each `interest_<category>` is served and used by rules on its own,
   so a category that ranks worse than the RFM heuristic would be a regression for that tag however the others do;
   the reason names the failing outputs so a weak category can be fixed or dropped upstream;
2. when a champion exists, the challenger beats it, scored on the same held-out rows (mean metric over the outputs
   both have), by at least `training.promotion_margin`, and (with `training.promotion_bootstrap`) the 2.5th
   percentile of a paired bootstrap of that difference (same resampled rows for both models) is above 0.
The verdict and its reason are logged on the challenger's run (see `tracking.record_gate`).
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
from mlflow import MlflowClient  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from features import store as feature_store  # noqa: E402
from persona.config import PersonaConfig  # noqa: E402
from persona.errors import InsufficientDataError  # noqa: E402
from persona.workspace import Workspace, read_json  # noqa: E402
from training import labels as lab  # noqa: E402
from training import models as mdl  # noqa: E402
from training import tracking  # noqa: E402
from training.metrics import (  # noqa: E402
    calibration_table,
    classification_metrics,
    grade,
    paired_bootstrap,
    rank_metric,
    regression_metrics,
)

Progress = Callable[[str, float], None]
KEYS = ["persona_id", "event_timestamp"]
MAX_TRAIN_ROWS = 200_000  # label rows over all training dates; beyond it, a seeded sample (see sample_labels)
MAX_EVAL_ROWS = 300_000  # label rows of the validation date and of the held-out date, each
LINEAR_ROWS = 100_000  # the linear baselines converge on far fewer rows
BOOTSTRAP_RESAMPLES = 200  # paired bootstrap of the gate: enough for a 2.5th percentile, seconds at 300k rows
NO_SKILL = {"auc": 0.5, "spearman": 0.0}  # what an undefined (NaN) baseline metric is worth: it cannot rank
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
        """Apply the promotion gate to this run's challenger (see the module docstring)."""
        return promote_challenger(self.client, spec, results, self.held_out[spec.tag], self.cfg)


# --- the promotion gate ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GateInput:
    """One output of a challenger on the held-out rows."""

    output: str
    value: float  # the challenger's held-out metric, as in the table
    baselines: dict[str, float]  # each baseline's held-out metric, as in the table
    y: np.ndarray
    challenger: np.ndarray  # the challenger's scores on the held-out rows
    champion: np.ndarray | None = None  # the champion's scores on the same rows; None: it has no such output


@dataclass(frozen=True)
class Verdict:
    promoted: bool
    reason: str
    failed: str | None  # baseline | margin | bootstrap | champion (could not score) | None
    challenger: float  # mean metric over outputs: the table's, or on the outputs shared with the champion
    champion: float | None = None
    margin: float | None = None  # challenger - champion on the same rows
    required_margin: float | None = None
    bootstrap_lower: float | None = None  # 2.5th percentile of the paired bootstrap of that difference

    def as_dict(self) -> dict:
        out = {"promoted": self.promoted, "gate": "promoted" if self.promoted else "refused", "reason": self.reason,
               "failed": self.failed, "challenger": self.challenger}
        for key in ("champion", "margin", "required_margin", "bootstrap_lower"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def beats(metric: str, value: float, baseline: float) -> bool:
    """Whether a held-out metric beats a baseline's: strictly higher; an undefined baseline has no skill, an
    undefined value beats nothing."""
    return bool(value > (baseline if np.isfinite(baseline) else NO_SKILL[metric]))


def _baseline_failures(metric: str, outputs: list[GateInput]) -> list[str]:
    failures = []
    for o in outputs:
        for name, base in o.baselines.items():
            if not beats(metric, o.value, base):
                failures.append(f"{o.output} {metric.upper() if metric == 'auc' else metric} {o.value:.4f} "
                                f"<= {name} {base:.4f}")
    return failures


def gate(metric: str, outputs: list[GateInput], *, champion: str | None, margin: float, bootstrap: bool,
         seed: int, resamples: int = BOOTSTRAP_RESAMPLES, champion_error: str | None = None) -> Verdict:
    """The promotion verdict for a challenger, from its held-out scores (pure: no MLflow, no I/O).

    Checks in order, the first failure deciding: every output beats every baseline; the champion could score the
    rows (champion_error says why not); the mean metric over the outputs both models have beats the champion's by
    at least `margin`; with `bootstrap`, the paired bootstrap's 2.5th percentile of that difference is above 0.
    champion: the champion's version, or None when there is none (then GateInput.champion is ignored). A champion
    with none of the challenger's outputs cannot be compared: the baselines decide.
    """
    label = metric.upper() if metric == "auc" else metric
    table = float(np.mean([o.value for o in outputs]))
    failures = _baseline_failures(metric, outputs)
    if failures:
        more = f"; and {len(failures) - 5} more" if len(failures) > 5 else ""
        return Verdict(False, f"loses to a baseline on the held-out period ({len(failures)} of "
                              f"{sum(len(o.baselines) for o in outputs)} comparisons): "
                              + "; ".join(failures[:5]) + more, "baseline", table)
    weakest = min(((o.value - b, o.output, k) for o in outputs for k, b in o.baselines.items()
                   if np.isfinite(b)), default=None)
    beats = "beats every baseline" + (f" (closest: {weakest[1]} over {weakest[2]} by {weakest[0]:+.4f})"
                                      if weakest else "")
    if champion is None:
        return Verdict(True, f"no champion yet; {beats}", None, table)
    if champion_error is not None:
        return Verdict(False, f"champion v{champion} cannot score the held-out data: {champion_error}", "champion",
                       table)
    shared = [o for o in outputs if o.champion is not None]
    if not shared:
        return Verdict(True, f"champion v{champion} has none of these outputs; {beats}", None, table)
    new = float(np.mean([rank_metric(metric, o.y, o.challenger)[0] for o in shared]))
    old = float(np.mean([rank_metric(metric, o.y, o.champion)[0] for o in shared]))
    diff = new - old
    lower = None
    if bootstrap:
        diffs = paired_bootstrap(metric, [(o.y, o.challenger, o.champion) for o in shared], resamples=resamples,
                                 seed=seed)
        lower = float(np.percentile(diffs, 2.5)) if len(diffs) else float("nan")
    rows = len(shared[0].y)
    outputs_note = "" if len(shared) == 1 else f" (mean over {len(shared)} outputs)"
    if len(shared) < len(outputs):
        outputs_note += f" ({len(outputs) - len(shared)} output(s) the champion lacks: baselines only)"
    numbers = f"{label} {new:.4f} vs {old:.4f}{outputs_note} on the same {rows:,} held-out rows"
    boot = "" if lower is None else f"; paired bootstrap 95% lower bound {lower:+.4f} ({resamples} resamples)"
    common = dict(challenger=new, champion=old, margin=diff, required_margin=margin, bootstrap_lower=lower)
    if not diff >= margin:
        return Verdict(False, f"does not beat champion v{champion} by the promotion margin: {numbers} "
                              f"({diff:+.4f} < {margin:.4f}){boot}", "margin", **common)
    if lower is not None and not lower > 0:
        return Verdict(False, f"does not beat champion v{champion} reliably: {numbers} ({diff:+.4f} >= "
                              f"{margin:.4f}) but the paired bootstrap 95% lower bound of the difference is "
                              f"{lower:+.4f} (<= 0; {resamples} resamples)", "bootstrap", **common)
    return Verdict(True, f"beats champion v{champion}: {numbers} ({diff:+.4f} >= {margin:.4f}){boot}; {beats}",
                   None, **common)


def promote_challenger(client: MlflowClient, spec: TagSpec, results: list[TagResult], held_out: pd.DataFrame,
                       cfg: PersonaConfig) -> dict:
    """Gate the challenger `results` were logged as, record the verdict on its run, move `champion` if it passes.

    held_out: the rows (keys and features) the results' scores are for, in the same order; the champion is
    scored on them. Returns the verdict (`promoted`, `gate`, `reason`, the figures compared).
    """
    name = tracking.model_name(spec.tag)
    challenger = results[0].version
    champion = tracking.alias_version(client, name, tracking.CHAMPION)
    if champion is not None and champion == challenger:
        return {"promoted": False, "gate": None, "reason": "challenger is already champion", "failed": None,
                "challenger": float(np.mean([r.value for r in results])), "challenger_version": challenger,
                "champion_version": champion}
    champion_scores: dict[str, np.ndarray] = {}
    champion_error = None
    if champion is not None:
        try:
            predictions = mlflow.pyfunc.load_model(f"models:/{name}@{tracking.CHAMPION}").predict(held_out)
            champion_scores = {c: predictions[c].to_numpy(dtype=np.float64) for c in predictions.columns}
        except Exception as exc:  # a champion that cannot score today's features cannot be compared
            champion_error = f"{type(exc).__name__}: {exc}"
    outputs = [GateInput(r.tag, r.value, r.baselines, np.asarray(r.details["y"]),
                         np.asarray(r.details["score"], dtype=np.float64), champion_scores.get(r.tag))
               for r in results]
    verdict = gate(spec.metric, outputs, champion=champion, margin=cfg.training.promotion_margin,
                   bootstrap=cfg.training.promotion_bootstrap, seed=cfg.training.seed, champion_error=champion_error)
    tracking.record_gate(client, name, challenger, promoted=verdict.promoted, reason=verdict.reason, metrics={
        "gate_margin": verdict.margin, "gate_bootstrap_lower": verdict.bootstrap_lower,
        "gate_challenger": verdict.challenger, "gate_champion": verdict.champion})
    if verdict.promoted:
        client.set_registered_model_alias(name, tracking.CHAMPION, challenger)
    return {**verdict.as_dict(), "challenger_version": challenger, "champion_version": champion}


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
                             "beats_baselines": all(beats(r.metric, r.value, v) for v in r.baselines.values()),
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
