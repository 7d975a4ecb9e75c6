"""The registry of model tags: each entry is checked, read when asked for, and enough on its own to add a tag (the
feature store registers its FeatureService, its label function gives its outputs)."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_repo import definitions as defs
from features import model_tags
from features import store as fs
from features.model_tags import ModelTag
from persona.config import parse_config
from persona.workspace import Workspace
from tests.features.conftest import repeat_labels, tx

D = pd.Timestamp("2026-01-01", tz="UTC")
CONFIG = {
    "sources": {"t": {"channel": "other", "kind": "transactions", "path": "t.csv", "timestamp": {"column": "ts"},
                      "identifiers": {"customer_id": "c"}, "fields": {"amount": "a"}}},
    "identity": {"identifiers": {"customer_id": {"account": True}}},
    "store": {"project": "model_tags_test"},
}


REPEAT = ModelTag("repeat_buyer", "probability", "auc", 45, repeat_labels, ("attributes", "transactions"),
                  baselines={"rfm_heuristic": "rfm_value"})


def test_the_registry_holds_each_model_tag_once_with_what_training_and_the_store_read():
    assert model_tags.names() == ("churn_risk", "high_value", "interest")
    churn, value, interest = (model_tags.get(n) for n in model_tags.names())
    assert (churn.kind, churn.metric, value.kind, value.metric) == ("probability", "auc", "value", "spearman")
    assert [t.service for t in model_tags.registry()] == ["churn_risk_v1", "high_value_v1", "interest_v1"]
    assert model_tags.feature_services() == {
        "churn_risk": ("attributes", "transactions", "engagement", "realtime"),
        "high_value": ("attributes", "transactions", "engagement"),
        "interest": ("attributes", "transactions", "engagement", "affinity", "realtime"),
    }
    assert interest.per_column and not churn.per_column and "category" in interest.no_outputs
    with pytest.raises(KeyError, match="no model tag 'churn'.*churn_risk, high_value, interest"):
        model_tags.get("churn")


def test_a_horizon_is_read_from_persona_yaml_or_fixed_in_the_entry():
    cfg = parse_config({**CONFIG, "labels": {"churn_horizon_days": 60, "value_horizon_days": 120}})
    assert model_tags.get("churn_risk").horizon_days(cfg) == 60
    assert model_tags.get("high_value").horizon_days(cfg) == 120
    assert model_tags.get("interest").horizon_days(cfg) == cfg.labels.interest_horizon_days
    # where to change it, as error messages say
    assert model_tags.get("high_value").horizon_key == "labels.value_horizon_days"
    assert REPEAT.horizon_days(cfg) == 45 and "repeat_buyer" in REPEAT.horizon_key
    unknown = ModelTag("x", "value", "spearman", "x_horizon_days", repeat_labels, ("transactions",))
    with pytest.raises(ValueError, match="persona.yaml has no labels.x_horizon_days"):
        unknown.horizon_days(cfg)


@pytest.mark.parametrize("change, message", [
    ({"kind": "score"}, "kind 'score' is not one of"),
    ({"metric": "spearman"}, "a probability tag is judged by auc, not 'spearman'"),
    ({"name": "Repeat-Buyer"}, "a name is a lowercase identifier"),
    ({"groups": ()}, "no feature group"),
    # a typo would silently drop the group from the FeatureService
    ({"groups": ("transactions", "transaction", "realtme")},
     r"'repeat_buyer': unknown feature group\(s\) \['transaction', 'realtme'\]; the groups are "
     + ", ".join(defs.GROUPS)),
])
def test_an_entry_is_checked_when_it_is_written(change, message):
    fields = dict(name="repeat_buyer", kind="probability", metric="auc", horizon=30, labels=repeat_labels,
                  groups=("transactions",))
    with pytest.raises(ValueError, match=message):
        ModelTag(**{**fields, **change})


def test_label_frames_name_the_outputs_one_per_tag_or_one_per_column(con):
    con.register("t", tx(("a", "2025-12-01", 10, "food", False), ("a", "2026-01-05", 10, "home", False),
                         ("b", "2025-12-01", 10, "food", False)))
    frame, outputs = model_tags.get("churn_risk").label_frame(con, "t", dates=[D], horizon_days=30)
    assert outputs == {"churn_risk": "label"} and frame.set_index("persona_id")["label"].to_dict() == {"a": 0, "b": 1}
    interest = model_tags.get("interest")
    frame, outputs = interest.label_frame(con, "t", dates=[D], horizon_days=30)
    # one output per category bought in some window, its label column renamed so it cannot clash with a feature
    assert outputs == {"interest_home": "label_home"}
    assert frame.set_index("persona_id")["label_home"].to_dict() == {"a": 1, "b": 0}
    assert interest.key("interest_home") == "home" and model_tags.get("churn_risk").key("churn_risk") is None
    con.register("u", tx(("a", "2025-12-01", 10, None, False)).drop(columns="category"))
    assert interest.label_frame(con, "u", dates=[D], horizon_days=30)[1] == {}  # no category: no output


def test_a_single_output_label_function_must_give_a_label_column(con):
    con.register("t", tx(("a", "2025-12-01", 10, "food", False)))
    broken = ModelTag("broken", "value", "spearman", 30, lambda con, source, *, dates, horizon_days:
                      pd.DataFrame({"persona_id": ["a"], "event_timestamp": [D], "spend": [1.0]}), ("transactions",))
    with pytest.raises(ValueError, match="'broken': its label function returned no `label` column"):
        broken.label_frame(con, "t", dates=[D], horizon_days=30)


def test_a_name_registered_twice_is_refused(monkeypatch):
    monkeypatch.setattr(model_tags, "MODEL_TAGS", (*model_tags.MODEL_TAGS, model_tags.get("interest")))
    with pytest.raises(ValueError, match=r"model tags named twice: \['interest'\]"):
        model_tags.names()


def _snapshot(root, group: str, feature: str) -> None:
    """A one-feature snapshot of `group` for personas a and b at D."""
    when = pa.array([D, D], pa.timestamp("us", tz="UTC"))
    path = fs.offline_dir(Workspace.open(root)) / f"{group}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"persona_id": ["a", "b"], "event_timestamp": when, "created_timestamp": when,
                             feature: pa.array([1.0, 2.0], pa.float64())}), path)


def test_a_new_model_tag_is_one_entry_plus_its_label_function(tmp_path, monkeypatch, con):
    monkeypatch.setattr(model_tags, "MODEL_TAGS", (*model_tags.MODEL_TAGS, REPEAT))
    assert model_tags.names()[-1] == "repeat_buyer" and model_tags.get("repeat_buyer") is REPEAT
    assert model_tags.feature_services()["repeat_buyer"] == ("attributes", "transactions")

    # the feature store registers its FeatureService, and reads it point in time
    _snapshot(tmp_path, "attributes", "attr_score")
    _snapshot(tmp_path, "transactions", "tx_count_365d")
    ws = Workspace.open(tmp_path)
    cfg = parse_config(CONFIG)
    store = fs.open_store(ws, cfg)
    assert "repeat_buyer_v1" in fs.apply(store, ws, cfg)
    got = fs.historical_features(store, REPEAT.service, pd.DataFrame({"persona_id": ["b"], "event_timestamp": [D]}))
    assert got[["attr_score", "tx_count_365d"]].to_numpy().tolist() == [[2.0, 2.0]]

    # its label function gives its one output
    con.register("t", tx(("a", "2025-12-01", 10, "food", False), ("a", "2026-01-03", 10, "food", False),
                         ("a", "2026-02-10", 10, "food", False),  # a: two purchases within 45 days
                         ("b", "2025-12-01", 10, "food", False), ("b", "2026-01-03", 10, "food", False),
                         ("b", "2026-01-04", -10, "food", False)))  # b: one purchase, then a refund
    frame, outputs = REPEAT.label_frame(con, "t", dates=[D], horizon_days=REPEAT.horizon_days(cfg))
    assert outputs == {"repeat_buyer": "label"}
    assert frame.set_index("persona_id")["label"].to_dict() == {"a": 1, "b": 0}
