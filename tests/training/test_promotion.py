"""The promotion gate: baselines first, then a margin over the champion on the same rows, then a paired bootstrap.

Scores are built in the test from a seeded generator (PCG64: the same numbers on every machine), and the gate's
figures are exact rank statistics (integer sums), so nothing here depends on BLAS, thread count or timing.
"""

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from features import model_tags
from persona.config import parse_config
from persona.workspace import Workspace
from training import tracking
from training.gate import GateInput, TagResult, gate, promote_challenger
from training.metrics import bootstrap_indices, classification_metrics, paired_bootstrap, rank_metric
from training.models import TagModel

MARGIN = 0.005


def _scores(n: int = 2000, seed: int = 11) -> dict[str, np.ndarray]:
    """Labels and scores of increasing skill on the same rows."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.int64)
    noise = rng.normal(0, 1.2, n)
    return {
        "y": y,
        "champion": y + noise,  # AUC about 0.72
        "slightly_better": y * 1.01 + noise,  # the same ranking with positives nudged up: a little higher
        "much_better": 2.0 * y + rng.normal(0, 1.2, n),  # AUC about 0.88
    }


def _one(name: str, s: dict, challenger: str, champion: str | None = "champion",
         baselines: dict[str, float] | None = None) -> GateInput:
    score = s[challenger]
    return GateInput(name, float(roc_auc_score(s["y"], score)), baselines or {"logistic_regression": 0.6},
                     s["y"], score, None if champion is None else s[champion])


def _gate(outputs, champion="3", **kw):
    return gate("auc", outputs, champion=champion, margin=kw.pop("margin", MARGIN),
                bootstrap=kw.pop("bootstrap", True), seed=7, **kw)


# --- the rank statistics the gate uses -------------------------------------------------------------------------------
def test_rank_metrics_equal_sklearn_and_scipy_on_every_resample_including_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    score = np.round(rng.normal(size=60) + y, 1)  # rounded: many ties
    spend = np.where(rng.random(60) < 0.3, 0.0, rng.gamma(1.0, 50.0, 60))  # zeros tie
    predicted = np.round(spend + rng.normal(0, 30, 60))
    assert rank_metric("auc", y, score)[0] == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    rho = spearmanr(spend, predicted).statistic
    assert rank_metric("spearman", spend, predicted)[0] == pytest.approx(rho, abs=1e-12)
    idx = next(bootstrap_indices(60, 8, seed=3))
    aucs, rhos = rank_metric("auc", y, score, idx), rank_metric("spearman", spend, predicted, idx)
    for k, rows in enumerate(idx):
        assert aucs[k] == pytest.approx(roc_auc_score(y[rows], score[rows]), abs=1e-12)
        assert rhos[k] == pytest.approx(spearmanr(spend[rows], predicted[rows]).statistic, abs=1e-12)


def test_a_baseline_scored_on_another_scale_is_ranked_not_clipped():
    """The RFM churn score is negative: clipped into (0, 1) it would tie everywhere and read as AUC 0.5."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 300)
    rfm = -np.round(5 * rng.random(300) + 3 * (1 - y))  # in [-8, 0]
    assert classification_metrics(y, rfm)["auc"] == pytest.approx(roc_auc_score(y, rfm)) and roc_auc_score(y, rfm) > 0.7


def test_the_paired_bootstrap_is_seeded_and_paired():
    s = _scores()
    once = paired_bootstrap("auc", [(s["y"], s["much_better"], s["champion"])], resamples=50, seed=7)
    again = paired_bootstrap("auc", [(s["y"], s["much_better"], s["champion"])], resamples=50, seed=7)
    assert len(once) == 50 and np.array_equal(once, again)
    same = paired_bootstrap("auc", [(s["y"], s["champion"], s["champion"])], resamples=50, seed=7)
    assert np.all(same == 0)  # paired: a model against itself differs on no resample
    with pytest.raises(ValueError, match="same held-out rows"):
        paired_bootstrap("auc", [(s["y"], s["champion"], s["champion"][:-1])])


# --- the gate as a pure function -------------------------------------------------------------------------------------
def test_a_challenger_ahead_by_less_than_the_margin_is_refused():
    s = _scores()
    ahead = roc_auc_score(s["y"], s["slightly_better"]) - roc_auc_score(s["y"], s["champion"])
    assert 0 < ahead < MARGIN  # the premise
    v = _gate([_one("churn_risk", s, "slightly_better")])
    assert not v.promoted and v.failed == "margin"
    assert v.margin == pytest.approx(ahead, abs=1e-12) and v.required_margin == MARGIN
    assert "does not beat champion v3 by the promotion margin" in v.reason
    assert f"{v.challenger:.4f} vs {v.champion:.4f}" in v.reason and f"{ahead:+.4f} < {MARGIN:.4f}" in v.reason


def test_a_challenger_far_ahead_is_promoted_with_its_figures():
    s = _scores()
    v = _gate([_one("churn_risk", s, "much_better")])
    assert v.promoted and v.failed is None
    assert v.margin > 0.1 and v.bootstrap_lower > 0.1
    assert v.reason.startswith("beats champion v3") and "lower bound" in v.reason
    assert v.as_dict()["gate"] == "promoted"


def test_a_tie_with_the_champion_is_refused():
    s = _scores()
    v = _gate([_one("churn_risk", s, "champion")], margin=0.0)
    assert not v.promoted and v.failed == "bootstrap" and v.margin == 0 and v.bootstrap_lower == 0


def test_a_margin_won_on_a_few_rows_fails_the_bootstrap():
    """Two positives moved from the bottom to the top: +0.02 AUC, but resamples without them show no gain."""
    s = _scores(n=200, seed=5)
    lucky = s["champion"].copy()
    lowest_positives = np.flatnonzero(s["y"] == 1)[np.argsort(lucky[s["y"] == 1])[:2]]
    lucky[lowest_positives] = lucky.max() + 1
    s["lucky"] = lucky
    v = _gate([_one("churn_risk", s, "lucky")])
    assert v.margin >= MARGIN and not v.promoted and v.failed == "bootstrap"
    assert v.bootstrap_lower <= 0 and "paired bootstrap 95% lower bound" in v.reason
    assert _gate([_one("churn_risk", s, "lucky")], bootstrap=False).promoted  # the margin alone would pass


def test_losing_to_a_baseline_is_refused_even_without_a_champion():
    s = _scores()
    weak = _one("churn_risk", s, "champion", champion=None,
                baselines={"logistic_regression": 0.6, "rfm_heuristic": 0.8})
    v = _gate([weak], champion=None)
    assert not v.promoted and v.failed == "baseline"
    assert f"churn_risk AUC {weak.value:.4f} <= rfm_heuristic 0.8000" in v.reason
    assert "logistic_regression" not in v.reason  # only the comparisons that failed
    # and a challenger that beats its baselines with no champion is promoted, saying so
    ok = _gate([_one("churn_risk", s, "champion", champion=None)], champion=None)
    assert ok.promoted and ok.reason.startswith("no champion yet; beats every baseline")


def test_baselines_are_checked_before_the_champion():
    s = _scores()
    v = _gate([_one("churn_risk", s, "much_better", baselines={"bg_nbd": 0.95})])
    assert not v.promoted and v.failed == "baseline" and v.margin is None


def test_every_output_of_a_multi_output_tag_must_beat_its_baselines():
    s = _scores()
    good = _one("interest_books", s, "much_better", baselines={"rfm_heuristic": 0.7})
    weak = _one("interest_toys", s, "much_better", baselines={"rfm_heuristic": 0.95})
    refused = _gate([good, weak])
    assert not refused.promoted and "interest_toys" in refused.reason and "interest_books" not in refused.reason
    promoted = _gate([good, _one("interest_toys", s, "much_better")])
    assert promoted.promoted and "mean over 2 outputs" in promoted.reason


def test_a_champion_that_cannot_score_refuses_after_the_baselines():
    s = _scores()
    v = _gate([_one("churn_risk", s, "much_better", champion=None)], champion_error="lacks feature(s) ['f9']")
    assert not v.promoted and v.failed == "champion" and "champion v3 cannot score" in v.reason and "f9" in v.reason
    losing = _gate([_one("churn_risk", s, "much_better", champion=None, baselines={"bg_nbd": 0.95})],
                   champion_error="lacks feature(s) ['f9']")
    assert losing.failed == "baseline"


def test_an_undefined_baseline_counts_as_no_skill():
    s = _scores()
    v = _gate([_one("churn_risk", s, "champion", champion=None, baselines={"rfm_heuristic": float("nan")})],
              champion=None)
    assert v.promoted


def test_spearman_tags_are_gated_the_same_way():
    rng = np.random.default_rng(2)
    spend = np.where(rng.random(1500) < 0.4, 0.0, rng.gamma(1.0, 80.0, 1500))
    old, new = spend + rng.normal(0, 120, 1500), spend + rng.normal(0, 30, 1500)
    v = gate("spearman", [GateInput("high_value", float(spearmanr(spend, new).statistic), {"rfm_heuristic": 0.3},
                                    spend, new, old)], champion="1", margin=MARGIN, bootstrap=True, seed=7)
    assert v.promoted and v.bootstrap_lower > 0


# --- through MLflow: the verdict is on the run and in list_models -----------------------------------------------------
class _Column:
    """A 'classifier' whose probability is the logistic of its one input column."""

    def predict_proba(self, x):
        p = 1 / (1 + np.exp(-np.asarray(x, dtype=np.float64)[:, 0]))
        return np.column_stack([1 - p, p])


@pytest.mark.slow
def test_the_verdict_is_logged_on_the_run_and_listed(tmp_path, monkeypatch):
    monkeypatch.delenv(tracking.TRACKING_VAR, raising=False)
    cfg = parse_config({
        "sources": {"t": {"channel": "other", "kind": "transactions", "path": "t.csv",
                          "timestamp": {"column": "ts"}, "identifiers": {"customer_id": "c"},
                          "fields": {"amount": "a"}}},
        "identity": {"identifiers": {"customer_id": {"account": True}}},
    })
    assert cfg.training.promotion_margin == MARGIN and cfg.training.promotion_bootstrap
    client = tracking.connect(Workspace.open(tmp_path), cfg)
    s = _scores(n=600)
    held_out = pd.DataFrame({"persona_id": [f"P{i}" for i in range(600)],
                             **{k: s[k].astype(np.float32) for k in ("champion", "slightly_better", "much_better")}})
    spec = model_tags.get("churn_risk")
    name = tracking.model_name(spec.name)

    def challenger(column: str, baselines: dict[str, float]) -> list[TagResult]:
        model = TagModel(spec.name, spec.kind, [column], {spec.name: _Column()}, 90)
        score = model.predict(None, held_out)[spec.name].to_numpy()
        signature = infer_signature(held_out[[column]], pd.DataFrame({spec.name: score}))
        with mlflow.start_run():
            mlflow.log_params({"metric": "auc", "test_date": "2026-06-01"})
            info = mlflow.pyfunc.log_model(name="model", python_model=model, pip_requirements=["pandas"],
                                           signature=signature, registered_model_name=name)
        version = str(info.registered_model_version)
        client.set_registered_model_alias(name, tracking.CHALLENGER, version)
        return [TagResult(spec.name, "auc", float(rank_metric("auc", s["y"], score)[0]), baselines, version=version,
                          details={"y": s["y"], "score": score})]

    promote = lambda results: promote_challenger(client, spec, results, held_out, cfg)  # noqa: E731
    first = promote(challenger("champion", {"rfm_heuristic": 0.9}))  # loses to its baseline, no champion yet
    assert not first["promoted"] and first["gate"] == "refused" and first["failed"] == "baseline"
    assert tracking.alias_version(client, name, tracking.CHAMPION) is None
    second = promote(challenger("champion", {"rfm_heuristic": 0.6}))
    assert second["promoted"] and "no champion yet" in second["reason"]
    third = promote(challenger("slightly_better", {"rfm_heuristic": 0.6}))
    assert not third["promoted"] and third["failed"] == "margin" and 0 < third["margin"] < MARGIN
    fourth = promote(challenger("much_better", {"rfm_heuristic": 0.6}))
    assert fourth["promoted"] and fourth["bootstrap_lower"] > 0
    assert tracking.alias_version(client, name, tracking.CHAMPION) == fourth["challenger_version"]

    runs = {r["version"]: r for r in tracking.list_models(client) if r["model"] == name}
    for verdict in (first, second, third, fourth):
        row = runs[verdict["challenger_version"]]
        assert row["gate"] == verdict["gate"] and row["gate_reason"] == verdict["reason"]
        run = client.get_run(row["run_id"])
        assert run.data.tags[tracking.GATE_TAG] == verdict["gate"]
        assert run.data.tags[tracking.GATE_REASON_TAG] == verdict["reason"]
    assert "rfm_heuristic 0.9000" in runs[first["challenger_version"]]["gate_reason"]
    third_run = client.get_run(runs[third["challenger_version"]]["run_id"])
    assert third_run.data.metrics["gate_margin"] == pytest.approx(third["margin"])
    assert "gate_bootstrap_lower" in third_run.data.metrics
    # a version never put to the gate lists no verdict
    challenger("much_better", {"rfm_heuristic": 0.6})
    latest = max(tracking.list_models(client), key=lambda r: int(r["version"]))
    assert latest["gate"] is None and latest["gate_reason"] is None
