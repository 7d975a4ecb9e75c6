"""Buy-till-you-die baselines: BG/NBD purchase counts and Gamma-Gamma spend.

Derived from the published formulas of Fader, Hardie & Lee (2005), "Counting your customers the easy way: an
alternative to the Pareto/NBD model" (BG/NBD) and "RFM and CLV: using iso-value curves for customer base analysis"
(Gamma-Gamma, after Colombo & Jiang 1999). Time is in whatever unit the inputs use (days in persona).

Notation, per customer: x repeat purchases (``frequency``), t_x the time of the last one counted from the first
purchase (``recency``), T the time since the first purchase (the customer's age), m_x the mean value of the x repeat
purchases (``monetary``).

BG/NBD. While alive a customer buys as a Poisson process with rate lambda ~ Gamma(r, alpha); after each repeat purchase
they drop out for good with probability p ~ Beta(a, b). With k = r + x:

* likelihood  L = Gamma(k) alpha^r / Gamma(r) * [ B(a, b+x)/B(a, b) (alpha+T)^-k
                                                 + [x>0] B(a+1, b+x-1)/B(a, b) (alpha+t_x)^-k ]
  (the first term is "still alive at T", the second "dropped out right after the purchase at t_x").
* P(alive at T) = 1 / (1 + [x>0] a/(b+x-1) ((alpha+T)/(alpha+t_x))^k).
* Given alive at T, the posterior is lambda ~ Gamma(k, alpha+T) and p ~ Beta(a, b+x), independent. With
  s = t/(alpha+T):
  - P(no purchase in (T, T+t]) = P(dead) + P(alive) E[exp(-lambda t)] = P(dead) + P(alive) (1+s)^-k.
    (Dropping out needs a purchase, so "alive and no purchase" stays alive; no hypergeometric function needed.)
  - E[purchases in (T, T+t]] = P(alive) E_p[(1 - (1+p s)^-k)/p]       (E[X(t) | lambda, p] = (1 - e^{-lambda p t})/p)
                              = P(alive) c/(a-1) [1 - 2F1(k, a-1; c; -s)],  c = a+b+x-1,
    the paper's eq. (10) after a Pfaff transformation. scipy's hyp2f1 is not accurate there for large x, so the
    bracket is summed here as c L exprel((1-a)L) - (1+s)^(1-a) U with L = log(1+s) and
    U = sum_{n>=1} (a)_{n-1} (c-k)_n / ((c+1)_{n-1} n!) (s/(1+s))^n, a series of the second Pfaff form
    2F1(a-1, c-k; c; s/(1+s)) that has no cancellation at a = 1 and converges fast unless s is large. When
    r > a+b+9 its first terms alternate and cancel, so there E is summed as sum_{j>=1} P(survive j-1 purchases)
    P(N(t) >= j) = sum_j B(a, b+x+j-1)/B(a, b+x) I_{s/(1+s)}(j, k), all terms positive. Both agree with adaptive
    quadrature of E_p[...] to ~1e-11 over a, b in [0.05, 1e4], r in [0.05, 50], x up to 5000, s up to 300.

Gamma-Gamma. Each transaction value z ~ Gamma(p, nu) (shape, rate), nu ~ Gamma(q, v) across customers (``v`` is the
rate of that prior, gamma in the paper). The mean spend E[z | nu] = p/nu is independent of the purchase process.

* likelihood of m_x:  Gamma(px+q) / (Gamma(px) Gamma(q)) v^q m_x^(px-1) x^(px) / (v + x m_x)^(px+q).
* E[p/nu | x, m_x] = p (v + x m_x) / (px + q - 1), which is p v/(q-1), the population mean, when x = 0.

Both models are fitted by maximum likelihood with L-BFGS-B on the log-parameters and analytic gradients. Time (alpha)
and money (v) are first divided by the data's mean age / mean monetary value, so the optimiser sees well-scaled numbers
and ``penalizer`` (an L2 penalty on those log-parameters, added to the mean negative log-likelihood per customer) does
not depend on the units. Identical (x, t_x, T) histories are aggregated first; the likelihood is a weighted sum.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import optimize, special
from sklearn.exceptions import NotFittedError
from threadpoolctl import ThreadpoolController

# The feature columns every buy-till-you-die model reads (features/transactions.py writes them): repeat purchase
# days, days from the first to the last purchase day, days from the first purchase day to the snapshot.
BTYD_INPUTS = ("tx_btyd_frequency", "tx_btyd_recency", "tx_btyd_T")

__all__ = ["BetaGeoModel", "ConvergenceError", "GammaGammaModel", "expected_value"]

_LOG_BOUND = 20.0  # log-parameters (in normalised units) are kept within +-20 during the search
_LOG_DIVERGED = 15.0  # an optimum beyond +-15 (a factor 3e6 off the data's scale): a parameter ran off to 0 or inf
_SERIES_TOL = 1e-13  # relative accuracy of the expected-purchases series
_SERIES_MAX_TERMS = 200_000


_THREADPOOLS: list[ThreadpoolController] = []  # found once: scanning the loaded libraries takes ~30 ms


def _one_blas_thread():
    if not _THREADPOOLS:
        _THREADPOOLS.append(ThreadpoolController())
    return _THREADPOOLS[0].limit(limits=1, user_api="blas")


class ConvergenceError(RuntimeError):
    """The maximum-likelihood optimiser did not converge to an interior optimum."""


# ----------------------------------------------------------------------------------------------------------- inputs
def _as_array(name: str, values: ArrayLike) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from None
    if arr.ndim > 1:
        raise ValueError(f"{name} must be a scalar or 1-D array, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN ({int(np.isnan(arr).sum())} values)")
    if np.isinf(arr).any():
        raise ValueError(f"{name} contains infinite values")
    if (arr < 0).any():
        raise ValueError(f"{name} contains negative values (min {arr.min():g})")
    return arr


def _broadcast(**arrays: np.ndarray) -> list[np.ndarray]:
    try:
        return list(np.broadcast_arrays(*arrays.values()))
    except ValueError:
        shapes = ", ".join(f"{k}{v.shape}" for k, v in arrays.items())
        raise ValueError(f"inputs have incompatible lengths: {shapes}") from None


def _check_history(frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> tuple[np.ndarray, ...]:
    """Validated float arrays x, t_x, T (broadcast to one shape)."""
    x = _as_array("frequency", frequency)
    tx = _as_array("recency", recency)
    age = _as_array("T", T)
    x, tx, age = _broadcast(frequency=x, recency=tx, T=age)
    if (x != np.floor(x)).any():
        raise ValueError("frequency must be whole numbers of repeat purchases")
    if (tx > age).any():
        raise ValueError(f"recency exceeds T for {int((tx > age).sum())} customers (the last purchase must be "
                         "within the customer's age)")
    if ((x == 0) & (tx > 0)).any():
        raise ValueError(f"recency must be 0 where frequency is 0 ({int(((x == 0) & (tx > 0)).sum())} customers "
                         "have no repeat purchase but a positive recency)")
    return x, tx, age


def history_inputs(t: ArrayLike | None, frequency: ArrayLike, recency: ArrayLike,
                   T: ArrayLike) -> tuple[tuple[int, ...], list[np.ndarray]]:
    """Validated, broadcast and flattened (t,) x, t_x, T, with the shape to give results back in (the inputs of
    every buy-till-you-die model's predictions: BG/NBD here, Pareto/NBD in training/pareto.py)."""
    arrays = dict(zip(("frequency", "recency", "T"), _check_history(frequency, recency, T)))
    if t is not None:
        arrays = {"t": _as_array("t", t), **arrays}
    flat = _broadcast(**arrays)
    return flat[0].shape, [np.atleast_1d(v).ravel() for v in flat]


def _factorize_rows(*columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the first row of each distinct tuple, and how many rows share it."""
    key = np.zeros(columns[0].shape[0], dtype=np.int64)
    for col in columns:
        codes, uniques = pd.factorize(col)
        key, _ = pd.factorize(key * len(uniques) + codes)
    counts = np.bincount(key)
    # factorize numbers tuples in order of first appearance, so a first occurrence is where the running max grows
    seen_max = np.maximum.accumulate(key)
    first = np.flatnonzero(np.r_[True, key[1:] > seen_max[:-1]])
    return first, counts.astype(np.float64)


def _minimise(objective, x0: np.ndarray, max_iter: int, model: str, names: tuple[str, ...]) -> np.ndarray:
    """L-BFGS-B on the log-parameters; raises ConvergenceError unless an interior optimum is reached."""
    bounds = [(-_LOG_BOUND, _LOG_BOUND)] * len(x0)
    # one BLAS thread: the optimiser's tiny matrix work and the dot products gain nothing from threads, and on a busy
    # machine OpenBLAS's thread hand-offs made a 20k-customer fit 80x slower
    with _one_blas_thread(), np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        res = optimize.minimize(objective, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                                options={"maxiter": max_iter, "ftol": 1e-12, "gtol": 1e-7})
        if not res.success and np.isfinite(res.fun):
            # L-BFGS-B often stops on a line search at the optimum's numerical floor: polish with BFGS.
            res2 = optimize.minimize(objective, res.x, jac=True, method="BFGS",
                                     options={"maxiter": max_iter, "gtol": 1e-6})
            if np.isfinite(res2.fun) and res2.fun <= res.fun + 1e-12:
                res2.success = res2.success or np.max(np.abs(res2.jac)) < 1e-5
                res = res2
    if not res.success or not np.all(np.isfinite(res.x)):
        raise ConvergenceError(f"{model} fit did not converge after {res.nit} iterations: {res.message}")
    at_bound = [n for n, v in zip(names, res.x) if abs(v) >= _LOG_DIVERGED]
    if at_bound:
        raise ConvergenceError(f"{model} fit diverged: {', '.join(at_bound)} ran off to 0 or infinity (the data "
                               "do not identify the model; try a positive penalizer)")
    return res.x


# ------------------------------------------------------------------------------------------------------------ BG/NBD
class _BGData:
    """Aggregated histories in normalised time: x = 0 rows by T, x > 0 rows by (x, t_x, T)."""

    def __init__(self, x: np.ndarray, tx: np.ndarray, T: np.ndarray) -> None:
        first, w = _factorize_rows(x, tx, T)
        x, tx, T = x[first], tx[first], T[first]
        self.total = float(w.sum())
        zero = x == 0
        self.T0, self.w0 = T[zero], w[zero]
        pos = ~zero
        self.xu, self.ix = np.unique(x[pos], return_inverse=True)
        self.tx, self.T, self.w = tx[pos], T[pos], w[pos]


def _bg_objective(theta: np.ndarray, d: _BGData, penalizer: float) -> tuple[float, np.ndarray]:
    r, alpha, a, b = np.exp(theta)
    ll = 0.0
    g = np.zeros(4)  # d LL / d (r, alpha, a, b)
    # customers with no repeat purchase: LL = r log(alpha/(alpha+T)); they carry no information on a, b
    if d.w0.size:
        la0 = np.log1p(d.T0 / alpha)
        ll -= r * (d.w0 @ la0)
        g[0] -= d.w0 @ la0
        g[1] += r * (d.w0 @ (d.T0 / (alpha * (alpha + d.T0))))
    if d.w.size:
        xu = d.xu
        n_x = np.bincount(d.ix, weights=d.w, minlength=xu.size)
        k = (r + xu)[d.ix]
        lA, lB = np.log(alpha + d.T), np.log(alpha + d.tx)
        u1 = special.betaln(a, b + xu)[d.ix] - k * lA  # alive at T
        u2 = special.betaln(a + 1, b + xu - 1)[d.ix] - k * lB  # dropped out after t_x
        diff = u2 - u1
        lse = np.maximum(u1, u2) + np.log1p(np.exp(-np.abs(diff)))
        w2 = special.expit(diff)
        w1 = 1.0 - w2
        common = special.gammaln(r + xu) - special.gammaln(r) + r * np.log(alpha) - special.betaln(a, b)
        ll += n_x @ common + d.w @ lse
        g[0] += n_x @ (special.digamma(r + xu) - special.digamma(r) + np.log(alpha)) - d.w @ (w1 * lA + w2 * lB)
        g[1] += r / alpha * d.w.sum() - d.w @ (k * (w1 / (alpha + d.T) + w2 / (alpha + d.tx)))
        s1 = np.bincount(d.ix, weights=d.w * w1, minlength=xu.size)
        s2 = n_x - s1
        dab = special.digamma(a + b + xu)
        g[2] += (-(special.digamma(a) - special.digamma(a + b)) * n_x.sum()
                 + s1 @ (special.digamma(a) - dab) + s2 @ (special.digamma(a + 1) - dab))
        g[3] += (-(special.digamma(b) - special.digamma(a + b)) * n_x.sum()
                 + s1 @ (special.digamma(b + xu) - dab) + s2 @ (special.digamma(b + xu - 1) - dab))
    value = -ll / d.total + penalizer * (theta @ theta)
    grad = -g * np.exp(theta) / d.total + 2 * penalizer * theta
    if not np.isfinite(value):
        return np.inf, np.zeros(4)
    return float(value), grad


def _alive_log_odds_dead(x, tx, T, r, alpha, a, b) -> np.ndarray:
    """log P(dead)/P(alive) at T; -inf for x = 0 (no repeat purchase, no chance yet to drop out)."""
    out = np.full(x.shape, -np.inf)
    pos = x > 0
    xp = x[pos]
    out[pos] = (np.log(a) - np.log(b + xp - 1)
                + (r + xp) * (np.log(alpha + T[pos]) - np.log(alpha + tx[pos])))
    return out


def _purchases_if_alive(t: np.ndarray, x: np.ndarray, T: np.ndarray, r: float, alpha: float, a: float,
                        b: float) -> np.ndarray:
    """E_p[(1 - (1+p s)^-k)/p] for p ~ Beta(a, b+x), k = r+x, s = t/(alpha+T): expected purchases in the next t
    given alive now (see the module docstring)."""
    s = t / (alpha + T)
    if a + b - 1 - r >= -10:
        return _pfaff_series(s, x, r, a, b)
    # r >> a + b: the Pfaff series alternates with terms ~ 2^(r-a-b) and loses precision; sum positive terms instead
    return _geometric_nbd_series(s, x, r, a, b)


def _active_sum(init: dict[str, np.ndarray], slowness: np.ndarray, step, done, what: str) -> np.ndarray:
    """Sum a series for every element at once (no per-customer loop), returning the converged ``acc``.

    Elements are sorted by ``slowness`` (slowest first) so that the unconverged ones form a prefix: each term works on
    views of that prefix, which shrinks as the fast elements converge. ``step`` must update the state in place;
    convergence is checked at the first terms and then every fourth (a few extra terms do no harm)."""
    order = np.argsort(-slowness, kind="stable")
    state = {k: v[order].copy() for k, v in init.items()}
    n_out = order.size
    out = np.zeros(n_out)
    converged = np.zeros(n_out, dtype=bool)
    m, n = n_out, 1
    while m:
        view = {k: v[:m] for k, v in state.items()}
        fin = done(view, n) if (n == 1 or n % 4 == 0) else None
        if fin is not None and fin.any():
            # only elements converging now: one that converged earlier but still sits in the prefix (a slower one
            # after it keeps it there) keeps the sum it had then, so its value never depends on its batch-mates
            fin &= ~converged[:m]
            out[:m][fin] = view["acc"][fin]
            converged[:m] |= fin
            pending = np.flatnonzero(~converged[:m])
            m = int(pending[-1]) + 1 if pending.size else 0
            if not m:
                break
            view = {k: v[:m] for k, v in state.items()}
        if n >= _SERIES_MAX_TERMS:
            raise RuntimeError(f"{what} did not converge for {int((~converged[:m]).sum())} customers after {n} terms "
                               "(the horizon t is extremely long relative to alpha + T)")
        step(view, n)
        n += 1
    result = np.empty(n_out)
    result[order] = out
    return result


def _pfaff_series(s: np.ndarray, x: np.ndarray, r: float, a: float, b: float) -> np.ndarray:
    """c L exprel((1-a)L) - (1+s)^(1-a) U, U = sum_{n>=1} (a)_{n-1} (beta)_n / ((c+1)_{n-1} n!) z^n,
    with L = log(1+s), z = s/(1+s), c = a+b+x-1, beta = c - (r+x) = a+b-1-r."""
    L = np.log1p(s)
    c = a + b + x - 1
    beta = a + b - 1 - r
    z = s / (1 + s)
    head = c * L * special.exprel((1 - a) * L)
    shrink = np.exp((1 - a) * L)
    if beta == 0.0:  # U vanishes
        return np.maximum(head, 0.0)

    def step(st, n):  # term n -> n+1
        st["u"] *= (a + n - 1) * (beta + n) * st["z"] / ((st["c"] + n) * (n + 1))
        st["acc"] += st["u"]

    def done(st, n):  # bound the rest by a geometric series in the larger of the term ratio and its limit z
        ratio = (a + n - 1) * (beta + n) * st["z"] / ((st["c"] + n) * (n + 1))
        q = np.maximum(st["z"], np.abs(ratio))
        with np.errstate(divide="ignore", invalid="ignore"):
            rest = np.abs(st["u"]) * st["shrink"] * q / (1 - q)
            now = np.abs(st["head"] - st["shrink"] * st["acc"])
            ok = (q < 1) & (n > abs(beta) + 1) & (rest <= _SERIES_TOL * now)
        return ok | (st["u"] == 0)

    u0 = beta * z
    init = {"u": u0, "acc": u0.copy(), "z": z, "c": c, "head": head, "shrink": shrink}
    U = _active_sum(init, z, step, done, "expected purchases")
    return np.maximum(head - shrink * U, 0.0)


def _geometric_nbd_series(s: np.ndarray, x: np.ndarray, r: float, a: float, b: float) -> np.ndarray:
    """sum_{j>=1} P(survive j-1 purchases) P(N >= j): E_p[(1-p)^(j-1)] = B(a, b+x+j-1)/B(a, b+x) and, with
    lambda ~ Gamma(r+x, alpha+T), N(t) is negative binomial so P(N >= j) = I_z(j, r+x), z = s/(1+s)."""
    k = r + x
    z = s / (1 + s)

    def step(st, n):  # term n -> n+1
        st["rho"] *= (st["bx"] + n - 1) / (a + st["bx"] + n - 1)
        st["tail"][:] = special.betainc(n + 1, st["k"], st["z"])
        st["acc"] += st["rho"] * st["tail"]

    def done(st, n):
        nxt = special.betainc(n + 1, st["k"], st["z"])
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(st["tail"] > 0, nxt / st["tail"], 0.0)
            rest = st["rho"] * st["tail"] * q / (1 - q)
            ok = (n > st["k"] * st["s"]) & (q < 1) & (rest <= _SERIES_TOL * st["acc"])
        return ok | (st["tail"] == 0)

    first = special.betainc(1.0, k, z)  # P(N >= 1)
    init = {"rho": np.ones_like(s), "tail": first, "acc": first.copy(), "bx": b + x, "k": k, "z": z, "s": s}
    return _active_sum(init, k * s, step, done, "expected purchases")


class BetaGeoModel:
    """BG/NBD model (Fader, Hardie & Lee 2005) fitted by maximum likelihood.

    ``penalizer`` adds ``penalizer * sum(log(param)**2)`` (alpha in units of the mean age T) to the mean negative
    log-likelihood per customer. Learned: ``params_`` (r, alpha, a, b; alpha in the input's time unit),
    ``log_likelihood_`` (mean per customer), ``n_customers_``.
    """

    def __init__(self, penalizer: float = 0.0, max_iter: int = 500) -> None:
        self.penalizer = penalizer
        self.max_iter = max_iter

    def fit(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> BetaGeoModel:
        """Fit on repeat-purchase counts x, last-purchase times t_x (since the first purchase) and ages T.

        Raises ConvergenceError when no interior optimum is found, and up front, without optimising, when every repeat
        buyer's last purchase is at T and ``penalizer`` is 0 (no finite maximum exists: see the check below)."""
        if self.penalizer < 0:
            raise ValueError("penalizer must be >= 0")
        x, tx, age = (np.atleast_1d(v) for v in _check_history(frequency, recency, T))
        if x.size == 0:
            raise ValueError("no customers to fit")
        if not (x > 0).any():
            raise ValueError("no customer has a repeat purchase (frequency > 0): BG/NBD cannot be fitted")
        scale = float(age.mean())
        if scale <= 0:
            raise ValueError("all customers have age T = 0")
        repeat = x > 0
        if self.penalizer == 0 and np.array_equal(tx[repeat], age[repeat]):
            # With t_x = T the two likelihood terms share (alpha+T)^-k and sum to B(a, b+x-1)/B(a, b) = E[(1-p)^(x-1)]:
            # below 1 for any finite (a, b), approaching 1 only as p -> 0. Said here rather than left to the optimiser,
            # whose stopping point along that ridge (and so whether it looks "diverged") varies with the BLAS kernel.
            raise ConvergenceError(
                f"BG/NBD cannot be fitted without a penalizer: all {int(repeat.sum())} customers with a repeat "
                "purchase bought last at the end of their history (recency == T), so the data show no drop-out and "
                "the likelihood keeps growing as the drop-out probability goes to 0 (a -> 0 or b -> infinity); "
                "use a positive penalizer")
        data = _BGData(x, tx / scale, age / scale)
        rate = x.sum() / age.sum() * scale  # repeat purchases per unit of normalised time
        x0 = np.log([1.0, 1.0 / rate, 1.0, 1.0])
        theta = _minimise(lambda th: _bg_objective(th, data, self.penalizer), x0, self.max_iter, "BG/NBD",
                          ("r", "alpha", "a", "b"))
        r, alpha, a, b = np.exp(theta)
        self.params_ = {"r": float(r), "alpha": float(alpha * scale), "a": float(a), "b": float(b)}
        # mean log-likelihood per customer in the input's time unit (lambda^x scales by scale^-x)
        with _one_blas_thread():
            self.log_likelihood_ = float(-_bg_objective(theta, data, 0.0)[0] - np.log(scale) * x.mean())
        self.n_customers_ = int(x.size)
        return self

    def _params(self) -> tuple[float, float, float, float]:
        if not hasattr(self, "params_"):
            raise NotFittedError("BetaGeoModel is not fitted yet: call fit first")
        p = self.params_
        return p["r"], p["alpha"], p["a"], p["b"]

    _inputs = staticmethod(history_inputs)

    def probability_alive(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> np.ndarray:
        """P(still alive at T | x, t_x, T); 1 for x = 0 (dropping out needs a repeat purchase)."""
        r, alpha, a, b = self._params()
        shape, (x, tx, age) = self._inputs(None, frequency, recency, T)
        return special.expit(-_alive_log_odds_dead(x, tx, age, r, alpha, a, b)).reshape(shape)

    def expected_purchases(self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike,
                           T: ArrayLike) -> np.ndarray:
        """Expected number of purchases in the next t time units, given the history."""
        r, alpha, a, b = self._params()
        shape, (t, x, tx, age) = self._inputs(t, frequency, recency, T)
        p_alive = special.expit(-_alive_log_odds_dead(x, tx, age, r, alpha, a, b))
        return (p_alive * _purchases_if_alive(t, x, age, r, alpha, a, b)).reshape(shape)

    def probability_no_purchase(self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike,
                                T: ArrayLike) -> np.ndarray:
        """P(no purchase in the next t time units | history) = P(dead) + P(alive) ((alpha+T)/(alpha+T+t))^(r+x)."""
        r, alpha, a, b = self._params()
        shape, (t, x, tx, age) = self._inputs(t, frequency, recency, T)
        log_odds = _alive_log_odds_dead(x, tx, age, r, alpha, a, b)
        none_if_alive = np.exp(-(r + x) * np.log1p(t / (alpha + age)))
        p0 = special.expit(log_odds) + special.expit(-log_odds) * none_if_alive
        return np.clip(p0, 0.0, 1.0).reshape(shape)


# ------------------------------------------------------------------------------------------------------- Gamma-Gamma
def _gg_objective(theta: np.ndarray, xu: np.ndarray, n_x: np.ndarray, x: np.ndarray, m: np.ndarray,
                  const: tuple[float, float, float], penalizer: float) -> tuple[float, np.ndarray]:
    """Mean negative log-likelihood (and gradient in log-parameters) of Gamma-Gamma; m in normalised money."""
    p, q, v = np.exp(theta)
    sum_x_logxm, sum_logm, total = const
    lv = np.log(v + x * m)
    pxq = p * xu + q
    ll = (n_x @ (special.gammaln(pxq) - special.gammaln(p * xu)) - total * special.gammaln(q)
          + total * q * np.log(v) + p * sum_x_logxm - sum_logm - p * (x @ lv) - q * lv.sum())
    dig = special.digamma(pxq)
    gp = n_x @ (xu * (dig - special.digamma(p * xu))) + sum_x_logxm - x @ lv
    gq = n_x @ dig - total * special.digamma(q) + total * np.log(v) - lv.sum()
    inv = 1.0 / (v + x * m)
    gv = total * q / v - p * (x @ inv) - q * inv.sum()
    value = -ll / total + penalizer * (theta @ theta)
    grad = -np.array([gp * p, gq * q, gv * v]) / total + 2 * penalizer * theta
    if not np.isfinite(value):
        return np.inf, np.zeros(3)
    return float(value), grad


class GammaGammaModel:
    """Gamma-Gamma model of the mean transaction value (Colombo & Jiang 1999; Fader, Hardie & Lee 2005).

    ``penalizer`` adds ``penalizer * sum(log(param)**2)`` (v in units of the mean monetary value) to the mean negative
    log-likelihood per customer. Learned: ``params_`` (p, q, v; v in the input's money unit), ``log_likelihood_``.
    """

    def __init__(self, penalizer: float = 0.0) -> None:
        self.penalizer = penalizer

    def fit(self, frequency: ArrayLike, monetary: ArrayLike) -> GammaGammaModel:
        """Fit on repeat buyers only: frequency x > 0 and their mean repeat-transaction value m_x > 0."""
        if self.penalizer < 0:
            raise ValueError("penalizer must be >= 0")
        x = np.atleast_1d(_as_array("frequency", frequency))
        m = np.atleast_1d(_as_array("monetary", monetary))
        x, m = _broadcast(frequency=x, monetary=m)
        if x.size == 0:
            raise ValueError("no customers to fit")
        if (x != np.floor(x)).any():
            raise ValueError("frequency must be whole numbers of repeat purchases")
        if (x == 0).any():
            raise ValueError(f"GammaGammaModel.fit takes repeat buyers only: {int((x == 0).sum())} customers have "
                             "frequency == 0 (filter them out first)")
        if (m == 0).any():
            raise ValueError(f"monetary must be > 0 for repeat buyers ({int((m == 0).sum())} zeros)")
        scale = float(m.mean())
        ms = m / scale
        xu, ix = np.unique(x, return_inverse=True)
        n_x = np.bincount(ix).astype(np.float64)
        const = (float(x @ (np.log(x) + np.log(ms))), float(np.log(ms).sum()), float(x.size))
        x0 = np.log([1.0, 2.0, 1.0])
        theta = _minimise(lambda th: _gg_objective(th, xu, n_x, x, ms, const, self.penalizer), x0, 500,
                          "Gamma-Gamma", ("p", "q", "v"))
        p, q, v = np.exp(theta)
        self.params_ = {"p": float(p), "q": float(q), "v": float(v * scale)}
        with _one_blas_thread():
            self.log_likelihood_ = float(-_gg_objective(theta, xu, n_x, x, ms, const, 0.0)[0] - np.log(scale))
        self.n_customers_ = int(x.size)
        if q <= 1:
            warnings.warn(f"Gamma-Gamma q = {q:.3g} <= 1: the population mean spend is infinite, so "
                          "expected_average_value fails for customers without repeat purchases", RuntimeWarning,
                          stacklevel=2)
        return self

    def expected_average_value(self, frequency: ArrayLike, monetary: ArrayLike) -> np.ndarray:
        """E[mean transaction value | x, m_x] = p (v + x m_x)/(p x + q - 1); the population mean p v/(q-1) at x = 0."""
        if not hasattr(self, "params_"):
            raise NotFittedError("GammaGammaModel is not fitted yet: call fit first")
        p, q, v = self.params_["p"], self.params_["q"], self.params_["v"]
        x, m = _broadcast(frequency=_as_array("frequency", frequency), monetary=_as_array("monetary", monetary))
        if (x != np.floor(x)).any():
            raise ValueError("frequency must be whole numbers of repeat purchases")
        if ((x > 0) & (m == 0)).any():
            raise ValueError("monetary must be > 0 where frequency > 0")
        denom = p * x + q - 1
        if (denom <= 0).any():
            raise ValueError(f"expected value is infinite for {int((denom <= 0).sum())} customers: q = {q:.3g} <= 1 "
                             "gives an infinite population mean spend")
        return p * (v + x * np.where(x > 0, m, 0.0)) / denom


def expected_value(bg: BetaGeoModel, gg: GammaGammaModel, t: float, frequency: ArrayLike, recency: ArrayLike,
                   T: ArrayLike, monetary: ArrayLike) -> np.ndarray:
    """Expected spend in the next t time units (no discounting): E[purchases] x E[mean value]."""
    return bg.expected_purchases(t, frequency, recency, T) * gg.expected_average_value(frequency, monetary)
