"""Which candidate serves: the best on the held-out groups, unless a learned model's lead over the best
buy-till-you-die model is within the noise of the groups."""

import numpy as np
import pytest

from training.select import select


def test_a_learned_lead_within_one_standard_error_serves_the_process_model():
    groups = {"bg_nbd_gamma_gamma": np.array([0.19, 0.27, 0.26, 0.37, 0.15]),
              "blend": np.array([0.20, 0.28, 0.27, 0.33, 0.17]),  # ahead by 0.002 on average, noisily
              "lightgbm": np.array([0.20, 0.25, 0.25, 0.32, 0.16])}
    choice = select(groups)
    assert choice.served == "bg_nbd_gamma_gamma" and choice.best == "blend"
    assert set(choice.passed_over) == {"blend"} and choice.passed_over["blend"] == pytest.approx(0.002)
    assert choice.standard_error > 0.002


def test_a_learned_lead_larger_than_the_noise_serves_the_learned_model():
    groups = {"bg_nbd": np.array([0.66, 0.70, 0.68, 0.72, 0.64]),
              "lightgbm": np.array([0.70, 0.73, 0.72, 0.75, 0.69])}  # ahead in every group
    choice = select(groups)
    assert choice.served == "lightgbm" and not choice.passed_over and choice.standard_error is not None


def test_the_best_process_model_serves_without_a_test_and_ties_go_to_the_simpler_family():
    groups = {"bg_nbd": np.array([0.7, 0.6]), "bg_nbd_covariates": np.array([0.72, 0.63]),
              "logistic_regression": np.array([0.71, 0.6])}
    assert select(groups).served == "bg_nbd_covariates"
    tie = {"lightgbm": np.array([0.7, 0.6]), "logistic_regression": np.array([0.7, 0.6])}
    assert select(tie).served == "logistic_regression"  # no process model: the best, the simpler on a tie


def test_an_undefined_group_is_left_out_and_a_failed_candidate_cannot_win():
    groups = {"bg_nbd": np.array([0.60, np.nan, 0.62, 0.61]), "lightgbm": np.array([0.70, 0.9, 0.72, 0.71]),
              "blend": np.full(4, np.nan)}
    choice = select(groups)
    assert choice.served == "lightgbm" and choice.best == "lightgbm"


def test_a_process_family_the_registry_entry_names_is_judged_as_one_whatever_its_name():
    # a family selection does not list (features/model_tags.py: an entry's `process` names its own)
    groups = {"pareto_nbd": np.array([0.66, 0.71, 0.68, 0.72, 0.64]),
              "lightgbm": np.array([0.67, 0.69, 0.69, 0.73, 0.64])}  # ahead by 0.002 on average, noisily
    choice = select(groups, process=("pareto_nbd",))
    assert choice.served == "pareto_nbd" and choice.best == "lightgbm"
    assert set(choice.passed_over) == {"lightgbm"} and choice.passed_over["lightgbm"] == pytest.approx(0.002)
    assert select(groups).served == "lightgbm"  # not named a process family: a learned candidate, the best by mean


def test_on_a_tie_an_unlisted_family_ranks_after_the_listed_ones_then_by_name():
    same = np.array([0.7, 0.6, 0.65])
    process = ("pareto_nbd", "mbg_nbd", "bg_nbd")
    assert select({"pareto_nbd": same, "bg_nbd": same, "mbg_nbd": same}, process).served == "bg_nbd"
    for names in (["pareto_nbd", "mbg_nbd"], ["mbg_nbd", "pareto_nbd"]):  # whatever order they were fitted in
        assert select({n: same for n in names}, process).served == "mbg_nbd"
    assert select({"custom": same, "lightgbm": same}).served == "lightgbm"


def test_absolute_timestamps_are_never_model_inputs():
    import pandas as pd

    from training.train import features_of

    frame = pd.DataFrame({"persona_id": ["a"], "event_timestamp": [pd.Timestamp("2026-01-01", tz="UTC")],
                          "rt_last_event_ts": [1_767_225_600], "rt_views_1h": [2.0], "eng_days_since_last_visit": [3],
                          "label": [1], "city": ["x"]})
    assert features_of(frame, {"label"}) == ["rt_views_1h", "eng_days_since_last_visit"]
