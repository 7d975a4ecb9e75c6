"""The BG/NBD-with-covariates candidate and the per-fold held-out table of a customer split."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training.btyd import BetaGeoModel
from training.candidates import BTYD_INPUTS, BtydChurn, BtydCovariates
from training.select import fold_mean

AT = {**{c: i for i, c in enumerate(BTYD_INPUTS)}, "tx_aov_365d": 3}
H = 60


def _customers(seed: int, n: int = 3000):
    """Purchase histories (frequency, recency, age) and an average order value that, beyond what the purchase
    history says, makes a customer more likely to come back: the churn label is drawn from BG/NBD's own odds of no
    purchase in the horizon shifted by the log order value."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 120, size=n)
    freq = rng.poisson(rng.gamma(0.5, 2.0, size=n)).astype(np.float64)
    rec = np.where(freq > 0, age * rng.uniform(0.1, 1.0, size=n), 0.0)
    aov = rng.lognormal(3.0, 0.8, size=n)
    x = np.column_stack([freq, rec, age, aov]).astype(np.float32)
    return x, aov


@pytest.fixture(scope="module")
def bg():
    x, _ = _customers(0)
    return BetaGeoModel(penalizer=0.001).fit(*(x[:, i].astype(np.float64) for i in range(3)))


def _labels(bg, x, aov, seed):
    odds = np.log(bg.probability_no_purchase(H, *(x[:, i].astype(np.float64) for i in range(3))))
    odds -= np.log1p(-np.exp(odds))
    p = 1 / (1 + np.exp(-(odds - 0.9 * (np.log1p(aov) - 3.0))))
    return (np.random.default_rng(seed).uniform(size=len(p)) < p).astype(int)


def test_spend_per_order_lifts_the_ranking_over_bg_nbd_on_new_customers(bg):
    x, aov = _customers(1)
    model = BtydCovariates(bg, AT, H, ["tx_aov_365d"], seed=1).fit(x, _labels(bg, x, aov, 1))
    fresh, fresh_aov = _customers(2)
    y = _labels(bg, fresh, fresh_aov, 2)
    alone = roc_auc_score(y, BtydChurn(bg, AT, H).score(fresh))
    with_spend = roc_auc_score(y, model.score(fresh))
    assert with_spend > alone + 0.02
    assert model.model.coef_[0, 0] > 0 and model.model.coef_[0, 1] < 0  # churn odds up, bigger baskets down


def test_a_customer_older_than_any_in_training_is_not_clipped_into_a_tie(bg):
    x, aov = _customers(3)
    x[:, 2] = np.minimum(x[:, 2], 60)  # training: customers at most 60 days old
    x[:, 1] = np.minimum(x[:, 1], x[:, 2])
    model = BtydCovariates(bg, AT, H, ["tx_aov_365d"], seed=1).fit(x, _labels(bg, x, aov, 3))
    old = np.array([[2, 30, 60, 20], [2, 30, 200, 20], [2, 30, 400, 20]], dtype=np.float32)
    risk = model.score(old)
    assert risk[0] < risk[1] < risk[2]  # longer silent, more likely gone: BG/NBD's column is never clipped
    huge = np.array([[2, 30, 60, 20], [2, 30, 60, 1e7]], dtype=np.float32)  # an order value beyond training
    top = np.array([[2, 30, 60, np.exp(np.log1p(aov).max()) - 1]], dtype=np.float32)
    assert model.score(huge)[1] == pytest.approx(model.score(top)[0], rel=1e-6)


def test_a_customer_alone_scores_exactly_as_in_a_batch(bg):
    x, aov = _customers(4, n=500)
    x[::7, 3] = np.nan  # no orders with a value: counts as 0
    model = BtydCovariates(bg, AT, H, ["tx_aov_365d"], seed=1).fit(x, _labels(bg, x, np.nan_to_num(aov), 4))
    batch = model.score(x)
    np.testing.assert_array_equal(batch, np.concatenate([model.score(x[i:i + 1]) for i in range(len(x))]))


def test_a_refit_keeps_the_covariates_over_the_new_bg_nbd(bg):
    x, aov = _customers(5)
    y = _labels(bg, x, aov, 5)
    model = BtydCovariates(bg, AT, H, ["tx_aov_365d", "not_a_column"], seed=1).fit(x, y)
    assert model.covariates == ["tx_aov_365d"]  # a covariate the tag lacks is left out
    other = BetaGeoModel(penalizer=0.01).fit(*(x[:, i].astype(np.float64) for i in range(3)))
    again = model.refitted(other, AT, x, y)
    assert again.bg is other and again.covariates == model.covariates and again is not model


def test_bg_nbd_ranking_backwards_is_refused(bg):
    x, aov = _customers(6)
    y = 1 - _labels(bg, x, np.full_like(aov, np.exp(3.0) - 1), 6)  # labels that reverse BG/NBD's order
    with pytest.raises(ValueError, match="non-positive weight"):
        BtydCovariates(bg, AT, H, ["tx_aov_365d"], seed=1).fit(x, y)


def test_fold_metrics_are_averaged_and_an_undefined_fold_does_not_count():
    folds = [{"auc": 0.7, "brier": 0.1, "rows": 10}, {"auc": 0.8, "brier": 0.3, "rows": 12},
             {"auc": float("nan"), "brier": 0.2, "rows": 3}]
    mean = fold_mean(folds)
    assert mean["auc"] == pytest.approx(0.75) and mean["brier"] == pytest.approx(0.2) and mean["rows"] == 25
    assert fold_mean(folds[:1]) == folds[0]
