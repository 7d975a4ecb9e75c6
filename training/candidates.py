"""The candidate models of a tag, every one servable: LightGBM, the linear models and the buy-till-you-die models.

`persona train` scores each candidate on the held-out period and serves the best, whatever its family: on a sparse
real log BG/NBD often ranks customers better than a tree model, and then BG/NBD is the champion. Every candidate is
an estimator over the same float32 matrix `TagModel.predict_matrix` hands it (the tag's feature columns in order,
then the BG/NBD columns when the tag model carries a BG/NBD fit), with `predict_proba` (probability tags) or
`predict` (value), so online and batch scoring call a classical champion exactly as they call LightGBM.

Probability candidates are calibrated on the validation date with `RankCalibrator` (its docstring says why).
The RFM heuristic stays a baseline only: its scores are ranks, not probabilities or amounts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import warnings

import lightgbm as lgb
import numpy as np
from scipy import special
from sklearn.impute import SimpleImputer
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from training.btyd import BTYD_INPUTS, BetaGeoModel, ConvergenceError, GammaGammaModel  # noqa: F401 (re-exported)
MONETARY = "tx_btyd_monetary"


def _f64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _logit(p: np.ndarray) -> np.ndarray:
    # only exact 0 and 1 are moved (to the nearest doubles inside): a wider clip would tie the extreme scores
    p = np.clip(_f64(p), np.nextafter(0.0, 1.0), np.nextafter(1.0, 0.0))
    return np.log(p) - np.log1p(-p)


class Platt:
    """p = sigmoid(a * logit(score) + b), fitted by logistic regression: strictly increasing when a > 0.

    A fit with a <= 0 (a score that ranks backwards on the calibration rows) is refused: the map is the identity.
    """

    def __init__(self) -> None:
        self.a, self.b = 1.0, 0.0

    def fit(self, score: np.ndarray, y: np.ndarray) -> Platt:
        y = np.asarray(y)
        if len(np.unique(y)) == 2:
            lr = LogisticRegression(C=1e4, solver="lbfgs", max_iter=200)
            lr.fit(_logit(score)[:, None], y)
            a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
            if a > 0 and np.isfinite(a) and np.isfinite(b):
                self.a, self.b = a, b
        return self

    def __call__(self, score: np.ndarray) -> np.ndarray:
        z = self.a * _logit(score) + self.b
        return 1.0 / (1.0 + np.exp(-z))


class RankCalibrator:
    """Calibration that keeps the ranking: centred isotonic regression with Platt tails (Oron & Flournoy, 2017).

    Why not plain isotonic: it pools neighbouring scores into flat steps, so many customers share one probability
    (on a real log 54% of customers got the same churn risk) and the AUC drops. Why not Platt alone: two parameters
    cannot follow a tree model's distortion (a sigmoid of the logit is off by 0.05 in the upper deciles of an
    over-confident LightGBM). Here isotonic regression on the calibration rows gives the observed rate of each
    pooled block; each block becomes one point (its middle score, its rate, kept off 0 and 1 by half a customer);
    the map interpolates between those points linearly in logit space, and beyond the first and last point it
    continues with the slope of a Platt fit. Every piece is strictly increasing, so customers keep their order
    and the calibrated AUC equals the raw one. With fewer than `min_class` positives or negatives the isotonic
    steps are noise, and the map is Platt's alone.
    """

    def __init__(self, min_class: int = 100) -> None:
        self.min_class = min_class
        self.platt = Platt()
        self.knots_x = np.empty(0)  # logit(score) of each block's middle, increasing
        self.knots_y = np.empty(0)  # logit(observed rate) of each block, increasing

    @property
    def method(self) -> str:
        return "centred isotonic" if len(self.knots_x) >= 2 else "platt"

    def fit(self, score: np.ndarray, y: np.ndarray) -> RankCalibrator:
        y = np.asarray(y, dtype=np.float64)
        self.platt.fit(score, y)
        pos = int(y.sum())
        if min(pos, len(y) - pos) < self.min_class:
            return self
        z = _logit(score)
        order = np.argsort(z, kind="mergesort")
        z, y = z[order], y[order]
        fitted = IsotonicRegression(out_of_bounds="clip").fit_transform(z, y)
        # blocks: runs of one fitted value; a block's point is (middle of its scores, its rate)
        starts = np.flatnonzero(np.r_[True, np.diff(fitted) != 0])
        ends = np.r_[starts[1:], len(z)] - 1
        rate = np.clip(fitted[starts], 0.5 / len(y), 1 - 0.5 / len(y))
        mid = (z[starts] + z[ends]) / 2
        keep = np.r_[True, np.diff(mid) > 0] & np.r_[True, np.diff(rate) > 0]
        if keep.sum() >= 2:
            self.knots_x, self.knots_y = mid[keep], _logit(rate[keep])
        return self

    def __call__(self, score: np.ndarray) -> np.ndarray:
        if len(self.knots_x) < 2:
            return self.platt(score)
        z = _logit(score)
        kx, ky, a = self.knots_x, self.knots_y, self.platt.a
        out = np.interp(z, kx, ky)
        low, high = z < kx[0], z > kx[-1]
        out[low] = ky[0] + a * (z[low] - kx[0])
        out[high] = ky[-1] + a * (z[high] - kx[-1])
        return 1.0 / (1.0 + np.exp(-out))


def _margin(model, z: np.ndarray) -> np.ndarray:
    """A fitted linear model's decision function, summed column after column: each row's sum is taken in the same
    order whatever the number of rows (neither a BLAS product nor numpy's blocked `sum(axis=1)` guarantees that)."""
    coef = np.ravel(model.coef_)
    acc = np.full(len(z), float(np.ravel(model.intercept_)[0]))
    for j in range(z.shape[1]):  # over the model's columns (tens), each step vectorised over the rows
        acc += z[:, j] * coef[j]
    return acc


class Calibrated:
    """A probability candidate and its calibration map: `predict_proba` as scikit-learn shapes it."""

    def __init__(self, model, platt: RankCalibrator | Platt) -> None:
        self.model = model
        self.platt = platt

    @property
    def family(self) -> str:
        return self.model.family

    @property
    def reads(self) -> frozenset[int] | None:
        """The matrix columns the model reads (None: any); what explaining by occlusion skips the others by."""
        return getattr(self.model, "reads", None)

    def raw(self, x: np.ndarray) -> np.ndarray:
        return self.model.score(x)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        p = self.platt(self.model.score(x))
        return np.column_stack([1 - p, p])


# --- families: each has .family and .score(x) (a probability, or an amount for value) ----------------------------
class Lgbm:
    """A fitted LightGBM model, called through its booster on the float32 matrix (no per-call re-validation)."""

    family = "lightgbm"

    def __init__(self, model: lgb.LGBMModel, kind: str) -> None:
        self.model, self.kind = model, kind

    @property
    def trees(self) -> int:
        return int(self.model.booster_.num_trees())

    def score(self, x: np.ndarray) -> np.ndarray:
        out = self.model.booster_.predict(np.ascontiguousarray(x, dtype=np.float32))
        return out if self.kind == "probability" else np.maximum(out, 0)

    predict = score


class Linear:
    """Logistic regression (probability) or ridge on log spend (value) on the tag's columns, median-imputed and
    standardised (the pipeline is part of the model, so serving imputes and scales the same way).

    Inputs are clipped to the range each column had in training: a linear model extrapolates without bound, and a
    feature that barely varied there (real-time counters at a snapshot's midnight) would otherwise turn a few live
    events into a certainty."""

    low, high = -np.inf, np.inf  # no clipping for a model pickled before the bounds were kept

    def __init__(self, kind: str, columns: Sequence[int], seed: int) -> None:
        self.kind = kind
        self.columns = np.asarray(columns, dtype=np.intp)
        self.family = "logistic_regression" if kind == "probability" else "linear_regression"
        last = (LogisticRegression(max_iter=300, C=1.0, random_state=seed) if kind == "probability"
                else Ridge(1.0))
        self.pipeline = make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
                                      last)

    @property
    def reads(self) -> frozenset[int]:
        return frozenset(self.columns.tolist())

    def fit(self, x: np.ndarray, y: np.ndarray) -> Linear:
        x = _f64(x[:, self.columns])
        self.pipeline.fit(x, y if self.kind == "probability" else np.log1p(np.maximum(_f64(y), 0)))
        seen = np.where(np.isnan(x), self.pipeline[0].statistics_, x)
        self.low, self.high = seen.min(axis=0), seen.max(axis=0)
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        # The fitted pipeline applied by hand, row by row: a matrix product (BLAS) sums in an order that depends on
        # how many rows are scored together, so a customer scored online alone could differ in the last bits from
        # the same customer in a batch. An elementwise product summed along each row does not.
        imputer, scaler, last = self.pipeline[0], self.pipeline[1], self.pipeline[-1]
        x = _f64(x[:, self.columns])
        x = np.clip(np.where(np.isnan(x), imputer.statistics_, x), self.low, self.high)
        margin = _margin(last, (x - scaler.mean_) / scaler.scale_)
        if self.kind == "probability":
            return special.expit(margin)
        return np.maximum(np.expm1(margin), 0)

    predict = score


@dataclass
class _Btyd:
    """Column positions of the BG/NBD inputs in the matrix."""

    bg: BetaGeoModel
    at: dict[str, int]
    horizon_days: int

    def _xtT(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f, r, t = (np.nan_to_num(_f64(x[:, self.at[c]]), nan=0.0) for c in BTYD_INPUTS)
        return f, r, np.maximum(t, r)

    def _also(self) -> list[str | None]:
        return []  # the columns a family reads besides the BG/NBD inputs

    @property
    def reads(self) -> frozenset[int]:
        """The matrix columns `score` reads (see Calibrated.reads)."""
        return frozenset(self.at[c] for c in [*BTYD_INPUTS, *self._also()] if c is not None and c in self.at)


class BtydChurn(_Btyd):
    """BG/NBD: P(no purchase in the next horizon) from frequency, recency and age."""

    family = "bg_nbd"

    def score(self, x: np.ndarray) -> np.ndarray:
        return self.bg.probability_no_purchase(self.horizon_days, *self._xtT(x))


class BtydCovariates(_Btyd):
    """BG/NBD with covariates: a logistic regression of the label on BG/NBD's log-odds of no purchase in the horizon
    and the log of a few spend covariates (average order value), fitted on the training rows.

    BG/NBD models purchase timing only; on real logs what a customer spends also says whether they return (bigger
    baskets come back more often), which BG/NBD ignores. A tree model on every feature learns from young customers
    (the labelled dates of a short log) and ranks the older customers of the scoring date poorly; this model keeps
    BG/NBD's purchase-process ranking, which carries over to any age, and adds only what the covariates change. The
    BG/NBD column is never clipped (it is a model output, extreme for customers older than any in training); the
    covariates are clipped to their training range, as `Linear` does.

    Not recalibrated: a logistic regression's probabilities are fitted to the observed rates of its training rows,
    and over a refitted BG/NBD they follow the scoring date's customers. A map fitted on the validation rows (the
    young customers of a short log) would carry their churn rate to everyone (CDNOW development: Brier 0.1158
    as fitted, 0.123 through such a map, same ranking)."""

    family = "bg_nbd_covariates"
    low, high = -np.inf, np.inf

    def __init__(self, bg: BetaGeoModel, at: dict[str, int], horizon_days: int, covariates: Sequence[str],
                 seed: int) -> None:
        super().__init__(bg, at, horizon_days)
        self.covariates = [c for c in covariates if c in at]
        self.seed = seed
        self.model = LogisticRegression(C=1.0, max_iter=500, random_state=seed)

    def _covariates(self, x: np.ndarray) -> np.ndarray:
        cols = [np.log1p(np.maximum(np.nan_to_num(_f64(x[:, self.at[c]]), nan=0.0), 0.0)) for c in self.covariates]
        return np.column_stack(cols) if cols else np.empty((len(x), 0))

    def _inputs(self, x: np.ndarray, cov: np.ndarray) -> np.ndarray:
        churn = _logit(self.bg.probability_no_purchase(self.horizon_days, *self._xtT(x)))
        return np.column_stack([churn, cov])

    def fit(self, x: np.ndarray, y: np.ndarray) -> BtydCovariates:
        cov = self._covariates(x)
        self.low, self.high = (cov.min(axis=0), cov.max(axis=0)) if len(cov) else (-np.inf, np.inf)
        self.model.fit(self._inputs(x, cov), np.asarray(y))
        if self.model.coef_[0, 0] <= 0:  # BG/NBD ranking backwards here: this is not a BG/NBD model any more
            raise ValueError("BG/NBD's churn odds get a non-positive weight on the training rows")
        return self

    def _also(self) -> list[str | None]:
        return list(self.covariates)

    def refitted(self, bg: BetaGeoModel, at: dict[str, int], x: np.ndarray, y: np.ndarray) -> BtydCovariates:
        """The same covariates, fitted again on (x, y) over another BG/NBD fit (training.refit)."""
        return BtydCovariates(bg, at, self.horizon_days, self.covariates, self.seed).fit(x, y)

    def score(self, x: np.ndarray) -> np.ndarray:
        cov = np.clip(self._covariates(x), self.low, self.high)
        return special.expit(_margin(self.model, self._inputs(x, cov)))

    raw = score

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        p = self.score(x)
        return np.column_stack([1 - p, p])


class BtydInterest(_Btyd):
    """BG/NBD P(any purchase in the horizon) x the customer's smoothed share of purchases in the category."""

    family = "bg_nbd"

    def __init__(self, bg: BetaGeoModel, at: dict[str, int], horizon_days: int, buys: str | None,
                 total: str | None, categories: int) -> None:
        super().__init__(bg, at, horizon_days)
        self.buys, self.total, self.prior = buys, total, 1.0 / max(categories, 1)

    def _also(self) -> list[str | None]:
        return [self.buys, self.total]

    def score(self, x: np.ndarray) -> np.ndarray:
        p_buy = 1 - self.bg.probability_no_purchase(self.horizon_days, *self._xtT(x))
        n = len(x)
        buys = np.nan_to_num(_f64(x[:, self.at[self.buys]]), nan=0.0) if self.buys else np.zeros(n)
        total = np.nan_to_num(_f64(x[:, self.at[self.total]]), nan=0.0) if self.total else np.zeros(n)
        return p_buy * (buys + self.prior) / (total + 1)


class BtydValue(_Btyd):
    """BG/NBD expected purchases x Gamma-Gamma expected order value (the classical CLV over the horizon).

    A customer whose repeat purchases were all worth $0 tells Gamma-Gamma nothing about positive spend: they get the
    population's mean order value (as a customer without repeat purchases does). Without a Gamma-Gamma fit, the
    order value is the past year's average order value.
    """

    family = "bg_nbd_gamma_gamma"

    def __init__(self, bg: BetaGeoModel, gg: GammaGammaModel | None, at: dict[str, int], horizon_days: int,
                 aov: str | None) -> None:
        super().__init__(bg, at, horizon_days)
        self.gg, self.aov = gg, aov

    def _also(self) -> list[str | None]:
        return [MONETARY if self.gg is not None else None, self.aov]

    def score(self, x: np.ndarray) -> np.ndarray:
        f, r, t = self._xtT(x)
        purchases = self.bg.expected_purchases(self.horizon_days, f, r, t)
        if self.gg is not None and MONETARY in self.at:
            m = np.nan_to_num(_f64(x[:, self.at[MONETARY]]), nan=0.0)
            informative = (f > 0) & (m > 0)
            value = self.gg.expected_average_value(np.where(informative, f, 0.0), np.where(informative, m, 0.0))
        elif self.aov is not None:
            value = np.nan_to_num(_f64(x[:, self.at[self.aov]]), nan=0.0)
        else:
            return purchases
        return purchases * value

    predict = score


def fit_btyd(f: np.ndarray, r: np.ndarray, t: np.ndarray, m: np.ndarray | None
             ) -> tuple[BetaGeoModel, GammaGammaModel | None]:
    """BG/NBD on one snapshot's customer summaries, and Gamma-Gamma on its repeat buyers with a positive mean
    repeat value (at least 20 of them). Raises training.btyd.ConvergenceError when BG/NBD cannot be fitted."""
    f, r, t = (np.nan_to_num(_f64(v), nan=0.0) for v in (f, r, t))
    bg = BetaGeoModel(penalizer=0.001).fit(f, r, np.maximum(t, r))
    gg = None
    if m is not None:
        m = np.nan_to_num(_f64(m), nan=0.0)
        repeat = (f > 0) & (m > 0)
        if repeat.sum() >= 20:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # q <= 1 is checked just below
                    gg = GammaGammaModel(penalizer=0.001).fit(f[repeat], m[repeat])
                if gg.params_["q"] <= 1:  # infinite population mean spend: unusable for new customers
                    gg = None
            except (RuntimeError, ValueError):
                gg = None
    return bg, gg


class Blend:
    """A stacked blend of the other candidates: logistic regression (probability) or ridge on log spend (value) over
    their validation-date scores (logits, or log spend), fitted on the validation date.

    Each family sees customers differently (BG/NBD the purchase process, LightGBM every feature, the linear model a
    smooth combination), and on a sparse log none dominates; their blend often ranks better than the best of them.
    It competes like any candidate: it serves only if it beats every single model on the held-out date, which it
    never saw. Members are called exactly as when they compete alone.
    """

    family = "blend"

    def __init__(self, kind: str, members: dict, seed: int) -> None:
        self.kind = kind
        self.members = dict(members)
        self.model = (LogisticRegression(C=1.0, max_iter=500, random_state=seed) if kind == "probability"
                      else Ridge(1.0))

    def member_input(self, est, x: np.ndarray) -> np.ndarray:
        """What the blend reads of one member: the logit of its probability, or its log spend."""
        if self.kind == "probability":
            return _logit(est.predict_proba(x)[:, 1])
        return np.log1p(np.maximum(_f64(est.predict(x)), 0))

    def _inputs(self, x: np.ndarray) -> np.ndarray:
        return np.column_stack([self.member_input(est, x) for est in self.members.values()])

    def fit(self, x_val: np.ndarray, y_val: np.ndarray) -> Blend:
        target = y_val if self.kind == "probability" else np.log1p(np.maximum(_f64(y_val), 0))
        self.model.fit(self._inputs(x_val), target)
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        margin = _margin(self.model, self._inputs(x))  # row by row, as Linear.score (batch-invariant)
        if self.kind == "probability":
            return special.expit(margin)
        return np.maximum(np.expm1(margin), 0)

    raw = score
    predict = score

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        p = self.score(x)
        return np.column_stack([1 - p, p])


# --- the buy-till-you-die families a model tag names (features/model_tags.py, ModelTag.process) -------------------
COVARIATES = ["tx_aov_365d"]  # what bg_nbd_covariates adds to BG/NBD: spend per order (log)


def calibrate(kind: str, model, x_val: np.ndarray, y_val: np.ndarray):
    """A probability candidate with its calibration map fitted on the validation rows; a value candidate as is."""
    if kind != "probability":
        return model
    return Calibrated(model, RankCalibrator().fit(model.score(x_val), y_val))


@dataclass(frozen=True)
class ProcessInputs:
    """What a buy-till-you-die family of one output is built from: the tag's kind and horizon, the output's key
    (interest_<category>: the category; else None), the BG/NBD (and Gamma-Gamma) fit, and the fold's matrices."""

    kind: str
    horizon_days: int
    key: str | None
    at: dict[str, int]  # column -> position in the matrices
    bg: BetaGeoModel
    gg: GammaGammaModel | None
    x: dict[str, np.ndarray]  # train / val / test
    y: dict[str, np.ndarray]
    seed: int

    def column(self, name: str) -> str | None:
        return name if name in self.at else None

    def calibrated(self, model):
        return calibrate(self.kind, model, self.x["val"], self.y["val"])


# implementation name -> the fitted candidate (training resolves ModelTag.process through this)
PROCESS_FAMILIES: dict[str, Callable[[ProcessInputs], object]] = {
    "btyd_churn": lambda c: c.calibrated(BtydChurn(c.bg, c.at, c.horizon_days)),
    "btyd_covariates": lambda c: BtydCovariates(c.bg, c.at, c.horizon_days, COVARIATES, c.seed).fit(
        c.x["train"], c.y["train"]),
    "btyd_interest": lambda c: c.calibrated(BtydInterest(
        c.bg, c.at, c.horizon_days, c.column(f"aff_buy_{c.key}_365d"), c.column("tx_count_365d"), categories=12)),
    "btyd_value": lambda c: BtydValue(c.bg, c.gg, c.at, c.horizon_days, c.column("tx_aov_365d")),
}
