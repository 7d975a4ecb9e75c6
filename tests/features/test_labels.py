"""Labels look only at the window after a snapshot date; splits keep the held-out period untouched."""

import duckdb
import numpy as np
import pandas as pd
import pytest

from features import labels as lab
from training.metrics import calibration_table, classification_metrics, grade, regression_metrics
from training import split as split_mod
from training.split import EligibilityError, Split, plan_split, sample_labels

D = pd.Timestamp("2026-01-01", tz="UTC")


def tx(*rows):
    frame = pd.DataFrame(rows, columns=["persona_id", "ts", "amount", "category", "is_return"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame


@pytest.fixture
def con():
    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")
    return c


def test_churn_label_window_edges(con):
    con.register("t", tx(
        ("a", "2025-12-01", 10, "food", False),   # bought before; buys again inside the window -> 0
        ("a", "2026-03-31", 10, "food", False),   # day 89 after D: inside a 90-day window
        ("b", "2025-12-01", 10, "food", False),   # bought before; next purchase on day 90 exactly -> churned
        ("b", "2026-04-01", 10, "food", False),
        ("c", "2026-01-05", 10, "food", False),   # first purchase after D: not eligible at D
        ("d", "2025-11-01", 10, "food", False),   # returns do not count as purchases
        ("d", "2026-01-10", 10, "food", True),
    ))
    got = lab.churn_labels(con, "t", dates=[D], horizon_days=90).set_index("persona_id")["label"]
    assert got.to_dict() == {"a": 0, "b": 1, "d": 1}


def test_a_future_purchase_never_changes_an_earlier_dates_label_beyond_its_window(con):
    base = [("a", "2025-12-01", 10, "food", False)]
    con.register("t1", tx(*base))
    con.register("t2", tx(*base, ("a", "2026-06-01", 99999, "food", False)))
    for table in ("t1", "t2"):
        assert lab.churn_labels(con, table, dates=[D], horizon_days=90)["label"].tolist() == [1]
        assert lab.value_labels(con, table, dates=[D], horizon_days=90)["label"].tolist() == [0.0]


def test_value_label_sums_spend_in_window(con):
    con.register("t", tx(("a", "2025-10-01", 5, "food", False), ("a", "2026-01-02", 20, "food", False),
                         ("a", "2026-02-01", 30.5, "home", False), ("a", "2026-02-02", 7, "home", True)))
    got = lab.value_labels(con, "t", dates=[D], horizon_days=60)
    assert got["label"].tolist() == [43.5]  # net: 20 + 30.5 bought, 7 returned


def test_interest_labels_per_category_for_whole_population(con):
    con.register("t", tx(("a", "2025-10-01", 5, "food", False), ("a", "2026-01-02", 20, "home", False),
                         ("b", "2025-10-01", 5, "food", False)))
    population = pd.DataFrame({"persona_id": ["a", "b"], "event_timestamp": [D, D]})
    got = lab.interest_labels(con, "t", dates=[D], horizon_days=30, population=population).set_index("persona_id")
    assert got.loc["a", "home"] == 1 and got.loc["b", "home"] == 0
    assert "food" not in got.columns or got["food"].sum() == 0


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


def test_classification_metrics_and_calibration():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=20000)
    y = (rng.uniform(size=p.size) < p).astype(int)  # perfectly calibrated by construction
    m = classification_metrics(y, p)
    assert 0.81 < m["auc"] < 0.86 and m["ece"] < 0.02  # calibrated uniform scores: AUC = 5/6
    assert m["lift_top_decile"] > 1.5 and 0 < m["capture_top_decile"] < 1
    cal = calibration_table(y, p)
    assert np.allclose(cal["predicted"], cal["observed"], atol=0.03)
    assert grade("auc", m["auc"]) == "excellent" and grade("auc", 0.65) == "fair" and grade("auc", 0.55) == "poor"


def test_regression_metrics():
    actual = np.array([0, 0, 10, 100, 1000.0] * 20)
    m = regression_metrics(actual, actual * 2)
    # The top 10 of 100 rows are half of the twenty 1000s: 10,000 of 22,200.
    assert m["spearman"] == pytest.approx(1.0) and m["capture_top_decile"] == pytest.approx(10000 / 22200)
    assert grade("spearman", 0.5) == "good"


def test_amount_policy_zero_orders_count_refunds_do_not(con):
    # a: only a $0 order inside the window -> came back (not churned), value 0
    # b: a refund (negative amount, no flag) inside the window -> churned; its amount comes off the spend
    # c: bought 50 and refunded 80 in the window -> value floored at 0, not churned (the purchase counts)
    # e: a $0 order before the date is a purchase occasion: e is scored at D
    con.register("t", tx(
        ("a", "2025-12-01", 10, "food", False), ("a", "2026-01-10", 0, "food", False),
        ("b", "2025-12-01", 10, "food", False), ("b", "2026-01-10", -10, "food", False),
        ("c", "2025-12-01", 10, "food", False), ("c", "2026-01-10", 50, "home", False),
        ("c", "2026-01-11", -80, "home", False),
        ("e", "2025-12-01", 0, "food", False), ("e", "2026-01-20", 30, "home", False),
        ("f", "2025-12-01", -5, "food", False),  # only a refund before D: not a customer yet
    ))
    churn = lab.churn_labels(con, "t", dates=[D], horizon_days=60).set_index("persona_id")["label"].to_dict()
    value = lab.value_labels(con, "t", dates=[D], horizon_days=60).set_index("persona_id")["label"].to_dict()
    assert churn == {"a": 0, "b": 1, "c": 0, "e": 0}
    assert value == {"a": 0.0, "b": 0.0, "c": 0.0, "e": 30.0}
    pop = lab.value_labels(con, "t", dates=[D], horizon_days=60)[["persona_id", "event_timestamp"]]
    interest = lab.interest_labels(con, "t", dates=[D], horizon_days=60, population=pop).set_index("persona_id")
    # a's $0 food order is a purchase in food; c's refund in home does not undo its purchase in home
    assert interest.loc["a", "food"] == 1 and interest.loc["c", "home"] == 1 and interest.loc["b", "food"] == 0


def test_interest_labels_without_a_category_column_have_no_label_columns(con):
    frame = tx(("a", "2025-12-01", 10, None, False), ("a", "2026-01-10", 10, None, False)).drop(columns="category")
    con.register("t", frame)
    pop = lab.value_labels(con, "t", dates=[D], horizon_days=60)[["persona_id", "event_timestamp"]]
    out = lab.interest_labels(con, "t", dates=[D], horizon_days=60, population=pop)
    assert list(out.columns) == ["persona_id", "event_timestamp"] and len(out) == 1
