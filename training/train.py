"""Train every model tag of the registry on rolling snapshot dates, evaluate it against its baselines on a held-out
period, log and register it in MLflow, and (with promote) move `champion` when the challenger wins.

Every tag is trained the same way; what differs between tags (label function, horizon, kind and metric, feature
service, baselines, buy-till-you-die families) is its entry in features/model_tags.py, read here, never spelt:
- split (training/split.py): labels at rolling snapshot dates, the held-out date the latest with a fully observed
  label window, validation and training dates whose windows end by it (or, on a log of a few months, the held-out
  date's customers set apart in folds);
- candidates (training/candidates.py): LightGBM, logistic / linear regression and the buy-till-you-die families the
  tag names are each fitted on the training dates, calibrated on the validation date and scored on the held-out
  date; which serves is `training.select.select` (the RFM heuristic is a baseline only). With training.refit, the
  chosen model is then refitted on every labelled row up to the held-out date, so scoring uses the newest
  behaviour; the table's figures are those of the model before the refit, on rows it never saw;
- promotion (training/gate.py): a challenger becomes `champion` only if every output beats every baseline and,
  when a champion exists, it beats the champion on the same held-out rows by the margin, reliably.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import mlflow
import numpy as np
import pandas as pd

from features import model_tags
from features import offline
from features import store as feature_store
from features.model_tags import KEYS, ModelTag
from persona.config import ConfigError, PersonaConfig
from persona.workspace import Workspace
from training import candidates as cand
from training import models as mdl
from training import report, tracking
from training.btyd import ConvergenceError
from training.gate import TagResult, beats, promote_challenger
from training.metrics import calibration_table, classification_metrics, grade, regression_metrics
from training.pareto import ParetoNBDModel
from training.select import fold_mean, per_group, select
from training.split import (
    FOLDS,
    MAX_EVAL_ROWS,
    EligibilityError,
    Split,
    check_counts,
    period_masks,
    plan_split,
    refit_rows,
    sample_labels,
)

Progress = Callable[[str, float], None]
PROCESS_ROWS = 50_000  # customers a BG/NBD, Gamma-Gamma or Pareto/NBD fit reads (4 parameters each): a seeded sample


class UnknownTagError(ConfigError):
    """`persona train --tag` named a model tag the registry (features/model_tags.py) does not hold."""


@dataclass(frozen=True)
class TagSpec:
    """A model tag of the registry with its horizon read from persona.yaml: what one run trains."""

    entry: ModelTag
    horizon_days: int

    @property
    def tag(self) -> str:
        return self.entry.name

    @property
    def kind(self) -> str:
        return self.entry.kind

    @property
    def metric(self) -> str:
        return self.entry.metric


def tag_specs(cfg: PersonaConfig) -> list[TagSpec]:
    """Every model tag of the registry, in its order; one that names a baseline or a buy-till-you-die family training
    does not know is refused before anything is fitted."""
    specs = []
    for entry in model_tags.registry():
        unknown = [f"baseline {v!r}" for v in entry.baselines.values() if v not in mdl.HEURISTICS]
        unknown += [f"process family {v!r}" for v in entry.process.values() if v not in cand.PROCESS_FAMILIES]
        if unknown:
            raise ValueError(f"model tag {entry.name!r} names {', '.join(unknown)}: training knows the baselines "
                             f"{sorted(mdl.HEURISTICS)} (training.models.HEURISTICS) and the process families "
                             f"{sorted(cand.PROCESS_FAMILIES)} (training.candidates.PROCESS_FAMILIES)")
        specs.append(TagSpec(entry, entry.horizon_days(cfg)))
    return specs


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


def _predict(kind: str, est, x: np.ndarray) -> np.ndarray:
    out = est.predict_proba(x)[:, 1] if kind == "probability" else est.predict(x)
    return np.asarray(out, dtype=np.float64)


def _history(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The BTYD inputs (frequency, recency, age) of a frame's rows as float64, a missing value as 0."""
    f, r, t = (np.nan_to_num(frame[c].to_numpy(dtype=np.float64, na_value=np.nan), nan=0.0) for c in mdl.BTYD_INPUTS)
    return f, r, t


def features_of(frame: pd.DataFrame, exclude: set[str]) -> list[str]:
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
        entities = labels[list(KEYS)].copy()
        entities["event_timestamp"] = pd.to_datetime(entities["event_timestamp"], utc=True)
        feats = feature_store.historical_features(self.store, spec.entry.service, entities)
        feats["event_timestamp"] = pd.to_datetime(feats["event_timestamp"], utc=True)
        labels = labels.assign(event_timestamp=pd.to_datetime(labels["event_timestamp"], utc=True))
        return feats.merge(labels, on=list(KEYS), how="inner")

    # --- one tag ------------------------------------------------------------------------------------------
    def fit_tag(self, spec: TagSpec) -> Fitted:
        """Labels (the registry entry's label function), features, every candidate scored on the held-out date, the
        best one per output chosen and (with training.refit) refitted on the newest labelled windows. Nothing is
        logged or registered here."""
        cfg = self.cfg
        split = plan_split(self.dates, data_end=self.data_end, horizon_days=spec.horizon_days,
                           cutoffs=cfg.training.cutoffs, tag=spec.tag, mode=cfg.training.split,
                           horizon_key=spec.entry.horizon_key)
        dates = [*split.train, split.val, split.test]
        labels, outputs = spec.entry.label_frame(self.con, self.tx, dates=dates, horizon_days=spec.horizon_days)
        if not outputs:
            raise EligibilityError(f"{spec.tag}: skipped: {spec.entry.no_outputs}")
        data = self.dataset(spec, split, sample_labels(labels, split, cfg.training.seed))
        label_cols = set(outputs.values())
        features = features_of(data, label_cols)
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
                    check_counts(out, data.loc[held, col].to_numpy(), "held-out date", str(split.test.date()), cfg)
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
            table = {name: fold_mean(per_fold[name]) for name in names}
            if not table:
                raise RuntimeError(f"{out}: every candidate failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
            groups = {n: np.array([m[spec.metric] for m in per_fold[n]]) for n in names} if len(evaluated) > 1 \
                else per_group(spec.kind, data.loc[folds[0]["test"], "persona_id"], evaluated[0][2],
                               evaluated[0][1], names)
            choice = select(groups, process=tuple(spec.entry.process))
            best = choice.served
            # the gate's baselines: the heuristic and every candidate but those passed over within the noise
            others = {k: v[spec.metric] for k, v in table.items() if k != best and k not in choice.passed_over}
            others.update(fold_mean([self._heuristics(spec, out, data[folds[k]["test"]], evaluated[k][2])
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
        self.held_out[spec.tag] = pd.concat([data[m["test"]] for m in folds])[[*KEYS, *features]]
        return Fitted(spec, split, model, results, data, features, skipped, refit)

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
                check_counts(out, y[k], period, date, cfg)
        x = {k: mdl.matrix(shell.model_frame(f)) for k, f in frames.items()}
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
        frame = feature_store.historical_features(self.store, spec.entry.service, entities)
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
        rows = np.random.default_rng(seed).permutation(len(x["train"]))[:mdl.LINEAR_ROWS]

        def linear():
            model = cand.Linear(spec.kind, range(len(names)), seed).fit(x["train"][rows], y["train"][rows])
            return cand.calibrate(spec.kind, model, x["val"], y["val"])
        fits["logistic_regression" if spec.kind == "probability" else "linear_regression"] = linear
        if bg is not None:  # the buy-till-you-die families the tag names, in its order
            inputs = cand.ProcessInputs(spec.kind, spec.horizon_days, spec.entry.key(out), at, bg, gg, x, y, seed)
            for name, family in spec.entry.process.items():
                fits[name] = functools.partial(cand.PROCESS_FAMILIES[family], inputs)
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
        """The tag's heuristic baselines (the analyst's RFM score) on the held-out rows: baselines only, their scores
        are ranks."""
        metric_of = classification_metrics if spec.kind == "probability" else regression_metrics
        key = spec.entry.key(out)
        return {name: metric_of(y, mdl.HEURISTICS[heuristic](test, key))[spec.metric]
                for name, heuristic in spec.entry.baselines.items()}

    def _refit(self, spec: TagSpec, split: Split, selected: mdl.TagModel, data: pd.DataFrame,
               outputs: dict) -> tuple[mdl.TagModel, dict]:
        """The selected candidates refitted on every labelled row up to the held-out date (the newest windows and,
        with a customer split, every customer included), BG/NBD on the held-out date's summaries: what scoring
        then uses. Calibration maps are kept from the validation date; LightGBM keeps the tree count early stopping
        chose."""
        every = refit_rows(data, split, self.cfg.training.seed)
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
        x = mdl.matrix(shell.model_frame(every))
        at = {c: i for i, c in enumerate(shell.columns)}
        estimators = {out: mdl.refitted(est, x, every[outputs[out]].to_numpy(), kind=spec.kind, at=at, bg=bg, gg=gg,
                                        seed=self.cfg.training.seed) for out, est in selected.estimators.items()}
        model = mdl.TagModel(spec.tag, spec.kind, selected.features, estimators, spec.horizon_days, btyd=bg,
                             evaluation=selected, learners=dict(selected.learners), pareto=pareto)
        info = {"dates": sorted({str(d.date()) for d in [*split.train, split.val, split.test]}), "rows": len(every),
                "btyd_refit_on": str(fitted_on.date()) if bg is not selected.btyd else None}
        return model, info

    # --- MLflow -------------------------------------------------------------------------------------------
    def log(self, fitted: Fitted) -> str:
        """Log a fitted tag to MLflow, register its model and point `challenger` at it; returns the version."""
        version = report.log_tag(self.client, fitted.spec.entry, fitted.spec.horizon_days, fitted.split, fitted.model,
                                 fitted.results, fitted.data, fitted.features, fitted.skipped, fitted.refit)
        for r in fitted.results:
            r.version = version
        return version

    # --- promotion ----------------------------------------------------------------------------------------
    def promote(self, spec: TagSpec, results: list[TagResult]) -> dict:
        """Apply the promotion gate to this run's challenger (training/gate.py)."""
        return promote_challenger(self.client, spec.entry, results, self.held_out[spec.tag], self.cfg)


def train(ws: Workspace, *, promote: bool = False, tags: list[str] | None = None,
          progress: Progress | None = None) -> dict:
    """Train (and optionally promote) every model tag; returns the comparison table and what was skipped.

    All or nothing: every requested tag is fitted and evaluated first; only when each has finished (or was skipped
    with its reason) are models logged, registered and gated. A failure in any tag registers and promotes nothing.
    `tags` the registry does not hold are refused before anything is read (UnknownTagError).
    """
    # Checked first: a misspelt tag would otherwise match no entry and the run train nothing, saying nothing.
    known = model_tags.names()
    unknown = [t for t in tags or [] if t not in known]
    if unknown:
        raise UnknownTagError(f"no model tag {', '.join(map(repr, unknown))} to train (known: {', '.join(known)}; "
                              "features/model_tags.py)")
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
