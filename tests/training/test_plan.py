"""What a run trains comes from the registry of model tags (features/model_tags.py), with no per-tag code: the
plan lists every entry with its horizon, and the names an entry gives its baselines and buy-till-you-die families
resolve to implementations here, or the run is refused before anything is fitted."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from features import model_tags
from features.model_tags import ModelTag
from persona.cli import app
from persona.config import ConfigError, parse_config
from persona.workspace import Workspace
from training import candidates as cand
from training import models as mdl
from training.btyd import BetaGeoModel
from training.train import UnknownTagError, tag_specs, train

CONFIG = {
    "sources": {"t": {"channel": "other", "kind": "transactions", "path": "t.csv", "timestamp": {"column": "ts"},
                      "identifiers": {"customer_id": "c"}, "fields": {"amount": "a"}}},
    "identity": {"identifiers": {"customer_id": {"account": True}}},
    "labels": {"churn_horizon_days": 60, "value_horizon_days": 120, "interest_horizon_days": 21},
}


def _labels(con, source, *, dates, horizon_days):  # never called here: the plan does not read data
    raise AssertionError("the plan reads no labels")


def test_the_plan_is_the_registry_with_horizons_from_persona_yaml(monkeypatch):
    cfg = parse_config(CONFIG)
    plan = tag_specs(cfg)
    assert [(s.tag, s.kind, s.metric, s.horizon_days) for s in plan] == [
        ("churn_risk", "probability", "auc", 60), ("high_value", "value", "spearman", 120),
        ("interest", "probability", "auc", 21)]
    toy = ModelTag("repeat_buyer", "probability", "auc", 45, _labels, ("transactions",),
                   baselines={"rfm_heuristic": "rfm_value"}, process={"bg_nbd": "btyd_churn"})
    monkeypatch.setattr(model_tags, "MODEL_TAGS", (*model_tags.MODEL_TAGS, toy))
    last = tag_specs(cfg)[-1]
    assert last.entry is toy and (last.tag, last.horizon_days) == ("repeat_buyer", 45)


@pytest.mark.parametrize("change, message", [
    ({"baselines": {"rfm_heuristic": "rfm_loyalty"}}, "names baseline 'rfm_loyalty': training knows the baselines"),
    ({"process": {"bg_nbd": "btyd_loyalty"}}, "names process family 'btyd_loyalty'.*training.candidates"),
])
def test_an_entry_naming_an_unknown_implementation_is_refused_before_training(monkeypatch, change, message):
    toy = ModelTag(**{**dict(name="repeat_buyer", kind="probability", metric="auc", horizon=45, labels=_labels,
                             groups=("transactions",)), **change})
    monkeypatch.setattr(model_tags, "MODEL_TAGS", (*model_tags.MODEL_TAGS, toy))
    with pytest.raises(ValueError, match=message):
        tag_specs(parse_config(CONFIG))


def test_a_tag_the_registry_does_not_hold_is_refused_before_the_workspace_is_read(tmp_path, monkeypatch):
    # tmp_path holds no persona.yaml, no data: the names alone are checked, and first
    with pytest.raises(UnknownTagError, match=r"no model tag 'churn', 'valu' to train \(known: churn_risk, high_value, "
                                              r"interest; features/model_tags.py\)") as refused:
        train(Workspace.open(tmp_path), tags=["churn_risk", "churn", "valu"])
    assert isinstance(refused.value, ConfigError)  # what the command line prints, exiting 2
    done = CliRunner().invoke(app, ["train", "-w", str(tmp_path), "--tag", "interest_books"])
    assert done.exit_code == 2 and "no model tag 'interest_books'" in done.output, done.output
    toy = ModelTag("repeat_buyer", "probability", "auc", 45, _labels, ("transactions",))
    monkeypatch.setattr(model_tags, "MODEL_TAGS", (*model_tags.MODEL_TAGS, toy))
    with pytest.raises(UnknownTagError, match="known: churn_risk, high_value, interest, repeat_buyer;"):
        train(Workspace.open(tmp_path), tags=["repeat"])  # the registry as it is when asked


def test_heuristics_score_the_output_they_are_named_for():
    frame = pd.DataFrame({"tx_recency_days": [5.0, 200.0], "tx_count_365d": [9.0, 1.0], "tx_spend_365d": [900.0, 20.0],
                          "aff_buy_books_365d": [0.0, 3.0], "aff_view_books_90d": [4.0, 0.0]})
    churn = mdl.HEURISTICS["rfm_churn"](frame, None)
    assert churn[1] > churn[0]  # the lapsed, light buyer churns first
    assert mdl.HEURISTICS["rfm_value"](frame, None).tolist() == [900.0, 20.0]
    books = mdl.HEURISTICS["rfm_interest"](frame, "books")  # the key: the category of interest_books
    assert books[1] > books[0]


def test_process_families_are_built_from_the_outputs_inputs():
    at = {c: i for i, c in enumerate([*cand.BTYD_INPUTS, "tx_aov_365d", "tx_count_365d", "aff_buy_books_365d"])}
    rng = np.random.default_rng(0)
    n = 400
    f = rng.poisson(2, n).astype(float)
    t = rng.uniform(100, 300, n)
    r = np.minimum(t, rng.uniform(0, 300, n) * (f > 0))
    bg = BetaGeoModel(penalizer=0.001).fit(f, r, t)
    x = np.column_stack([f, r, t, rng.gamma(2, 30, n), f, rng.poisson(1, n)]).astype(np.float32)
    y = (rng.random(n) < 0.3).astype(int)
    inputs = cand.ProcessInputs("probability", 90, "books", at, bg, None, {"train": x, "val": x, "test": x},
                                {"train": y, "val": y, "test": y}, seed=7)
    churn = cand.PROCESS_FAMILIES["btyd_churn"](inputs)
    assert isinstance(churn, cand.Calibrated) and isinstance(churn.model, cand.BtydChurn)
    interest = cand.PROCESS_FAMILIES["btyd_interest"](inputs).model
    assert (interest.buys, interest.total) == ("aff_buy_books_365d", "tx_count_365d")
    other = cand.PROCESS_FAMILIES["btyd_interest"](cand.ProcessInputs(**{**inputs.__dict__, "key": "toys"})).model
    assert other.buys is None  # no such feature: the category's share is the prior
    value = cand.PROCESS_FAMILIES["btyd_value"](cand.ProcessInputs(**{**inputs.__dict__, "kind": "value"}))
    assert isinstance(value, cand.BtydValue) and value.aov == "tx_aov_365d"
    assert np.isfinite(value.predict(x)).all() and np.isfinite(churn.predict_proba(x)).all()
