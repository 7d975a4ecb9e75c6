"""Model tags and their baselines.

`TagModel` is what gets logged to MLflow and served: it holds the feature list, the fitted estimators (one per
output: `churn_risk`, `high_value`, or one `interest_<category>` each) and, optionally, a fitted BG/NBD model whose
outputs it adds as features. Evaluation and serving both call `TagModel.predict`, so they cannot drift apart.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import lightgbm as lgb
import mlflow.pyfunc
import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression

from training.btyd import BetaGeoModel
from training.pareto import PARETO_FEATURES, ParetoNBDModel, pareto_columns, pareto_outputs
from training.candidates import (BTYD_INPUTS, Blend, BtydCovariates, BtydValue, Calibrated, Lgbm, Linear,
                                 RankCalibrator)

BTYD_FEATURES = ("btyd_p_alive", "btyd_expected_purchases")
LINEAR_ROWS = 50_000  # the linear candidates converge on far fewer rows (and cost seconds per output beyond)


@dataclass(frozen=True)
class LearnerParams:
    """LightGBM settings shared by every tag; early stopping picks the number of trees."""

    learning_rate: float = 0.08
    num_leaves: int = 31
    min_child_samples: int = 100
    max_trees: int = 400
    early_stopping_rounds: int = 30
    max_bin: int = 63  # coarser histograms: much faster on 2 cores, no measurable AUC loss on these features
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    seed: int = 7


def _btyd_outputs(bg: BetaGeoModel, x: np.ndarray, tx: np.ndarray, T: np.ndarray, horizon_days: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(p_alive, expected purchases over the horizon) from BG/NBD inputs; a missing input counts as zero."""
    x, tx, T = (np.nan_to_num(np.asarray(v, dtype=np.float64), nan=0.0, posinf=np.inf, neginf=-np.inf)
                for v in (x, tx, T))
    T = np.maximum(T, tx)
    return bg.probability_alive(x, tx, T), bg.expected_purchases(horizon_days, x, tx, T)


def btyd_columns(bg: BetaGeoModel | None, frame: pd.DataFrame, horizon_days: int) -> pd.DataFrame:
    """BG/NBD outputs as features (zero-history rows get the model's values for x=0, t_x=0)."""
    if bg is None or not set(BTYD_INPUTS) <= set(frame.columns):
        return frame
    out = frame.copy()
    out["btyd_p_alive"], out["btyd_expected_purchases"] = _btyd_outputs(
        bg, *(frame[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in BTYD_INPUTS), horizon_days)
    return out


class TagModel(mlflow.pyfunc.PythonModel):
    """A model tag as one pyfunc: features in, one score column per output."""

    evaluation = None  # defaults for models pickled before these attributes existed
    learners: dict = {}
    pareto = None

    def __init__(self, tag: str, kind: str, features: list[str], estimators: dict, horizon_days: int,
                 btyd: BetaGeoModel | None = None, evaluation: TagModel | None = None,
                 learners: dict[str, str] | None = None, pareto: ParetoNBDModel | None = None) -> None:
        self.tag = tag
        self.kind = kind
        self.features = features
        self.estimators = estimators
        self.horizon_days = horizon_days
        self.btyd = btyd
        # The model as it was scored on the held-out period, before the refit on the newest windows: the promotion
        # gate compares a challenger with this, since the refitted model has seen the labels of later periods.
        self.evaluation = evaluation
        self.learners = learners or {}  # output -> candidate family served
        self.pareto = pareto  # a Pareto/NBD fit whose P(alive) and expected purchases are features too

    @property
    def columns(self) -> list[str]:
        """The columns of the matrix the estimators read: the features, then the BG/NBD and Pareto/NBD columns of
        the fits the model carries."""
        has_inputs = set(BTYD_INPUTS) <= set(self.features)
        extra = list(BTYD_FEATURES) if self.btyd is not None and has_inputs else []
        extra += list(PARETO_FEATURES) if self.pareto is not None and has_inputs else []
        return [*self.features, *extra]

    @property
    def derived_from(self) -> tuple[str, ...]:
        """The features the BG/NBD and Pareto/NBD columns of `columns` are computed from (none without them)."""
        return tuple(BTYD_INPUTS) if len(self.columns) > len(self.features) else ()

    def model_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        missing = [f for f in self.features if f not in frame.columns]
        if missing:
            raise ValueError(f"{self.tag}: input lacks feature(s) {missing[:5]}{'...' if len(missing) > 5 else ''}")
        # Kept in the snapshot's dtypes (float32 mostly): `matrix` makes the one float32 copy LightGBM reads.
        x = frame[self.features]
        return pareto_columns(self.pareto, btyd_columns(self.btyd, x, self.horizon_days), self.horizon_days)

    def predict(self, context, model_input, params=None):  # untyped: MLflow 3 reads type hints as a schema
        missing = [f for f in self.features if f not in model_input.columns]
        if missing:
            raise ValueError(f"{self.tag}: input lacks feature(s) {missing[:5]}{'...' if len(missing) > 5 else ''}")
        out = self.predict_matrix(matrix(model_input[self.features]))
        return pd.DataFrame(out, index=model_input.index)

    def predict_matrix(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output's scores for a float32 matrix whose columns are `features`, in order (NaN = missing).

        The one prediction path: `predict` (evaluation, the MLflow pyfunc) and serving both end here, and the
        BG/NBD columns it appends are those `model_frame` adds for training.
        """
        x = self.full_matrix(x)
        return {name: self.score_output(est, x) for name, est in self.estimators.items()}  # one matrix for all

    def full_matrix(self, x: np.ndarray) -> np.ndarray:
        """The matrix the estimators read (its columns: `columns`): `x`, a float32 matrix of `features` in order,
        then the BG/NBD and Pareto/NBD columns computed from it (what `predict_matrix` scores and
        `training.explain` attributes)."""
        x = matrix(x)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(f"{self.tag}: expected a matrix of {len(self.features)} feature columns, got {x.shape}")
        if self.btyd is not None and set(BTYD_INPUTS) <= set(self.features):
            inputs = (x[:, self.features.index(c)] for c in BTYD_INPUTS)
            p_alive, expected = _btyd_outputs(self.btyd, *inputs, self.horizon_days)
            x = np.ascontiguousarray(np.column_stack([x, p_alive.astype(np.float32), expected.astype(np.float32)]))
        if self.pareto is not None and set(BTYD_INPUTS) <= set(self.features):  # same order as model_frame
            p, e = pareto_outputs(self.pareto, *(x[:, self.features.index(c)] for c in BTYD_INPUTS), self.horizon_days)
            x = np.ascontiguousarray(np.column_stack([x, p.astype(np.float32), e.astype(np.float32)]))
        return x

    def score_output(self, estimator, x: np.ndarray) -> np.ndarray:
        """One estimator's scores on a `full_matrix`: P(positive) for a probability tag, the amount for value."""
        return estimator.predict_proba(x)[:, 1] if self.kind == "probability" else estimator.predict(x)


class CalibratedClassifier:
    """A fitted classifier and an isotonic map from its scores to the rates observed on held-out data.

    What models registered before Platt calibration hold (training/candidates.py): kept so they still load."""

    def __init__(self, model: lgb.LGBMClassifier, calibrator: IsotonicRegression) -> None:
        self.model = model
        self.calibrator = calibrator

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        # The booster directly: the sklearn wrapper re-validates the input on every call, which costs more than
        # the trees for the one-row frames of online scoring. Same numbers.
        # The isotonic map likewise: `predict` is input validation (~0.2 ms a call) around clip + `f_`, its fitted
        # interpolating function; for the float64 scores of the booster that is exactly what it computes.
        iso = self.calibrator
        raw = self.model.booster_.predict(matrix(x))
        p = np.asarray(iso.f_(np.clip(raw, iso.X_min_, iso.X_max_)), dtype=raw.dtype)
        return np.column_stack([1 - p, p])


def matrix(x: pd.DataFrame | np.ndarray) -> np.ndarray:
    """The float32 C-ordered matrix LightGBM reads without another copy; a matrix already so passes through."""
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x, dtype=np.float32)
    return np.ascontiguousarray(x.to_numpy(dtype=np.float32, na_value=np.nan))


def lgbm_common(params: LearnerParams) -> dict:
    """The LightGBM settings every learned candidate is fitted with (and bench/train_bench.py times)."""
    # Same data and seed, same trees, bit for bit (a retrained challenger ties its champion): `deterministic`, with
    # the histogram layout forced as LightGBM's docs require for it. Left to itself LightGBM picks col- or row-wise
    # by timing both on the machine of the moment, and the two sum gradients in different orders. Col-wise is what
    # it picks here for these shapes (20k-200k rows, ~60 features, 2 threads) and skips that timing test.
    return dict(n_estimators=params.max_trees, learning_rate=params.learning_rate, num_leaves=params.num_leaves,
                min_child_samples=params.min_child_samples, subsample=params.subsample, subsample_freq=1,
                colsample_bytree=params.colsample_bytree, max_bin=params.max_bin, random_state=params.seed,
                n_jobs=2, verbose=-1, deterministic=True, force_col_wise=True)


def fit_classifier(x_train: pd.DataFrame | np.ndarray, y_train: np.ndarray, x_val: pd.DataFrame | np.ndarray,
                   y_val: np.ndarray, params: LearnerParams, *, names: list[str] | None = None,
                   trees: int | None = None) -> Calibrated:
    """LightGBM with early stopping on the validation date, then Platt calibration on that same date.

    With `trees` (a refit): exactly that many trees, no early stopping, and the Platt map is the caller's to set."""
    names = names if names is not None else list(x_train.columns)
    model = lgb.LGBMClassifier(**{**lgbm_common(params), **({"n_estimators": trees} if trees else {})})
    xv = matrix(x_val)
    if trees:
        model.fit(matrix(x_train), y_train, feature_name=names)
    else:
        model.fit(matrix(x_train), y_train, eval_X=(xv,), eval_y=(y_val,), eval_metric="auc", feature_name=names,
                  callbacks=[lgb.early_stopping(params.early_stopping_rounds, verbose=False)])
    inner = Lgbm(model, "probability")
    return Calibrated(inner, RankCalibrator().fit(inner.score(xv), y_val) if not trees else RankCalibrator())


def fit_regressor(x_train: pd.DataFrame | np.ndarray, y_train: np.ndarray, x_val: pd.DataFrame | np.ndarray,
                  y_val: np.ndarray, params: LearnerParams, *, names: list[str] | None = None,
                  trees: int | None = None) -> Lgbm:
    """LightGBM with a Tweedie loss: spend is zero for many and heavy-tailed for a few (refit: see fit_classifier)."""
    names = names if names is not None else list(x_train.columns)
    model = lgb.LGBMRegressor(objective="tweedie", tweedie_variance_power=1.3,
                              **{**lgbm_common(params), **({"n_estimators": trees} if trees else {})})
    if trees:
        model.fit(matrix(x_train), np.maximum(y_train, 0), feature_name=names)
    else:
        model.fit(matrix(x_train), np.maximum(y_train, 0), eval_X=(matrix(x_val),), eval_y=(np.maximum(y_val, 0),),
                  feature_name=names, callbacks=[lgb.early_stopping(params.early_stopping_rounds, verbose=False)])
    return Lgbm(model, "value")


def refitted(est, x: np.ndarray, y: np.ndarray, *, kind: str, at: dict[str, int], bg: BetaGeoModel | None, gg,
             seed: int):
    """A selected candidate refitted on (x, y), the matrix of a refit's rows with BG/NBD (and Gamma-Gamma) `bg`,
    `gg` refitted too: same family, same settings, same calibration map; LightGBM keeps the tree count early
    stopping chose (training.refit)."""
    if isinstance(est, Blend):
        blend = copy.copy(est)
        blend.members = {k: refitted(m, x, y, kind=kind, at=at, bg=bg, gg=gg, seed=seed)
                         for k, m in est.members.items()}
        return blend
    inner = est.model if isinstance(est, Calibrated) else est
    if isinstance(inner, Lgbm):
        fit = fit_classifier if kind == "probability" else fit_regressor
        new = fit(x, y, x[:1], y[:1], LearnerParams(seed=seed), names=list(at), trees=inner.trees)
        new = new.model if isinstance(new, Calibrated) else new
    elif isinstance(inner, BtydCovariates):
        new = inner.refitted(bg, at, x, y)
    elif isinstance(inner, Linear):
        rows = np.random.default_rng(seed).permutation(len(x))[:LINEAR_ROWS]
        new = Linear(kind, range(len(at)), seed).fit(x[rows], y[rows])
    else:  # the BTYD families: the same formulas on the refitted BG/NBD (and Gamma-Gamma)
        new = copy.copy(inner)
        new.bg, new.at = bg, at
        if isinstance(new, BtydValue):
            new.gg = gg if gg is not None else inner.gg
    return Calibrated(new, est.platt) if isinstance(est, Calibrated) else new


class ValueRegressor:
    """The value model: LightGBM on a float32 matrix of the features, predictions floored at zero (what models
    registered before training/candidates.py hold: kept so they still load)."""

    def __init__(self, model: lgb.LGBMRegressor) -> None:
        self.model = model

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        return np.maximum(self.model.booster_.predict(matrix(x)), 0)


def feature_importance(estimator) -> pd.Series:
    """Gain importance of the LightGBM inside a (calibrated) estimator; empty for the other families."""
    inner = getattr(estimator, "model", None)
    inner = getattr(inner, "model", inner)  # candidates.Calibrated(Lgbm(LGBMModel)) or Lgbm or the old wrappers
    booster = getattr(inner, "booster_", None)
    if booster is None:
        return pd.Series(dtype=np.float64)
    return pd.Series(booster.feature_importance("gain"), index=booster.feature_name()).sort_values(ascending=False)


# --- baselines (the analyst's heuristics; the candidate models are in training/candidates.py) -------------
def _quintile(values: pd.Series) -> np.ndarray:
    return (values.rank(pct=True, method="average").fillna(0).to_numpy() * 5).clip(0, 5)


def rfm_churn_score(frame: pd.DataFrame) -> np.ndarray:
    """The analyst's RFM score, turned into churn risk: low recency, frequency and monetary scores churn."""
    r = _quintile(-frame["tx_recency_days"].fillna(frame["tx_recency_days"].max()))
    f = _quintile(frame["tx_count_365d"])
    m = _quintile(frame["tx_spend_365d"])
    return -(r + f + m)


def rfm_value_score(frame: pd.DataFrame) -> np.ndarray:
    """Past year's spend as the predicted future spend (scaled to the horizon by the caller's metric: ranks)."""
    return frame["tx_spend_365d"].fillna(0).to_numpy(dtype=np.float64)


def rfm_interest_score(frame: pd.DataFrame, category: str) -> np.ndarray:
    """Past purchases in the category first, browsing in it second."""
    buys = frame.get(f"aff_buy_{category}_365d", pd.Series(0, index=frame.index)).fillna(0)
    views = frame.get(f"aff_view_{category}_90d", pd.Series(0, index=frame.index)).fillna(0)
    return (buys * 1000 + views).to_numpy(dtype=np.float64)


# The heuristics a model tag may name as baselines (features/model_tags.py, ModelTag.baselines): each scores a frame
# of the held-out rows; `key` is what the output is about (interest_<category>: the category), else None.
HEURISTICS: dict[str, Callable[[pd.DataFrame, str | None], np.ndarray]] = {
    "rfm_churn": lambda frame, key: rfm_churn_score(frame),
    "rfm_value": lambda frame, key: rfm_value_score(frame),
    "rfm_interest": rfm_interest_score,
}
