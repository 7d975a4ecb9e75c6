"""Model tags and their baselines.

`TagModel` is what gets logged to MLflow and served: it holds the feature list, the fitted estimators (one per
output: `churn_risk`, `high_value`, or one `interest_<category>` each) and, optionally, a fitted BG/NBD model whose
outputs it adds as features. Evaluation and serving both call `TagModel.predict`, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import mlflow.pyfunc
import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from training.btyd import BetaGeoModel, GammaGammaModel, expected_value

BTYD_INPUTS = ("tx_btyd_frequency", "tx_btyd_recency", "tx_btyd_T")
BTYD_FEATURES = ("btyd_p_alive", "btyd_expected_purchases")


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

    def __init__(self, tag: str, kind: str, features: list[str], estimators: dict, horizon_days: int,
                 btyd: BetaGeoModel | None = None) -> None:
        self.tag = tag
        self.kind = kind
        self.features = features
        self.estimators = estimators
        self.horizon_days = horizon_days
        self.btyd = btyd

    def model_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        missing = [f for f in self.features if f not in frame.columns]
        if missing:
            raise ValueError(f"{self.tag}: input lacks feature(s) {missing[:5]}{'...' if len(missing) > 5 else ''}")
        # Kept in the snapshot's dtypes (float32 mostly): `_matrix` makes the one float32 copy LightGBM reads.
        x = frame[self.features]
        return btyd_columns(self.btyd, x, self.horizon_days)

    def predict(self, context, model_input, params=None):  # untyped: MLflow 3 reads type hints as a schema
        missing = [f for f in self.features if f not in model_input.columns]
        if missing:
            raise ValueError(f"{self.tag}: input lacks feature(s) {missing[:5]}{'...' if len(missing) > 5 else ''}")
        out = self.predict_matrix(_matrix(model_input[self.features]))
        return pd.DataFrame(out, index=model_input.index)

    def predict_matrix(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output's scores for a float32 matrix whose columns are `features`, in order (NaN = missing).

        The one prediction path: `predict` (evaluation, the MLflow pyfunc) and serving both end here, and the
        BG/NBD columns it appends are those `model_frame` adds for training.
        """
        x = _matrix(x)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(f"{self.tag}: expected a matrix of {len(self.features)} feature columns, got {x.shape}")
        if self.btyd is not None and set(BTYD_INPUTS) <= set(self.features):
            inputs = (x[:, self.features.index(c)] for c in BTYD_INPUTS)
            p_alive, expected = _btyd_outputs(self.btyd, *inputs, self.horizon_days)
            x = np.ascontiguousarray(np.column_stack([x, p_alive.astype(np.float32), expected.astype(np.float32)]))
        out = {}
        for name, est in self.estimators.items():  # one matrix for every output
            out[name] = est.predict_proba(x)[:, 1] if self.kind == "probability" else est.predict(x)
        return out


class CalibratedClassifier:
    """A fitted classifier and an isotonic map from its scores to the rates observed on held-out data."""

    def __init__(self, model: lgb.LGBMClassifier, calibrator: IsotonicRegression) -> None:
        self.model = model
        self.calibrator = calibrator

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        # The booster directly: the sklearn wrapper re-validates the input on every call, which costs more than
        # the trees for the one-row frames of online scoring. Same numbers.
        # The isotonic map likewise: `predict` is input validation (~0.2 ms a call) around clip + `f_`, its fitted
        # interpolating function; for the float64 scores of the booster that is exactly what it computes.
        iso = self.calibrator
        raw = self.model.booster_.predict(_matrix(x))
        p = np.asarray(iso.f_(np.clip(raw, iso.X_min_, iso.X_max_)), dtype=raw.dtype)
        return np.column_stack([1 - p, p])


def _matrix(x: pd.DataFrame | np.ndarray) -> np.ndarray:
    """The float32 C-ordered matrix LightGBM reads without another copy; a matrix already so passes through."""
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x, dtype=np.float32)
    return np.ascontiguousarray(x.to_numpy(dtype=np.float32, na_value=np.nan))


def _lgbm_common(params: LearnerParams) -> dict:
    # Same data and seed, same trees, bit for bit (a retrained challenger ties its champion): `deterministic`, with
    # the histogram layout forced as LightGBM's docs require for it. Left to itself LightGBM picks col- or row-wise
    # by timing both on the machine of the moment, and the two sum gradients in different orders. Col-wise is what
    # it picks here for these shapes (20k-200k rows, ~60 features, 2 threads) and skips that timing test.
    return dict(n_estimators=params.max_trees, learning_rate=params.learning_rate, num_leaves=params.num_leaves,
                min_child_samples=params.min_child_samples, subsample=params.subsample, subsample_freq=1,
                colsample_bytree=params.colsample_bytree, max_bin=params.max_bin, random_state=params.seed,
                n_jobs=2, verbose=-1, deterministic=True, force_col_wise=True)


def fit_classifier(x_train: pd.DataFrame, y_train: np.ndarray, x_val: pd.DataFrame, y_val: np.ndarray,
                   params: LearnerParams) -> CalibratedClassifier:
    """LightGBM with early stopping on the validation date, then isotonic calibration on that same date."""
    model = lgb.LGBMClassifier(**_lgbm_common(params))
    xv = _matrix(x_val)
    model.fit(_matrix(x_train), y_train, eval_X=(xv,), eval_y=(y_val,), eval_metric="auc",
              feature_name=list(x_train.columns),
              callbacks=[lgb.early_stopping(params.early_stopping_rounds, verbose=False)])
    calibrator = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1)
    calibrator.fit(model.booster_.predict(xv), y_val)
    return CalibratedClassifier(model, calibrator)


def fit_regressor(x_train: pd.DataFrame, y_train: np.ndarray, x_val: pd.DataFrame, y_val: np.ndarray,
                  params: LearnerParams) -> lgb.LGBMRegressor:
    """LightGBM with a Tweedie loss: spend is zero for many and heavy-tailed for a few."""
    model = lgb.LGBMRegressor(objective="tweedie", tweedie_variance_power=1.3, **_lgbm_common(params))
    model.fit(_matrix(x_train), y_train, eval_X=(_matrix(x_val),), eval_y=(y_val,), feature_name=list(x_train.columns),
              callbacks=[lgb.early_stopping(params.early_stopping_rounds, verbose=False)])
    return ValueRegressor(model)


class ValueRegressor:
    """The value model: LightGBM on a float32 matrix of the features, predictions floored at zero."""

    def __init__(self, model: lgb.LGBMRegressor) -> None:
        self.model = model

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        return np.maximum(self.model.booster_.predict(_matrix(x)), 0)


def feature_importance(estimator) -> pd.Series:
    """Gain importance of the LightGBM inside a (calibrated) estimator."""
    booster = estimator.model.booster_
    return pd.Series(booster.feature_importance("gain"), index=booster.feature_name()).sort_values(ascending=False)


# --- baselines --------------------------------------------------------------------------------------------
class LinearInputs:
    """Median imputation and standardisation fitted once on the training rows, shared by a tag's linear baselines."""

    def __init__(self, x_train: pd.DataFrame, x_test: pd.DataFrame, *, max_rows: int, seed: int) -> None:
        rows = np.random.default_rng(seed).permutation(len(x_train))[:max_rows]
        prep = make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler())
        self.rows = rows
        self.train = prep.fit_transform(_matrix(x_train)[rows])
        self.test = prep.transform(_matrix(x_test))


def logistic_baseline(inputs: LinearInputs, y_train: np.ndarray, seed: int) -> np.ndarray:
    """Logistic regression on the same features (median-imputed, standardised)."""
    model = LogisticRegression(max_iter=300, C=1.0, random_state=seed)
    return model.fit(inputs.train, y_train[inputs.rows]).predict_proba(inputs.test)[:, 1]


def linear_value_baseline(inputs: LinearInputs, y_train: np.ndarray) -> np.ndarray:
    """Ridge regression on log spend, on the same features."""
    return np.expm1(Ridge(1.0).fit(inputs.train, np.log1p(y_train[inputs.rows])).predict(inputs.test))


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


def fit_btyd(frame: pd.DataFrame) -> tuple[BetaGeoModel, GammaGammaModel | None]:
    """Fit BG/NBD (and Gamma-Gamma on repeat buyers) on one snapshot's customer summaries."""
    x, tx, T = (frame[c].fillna(0).to_numpy(dtype=np.float64) for c in BTYD_INPUTS)
    bg = BetaGeoModel(penalizer=0.001).fit(x, tx, np.maximum(T, tx))
    gg = None
    if "tx_btyd_monetary" in frame.columns:
        repeat = (x > 0) & frame["tx_btyd_monetary"].fillna(0).gt(0).to_numpy()
        if repeat.sum() >= 20:
            gg = GammaGammaModel(penalizer=0.001).fit(x[repeat], frame["tx_btyd_monetary"].to_numpy()[repeat])
    return bg, gg


def btyd_churn_score(bg: BetaGeoModel, frame: pd.DataFrame, horizon_days: int) -> np.ndarray:
    x, tx, T = (frame[c].fillna(0).to_numpy(dtype=np.float64) for c in BTYD_INPUTS)
    return bg.probability_no_purchase(horizon_days, x, tx, np.maximum(T, tx))


def btyd_value_score(bg: BetaGeoModel, gg: GammaGammaModel | None, frame: pd.DataFrame,
                     horizon_days: int) -> np.ndarray:
    x, tx, T = (frame[c].fillna(0).to_numpy(dtype=np.float64) for c in BTYD_INPUTS)
    T = np.maximum(T, tx)
    if gg is None:
        aov = frame.get("tx_aov_365d", pd.Series(0.0, index=frame.index)).fillna(0).to_numpy()
        return bg.expected_purchases(horizon_days, x, tx, T) * aov
    monetary = frame["tx_btyd_monetary"].fillna(0).to_numpy(dtype=np.float64)
    return expected_value(bg, gg, horizon_days, x, tx, T, monetary)


def btyd_interest_score(bg: BetaGeoModel, frame: pd.DataFrame, category: str, horizon_days: int) -> np.ndarray:
    """P(any purchase in the horizon) from BG/NBD times the customer's smoothed share of purchases in the category."""
    p_buy = 1 - btyd_churn_score(bg, frame, horizon_days)
    buys = frame.get(f"aff_buy_{category}_365d", pd.Series(0, index=frame.index)).fillna(0).to_numpy()
    total = frame.get("tx_count_365d", pd.Series(0, index=frame.index)).fillna(0).to_numpy()
    prior = 1.0 / 12
    return p_buy * (buys + prior) / (total + 1)
