"""BG/NBD and Gamma-Gamma: parameter recovery, predictions against simulation and quadrature, input errors.

Everything is simulated from the models' own generative stories (time in days), so "truth" is known exactly.
"""

import numpy as np
import pytest
from scipy import integrate, optimize, special
from sklearn.exceptions import NotFittedError

from training import btyd
from training.btyd import (BetaGeoModel, ConvergenceError, GammaGammaModel, _BGData, _bg_objective, _gg_objective,
                           expected_value)

TRUE_BG = {"r": 0.25, "alpha": 20.0, "a": 0.8, "b": 2.5}  # ~4.6 purchases a year while alive; ~24% drop per purchase
TRUE_GG = {"p": 6.0, "q": 4.0, "v": 15.0}  # population mean spend p v / (q - 1) = 30
WINDOW, HOLDOUT = 365.0, 90.0


def simulate_bgnbd(n: int, params: dict, rng: np.random.Generator, window: float = WINDOW,
                   holdout: float = HOLDOUT, T: np.ndarray | None = None) -> dict:
    """Customers whose first purchase falls uniformly in the window (or at given ages T), observed at its end.

    Repeat purchases are Poisson(lambda) until the J-th, after which the customer is gone (J ~ Geometric(p)). Given
    N(T) = n events in (0, T], x = min(J, n) and t_x is the x-th of n uniform order statistics, i.e. T * Beta(x, n-x+1).
    """
    lam = rng.gamma(params["r"], 1 / params["alpha"], n)
    p = rng.beta(params["a"], params["b"], n)
    T = rng.uniform(0, window, n) if T is None else np.broadcast_to(np.asarray(T, dtype=float), (n,)).copy()
    J = rng.geometric(p)
    N = rng.poisson(lam * T)
    x = np.minimum(J, N)
    tx = np.where(x > 0, T * rng.beta(np.maximum(x, 1), N - x + 1), 0.0)
    alive = J > N
    future = np.where(alive, np.minimum(J - N, rng.poisson(lam * holdout)), 0)
    return {"x": x.astype(float), "tx": tx, "T": T, "alive": alive, "future": future}


def simulate_spend(x: np.ndarray, params: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mean of x transaction values z ~ Gamma(p, rate nu), nu ~ Gamma(q, rate v); also the true mean spend p/nu."""
    nu = rng.gamma(params["q"], 1 / params["v"], x.shape[0])
    return rng.gamma(params["p"] * x, 1 / nu) / x, params["p"] / nu


def model_with(**params) -> BetaGeoModel:
    model = BetaGeoModel()
    model.params_ = {k: float(v) for k, v in params.items()}
    return model


def purchases_by_quadrature(model: BetaGeoModel, t: float, x: float, tx: float, T: float) -> float:
    """P(alive) * E_p[(1 - (1 + p s)^-(r+x)) / p], p ~ Beta(a, b+x), s = t/(alpha+T), by adaptive quadrature."""
    r, alpha, a, b = (model.params_[k] for k in ("r", "alpha", "a", "b"))
    s, k, bx = t / (alpha + T), r + x, b + x

    def h(p):
        return -np.expm1(-k * np.log1p(p * s)) / p if p > 0 else k * s

    cut = min(0.5, 10 / (a + bx))
    left = integrate.quad(lambda p: h(p) * (1 - p) ** (bx - 1), 0, cut, weight="alg", wvar=(a - 1, 0),
                          epsabs=0, epsrel=1e-11, limit=400)[0]
    right = integrate.quad(lambda p: h(p) * p ** (a - 1), cut, 1, weight="alg", wvar=(0, bx - 1),
                           epsabs=0, epsrel=1e-11, limit=400)[0]
    p_alive = 1.0 if x == 0 else 1 / (1 + a / (b + x - 1) * ((alpha + T) / (alpha + tx)) ** k)
    return p_alive * (left + right) / np.exp(special.betaln(a, bx))


def assert_calibrated(predicted: np.ndarray, observed: np.ndarray, groups: np.ndarray, what: str) -> None:
    """Within each group, the mean prediction matches the mean outcome to 4 standard errors (+ a small slack)."""
    for g in np.unique(groups):
        sel = groups == g
        se = observed[sel].std() / np.sqrt(sel.sum())
        gap = abs(predicted[sel].mean() - observed[sel].mean())
        assert gap <= 4 * se + 0.004, (what, g, sel.sum(), predicted[sel].mean(), observed[sel].mean(), se)


@pytest.fixture(scope="module")
def sample() -> dict:
    return simulate_bgnbd(20_000, TRUE_BG, np.random.default_rng(11))


@pytest.fixture(scope="module")
def bg(sample) -> BetaGeoModel:
    return BetaGeoModel().fit(sample["x"], sample["tx"], sample["T"])


@pytest.fixture(scope="module")
def spend(sample) -> dict:
    rng = np.random.default_rng(12)
    extra = simulate_bgnbd(40_000, TRUE_BG, rng)  # more repeat buyers: Gamma-Gamma needs them
    x = np.concatenate([sample["x"], extra["x"]])
    x = x[x > 0]
    m, truth = simulate_spend(x, TRUE_GG, rng)
    return {"x": x, "m": m, "truth": truth}


@pytest.fixture(scope="module")
def gg(spend) -> GammaGammaModel:
    return GammaGammaModel().fit(spend["x"], spend["m"])


# ------------------------------------------------------------------------------------------------------------ BG/NBD
def test_bgnbd_recovers_simulated_parameters(bg):
    for name, tol in {"r": 0.1, "alpha": 0.1, "a": 0.2, "b": 0.2}.items():
        assert bg.params_[name] == pytest.approx(TRUE_BG[name], rel=tol), name
    assert bg.n_customers_ == 20_000 and np.isfinite(bg.log_likelihood_)


def test_likelihood_matches_per_customer_formula_and_gradient(sample):
    """The aggregated, split likelihood equals the paper's formula summed customer by customer; gradient is exact."""
    x, tx, T = sample["x"][:3000], sample["tx"][:3000], sample["T"][:3000]
    T = np.round(T)  # whole days, so aggregation merges rows
    tx = np.minimum(np.round(tx), T)
    r, alpha, a, b = 0.3, 25.0, 0.7, 2.0
    common = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha) - special.betaln(a, b)
    alive = special.betaln(a, b + x) - (r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        dead = np.where(x > 0, special.betaln(a + 1, b + x - 1) - (r + x) * np.log(alpha + tx), -np.inf)
    naive = np.mean(common + np.logaddexp(alive, dead))
    scale = T.mean()
    data = _BGData(x, tx / scale, T / scale)
    assert data.w.size + data.w0.size < x.size  # something was aggregated
    theta = np.log([r, alpha / scale, a, b])
    value, _ = _bg_objective(theta, data, 0.0)
    assert -value - np.log(scale) * x.mean() == pytest.approx(naive, rel=1e-10)
    grad = _bg_objective(theta, data, 0.01)[1]
    err = optimize.check_grad(lambda th: _bg_objective(th, data, 0.01)[0],
                              lambda th: _bg_objective(th, data, 0.01)[1], theta)
    assert err < 1e-5 * np.linalg.norm(grad) + 1e-7


def test_fit_does_not_depend_on_time_unit(sample, bg):
    weeks = BetaGeoModel().fit(sample["x"], sample["tx"] / 7, sample["T"] / 7)
    assert weeks.params_["alpha"] == pytest.approx(bg.params_["alpha"] / 7, rel=1e-4)
    for name in ("r", "a", "b"):
        assert weeks.params_[name] == pytest.approx(bg.params_[name], rel=1e-4)
    x, tx, T = sample["x"][:50], sample["tx"][:50], sample["T"][:50]
    np.testing.assert_allclose(weeks.expected_purchases(30 / 7, x, tx / 7, T / 7),
                               bg.expected_purchases(30, x, tx, T), rtol=1e-3)


def test_expected_purchases_match_the_holdout(sample, bg):
    predicted = bg.expected_purchases(HOLDOUT, sample["x"], sample["tx"], sample["T"])
    actual = sample["future"]
    assert predicted.mean() == pytest.approx(actual.mean(), rel=0.05)
    buckets = np.digitize(sample["x"], [1, 2, 4, 8])
    assert_calibrated(predicted, actual, buckets, "holdout purchases by frequency")


def test_predictions_match_monte_carlo_from_fitted_parameters(bg):
    """Simulate a fresh population from the fitted model: P(alive), P(no purchase) and E[purchases] must match the
    simulated outcomes in every group of customers defined by what was observed."""
    sim = simulate_bgnbd(300_000, bg.params_, np.random.default_rng(21))
    x, tx, T = sim["x"], sim["tx"], sim["T"]
    p0 = bg.probability_no_purchase(HOLDOUT, x, tx, T)
    assert ((p0 >= 0) & (p0 <= 1)).all()
    by_frequency = np.digitize(x, [1, 2, 4, 8])
    by_gap = np.digitize(T - tx, [30, 90, 180])
    by_decile = np.digitize(p0, np.quantile(p0, np.linspace(0.1, 0.9, 9)))
    none = (sim["future"] == 0).astype(float)
    for groups, name in ((by_frequency * 4 + by_gap, "frequency x gap"), (by_decile, "predicted decile")):
        assert_calibrated(p0, none, groups, f"P(no purchase) by {name}")
    assert_calibrated(bg.probability_alive(x, tx, T), sim["alive"].astype(float), by_frequency * 4 + by_gap,
                      "P(alive)")
    assert_calibrated(bg.expected_purchases(HOLDOUT, x, tx, T), sim["future"].astype(float), by_frequency,
                      "E[purchases]")


def test_probability_no_purchase_exact_conditioning(bg):
    """Everyone joins at T = 200: the customers with x = 0 share one history, so no binning is involved."""
    sim = simulate_bgnbd(200_000, bg.params_, np.random.default_rng(5), T=200.0)
    zero = sim["x"] == 0
    empirical = (sim["future"][zero] == 0).mean()
    se = np.sqrt(empirical * (1 - empirical) / zero.sum())
    assert bg.probability_no_purchase(HOLDOUT, 0, 0, 200.0) == pytest.approx(empirical, abs=4 * se)


def test_expected_purchases_match_quadrature_on_both_series():
    cases = [(90, 0, 0, 0), (90, 1, 10, 300), (30, 12, 340, 365), (365, 300, 700, 730), (2000, 3, 5, 5),
             (7, 40, 100, 400)]
    for params in ({"r": 0.25, "alpha": 20.0, "a": 0.8, "b": 2.5},  # Pfaff series
                   {"r": 0.6, "alpha": 5.0, "a": 1.0, "b": 0.3},  # a = 1 exactly: no 0/0
                   {"r": 3.0, "alpha": 80.0, "a": 4.0, "b": 200.0},
                   {"r": 40.0, "alpha": 3000.0, "a": 0.5, "b": 1.5}):  # r >> a + b: positive-term series
        model = model_with(**params)
        t, x, tx, T = (np.array(c, dtype=float) for c in zip(*cases))
        got = model.expected_purchases(t, x, tx, T)
        want = [purchases_by_quadrature(model, *c) for c in cases]
        np.testing.assert_allclose(got, want, rtol=1e-8, err_msg=str(params))


def test_expected_purchases_continuous_in_a_around_one():
    args = (np.array([30.0, 365.0]), np.array([0.0, 5.0]), np.array([0.0, 100.0]), np.array([50.0, 200.0]))
    at_one = model_with(r=0.5, alpha=10.0, a=1.0, b=3.0).expected_purchases(*args)
    for a in (1 - 1e-7, 1 + 1e-7):
        np.testing.assert_allclose(model_with(r=0.5, alpha=10.0, a=a, b=3.0).expected_purchases(*args), at_one,
                                   rtol=1e-6)


def test_probability_alive_decreases_with_the_recency_gap(bg):
    tx = np.linspace(300, 0, 31)
    p_alive = bg.probability_alive(4, tx, 300)
    assert np.all(np.diff(p_alive) < 0) and p_alive[0] == pytest.approx(1 / (1 + bg.params_["a"] / (
        bg.params_["b"] + 3)))
    assert bg.probability_alive(0, 0, 365) == 1.0  # nobody drops out before a repeat purchase
    assert np.all(bg.expected_purchases(30, 4, tx, 300)[:-1] > bg.expected_purchases(30, 4, tx, 300)[1:])
    assert np.all(np.diff(bg.probability_no_purchase(30, 4, tx, 300)) > 0)


def test_monotone_in_horizon_and_frequency(bg):
    t = np.array([0.0, 1, 7, 30, 90, 365, 3650, 1e5])
    p0 = bg.probability_no_purchase(t, 6, 200, 250)
    assert p0[0] == 1.0 and np.all(np.diff(p0) < 0) and np.all((p0 >= 0) & (p0 <= 1))
    p_dead = 1 - bg.probability_alive(6, 200, 250)
    assert p0[-1] == pytest.approx(p_dead, abs=1e-3)  # a long horizon leaves only the dead without purchases
    ep = bg.expected_purchases(t, 6, 200, 250)
    assert ep[0] == 0 and np.all(np.diff(ep) > 0)
    x = np.arange(0, 60, dtype=float)  # all just bought: more purchases mean a higher rate
    assert np.all(np.diff(bg.expected_purchases(90, x, np.where(x > 0, 300.0, 0), 300)) > 0)


def test_probability_no_purchase_stays_a_probability_at_extremes(bg):
    x = np.array([0, 0, 1, 2000, 2000, 5])
    tx = np.array([0, 0, 0, 0, 3000, 1e-9])
    T = np.array([0, 1e5, 1e5, 3000, 3000, 1e5])
    for t in (0.0, 1e-6, 30.0, 1e7):
        p0 = bg.probability_no_purchase(t, x, tx, T)
        assert np.all(np.isfinite(p0)) and np.all((p0 >= 0) & (p0 <= 1)), t
        assert np.all(np.isfinite(bg.expected_purchases(min(t, 1e4), x, tx, T)))
    assert bg.probability_no_purchase(30, 3, 10, 50).shape == ()


def degenerate_history(n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Repeat counts x and ages T of customers who all bought last at the very end of their history (t_x = T).

    Degenerate by construction: nobody shows a quiet spell, so the BG/NBD likelihood in (a, b) is
    prod E[(1-p)^(x-1)], which rises towards 1 as the drop-out probability p -> 0 and has no finite maximum."""
    rng = np.random.default_rng(3)
    return rng.poisson(5, n).astype(float) + 1, rng.uniform(10, 300, n)


def test_a_degenerate_history_is_refused_without_a_penalizer_before_optimising(monkeypatch):
    x, T = degenerate_history()

    def no_optimiser(*args, **kwargs):
        raise AssertionError("the degenerate case must be caught before the optimiser runs")

    with monkeypatch.context() as m:
        m.setattr(btyd, "_minimise", no_optimiser)
        with pytest.raises(ConvergenceError, match="penalizer") as info:
            BetaGeoModel().fit(x, T, T)
        assert "recency == T" in str(info.value) and "2000 customers" in str(info.value)
        with pytest.raises(ConvergenceError, match="penalizer"):  # one repeat purchase each: (a, b) not identified
            BetaGeoModel().fit(np.ones(50), T[:50], T[:50])

    # The check reads the data only: one customer quiet since their last purchase, or a penalizer, and the
    # optimiser is asked.
    calls = []

    def record(objective, x0, *args):
        calls.append(x0)
        return x0

    monkeypatch.setattr(btyd, "_minimise", record)
    quiet = T.copy()
    quiet[0] -= 1.0
    BetaGeoModel().fit(x, quiet, T)
    BetaGeoModel(penalizer=0.001).fit(x, T, T)
    assert len(calls) == 2


def test_penalizer_shrinks_and_rescues_a_degenerate_fit():
    """With a penalizer the degenerate history has an interior optimum: the fit converges to it, finite and well
    inside the bounds, and a larger penalizer pulls the log-parameters (alpha in units of mean T) closer to 0."""
    x, T = degenerate_history()
    scale = T.mean()
    data = _BGData(x, T / scale, T / scale)
    norms = []
    for penalizer in (0.001, 0.01, 0.1):
        fitted = BetaGeoModel(penalizer=penalizer).fit(x, T, T)
        p = fitted.params_
        theta = np.log([p["r"], p["alpha"] / scale, p["a"], p["b"]])
        assert np.isfinite(theta).all() and np.abs(theta).max() < 8, (penalizer, p)  # far from the +-15 guard
        # converged: a stationary point of the penalised objective (L-BFGS-B stops at a gradient of ~1e-7)
        assert np.abs(_bg_objective(theta, data, penalizer)[1]).max() < 1e-5, (penalizer, p)
        assert np.isfinite(fitted.log_likelihood_)
        assert fitted.probability_alive(x, T, T).min() > 0.9  # nobody has shown a sign of dropping out
        norms.append(np.linalg.norm(theta))
    # measured: 4.83, 3.43, 2.16 on every OpenBLAS kernel; the margins are 1.4 and 1.3
    assert norms[0] > norms[1] + 0.5 and norms[1] > norms[2] + 0.5, norms


def test_non_convergence_fails_clearly(sample):
    # An iteration cap, not a numerical accident: two steps from the start leave a gradient of ~0.1, four orders of
    # magnitude above the tolerance, on every BLAS kernel.
    with pytest.raises(ConvergenceError, match="did not converge"):
        BetaGeoModel(max_iter=2).fit(sample["x"], sample["tx"], sample["T"])


@pytest.mark.parametrize(("x", "tx", "T", "match"), [
    ([1, -1], [1, 0], [2, 2], "frequency contains negative"),
    ([1, 1], [3, 1], [2, 2], "recency exceeds T"),
    ([1, 1], [np.nan, 1], [2, 2], "recency contains NaN"),
    ([1, 1], [1, 1], [2, np.inf], "T contains infinite"),
    ([0, 1], [1, 1], [2, 2], "recency must be 0 where frequency is 0"),
    ([1.5, 1], [1, 1], [2, 2], "whole numbers"),
    ([1, 1, 1], [1, 1], [2, 2], "incompatible lengths"),
    ([[1]], [1], [2], "1-D"),
    (["a"], [1], [2], "numeric"),
])
def test_bad_history_is_rejected(bg, x, tx, T, match):
    with pytest.raises(ValueError, match=match):
        BetaGeoModel().fit(x, tx, T)
    with pytest.raises(ValueError, match=match):
        bg.probability_no_purchase(30, x, tx, T)


def test_other_bad_inputs(bg):
    with pytest.raises(ValueError, match="t contains negative"):
        bg.expected_purchases(-1, 1, 1, 2)
    with pytest.raises(ValueError, match="no customers"):
        BetaGeoModel().fit([], [], [])
    with pytest.raises(ValueError, match="no customer has a repeat purchase"):
        BetaGeoModel().fit([0, 0], [0, 0], [5, 9])
    with pytest.raises(NotFittedError):
        BetaGeoModel().probability_alive(1, 1, 2)


# ------------------------------------------------------------------------------------------------------- Gamma-Gamma
def test_gamma_gamma_recovers_simulated_parameters(gg, spend):
    for name in ("p", "q", "v"):
        assert gg.params_[name] == pytest.approx(TRUE_GG[name], rel=0.15), name
    p, q, v = (gg.params_[k] for k in ("p", "q", "v"))
    assert p * v / (q - 1) == pytest.approx(30.0, rel=0.03)
    assert gg.expected_average_value(0, 0) == pytest.approx(p * v / (q - 1))


def test_gamma_gamma_gradient():
    rng = np.random.default_rng(4)
    x = rng.integers(1, 20, 500).astype(float)
    m = rng.gamma(3.0, 1.0, 500)
    xu, ix = np.unique(x, return_inverse=True)
    const = (float(x @ (np.log(x) + np.log(m))), float(np.log(m).sum()), float(x.size))
    args = (xu, np.bincount(ix).astype(float), x, m, const, 0.01)
    theta = np.log([2.0, 3.0, 1.5])
    grad = _gg_objective(theta, *args)[1]
    err = optimize.check_grad(lambda th: _gg_objective(th, *args)[0], lambda th: _gg_objective(th, *args)[1], theta)
    assert err < 1e-5 * np.linalg.norm(grad) + 1e-7


def test_expected_average_value_matches_true_spend(gg, spend):
    predicted = gg.expected_average_value(spend["x"], spend["m"])
    groups = np.digitize(spend["x"], [2, 3, 5, 10]) * 3 + np.digitize(spend["m"], [20, 40])
    assert_calibrated(predicted, spend["truth"], groups, "mean spend")
    # shrinkage: between the customer's own mean and the population mean, closer to their own the more they bought
    pop = gg.expected_average_value(0, 0)
    few, many = gg.expected_average_value([1, 50], [100.0, 100.0])
    assert pop < few < many < 100


def test_gamma_gamma_rejects_bad_input(gg):
    with pytest.raises(ValueError, match="frequency == 0"):
        GammaGammaModel().fit([0, 2, 3], [10.0, 12.0, 8.0])
    with pytest.raises(ValueError, match="monetary must be > 0"):
        GammaGammaModel().fit([1, 2], [0.0, 5.0])
    with pytest.raises(ValueError, match="monetary contains NaN"):
        GammaGammaModel().fit([1, 2], [np.nan, 5.0])
    with pytest.raises(ValueError, match="monetary contains negative"):
        gg.expected_average_value([1], [-3.0])
    with pytest.raises(NotFittedError):
        GammaGammaModel().expected_average_value([1], [3.0])
    heavy_tailed = GammaGammaModel()
    heavy_tailed.params_ = {"p": 2.0, "q": 0.8, "v": 5.0}
    with pytest.raises(ValueError, match="infinite"):
        heavy_tailed.expected_average_value([0, 3], [0.0, 4.0])


def test_expected_value_is_purchases_times_spend(bg, gg):
    x, tx, T, m = np.array([0.0, 3, 10]), np.array([0.0, 100, 300]), np.array([50.0, 200, 310]), np.array(
        [0.0, 25, 60])
    value = expected_value(bg, gg, 90, x, tx, T, m)
    np.testing.assert_allclose(value, bg.expected_purchases(90, x, tx, T) * gg.expected_average_value(x, m))
    assert np.all(value > 0)


def test_a_customer_scored_alone_gets_the_same_bits_as_in_a_batch(bg):
    """Serving scores one customer, the batch thousands: the series behind expected purchases stops for each
    customer at its own convergence, whatever slower customers share its batch."""
    rng = np.random.default_rng(3)
    x = rng.poisson(2, size=200).astype(float)
    T = rng.uniform(10, 400, size=200)
    tx = np.where(x > 0, rng.uniform(size=200) * T, 0.0)
    for t in (30.0, 365.0):
        batch = bg.expected_purchases(t, x, tx, T)
        alone = np.array([bg.expected_purchases(t, x[i:i + 1], tx[i:i + 1], T[i:i + 1])[0] for i in range(200)])
        np.testing.assert_array_equal(batch, alone)
