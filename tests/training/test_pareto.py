"""Pareto/NBD: likelihood against quadrature, parameter recovery on its own generative process, P(alive) limits,
expected purchases against simulation, input errors and the feature columns.
"""

import numpy as np
import pandas as pd
import pytest
from scipy import integrate
from sklearn.exceptions import NotFittedError

from training.pareto import ConvergenceError, ParetoNBDModel, _log_died_between, _mean_nll, _Data, pareto_columns

TRUE = {"r": 0.6, "alpha": 40.0, "s": 0.8, "beta": 150.0}  # ~5.5 purchases a year while alive; mean lifetime ~1 y


def simulate(n: int, params: dict, rng: np.random.Generator, window: float = 730.0, holdout: float = 90.0) -> dict:
    """First purchases uniform over the window, observed at its end, then `holdout` days more.

    lambda ~ Gamma(r, rate alpha), mu ~ Gamma(s, rate beta), lifetime ~ Exp(mu); while alive, Poisson(lambda)
    repeat purchases. Given N purchases in the observed life (0, min(tau, T)], the last is at min(tau, T) times the
    largest of N uniforms, i.e. min(tau, T) * Beta(N, 1)."""
    lam = rng.gamma(params["r"], 1 / params["alpha"], n)
    mu = rng.gamma(params["s"], 1 / params["beta"], n)
    T = rng.uniform(0, window, n)
    tau = rng.exponential(1 / mu)
    seen = np.minimum(tau, T)
    x = rng.poisson(lam * seen)
    tx = np.where(x > 0, seen * rng.beta(np.maximum(x, 1), 1), 0.0)
    future = rng.poisson(lam * np.clip(tau - T, 0, holdout))
    return {"x": x.astype(float), "tx": tx, "T": T, "future": future, "alive": tau > T}


def model_with(**params) -> ParetoNBDModel:
    model = ParetoNBDModel()
    model.params_ = {k: float(v) for k, v in params.items()}
    return model


@pytest.fixture(scope="module")
def sample() -> dict:
    return simulate(8000, TRUE, np.random.default_rng(0))


@pytest.fixture(scope="module")
def fitted(sample) -> ParetoNBDModel:
    return ParetoNBDModel().fit(sample["x"], sample["tx"], sample["T"])


@pytest.mark.parametrize("params", [
    dict(r=0.6, alpha=40.0, s=0.8, beta=150.0),  # alpha < beta
    dict(r=2.0, alpha=300.0, s=0.3, beta=5.0),  # alpha > beta
    dict(r=1.0, alpha=20.0, s=1.0, beta=20.0),  # alpha == beta (2F1 argument 0)
    dict(r=0.3, alpha=0.5, s=4.0, beta=2000.0),  # far apart: 2F1 argument near 1
])
@pytest.mark.parametrize("x, tx, T", [(0, 0.0, 100.0), (3, 50.0, 100.0), (40, 99.0, 100.0), (200, 10.0, 400.0)])
def test_died_term_matches_quadrature(params, x, tx, T):
    """s/K (F(t_x) - F(T)) is s * int_{t_x}^T (alpha+tau)^-(r+x) (beta+tau)^-(s+1) dtau."""
    r, alpha, s, beta = (params[k] for k in ("r", "alpha", "s", "beta"))
    got = _log_died_between(np.array([float(x)]), np.array([tx]), np.array([T]), r, alpha, s, beta)[0]
    # the integrand divided by its value at t_x, so quad sees numbers near 1
    scale = -(r + x) * np.log(alpha + tx) - (s + 1) * np.log(beta + tx)

    def f(tau):
        return s * np.exp(-(r + x) * np.log(alpha + tau) - (s + 1) * np.log(beta + tau) - scale)

    val = integrate.quad(f, tx, T, epsabs=0, epsrel=1e-12, limit=400, points=[min(T, tx + 1.0)])[0]
    assert got == pytest.approx(np.log(val) + scale, abs=1e-8)


def test_recovers_the_parameters_it_was_drawn_from(sample, fitted):
    p = fitted.params_
    assert p["r"] == pytest.approx(TRUE["r"], rel=0.15)
    assert p["alpha"] == pytest.approx(TRUE["alpha"], rel=0.15)
    assert p["s"] == pytest.approx(TRUE["s"], rel=0.3)
    assert p["beta"] == pytest.approx(TRUE["beta"], rel=0.4)
    assert p["s"] / p["beta"] == pytest.approx(TRUE["s"] / TRUE["beta"], rel=0.25)  # mean dropout rate
    # the maximum: no worse than the truth (both in normalised units, as the fit sees them)
    scale = sample["T"].mean()
    data = _Data(sample["x"], sample["tx"] / scale, sample["T"] / scale)
    at = lambda q: np.log([q["r"], q["alpha"] / scale, q["s"], q["beta"] / scale])  # noqa: E731
    assert _mean_nll(at(p), data) <= _mean_nll(at(TRUE), data) + 1e-9
    assert fitted.n_customers_ == 8000 and np.isfinite(fitted.log_likelihood_)


def test_identical_histories_are_aggregated_not_reweighted():
    """Duplicating every customer leaves the fit unchanged (weights, not rows)."""
    d = simulate(600, TRUE, np.random.default_rng(5), window=365)
    d = {k: np.round(v) if k in ("tx", "T") else v for k, v in d.items()}
    d["T"] = np.maximum(d["T"], d["tx"])
    once = ParetoNBDModel(penalizer=0.01).fit(d["x"], d["tx"], d["T"]).params_
    twice = ParetoNBDModel(penalizer=0.01).fit(np.r_[d["x"], d["x"]], np.r_[d["tx"], d["tx"]],
                                               np.r_[d["T"], d["T"]]).params_
    for k in once:
        assert twice[k] == pytest.approx(once[k], rel=1e-6)


def test_probability_alive_limits():
    m = model_with(**TRUE)
    assert m.probability_alive(0, 0, 0) == pytest.approx(1.0)  # just arrived
    assert m.probability_alive([0, 5, 30], [0, 40, 40], [0, 40, 40]) == pytest.approx([1, 1, 1])  # bought just now
    p = m.probability_alive(5, 40, [40, 100, 400, 4000])
    assert np.all(np.diff(p) < 0) and p[-1] < 0.01  # longer silence, less alive
    # more purchases before the same silence: more surely dead (a frequent buyer's silence means more)
    q = m.probability_alive([1, 5, 20], [100, 100, 100], 300)
    assert np.all(np.diff(q) < 0)
    assert np.all((p > 0) & (p <= 1))


def test_probability_alive_against_simulation(sample):
    m = model_with(**TRUE)
    p = m.probability_alive(sample["x"], sample["tx"], sample["T"])
    groups = np.digitize(p, [0.2, 0.4, 0.6, 0.8])
    for g in np.unique(groups):
        sel = groups == g
        se = np.sqrt(p[sel].mean() * (1 - p[sel].mean()) / sel.sum())
        assert abs(p[sel].mean() - sample["alive"][sel].mean()) <= 4 * se + 0.005, g


def test_expected_purchases_monotone_and_against_simulation(sample):
    m = model_with(**TRUE)
    t = np.array([0.0, 1, 7, 30, 90, 365, 3650])
    e = m.expected_purchases(t, 3, 60, 200)
    assert e[0] == 0 and np.all(np.diff(e) > 0)
    # s = 1 exactly needs no special case: the limit of the s != 1 formula
    near = [model_with(r=0.6, alpha=40.0, s=s, beta=150.0).expected_purchases(90, 3, 60, 200)
            for s in (1 - 1e-7, 1.0, 1 + 1e-7)]
    assert near[1] == pytest.approx(near[0], rel=1e-6) and near[1] == pytest.approx(near[2], rel=1e-6)
    pred = m.expected_purchases(90, sample["x"], sample["tx"], sample["T"])
    groups = np.minimum(sample["x"], 4)
    for g in np.unique(groups):
        sel = groups == g
        se = sample["future"][sel].std() / np.sqrt(sel.sum())
        assert abs(pred[sel].mean() - sample["future"][sel].mean()) <= 4 * se + 0.01, g


def test_no_dropout_in_the_data_is_refused_without_a_penalizer():
    x, tx, T = np.array([0, 1, 3, 2.0]), np.array([0, 10, 30, 5.0]), np.array([0, 10, 30, 5.0])
    with pytest.raises(ConvergenceError, match="penalizer"):
        ParetoNBDModel().fit(x, tx, T)


def test_bad_inputs_are_named():
    m = model_with(**TRUE)
    with pytest.raises(ValueError, match="recency exceeds T"):
        m.probability_alive(1, 50, 10)
    with pytest.raises(ValueError, match="frequency contains NaN"):
        ParetoNBDModel().fit([np.nan, 1], [0, 1], [1, 2])
    with pytest.raises(ValueError, match="no customer has a repeat purchase"):
        ParetoNBDModel().fit([0, 0], [0, 0], [5, 9])
    with pytest.raises(NotFittedError):
        ParetoNBDModel().probability_alive(1, 1, 2)


def test_pareto_columns_are_appended_as_features():
    m = model_with(**TRUE)
    frame = pd.DataFrame({"tx_btyd_frequency": [2.0, np.nan, 0.0], "tx_btyd_recency": [30.0, np.nan, 0.0],
                          "tx_btyd_T": [60.0, np.nan, 20.0], "other": [1, 2, 3]})
    out = pareto_columns(m, frame, 90)
    assert list(out.columns) == [*frame.columns, "pareto_p_alive", "pareto_expected_purchases"]
    assert out["pareto_p_alive"].dtype == np.float32
    assert out.loc[0, "pareto_p_alive"] == pytest.approx(float(m.probability_alive(2, 30, 60)), rel=1e-6)
    assert out.loc[1, "pareto_p_alive"] == pytest.approx(1.0)  # no history: x = t_x = T = 0
    assert out.loc[2, "pareto_expected_purchases"] == pytest.approx(float(m.expected_purchases(90, 0, 0, 20)),
                                                                     rel=1e-6)
    assert "pareto_p_alive" not in frame.columns  # the input is not modified
    assert pareto_columns(None, frame, 90) is frame
