"""Pareto/NBD: the buy-till-you-die model of Schmittlein, Morrison & Colombo (1987), fitted by maximum likelihood.

Formulas from Fader & Hardie, "A note on deriving the Pareto/NBD model and related expressions" (2005). Notation and
time unit as in `training.btyd` (days in persona): x repeat purchases (``frequency``), t_x the time of the last one
since the first purchase (``recency``), T the customer's age.

While alive a customer buys as a Poisson process with rate lambda ~ Gamma(r, alpha); the lifetime is exponential with
rate mu ~ Gamma(s, beta), independent of lambda (unlike BG/NBD, a customer can drop out at any moment, not only right
after a purchase). Integrating the dropout time tau over (t_x, T] gives, with C = Gamma(r+x) alpha^r beta^s / Gamma(r):

* likelihood  L = C [ (alpha+T)^-(r+x) (beta+T)^-s  +  s int_{t_x}^{T} (alpha+tau)^-(r+x) (beta+tau)^-(s+1) dtau ]
  ("alive at T" + "died at tau in (t_x, T]"). With K = r+s+x, m = max(alpha, beta), d = |alpha - beta|,
  e = s+1 when alpha >= beta else r+x, and F(t) = 2F1(K, e; K+1; d/(m+t)) / (m+t)^K (argument in [0, 1);
  evaluated after Euler's transformation, see `_log_F`),
  the integral from t to infinity is F(t)/K, so the second term is s/K (F(t_x) - F(T)): the paper's A_0.
  F(t_x) - F(T) is taken in logs as log F(t_x) + log(-expm1(log F(T) - log F(t_x))), so the difference of two
  nearly equal numbers is never formed; the two terms are added with logaddexp.
* P(alive at T) = 1 / (1 + s/K (alpha+T)^(r+x) (beta+T)^s (F(t_x) - F(T))): 1 when t_x = T (nothing rules out
  that the customer is still alive), in particular for x = 0 at T = 0.
* Given alive at T, lambda ~ Gamma(r+x, alpha+T) and mu ~ Gamma(s, beta+T), independent, so
  E[purchases in (T, T+t]] = P(alive) (r+x)/(alpha+T) (beta+T) L exprel(-(s-1) L), L = log(1 + t/(beta+T))
  (the paper's (beta+T)/(s-1) [1 - ((beta+T)/(beta+T+t))^(s-1)], written so that s = 1 needs no special case).

Fitting follows `training.btyd`: time divided by the mean age, identical (x, t_x, T) histories aggregated, L-BFGS-B on
the log-parameters with an L2 ``penalizer`` on them. The derivatives of 2F1 in its parameters have no closed form,
so the gradient is by central differences (4 parameters: 8 extra evaluations of a vectorised likelihood).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import special
from sklearn.exceptions import NotFittedError

from training.btyd import BTYD_INPUTS, ConvergenceError, _check_history, _factorize_rows, _minimise, history_inputs

__all__ = ["ConvergenceError", "PARETO_FEATURES", "PARETO_INPUTS", "ParetoNBDModel", "pareto_columns",
           "pareto_outputs"]

# The features the model reads (the transaction group's BTYD inputs) and the columns `pareto_columns` adds.
PARETO_INPUTS = BTYD_INPUTS  # the same summaries as BG/NBD
PARETO_FEATURES = ("pareto_p_alive", "pareto_expected_purchases")
_FD_STEP = 1e-6  # central-difference step in the log-parameters


_SERIES_TOL = 1e-14
_SERIES_CHUNK = 2048
_SERIES_MAX_TERMS = 1 << 17


def _hyp2f1_1(b: np.ndarray, c: np.ndarray, z: np.ndarray) -> np.ndarray:
    """2F1(1, b; c; z) for c > b > 0, 0 <= z < 1: scipy's, and where that is not finite (it returns NaN for b, c in
    the hundreds with z near 1) the series sum_n (b)_n/(c)_n z^n, whose terms are positive and shrink by at least z
    each: summed in chunks of terms for the few such elements at once. NaN where even that has not converged."""
    out = special.hyp2f1(1.0, b, c, z)
    bad = np.flatnonzero(~np.isfinite(out))
    if not bad.size:
        return out
    bb, cc, zz = b[bad, None], c[bad, None], z[bad, None]
    acc, last = np.zeros(bad.size), np.ones(bad.size)  # `last`: the term before the chunk (term 0 is 1)
    done = np.zeros(bad.size, dtype=bool)
    n = np.arange(_SERIES_CHUNK, dtype=np.float64)[None, :]
    for start in range(0, _SERIES_MAX_TERMS, _SERIES_CHUNK):
        k = start + n  # term k+1 = term k * z (b+k)/(c+k)
        terms = last[:, None] * np.cumprod(zz * (bb + k) / (cc + k), axis=1)
        acc += np.where(done, 0.0, (last if start == 0 else 0.0) + terms.sum(axis=1))
        last = terms[:, -1]
        q = zz[:, 0] * (bb[:, 0] + start + _SERIES_CHUNK) / (cc[:, 0] + start + _SERIES_CHUNK)
        done |= last * q / (1 - q) <= _SERIES_TOL * acc
        if done.all():
            break
    out[bad] = np.where(done, acc, np.nan)
    return out


def _log_F(t: np.ndarray, K: np.ndarray, e: np.ndarray, m: float, lo: float) -> np.ndarray:
    """log[ 2F1(K, e; K+1; z) / (m+t)^K ], z = (m-lo)/(m+t), by Euler's transformation
    2F1(K, e; K+1; z) = (1-z)^(1-e) 2F1(1, K+1-e; K+1; z): its series has positive terms below z^n (no overflow where
    the original is astronomically large: z near 1 with K large), and 1 - z = (lo+t)/(m+t) has no cancellation."""
    log_mt = np.log(m + t)
    log_1mz = np.log(lo + t) - log_mt
    return (1 - e) * log_1mz + np.log(_hyp2f1_1(K + 1 - e, K + 1, (m - lo) / (m + t))) - K * log_mt


def _log_died_between(x: np.ndarray, tx: np.ndarray, T: np.ndarray, r: float, alpha: float, s: float,
                      beta: float) -> np.ndarray:
    """log[ s/K (F(t_x) - F(T)) ], the "died in (t_x, T]" term without C; -inf where t_x = T."""
    K = r + s + x
    e = np.full(x.shape, s + 1.0) if alpha >= beta else r + x
    m, lo = max(alpha, beta), min(alpha, beta)
    l1, l2 = _log_F(tx, K, e, m, lo), _log_F(T, K, e, m, lo)
    with np.errstate(divide="ignore"):
        gap = np.where(tx < T, np.log(-np.expm1(np.minimum(l2 - l1, 0.0))), -np.inf)
    return np.log(s) - np.log(K) + l1 + gap


def _log_alive_term(x: np.ndarray, T: np.ndarray, r: float, alpha: float, s: float, beta: float) -> np.ndarray:
    """log[ (alpha+T)^-(r+x) (beta+T)^-s ], the "alive at T" term without C."""
    return -(r + x) * np.log(alpha + T) - s * np.log(beta + T)


class _Data:
    """Aggregated histories (in normalised time) and their weights."""

    def __init__(self, x: np.ndarray, tx: np.ndarray, T: np.ndarray) -> None:
        first, self.w = _factorize_rows(x, tx, T)
        self.x, self.tx, self.T = x[first], tx[first], T[first]
        self.total = float(self.w.sum())


def _mean_nll(theta: np.ndarray, d: _Data) -> float:
    r, alpha, s, beta = np.exp(theta)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        ll = (special.gammaln(r + d.x) - special.gammaln(r) + r * np.log(alpha) + s * np.log(beta)
              + np.logaddexp(_log_alive_term(d.x, d.T, r, alpha, s, beta),
                             _log_died_between(d.x, d.tx, d.T, r, alpha, s, beta)))
        value = -(d.w @ ll) / d.total
    return float(value) if np.isfinite(value) else np.inf


def _objective(theta: np.ndarray, d: _Data, penalizer: float) -> tuple[float, np.ndarray]:
    value = _mean_nll(theta, d)
    if not np.isfinite(value):
        return np.inf, np.zeros(4)
    grad = np.empty(4)
    for i in range(4):  # 4 parameters, not a loop over customers
        step = np.zeros(4)
        step[i] = _FD_STEP
        up, down = _mean_nll(theta + step, d), _mean_nll(theta - step, d)
        if not (np.isfinite(up) and np.isfinite(down)):
            return np.inf, np.zeros(4)
        grad[i] = (up - down) / (2 * _FD_STEP)
    return value + penalizer * float(theta @ theta), grad + 2 * penalizer * theta


class ParetoNBDModel:
    """Pareto/NBD model (Schmittlein, Morrison & Colombo 1987) fitted by maximum likelihood.

    ``penalizer`` adds ``penalizer * sum(log(param)**2)`` (alpha and beta in units of the mean age T) to the mean
    negative log-likelihood per customer. Learned: ``params_`` (r, alpha, s, beta; alpha and beta in the input's time
    unit), ``log_likelihood_`` (mean per customer), ``n_customers_``. Same interface as `training.btyd.BetaGeoModel`.
    """

    def __init__(self, penalizer: float = 0.0, max_iter: int = 500) -> None:
        self.penalizer = penalizer
        self.max_iter = max_iter

    def fit(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> ParetoNBDModel:
        """Fit on repeat-purchase counts x, last-purchase times t_x (since the first purchase) and ages T.

        Raises ConvergenceError when no interior optimum is found (e.g. no customer shows any sign of dropping out
        and ``penalizer`` is 0: the dropout rate then runs off to 0)."""
        if self.penalizer < 0:
            raise ValueError("penalizer must be >= 0")
        x, tx, age = (np.atleast_1d(v) for v in _check_history(frequency, recency, T))
        if x.size == 0:
            raise ValueError("no customers to fit")
        if not (x > 0).any():
            raise ValueError("no customer has a repeat purchase (frequency > 0): Pareto/NBD cannot be fitted")
        scale = float(age.mean())
        if scale <= 0:
            raise ValueError("all customers have age T = 0")
        if self.penalizer == 0 and np.array_equal(tx, age):
            # Every history ends in a purchase at T (or is empty): the likelihood is C (alpha+T)^-(r+x)
            # (beta/(beta+T))^s, which only grows as s -> 0. Said here rather than left to where the optimiser stops.
            raise ConvergenceError(
                "Pareto/NBD cannot be fitted without a penalizer: every customer's last purchase is at the end of "
                "their history (recency == T), so the data show no drop-out and the likelihood keeps growing as the "
                "drop-out rate goes to 0 (s -> 0); use a positive penalizer")
        data = _Data(x, tx / scale, age / scale)
        rate = x.sum() / age.sum() * scale  # repeat purchases per unit of normalised time
        x0 = np.log([1.0, 1.0 / rate, 1.0, 1.0])
        theta = _minimise(lambda th: _objective(th, data, self.penalizer), x0, self.max_iter, "Pareto/NBD",
                          ("r", "alpha", "s", "beta"))
        r, alpha, s, beta = np.exp(theta)
        self.params_ = {"r": float(r), "alpha": float(alpha * scale), "s": float(s), "beta": float(beta * scale)}
        # mean log-likelihood per customer in the input's time unit (lambda^x scales by scale^-x)
        self.log_likelihood_ = float(-_mean_nll(theta, data) - np.log(scale) * x.mean())
        self.n_customers_ = int(x.size)
        return self

    def _params(self) -> tuple[float, float, float, float]:
        if not hasattr(self, "params_"):
            raise NotFittedError("ParetoNBDModel is not fitted yet: call fit first")
        p = self.params_
        return p["r"], p["alpha"], p["s"], p["beta"]

    _inputs = staticmethod(history_inputs)

    def _p_alive(self, x: np.ndarray, tx: np.ndarray, age: np.ndarray) -> np.ndarray:
        r, alpha, s, beta = self._params()
        with np.errstate(divide="ignore", over="ignore"):
            log_odds_dead = (_log_died_between(x, tx, age, r, alpha, s, beta)
                             - _log_alive_term(x, age, r, alpha, s, beta))
        return special.expit(-log_odds_dead)

    def probability_alive(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> np.ndarray:
        """P(still alive at T | x, t_x, T); 1 where t_x = T."""
        shape, (x, tx, age) = self._inputs(None, frequency, recency, T)
        return self._p_alive(x, tx, age).reshape(shape)

    def expected_purchases(self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike,
                           T: ArrayLike) -> np.ndarray:
        """Expected number of purchases in the next t time units, given the history."""
        r, alpha, s, beta = self._params()
        shape, (t, x, tx, age) = self._inputs(t, frequency, recency, T)
        L = np.log1p(t / (beta + age))
        if_alive = (r + x) / (alpha + age) * (beta + age) * L * special.exprel(-(s - 1) * L)
        return (self._p_alive(x, tx, age) * if_alive).reshape(shape)


def pareto_outputs(model: ParetoNBDModel, x: ArrayLike, tx: ArrayLike, T: ArrayLike, horizon_days: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(P(alive), expected purchases over the horizon) from BTYD inputs; a missing input counts as zero and T is
    raised to t_x (as for BG/NBD in `training.models`)."""
    x, tx, T = (np.nan_to_num(np.asarray(v, dtype=np.float64), nan=0.0) for v in (x, tx, T))
    T = np.maximum(T, tx)
    return model.probability_alive(x, tx, T), model.expected_purchases(horizon_days, x, tx, T)


def pareto_columns(model: ParetoNBDModel | None, frame: pd.DataFrame, horizon_days: float,
                   inputs: Sequence[str] = PARETO_INPUTS) -> pd.DataFrame:
    """`frame` plus pareto_p_alive and pareto_expected_purchases (float32); `frame` itself when there is no model
    or it lacks the inputs. Rows without history get the model's values for x = t_x = T = 0."""
    if model is None or not set(inputs) <= set(frame.columns):
        return frame
    p_alive, expected = pareto_outputs(
        model, *(frame[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in inputs), horizon_days)
    return frame.assign(**{PARETO_FEATURES[0]: p_alive.astype(np.float32),
                           PARETO_FEATURES[1]: expected.astype(np.float32)})
