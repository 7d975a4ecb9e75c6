"""Explanations of model scores: LightGBM's contributions add up to its raw score and name the BG/NBD columns the
model appends; occlusion (the classical families) is the score difference it claims to be; blends weight their
members; the top factors come by decreasing size; missing values and missing references are handled."""

import json

import numpy as np
import pytest

from training import explain
from training import models as mdl
from training.btyd import BetaGeoModel
from training.candidates import BTYD_INPUTS, Blend, BtydChurn, Calibrated, Linear, Platt

FEATURES = [*BTYD_INPUTS, "a", "b"]
H = 60


def _customers(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Purchase histories (frequency, recency, age), two plain features (b missing for a tenth) and a churn label
    that depends on recency and on a."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 200, size=n)
    freq = rng.poisson(rng.gamma(0.6, 2.0, size=n)).astype(np.float64)
    rec = np.where(freq > 0, age * rng.uniform(0.1, 1.0, size=n), 0.0)
    a, b = rng.normal(size=n), rng.normal(size=n)
    b[rng.uniform(size=n) < 0.1] = np.nan
    x = np.column_stack([freq, rec, age, a, b]).astype(np.float32)
    p = 1 / (1 + np.exp(-(1.5 * a - 0.02 * (rec - age / 2))))
    return x, (rng.uniform(size=n) < p).astype(int)


@pytest.fixture(scope="module")
def bg() -> BetaGeoModel:
    x, _ = _customers(2000, 0)
    return BetaGeoModel(penalizer=0.001).fit(*(x[:, i].astype(np.float64) for i in range(3)))


@pytest.fixture(scope="module")
def lgbm_model(bg) -> mdl.TagModel:
    """A calibrated LightGBM churn model over the features and the BG/NBD columns its tag model appends."""
    shell = mdl.TagModel("churn_risk", "probability", FEATURES, {}, H, btyd=bg)
    (x, y), (xv, yv) = _customers(3000, 1), _customers(1500, 2)
    est = mdl.fit_classifier(shell.full_matrix(x), y, shell.full_matrix(xv), yv, mdl.LearnerParams(max_trees=30),
                             names=shell.columns)
    return mdl.TagModel("churn_risk", "probability", FEATURES, {"churn_risk": est}, H, btyd=bg)


def _rows(seed: int = 3, n: int = 300) -> np.ndarray:
    x, _ = _customers(n, seed)
    x[:5, 3] = np.nan  # missing a as well
    return x


def test_lightgbm_contributions_add_up_to_the_raw_score_and_name_the_bg_nbd_columns(lgbm_model):
    x = _rows()
    got = explain.contributions(lgbm_model, x)["churn_risk"]
    assert got.names == lgbm_model.columns and "btyd_p_alive" in got.names and "btyd_expected_purchases" in got.names
    assert (got.scale, got.method) == ("log-odds", "lightgbm")
    booster = lgbm_model.estimators["churn_risk"].model.model.booster_
    raw = booster.predict(lgbm_model.full_matrix(x), raw_score=True)
    np.testing.assert_allclose(got.contributions.sum(axis=1) + got.base, raw, rtol=0, atol=1e-6)
    assert np.isfinite(got.contributions).all()  # rows with missing values too
    # the probability served is the calibrated map of that raw score
    served = lgbm_model.predict_matrix(x)["churn_risk"]
    np.testing.assert_allclose(served, lgbm_model.estimators["churn_risk"].platt(1 / (1 + np.exp(-raw))), rtol=1e-12)


def test_top_factors_come_by_decreasing_size_with_their_values(lgbm_model):
    x = _rows()
    c = explain.contributions(lgbm_model, x)["churn_risk"]
    top = explain.top(c, 3)
    assert top.columns.shape == (len(x), 3)
    size = np.abs(top.contributions)
    assert (np.diff(size, axis=1) <= 0).all()
    assert (size[:, -1] >= np.sort(np.abs(c.contributions), axis=1)[:, -3]).all()  # no larger one left out
    np.testing.assert_array_equal(top.values, np.take_along_axis(lgbm_model.full_matrix(x), top.columns, axis=1))
    record = top.records()[0]
    assert record["scale"] == "log-odds" and len(record["factors"]) <= 3
    assert record["factors"][0]["feature"] == c.names[top.columns[0, 0]]
    assert [json.loads(j) for j in top.json()] == top.records()  # the JSON is the records, to the bit
    missing = top.records()[int(np.flatnonzero(np.isnan(top.values).any(axis=1))[0])]
    assert any(f["value"] is None for f in missing["factors"])  # a missing value is a factor too, shown as null
    everything = explain.top(c, 100)
    assert everything.columns.shape[1] == len(c.names)


def test_a_row_alone_gets_the_factors_it_gets_in_a_batch(lgbm_model, bg):
    x = _rows()
    classical = mdl.TagModel("churn_risk", "probability", FEATURES,
                             {"churn_risk": Calibrated(BtydChurn(bg, {c: i for i, c in enumerate(FEATURES)}, H),
                                                       Platt())}, H, btyd=bg)
    reference = {f: float(np.nanmedian(x[:, j])) for j, f in enumerate(FEATURES)}
    for model in (lgbm_model, classical):
        batch = explain.explain(model, x, reference=reference)["churn_risk"]
        alone = explain.explain(model, x[7:8], reference=reference)["churn_risk"]
        assert alone.records()[0] == batch.records()[7]


def test_occlusion_is_the_score_difference_with_the_feature_at_its_reference(bg):
    x, y = _customers(800, 4)
    x[:10, 4] = np.nan
    at = {c: i for i, c in enumerate(FEATURES)}
    linear = Linear("probability", range(len(FEATURES)), 1).fit(x, y)
    model = mdl.TagModel("churn_risk", "probability", FEATURES,
                         {"churn_risk": Calibrated(linear, Platt()), "btyd": Calibrated(BtydChurn(bg, at, H), Platt())},
                         H, btyd=bg)
    assert explain.needs_reference(model)
    reference = {f: float(np.nanmedian(x[:, j])) for j, f in enumerate(FEATURES)}
    reference["b"] = float("nan")  # occluding with "missing" is allowed
    x[20, 3] = np.float32(reference["a"])  # at the reference already: no contribution from a
    got = explain.contributions(model, x, reference=reference)
    scores = model.predict_matrix(x)
    for out in ("churn_risk", "btyd"):
        c = got[out]
        assert (c.scale, c.method) == ("score", "occlusion") and c.names == [*model.columns, explain.HISTORY]
        for j in (3, 4):
            occluded = x.copy()
            occluded[:, j] = np.float32(reference[FEATURES[j]])
            want = scores[out] - model.predict_matrix(occluded)[out]
            np.testing.assert_allclose(c.contributions[:, j], want, rtol=0, atol=1e-12)
        assert (c.contributions[:, :3] == 0).all()  # frequency, recency and age go as one: the purchase history
        assert (c.contributions[:, len(FEATURES):len(model.columns)] == 0).all()  # BG/NBD columns move with them
        everything_at_reference = np.array([[np.float32(reference[f]) for f in FEATURES]], dtype=np.float32)
        assert c.base[0] == pytest.approx(model.predict_matrix(everything_at_reference)[out][0], abs=1e-12)
    assert got["churn_risk"].contributions[20, 3] == 0
    assert not np.any(got["btyd"].contributions[:, 3:5])  # BG/NBD reads no plain feature
    missing_b = np.isnan(x[:, 4])
    assert (got["churn_risk"].contributions[missing_b, 4] == 0).all()  # missing, and the reference is missing
    top = explain.top(got["btyd"], 5)
    record = top.records()[0]
    assert [f["feature"] for f in record["factors"]] == [explain.HISTORY]  # zero contributions are no factor
    assert [json.loads(j) for j in top.json()] == top.records()
    assert record["factors"][0]["value"] == pytest.approx(x[0, :3].tolist(), rel=1e-6)  # float32 precision


class _AnyModel:
    """An estimator of no known family: it says nothing of the columns it reads."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.nan_to_num(x[:, 3].astype(np.float64), nan=-1.0) * 2.0 + np.nan_to_num(x[:, 4], nan=0.0) ** 2


def test_occlusion_works_for_any_model_with_missing_values(bg):
    x = _rows()
    model = mdl.TagModel("high_value", "value", FEATURES, {"high_value": _AnyModel()}, H)
    reference = {f: 0.5 for f in FEATURES}
    c = explain.contributions(model, x, reference=reference)["high_value"]
    a, b = (np.nan_to_num(x[:, j].astype(np.float64), nan=v) for j, v in ((3, -1.0), (4, 0.0)))
    np.testing.assert_allclose(c.contributions[:, 3], 2 * a - 1.0, rtol=0, atol=1e-6)  # a missing a scores as -1
    np.testing.assert_allclose(c.contributions[:, 4], b ** 2 - 0.25, rtol=0, atol=1e-6)
    assert (c.contributions[:, :3] == 0).all() and c.base[0] == pytest.approx(1.25)


def test_the_purchase_history_is_occluded_as_one_possible_customer(bg):
    """Frequency, recency and age set one at a time would make customers BG/NBD refuses (a recency without a repeat
    purchase, half a purchase): they are set together, to a reference that is a possible customer."""
    x, _ = _customers(500, 6)
    at = {c: i for i, c in enumerate(FEATURES)}
    model = mdl.TagModel("churn_risk", "probability", FEATURES,
                         {"churn_risk": Calibrated(BtydChurn(bg, at, H), Platt())}, H, btyd=bg)
    reference = {"tx_btyd_frequency": 1.5, "tx_btyd_recency": 500.0, "tx_btyd_T": 90.0, "a": 0.0, "b": 0.0}
    c = explain.contributions(model, x, reference=reference)["churn_risk"]
    occluded = x.copy()
    occluded[:, :3] = [1.0, 90.0, 90.0]  # whole purchases, recency within the age
    want = model.predict_matrix(x)["churn_risk"] - model.predict_matrix(occluded)["churn_risk"]
    np.testing.assert_allclose(c.contributions[:, -1], want, rtol=0, atol=1e-12)
    none = explain.contributions(model, x, reference={**reference, "tx_btyd_frequency": 0.4})["churn_risk"]
    occluded[:, :3] = [0.0, 0.0, 90.0]  # no repeat purchase: no recency
    want = model.predict_matrix(x)["churn_risk"] - model.predict_matrix(occluded)["churn_risk"]
    np.testing.assert_allclose(none.contributions[:, -1], want, rtol=0, atol=1e-12)


def test_a_classical_model_without_reference_values_is_refused_naming_what_is_missing(bg):
    at = {c: i for i, c in enumerate(FEATURES)}
    model = mdl.TagModel("churn_risk", "probability", FEATURES,
                         {"churn_risk": Calibrated(BtydChurn(bg, at, H), Platt())}, H, btyd=bg)
    x = _rows()
    with pytest.raises(ValueError, match="needs reference values"):
        explain.contributions(model, x)
    with pytest.raises(ValueError, match=r"no reference value for feature\(s\) \['b'\]"):
        explain.contributions(model, x, reference={f: 0.0 for f in FEATURES[:-1]})


def test_a_blend_weights_each_member_as_the_blend_does(lgbm_model, bg):
    x, y = _customers(600, 5)
    member = lgbm_model.estimators["churn_risk"]
    blend = Blend("probability", {"lightgbm": member}, 1).fit(lgbm_model.full_matrix(x), y)
    model = mdl.TagModel("churn_risk", "probability", FEATURES, {"churn_risk": blend}, H, btyd=bg)
    assert not explain.needs_reference(model)
    got = explain.contributions(model, x)["churn_risk"]
    assert (got.scale, got.method) == ("log-odds", "blend")
    w, b = float(blend.model.coef_[0, 0]), float(blend.model.intercept_[0])
    tree = member.model.model.booster_.predict(lgbm_model.full_matrix(x), pred_contrib=True)
    np.testing.assert_allclose(got.contributions, w * tree[:, :-1], rtol=1e-12)
    np.testing.assert_allclose(got.base, b + w * tree[:, -1], rtol=1e-12)

    linear = Calibrated(Linear("probability", range(len(FEATURES)), 1).fit(x, y), Platt())
    mixed = Blend("probability", {"lightgbm": member, "linear": linear}, 1).fit(lgbm_model.full_matrix(x), y)
    model = mdl.TagModel("churn_risk", "probability", FEATURES, {"churn_risk": mixed}, H, btyd=bg)
    reference = {f: float(np.nanmedian(x[:, j])) for j, f in enumerate(FEATURES)}
    got = explain.contributions(model, x, reference=reference)["churn_risk"]
    w_tree, w_linear = (float(v) for v in mixed.model.coef_[0])
    occluded = explain.contributions(
        mdl.TagModel("t", "probability", FEATURES, {"o": linear}, H, btyd=bg), x, reference=reference)["o"]
    # the linear member enters as the logit of its probability; its occlusion is measured there
    full = lgbm_model.full_matrix(x)
    ref_a = full.copy()
    ref_a[:, 3] = np.float32(reference["a"])
    want_a = w_tree * tree[:, 3] + w_linear * (mixed.member_input(linear, full) - mixed.member_input(linear, ref_a))
    np.testing.assert_allclose(got.contributions[:, 3], want_a, rtol=1e-9, atol=1e-12)
    assert occluded.method == "occlusion"


def test_full_matrix_is_what_predict_matrix_scores(lgbm_model):
    x = _rows()
    full = lgbm_model.full_matrix(x)
    assert full.shape == (len(x), len(lgbm_model.columns)) and lgbm_model.derived_from == tuple(BTYD_INPUTS)
    est = lgbm_model.estimators["churn_risk"]
    np.testing.assert_array_equal(lgbm_model.predict_matrix(x)["churn_risk"], lgbm_model.score_output(est, full))
    with pytest.raises(ValueError, match="expected a matrix of 5 feature columns"):
        lgbm_model.full_matrix(x[:, :4])


class _Undeclared:
    """An estimator's scores without the columns it reads: occlusion then tries every feature."""

    def __init__(self, est) -> None:
        self.est = est

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.est.predict_proba(x)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.est.predict(x)


def test_the_columns_a_family_says_it_reads_lose_no_factor(bg):
    """Occlusion skips the features an estimator says it does not read (`reads`): the BTYD families and the linear
    model give the same contributions as when every feature is tried."""
    from training.candidates import MONETARY, BtydCovariates, BtydInterest, BtydValue, fit_btyd

    features = [*FEATURES, MONETARY, "tx_aov_365d", "aff_buy_x_365d", "tx_count_365d"]
    x, y = _customers(800, 7)
    rng = np.random.default_rng(7)
    extra = np.column_stack([rng.gamma(2.0, 20.0, len(x)) * (x[:, 0] > 0), rng.gamma(2.0, 20.0, len(x)),
                             rng.poisson(1.0, len(x)), x[:, 0] + rng.poisson(1.0, len(x))]).astype(np.float32)
    x = np.column_stack([x, extra])
    at = {c: i for i, c in enumerate(features)}
    _, gg = fit_btyd(*(x[:, i] for i in range(3)), x[:, at[MONETARY]])
    probability = {"covariates": BtydCovariates(bg, at, H, ["tx_aov_365d"], 1).fit(x, y),
                   "interest": Calibrated(BtydInterest(bg, at, H, "aff_buy_x_365d", "tx_count_365d", 12), Platt()),
                   "linear": Calibrated(Linear("probability", [3, 4, 6], 1).fit(x, y), Platt())}
    value = {"value": BtydValue(bg, gg, at, H, "tx_aov_365d"), "no_gg": BtydValue(bg, None, at, H, "tx_aov_365d")}
    reference = {f: float(np.nanmedian(x[:, j])) for j, f in enumerate(features)}
    for kind, estimators in (("probability", probability), ("value", value)):
        declared = mdl.TagModel("t", kind, features, estimators, H, btyd=bg)
        assert all(getattr(e, "reads", None) is not None for e in estimators.values())
        tried = mdl.TagModel("t", kind, features, {k: _Undeclared(e) for k, e in estimators.items()}, H, btyd=bg)
        got = explain.contributions(declared, x, reference=reference)
        want = explain.contributions(tried, x, reference=reference)
        for name in estimators:
            np.testing.assert_allclose(got[name].contributions, want[name].contributions, rtol=0, atol=1e-12)
            assert np.count_nonzero(got[name].contributions.any(axis=0)) >= 2, name  # some factor besides history
