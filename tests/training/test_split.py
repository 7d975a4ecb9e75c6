"""Splits keep the held-out period untouched: training and validation windows end by the held-out date, a log too
short for that holds out customers instead, and labels are sampled (seeded) before the point-in-time join."""

import numpy as np
import pandas as pd
import pytest

from training import split as split_mod
from training.split import EligibilityError, Split, plan_split, sample_labels

D = pd.Timestamp("2026-01-01", tz="UTC")


def grid(n, every=30):
    return [D + pd.Timedelta(days=every * i) for i in range(n)]


def test_split_keeps_training_windows_before_the_held_out_date():
    dates = grid(16)
    end = dates[-1]
    split = plan_split(dates, data_end=end, horizon_days=90, cutoffs=6, tag="churn_risk")
    h = pd.Timedelta(days=90)
    assert split.test + h <= end
    assert split.val + h <= split.test
    assert all(d + h <= split.test for d in split.train)
    assert len(split.train) == 6 and max(split.train) < split.val


def test_split_refuses_too_little_history_naming_the_settings():
    with pytest.raises(EligibilityError, match="too little history.*training.split: auto"):
        plan_split(grid(5), data_end=grid(5)[-1], horizon_days=90, cutoffs=6, tag="churn_risk", mode="time")
    with pytest.raises(EligibilityError, match=r"no snapshot date.*at most 29 days fits \(labels.value_horizon_days\)"):
        plan_split(grid(2), data_end=grid(2)[-1], horizon_days=180, cutoffs=6, tag="high_value",
                   horizon_key="labels.value_horizon_days")


def test_a_short_log_holds_out_customers_instead_of_periods():
    # six months, snapshots every 15 days, a 90-day horizon: no two windows fit before a third
    dates = grid(11, every=15)
    split = plan_split(dates, data_end=dates[-1] + pd.Timedelta(days=10), horizon_days=90, cutoffs=6,
                       tag="churn_risk")
    assert split.customers and split.test + pd.Timedelta(days=90) <= dates[-1] + pd.Timedelta(days=10)
    assert split.val == max(split.train) < split.test
    labels = pd.DataFrame({"persona_id": [f"p{i}" for i in range(400)] * len(dates),
                           "event_timestamp": np.repeat(dates, 400)})
    masks = split_mod.period_masks(labels, split)
    ids = {k: set(labels.loc[m, "persona_id"]) for k, m in masks.items()}
    assert not (ids["test"] & ids["train"]) and not (ids["test"] & ids["val"]) and not (ids["val"] & ids["train"])
    assert 0.1 < len(ids["test"]) / 400 < 0.3 and 0.1 < len(ids["val"]) / 400 < 0.3
    # across the folds every customer is held out exactly once, never by a model that trained on them
    held = [set(labels.loc[split_mod.period_masks(labels, split, fold=k)["test"], "persona_id"])
            for k in range(split_mod.FOLDS)]
    assert sum(len(h) for h in held) == 400 and set().union(*held) == set(labels["persona_id"])
    assert set(labels.loc[masks["test"], "event_timestamp"]) == {split.test}
    # the same customers are held out on every run
    assert (split_mod.customer_fold(pd.Series(["p1", "p2"])) == split_mod.customer_fold(pd.Series(["p1", "p2"]))).all()
    sampled = sample_labels(labels, split, seed=1)
    assert not sampled.duplicated(["persona_id", "event_timestamp"]).any()
    when = pd.to_datetime(sampled["event_timestamp"], utc=True)
    assert when.max() == split.test and len(sampled) == 400 * int((pd.Series(dates) <= split.test).sum())


def test_labels_are_sampled_per_period_before_the_join_and_the_sample_is_seeded(monkeypatch):
    monkeypatch.setattr(split_mod, "MAX_TRAIN_ROWS", 50)
    monkeypatch.setattr(split_mod, "MAX_EVAL_ROWS", 30)
    dates = grid(5)
    split = Split(train=dates[:3], val=dates[3], test=dates[4])
    labels = pd.DataFrame({"persona_id": [f"p{i}" for i in range(40)] * 5,
                           "event_timestamp": np.repeat(dates, 40), "label": np.arange(200) % 2})
    got = sample_labels(labels, split, seed=1)
    per_date = got.groupby("event_timestamp").size()
    assert per_date.loc[dates[:3]].sum() == 50  # 120 training rows capped to 50 over the training dates
    assert per_date.loc[dates[3]] == 30 and per_date.loc[dates[4]] == 30
    assert not got.duplicated(["persona_id", "event_timestamp"]).any()
    assert got.equals(sample_labels(labels, split, seed=1))
    small = labels[labels["persona_id"].isin([f"p{i}" for i in range(10)])]  # under the caps: every row kept
    assert len(sample_labels(small, split, seed=1)) == len(small) == 50
