"""Train every model tag on rolling snapshot dates, evaluate it against its baselines on a held-out period,
log and register it in MLflow, and (with promote) move `champion` when the challenger wins.

Time-based protocol, per tag with horizon H, over the feature snapshot dates:
- test: the latest date whose label window [date, date + H) is fully observed;
- validation (early stopping, calibration): the latest date whose window ends by the test date;
- training: the `training.cutoffs` dates before it, also with windows ending by the test date.
So nothing the model is trained or tuned on overlaps the held-out period, and no feature sees past its date.
A log too short for that (a few months) holds out the held-out date's customers instead (`plan_split`).

Candidates (training/candidates.py): LightGBM, logistic / linear regression and the buy-till-you-die models are each
fitted on the training dates, calibrated on the validation date and scored on the held-out date; the best serves,
whatever its family (the RFM heuristic is a baseline only). With training.refit, the chosen model is then refitted
on every labelled row up to the held-out date, so scoring uses the newest behaviour; the table's figures are those
of the model before the refit, on rows it never saw.

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

import copy
import hashlib
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

from features import offline  # noqa: E402
from features import store as feature_store  # noqa: E402
from persona.config import PersonaConfig  # noqa: E402
from persona.errors import InsufficientDataError  # noqa: E402
from persona.workspace import Workspace  # noqa: E402
from training import candidates as cand  # noqa: E402
from features import labels as lab  # noqa: E402
from training import models as mdl  # noqa: E402
from training import tracking  # noqa: E402
from training.btyd import ConvergenceError  # noqa: E402
from training.pareto import ParetoNBDModel  # noqa: E402
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
LINEAR_ROWS = 50_000  # the linear candidates converge on far fewer rows (and cost seconds per output beyond)
PROCESS_ROWS = 50_000  # customers a BG/NBD, Gamma-Gamma or Pareto/NBD fit reads (4 parameters each): a seeded sample
BOOTSTRAP_RESAMPLES = 200  # paired bootstrap of the gate: enough for a 2.5th percentile, seconds at 300k rows
NO_SKILL = {"auc": 0.5, "spearman": 0.0}  # what an undefined (NaN) baseline metric is worth: it cannot rank
COVARIATES = ["tx_aov_365d"]  # what bg_nbd_covariates adds to BG/NBD: spend per order (log)
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
    # False: a time split (every window ends by the held-out date). True: the data is too short for that, so the
    # held-out date's customers are set apart instead (see plan_split).
    customers: bool = False


FOLDS = 5  # customer split: customers fall in 5 groups; each is held out once (cross-fitting), the next validates


def plan_split(dates: list[pd.Timestamp], *, data_end: pd.Timestamp, horizon_days: int, cutoffs: int,
               tag: str, mode: str = "auto", horizon_key: str = "labels.*_horizon_days") -> Split:
    """Choose train / validation / test snapshot dates for a horizon (see the module docstring).

    Time split (mode "time", and "auto" when the data allows it): the held-out date is the latest with a fully
    observed label window; validation and training dates have windows that end by it, so nothing learnt overlaps
    the held-out period. A log of a few months cannot hold that (a 90-day horizon needs two windows before a third:
    270 days after the first snapshot). Then (mode "auto" or "customers") the held-out date keeps its place but
    its customers are split into FOLDS groups (by a hash of persona_id, the same every run): each group in turn is
    scored there by models trained on the other customers at the earlier labelled dates (windows may overlap the
    held-out period, but never for the same customers), so every customer is scored once, out of fold.
    """
    h = pd.Timedelta(days=horizon_days)
    labelled = lab.labelled_dates(dates, data_end=data_end, horizon_days=horizon_days)
    first = dates[0] if dates else None
    if not labelled:
        room = (data_end - first).days if first is not None else 0
        raise EligibilityError(
            f"{tag}: no snapshot date has a fully observed {horizon_days}-day label window: the data ends "
            f"{data_end.date()} and the first snapshot is "
            f"{first.date() if first is not None else 'missing'}; a horizon of at most {max(room - 1, 0)} days "
            f"fits ({horizon_key}), or start snapshots earlier with a lower training.min_history_days")
    test = labelled[-1]
    before = [d for d in labelled if d + h <= test]
    if mode != "customers" and len(before) >= 2:
        return Split(train=before[:-1][-cutoffs:], val=before[-1], test=test)
    earlier = [d for d in labelled if d < test]
    if mode == "time" or not earlier:
        span = (data_end - first).days if first is not None else 0
        need = "two training dates whose windows end before" if mode == "time" else "one labelled date before"
        raise EligibilityError(
            f"{tag}: too little history: a {horizon_days}-day horizon needs {need} the held-out date "
            f"{test.date()}, found {len(before) if mode == 'time' else 0} (snapshots cover {span} days from "
            f"{first.date() if first is not None else '-'}; need about "
            f"{(2 * horizon_days + 60) if mode == 'time' else horizon_days + 30} days: a shorter horizon "
            f"({horizon_key}), a lower training.min_history_days or training.cutoff_every_days"
            + (", or training.split: auto" if mode == "time" else "") + ")")
    return Split(train=earlier[-cutoffs:], val=earlier[-1], test=test, customers=True)


def customer_fold(persona_id: pd.Series) -> np.ndarray:
    """0-99 per persona, from a fixed hash of its id: the same customer lands in the same fold every run."""
    return (pd.util.hash_pandas_object(persona_id.astype(str), index=False).to_numpy() % 100).astype(np.int64)


def period_masks(frame: pd.DataFrame, split: Split, fold: int = 0) -> dict[str, np.ndarray]:
    """Which rows of a (persona_id, event_timestamp, ...) frame train, validate and test under `split`.

    Customer split: customers fall in FOLDS groups (by `customer_fold`); in fold k, group k is held out at the
    held-out date, group k+1 validates and the others train, so across the folds every
    customer is scored once by models that never saw them; group k+1 validates at the training dates."""
    when = pd.to_datetime(frame["event_timestamp"], utc=True)
    as_utc = lambda ds: pd.to_datetime(pd.Series(ds), utc=True)  # noqa: E731
    train, val, test = when.isin(as_utc(split.train)).to_numpy(), (when == as_utc([split.val])[0]).to_numpy(), \
        (when == as_utc([split.test])[0]).to_numpy()
    if not split.customers:
        return {"train": train, "val": val, "test": test}
    group = customer_fold(frame["persona_id"]) % FOLDS
    held, validating = group == fold % FOLDS, group == (fold + 1) % FOLDS
    # validation: the validating group at every training date (one date of a fifth of a small shop's customers is
    # too few labels to stop early and calibrate on)
    return {"train": train & ~held & ~validating, "val": train & validating, "test": test & held}


@dataclass
class TagResult:
    tag: str
    metric: str
    value: float
    baselines: dict[str, float]
    version: str | None = None
    grade: str = ""
    details: dict = field(default_factory=dict)


@dataclass
class Fitted:
    """A tag trained and evaluated, not yet logged: what `train` registers once every tag has finished."""

    spec: TagSpec
    split: Split
    model: mdl.TagModel
    results: list[TagResult]
    data: pd.DataFrame
    features: list[str]
    skipped: dict
    refit: dict | None


# Candidate families in the order that wins a tie on the held-out metric: the simpler model first.
PREFERENCE = ["bg_nbd", "bg_nbd_gamma_gamma", "bg_nbd_covariates", "logistic_regression", "linear_regression",
              "lightgbm", "blend"]
# Families built on the buy-till-you-die process (see `select`): refitted on the scoring date's own summaries, they
# hold for customers of any age; the learned families hold for customers like the labelled ones.
PROCESS = ("bg_nbd", "bg_nbd_gamma_gamma", "bg_nbd_covariates")


@dataclass(frozen=True)
class Selection:
    served: str
    best: str  # the highest mean held-out metric
    passed_over: dict[str, float]  # learned candidates above the served one, within a standard error: their lead
    standard_error: float | None


def select(per_group: dict[str, np.ndarray]) -> Selection:
    """The candidate to serve from its held-out metric per customer group (the folds of a customer split, or the
    held-out date's customers in FOLDS groups): the best by mean, except that a learned model must lead the best
    process model (PROCESS) by more than one standard error of their paired difference over the groups.

    Why: the held-out date is the newest one with a fully observed label window, so its customers are younger than
    the scoring date's by at least a horizon; on a short log that is a large part of their lives. A learned model
    is fitted and judged on such customers and extrapolates on the older ones it then scores, while the process
    models are refitted on the scoring date's summaries. On the CDNOW development cutoff, learned value models that
    led BG/NBD x Gamma-Gamma by 0.002-0.01 Spearman on the held-out date (within one standard error) captured
    less of the next period's spend in their top decile than it did. A lead larger than the noise is kept.
    """
    mean = {n: float(np.nanmean(v)) if np.isfinite(v).any() else -np.inf for n, v in per_group.items()}
    best = max(mean, key=lambda n: (mean[n], -PREFERENCE.index(n)))
    process = [n for n in mean if n in PROCESS]
    if best in PROCESS or not process:
        return Selection(best, best, {}, None)
    fallback = max(process, key=lambda n: (mean[n], -PREFERENCE.index(n)))
    diff = per_group[best] - per_group[fallback]
    diff = diff[np.isfinite(diff)]
    if len(diff) < 2:
        return Selection(best, best, {}, None)
    se = float(diff.std(ddof=1) / np.sqrt(len(diff)))
    if diff.mean() > se:
        return Selection(best, best, {}, se)
    lead = {n: mean[n] - mean[fallback] for n in mean if n not in PROCESS and mean[n] > mean[fallback]}
    return Selection(fallback, best, lead, se)


def _fold_mean(metrics: list[dict]) -> dict:
    """Metrics of the folds of a customer split averaged (row counts summed); one fold's metrics as they are."""
    if len(metrics) == 1:
        return metrics[0]

    def mean(k: str) -> float:  # a fold where a metric is undefined (no spend at all) does not count
        values = np.asarray([m[k] for m in metrics], dtype=np.float64)
        return float(values[np.isfinite(values)].mean()) if np.isfinite(values).any() else float("nan")
    return {k: int(sum(m[k] for m in metrics)) if k == "rows" else mean(k) for k in metrics[0]}


def _predict(kind: str, est, x: np.ndarray) -> np.ndarray:
    out = est.predict_proba(x)[:, 1] if kind == "probability" else est.predict(x)
    return np.asarray(out, dtype=np.float64)


def _calibrate(kind: str, model, x_val: np.ndarray, y_val: np.ndarray):
    if kind != "probability":
        return model
    return cand.Calibrated(model, cand.RankCalibrator().fit(model.score(x_val), y_val))


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
    over the training rows and MAX_EVAL_ROWS on each of the validation and held-out rows (time split), or at most
    MAX_EVAL_ROWS on each date up to the held-out one (customer split: the folds rotate over all of them)."""
    when = pd.to_datetime(labels["event_timestamp"], utc=True)
    if split.customers:
        parts = [part.sample(MAX_EVAL_ROWS, random_state=seed) if len(part) > MAX_EVAL_ROWS else part
                 for _, part in labels[when.le(pd.Timestamp(split.test)).to_numpy()].groupby(when, sort=True)]
        return pd.concat(parts, ignore_index=True) if parts else labels.iloc[:0]
    masks = period_masks(labels, split)
    parts = []
    for name, cap in (("train", MAX_TRAIN_ROWS), ("val", MAX_EVAL_ROWS), ("test", MAX_EVAL_ROWS)):
        part = labels[masks[name]]
        parts.append(part.sample(cap, random_state=seed) if len(part) > cap else part)
    return pd.concat(parts, ignore_index=True)


def _data_hash(frame: pd.DataFrame) -> str:
    digest = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hashlib.sha256(digest.tobytes()).hexdigest()[:16]


def _refit_rows(data: pd.DataFrame, split: Split, seed: int) -> pd.DataFrame:
    """The labelled rows a refit learns from: all of them up to MAX_TRAIN_ROWS (the evaluation's train, validation
    and held-out rows are up to 800k, four times what the candidates were fitted on); beyond, the held-out date's
    rows (the newest behaviour) fill up to half, and a seeded sample of the earlier dates the rest."""
    if len(data) <= MAX_TRAIN_ROWS:
        return data.reset_index(drop=True)
    newest = (pd.to_datetime(data["event_timestamp"], utc=True) == pd.Timestamp(split.test)).to_numpy()
    recent, earlier = data[newest], data[~newest]
    recent = recent.sample(min(len(recent), MAX_TRAIN_ROWS // 2), random_state=seed)
    earlier = earlier.sample(min(len(earlier), MAX_TRAIN_ROWS - len(recent)), random_state=seed)
    return pd.concat([earlier, recent], ignore_index=True)


def _history(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The BTYD inputs (frequency, recency, age) of a frame's rows as float64, a missing value as 0."""
    f, r, t = (np.nan_to_num(frame[c].to_numpy(dtype=np.float64, na_value=np.nan), nan=0.0) for c in mdl.BTYD_INPUTS)
    return f, r, t


def _features_of(frame: pd.DataFrame, exclude: set[str]) -> list[str]:
    """The numeric columns a model learns from. Not the absolute timestamps (`*_ts`, e.g. rt_last_event_ts, epoch
    seconds): a tree would split on calendar time, which means something else at every later scoring date (and a
    live event sets it beyond anything in training: one behaviour event moved a demo churn risk from 0.45 to 0.96).
    How recent activity is, the models read from the relative features (days since the last visit or purchase)."""
    return [c for c in frame.columns if c not in exclude and c not in KEYS and not c.endswith("_ts")
            and frame[c].dtype.kind in "biuf"]


class Trainer:
    """Holds the workspace's data handles for one `persona train` run."""

    def __init__(self, ws: Workspace, cfg: PersonaConfig, *, progress: Progress | None = None) -> None:
        self.ws, self.cfg, self.progress = ws, cfg, progress
        manifest = offline.read_manifest(ws)
        self.dates = [pd.Timestamp(d) for d in manifest["dates"]]
        self.data_end = pd.Timestamp(manifest["data_end"])
        integrated = ws.require_current("integrated", "run `persona integrate`")
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        self.tx = f"read_parquet('{integrated / 'transactions.parquet'}')"
        self.store = feature_store.open_store(ws, cfg)
        self.client = tracking.connect(ws, cfg)
        self.held_out: dict[str, pd.DataFrame] = {}  # the held-out rows each tag was scored on, for the gate
        self._newest: dict[pd.Timestamp, pd.DataFrame] = {}  # purchase summaries per date (`_summaries`)
        self._process_fits: dict[tuple[str, pd.Timestamp], object] = {}  # refit BG/NBD, Pareto/NBD per date

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
    def fit_tag(self, spec: TagSpec) -> Fitted:
        """Labels, features, every candidate scored on the held-out date, the best one per output chosen and (with
        training.refit) refitted on the newest labelled windows. Nothing is logged or registered here."""
        cfg = self.cfg
        split = plan_split(self.dates, data_end=self.data_end, horizon_days=spec.horizon_days,
                           cutoffs=cfg.training.cutoffs, tag=spec.tag, mode=cfg.training.split,
                           horizon_key=f"labels.{spec.tag.split('_')[0]}_horizon_days")
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
            if not cats:
                raise EligibilityError(f"{spec.tag}: skipped: the transactions have no category (map a `category` "
                                       "field in the source's `fields:` to train product-interest tags)")
            labels = labels.rename(columns={c: f"label_{c}" for c in cats})
            outputs = {f"interest_{c}": f"label_{c}" for c in cats}
        data = self.dataset(spec, split, sample_labels(labels, split, cfg.training.seed))
        label_cols = set(outputs.values())
        features = _features_of(data, label_cols)
        failed: dict[str, str] = {}
        # BG/NBD and Pareto/NBD need no labels: fitted on every sampled customer's summaries at the last training
        # date (features there see nothing of the held-out window)
        last = data[data["event_timestamp"] == pd.Timestamp(split.train[-1])]
        bg, gg = self._btyd(last, features, failed)
        pareto = self._pareto(last, features, failed)
        shell = mdl.TagModel(spec.tag, spec.kind, features, {}, spec.horizon_days, btyd=bg, pareto=pareto)
        at = {c: i for i, c in enumerate(shell.columns)}
        folds = [period_masks(data, split, fold=k) for k in range(FOLDS if split.customers else 1)]
        held = np.zeros(len(data), dtype=bool)
        for m in folds:
            held |= m["test"]
        estimators, results, skipped, chosen = {}, [], {}, {}
        for i, (out, col) in enumerate(outputs.items()):
            self._say(f"training {out}", i / len(outputs))
            try:
                if split.customers and spec.kind == "probability":
                    _check_counts(out, data.loc[held, col].to_numpy(), "held-out date", str(split.test.date()), cfg)
                evaluated = [self._evaluate_fold(spec, out, col, data, m, shell, at, bg, gg, failed, split)
                             for m in folds]
            except EligibilityError as exc:
                if len(outputs) == 1:
                    raise
                skipped[out] = str(exc)
                continue
            # candidates every fold could fit, scored out of fold on the held-out date's customers
            names = [n for n in evaluated[0][0] if all(n in e[0] for e in evaluated)]
            y_test = np.concatenate([e[2] for e in evaluated])
            scores = {n: np.concatenate([e[1][n] for e in evaluated]) for n in names}
            metric_of = classification_metrics if spec.kind == "probability" else regression_metrics
            # per fold, then averaged: each fold's models (and calibration maps) are their own, and pooling scores
            # of different maps would judge the maps' offsets, not the rankings
            usable = [k for k, e in enumerate(evaluated) if spec.kind != "probability" or len(np.unique(e[2])) == 2]
            per_fold = {name: [metric_of(evaluated[k][2], evaluated[k][1][name]) for k in usable] for name in names}
            table = {name: _fold_mean(per_fold[name]) for name in names}
            if not table:
                raise RuntimeError(f"{out}: every candidate failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
            groups = {n: np.array([m[spec.metric] for m in per_fold[n]]) for n in names} if len(evaluated) > 1 \
                else self._per_group(spec, data, folds[0], evaluated[0], names)
            choice = select(groups)
            best = choice.served
            # the gate's baselines: the heuristic and every candidate but those passed over within the noise
            others = {k: v[spec.metric] for k, v in table.items() if k != best and k not in choice.passed_over}
            others.update(_fold_mean([self._heuristics(spec, out, data[folds[k]["test"]], evaluated[k][2])
                                      for k in usable]))
            first = evaluated[0]
            estimators[out], chosen[out] = first[0][best], best
            value = table[best][spec.metric]
            # calibration keeps each model's ranking: the AUC change it makes, per fold (maps differ between folds)
            change = max(abs(classification_metrics(e[2], e[1][best])["auc"] - classification_metrics(e[2], e[3][best])
                             ["auc"]) for e in evaluated) if spec.kind == "probability" else None
            results.append(TagResult(out, spec.metric, value, others, grade=grade(spec.metric, value), details={
                "metrics": table[best], "learner": best, "score": scores[best], "y": y_test,
                "candidates": {k: v[spec.metric] for k, v in table.items()},
                "selection": {"best": choice.best, "passed_over": choice.passed_over,
                              "standard_error": choice.standard_error},
                "failed": {k: v for k, v in failed.items()},
                "importance": mdl.feature_importance(first[0][best]),
                "rows": {**first[4], "test": int(len(y_test)), "folds": len(folds)},
                "calibration": calibration_table(y_test, scores[best]) if spec.kind == "probability" else None,
                "calibration_auc_change": change,
            }))
        if not estimators:
            raise EligibilityError(f"{spec.tag}: no output is eligible: " + "; ".join(skipped.values()))
        selected = mdl.TagModel(spec.tag, spec.kind, features, estimators, spec.horizon_days, btyd=bg,
                                learners=chosen, pareto=pareto)
        model, refit = selected, None
        if cfg.training.refit:
            model, refit = self._refit(spec, split, selected, data, outputs)
        # the held-out rows in the order of the scores above (fold after fold)
        self.held_out[spec.tag] = pd.concat([data[m["test"]] for m in folds])[KEYS + features]
        return Fitted(spec, split, model, results, data, features, skipped, refit)

    @staticmethod
    def _per_group(spec: TagSpec, data: pd.DataFrame, masks: dict, evaluated: tuple, names: list[str]
                   ) -> dict[str, np.ndarray]:
        """Time split (one model per candidate): each candidate's held-out metric over the held-out date's customers
        in FOLDS groups, for `select` (a customer split's groups are its folds)."""
        metric = (lambda y, v: classification_metrics(y, v)["auc"] if len(np.unique(y)) == 2 else np.nan) \
            if spec.kind == "probability" else (lambda y, v: regression_metrics(y, v)["spearman"])
        group = customer_fold(data.loc[masks["test"], "persona_id"]) % FOLDS
        y, scores = evaluated[2], evaluated[1]
        return {n: np.array([metric(y[group == g], scores[n][group == g]) for g in range(FOLDS)]) for n in names}

    def _evaluate_fold(self, spec: TagSpec, out: str, col: str, data: pd.DataFrame, masks: dict, shell, at: dict,
                       bg, gg, failed: dict, split: Split):
        """One output's candidates fitted on a fold's training rows (calibrated and blended on its validation rows)
        and scored on its held-out rows: (estimators, calibrated scores, y, raw scores, row counts)."""
        cfg = self.cfg
        frames = {k: data[m] for k, m in masks.items()}
        y = {k: f[col].to_numpy() for k, f in frames.items()}
        if spec.kind == "probability":
            val_where = ("validation rows", f"{len(split.train)} training dates to {split.val.date()}") \
                if split.customers else ("validation date", str(split.val.date()))
            periods = [("training dates", "train", str(split.train[-1].date())), (*val_where[:1], "val", val_where[1])]
            if not split.customers:  # a customer split's held-out rows are checked once, over all folds (fit_tag)
                periods.append(("held-out date", "test", str(split.test.date())))
            for period, k, date in periods:
                _check_counts(out, y[k], period, date, cfg)
        x = {k: mdl._matrix(shell.model_frame(f)) for k, f in frames.items()}
        cands = self._candidates(spec, out, x, y, at, bg, gg, failed)
        if len(cands) >= 2 and cfg.training.blend:
            try:
                cands["blend"] = cand.Blend(spec.kind, cands, cfg.training.seed).fit(x["val"], y["val"])
            except Exception as exc:  # reported like any candidate that cannot be fitted
                failed["blend"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        scores = {name: _predict(spec.kind, est, x["test"]) for name, est in cands.items()}
        raw = {name: np.asarray(est.raw(x["test"]), dtype=np.float64) for name, est in cands.items()} \
            if spec.kind == "probability" else {}
        rows = {"train": len(frames["train"]), "validation": len(frames["val"])}
        return cands, scores, y["test"], raw, rows

    def _process_rows(self, frame: pd.DataFrame) -> pd.DataFrame:
        return frame.sample(PROCESS_ROWS, random_state=self.cfg.training.seed) if len(frame) > PROCESS_ROWS else frame

    def _btyd(self, frame: pd.DataFrame, features: list[str], failed: dict[str, str]):
        """BG/NBD (+ Gamma-Gamma) on one snapshot's summaries; a fit that fails is reported, not raised."""
        if not set(mdl.BTYD_INPUTS) <= set(features) or frame.empty:
            return None, None
        frame = self._process_rows(frame)
        m = frame[cand.MONETARY].to_numpy(dtype=np.float64, na_value=np.nan) if cand.MONETARY in frame else None
        try:
            return cand.fit_btyd(*_history(frame), m)
        except (ConvergenceError, ValueError) as exc:
            failed["bg_nbd"] = f"{type(exc).__name__}: {exc}"
            return None, None

    def _summaries(self, spec: TagSpec, date: pd.Timestamp) -> pd.DataFrame:
        """The purchase summaries (BTYD inputs, monetary) at `date` of (a seeded sample of) every customer with a
        purchase before it, read once per date through the first tag's FeatureService that has them."""
        if date in self._newest:
            return self._newest[date]
        ids = self.con.execute(f"SELECT DISTINCT persona_id FROM {self.tx} WHERE ts::TIMESTAMPTZ < ?",
                               [date.to_pydatetime()]).df()
        if len(ids) > MAX_EVAL_ROWS:
            ids = ids.sample(MAX_EVAL_ROWS, random_state=self.cfg.training.seed)
        if ids.empty:
            return ids
        entities = ids.assign(event_timestamp=date)
        frame = feature_store.historical_features(self.store, f"{spec.tag}_v1", entities)
        keep = [c for c in (*KEYS, *mdl.BTYD_INPUTS, cand.MONETARY) if c in frame.columns]
        if set(mdl.BTYD_INPUTS) <= set(keep):
            self._newest[date] = frame = frame[keep]
        return frame

    def _pareto(self, frame: pd.DataFrame, features: list[str], failed: dict[str, str]):
        """Pareto/NBD on one snapshot's summaries, for its P(alive) and expected purchases as features."""
        if not set(mdl.BTYD_INPUTS) <= set(features) or frame.empty:
            return None
        f, r, t = _history(self._process_rows(frame))
        try:
            return ParetoNBDModel(penalizer=0.001).fit(f, r, np.maximum(t, r))
        except (ConvergenceError, ValueError) as exc:
            failed["pareto_nbd"] = f"{type(exc).__name__}: {exc}"
            return None

    def _candidates(self, spec: TagSpec, out: str, x: dict, y: dict, at: dict, bg, gg, failed: dict) -> dict:
        """Every candidate of one output, fitted on the training dates (calibrated on the validation date)."""
        seed = self.cfg.training.seed
        params = mdl.LearnerParams(seed=seed)
        names = list(at)
        found = {}
        fits = {"lightgbm": lambda: (mdl.fit_classifier if spec.kind == "probability" else mdl.fit_regressor)(
                    x["train"], y["train"], x["val"], y["val"], params, names=names)}
        rows = np.random.default_rng(seed).permutation(len(x["train"]))[:LINEAR_ROWS]

        def linear():
            model = cand.Linear(spec.kind, range(len(names)), seed).fit(x["train"][rows], y["train"][rows])
            return _calibrate(spec.kind, model, x["val"], y["val"])
        fits["logistic_regression" if spec.kind == "probability" else "linear_regression"] = linear
        if bg is not None:
            if spec.tag == "churn_risk":
                fits["bg_nbd"] = lambda: _calibrate(spec.kind, cand.BtydChurn(bg, at, spec.horizon_days),
                                                    x["val"], y["val"])
                fits["bg_nbd_covariates"] = lambda: cand.BtydCovariates(bg, at, spec.horizon_days, COVARIATES,
                                                                       seed).fit(x["train"], y["train"])
            elif spec.tag == "interest":
                category = out.removeprefix("interest_")
                buys = f"aff_buy_{category}_365d"
                fits["bg_nbd"] = lambda: _calibrate(spec.kind, cand.BtydInterest(
                    bg, at, spec.horizon_days, buys if buys in at else None,
                    "tx_count_365d" if "tx_count_365d" in at else None, categories=12), x["val"], y["val"])
            else:
                fits["bg_nbd_gamma_gamma"] = lambda: cand.BtydValue(
                    bg, gg, at, spec.horizon_days, "tx_aov_365d" if "tx_aov_365d" in at else None)
        for name, fit in fits.items():
            try:
                est = fit()
                score = _predict(spec.kind, est, x["test"])
                if not np.isfinite(score).all():
                    raise ValueError(f"{int((~np.isfinite(score)).sum())} non-finite scores on the held-out date")
                found[name] = est
            except Exception as exc:  # a candidate that cannot be fitted is reported in the table, not raised
                failed[name] = f"{type(exc).__name__}: {str(exc)[:300]}"
        return found

    def _heuristics(self, spec: TagSpec, out: str, test: pd.DataFrame, y: np.ndarray) -> dict[str, float]:
        """The analyst's RFM heuristic on the held-out date (a baseline only: its scores are ranks)."""
        if spec.tag == "churn_risk":
            score = mdl.rfm_churn_score(test)
        elif spec.tag == "interest":
            score = mdl.rfm_interest_score(test, out.removeprefix("interest_"))
        else:
            score = mdl.rfm_value_score(test)
        value = classification_metrics(y, score)["auc"] if spec.kind == "probability" else \
            regression_metrics(y, score)["spearman"]
        return {"rfm_heuristic": value}

    def _refit(self, spec: TagSpec, split: Split, selected: mdl.TagModel, data: pd.DataFrame,
               outputs: dict) -> tuple[mdl.TagModel, dict]:
        """The selected candidates refitted on every labelled row up to the held-out date (the newest windows and,
        with a customer split, every customer included), BG/NBD on the held-out date's summaries: what scoring
        then uses. Calibration maps are kept from the validation date; LightGBM keeps the tree count early stopping
        chose."""
        every = _refit_rows(data, split, self.cfg.training.seed)
        bg, gg, pareto = selected.btyd, None, selected.pareto
        # BG/NBD and Pareto/NBD need no labels: they are refitted on the newest summaries there are, the scoring
        # date's (the customers as they will be scored), else the held-out date's.
        newest, fitted_on = self._summaries(spec, self.dates[-1]), self.dates[-1]
        shared = not newest.empty  # the scoring date's summaries are every tag's: so are the fits on them
        if newest.empty:
            newest, fitted_on = every[every["event_timestamp"] == pd.Timestamp(split.test)], split.test

        def once(kind: str, fit):
            if not shared:
                return fit()
            if (kind, fitted_on) not in self._process_fits:
                self._process_fits[(kind, fitted_on)] = fit()
            return self._process_fits[(kind, fitted_on)]
        if bg is not None:
            refitted = once("bg_nbd", lambda: self._btyd(newest, selected.features, {}))
            if refitted[0] is not None:
                bg, gg = refitted
        if pareto is not None:
            pareto = once("pareto_nbd", lambda: self._pareto(newest, selected.features, {})) or pareto
        shell = mdl.TagModel(spec.tag, spec.kind, selected.features, {}, spec.horizon_days, btyd=bg, pareto=pareto)
        x = mdl._matrix(shell.model_frame(every))
        at = {c: i for i, c in enumerate(shell.columns)}
        params = mdl.LearnerParams(seed=self.cfg.training.seed)
        seed = self.cfg.training.seed

        def again(est, y: np.ndarray):
            """One estimator refitted on (x, y): same family, same settings, same calibration map."""
            if isinstance(est, cand.Blend):
                blend = copy.copy(est)
                blend.members = {k: again(m, y) for k, m in est.members.items()}
                return blend
            inner = est.model if isinstance(est, cand.Calibrated) else est
            if isinstance(inner, cand.Lgbm):
                fit = mdl.fit_classifier if spec.kind == "probability" else mdl.fit_regressor
                new = fit(x, y, x[:1], y[:1], params, names=list(at), trees=inner.trees)
                new = new.model if isinstance(new, cand.Calibrated) else new
            elif isinstance(inner, cand.BtydCovariates):
                new = inner.refitted(bg, at, x, y)
            elif isinstance(inner, cand.Linear):
                rows = np.random.default_rng(seed).permutation(len(x))[:LINEAR_ROWS]
                new = cand.Linear(spec.kind, range(len(at)), seed).fit(x[rows], y[rows])
            else:  # the BTYD families: the same formulas on the refitted BG/NBD (and Gamma-Gamma)
                new = copy.copy(inner)
                new.bg, new.at = bg, at
                if isinstance(new, cand.BtydValue):
                    new.gg = gg if gg is not None else inner.gg
            return cand.Calibrated(new, est.platt) if isinstance(est, cand.Calibrated) else new

        estimators = {out: again(est, every[outputs[out]].to_numpy()) for out, est in selected.estimators.items()}
        model = mdl.TagModel(spec.tag, spec.kind, selected.features, estimators, spec.horizon_days, btyd=bg,
                             evaluation=selected, learners=dict(selected.learners), pareto=pareto)
        info = {"dates": sorted({str(d.date()) for d in [*split.train, split.val, split.test]}), "rows": len(every),
                "btyd_refit_on": str(fitted_on.date()) if bg is not selected.btyd else None}
        return model, info

    # --- MLflow -------------------------------------------------------------------------------------------
    def log(self, fitted: Fitted) -> str:
        """Log a fitted tag to MLflow, register its model and point `challenger` at it; returns the version."""
        version = self._log(fitted.spec, fitted.split, fitted.model, fitted.results, fitted.data, fitted.features,
                            fitted.skipped, fitted.refit)
        for r in fitted.results:
            r.version = version
        return version

    def _log(self, spec: TagSpec, split: Split, model: mdl.TagModel, results: list[TagResult],
             data: pd.DataFrame, features: list[str], skipped: dict, refit: dict | None) -> str:
        main = float(np.mean([r.value for r in results]))
        with mlflow.start_run(run_name=f"{spec.tag}-{split.test.date()}", nested=mlflow.active_run() is not None):
            mlflow.log_params({
                "tag": spec.tag, "kind": spec.kind, "metric": spec.metric, "horizon_days": spec.horizon_days,
                "feature_service": f"{spec.tag}_v1", "features": len(features),
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
                    mlflow.log_metric(f"{prefix}baseline_{k}_{spec.metric}", v)
                if r.details.get("calibration_auc_change") is not None:
                    mlflow.log_metric(f"{prefix}test_calibration_auc_change", r.details["calibration_auc_change"])
            rows = {str(k): int(v) for k, v in data["event_timestamp"].dt.date.value_counts().sort_index().items()}
            mlflow.log_dict({"rows_per_date": rows, "data_hash": _data_hash(data[KEYS + features]),
                             "skipped_outputs": skipped,
                             "selection": {r.tag: {"served": r.details["learner"], "on": str(split.test.date()),
                                                   "metric": spec.metric, "candidates": r.details["candidates"],
                                                   "failed": r.details["failed"], **r.details["selection"]}
                                           for r in results},
                             "refit": refit}, "lineage.json")
            for r in results:
                if r.details["calibration"] is not None:
                    mlflow.log_table(r.details["calibration"], f"reliability/{r.tag}.json")
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
        imp = first.details["importance"].head(20)[::-1]
        if len(imp):
            fig, ax = plt.subplots(figsize=(5, 4))
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
            loaded = mlflow.pyfunc.load_model(f"models:/{name}@{tracking.CHAMPION}").unwrap_python_model()
            # the champion as it was evaluated (before its refit on windows that may overlap these held-out rows)
            judged = getattr(loaded, "evaluation", None) or loaded
            predictions = judged.predict(None, held_out)
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
    """Train (and optionally promote) every model tag; returns the comparison table and what was skipped.

    All or nothing: every requested tag is fitted and evaluated first; only when each has finished (or was skipped
    with its reason) are models logged, registered and gated. A failure in any tag registers and promotes nothing.
    """
    cfg = ws.config()
    t0 = time.perf_counter()
    trainer = Trainer(ws, cfg, progress=progress)
    rows, skipped, promotions, fitted = [], {}, {}, []
    specs = [s for s in tag_specs(cfg) if not tags or s.tag in tags]
    for spec in specs:
        try:
            fitted.append(trainer.fit_tag(spec))
        except EligibilityError as exc:
            skipped[spec.tag] = str(exc)
    with mlflow.start_run(run_name=f"train-{pd.Timestamp.now(tz='UTC'):%Y%m%dT%H%M%S}"):
        mlflow.log_param("data_end", str(trainer.data_end))
        for f in fitted:
            trainer.log(f)
            for r in f.results:
                rows.append({"tag": r.tag, "metric": r.metric, "value": round(r.value, 4),
                             "learner": r.details["learner"],
                             "baselines": {k: round(v, 4) for k, v in r.baselines.items()},
                             "failed": dict(r.details["failed"]),
                             "passed_over": {k: round(v, 4) for k, v in r.details["selection"]["passed_over"].items()},
                             "beats_baselines": all(beats(r.metric, r.value, v) for v in r.baselines.values()),
                             "grade": r.grade, "version": r.version, "rows": r.details["rows"]})
        if promote:
            for f in fitted:
                promotions[f.spec.tag] = trainer.promote(f.spec, f.results)
    out = {"models": rows, "skipped": skipped, "data_end": str(trainer.data_end),
           "seconds": round(time.perf_counter() - t0, 1)}
    if promote:
        out["promotions"] = promotions
    return out
