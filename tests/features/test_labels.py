"""Labels look only at the window after a snapshot date, and count purchases and refunds by one amount policy.
(How the labelled dates are split, tests/training/test_split.py; how the held-out period is judged,
tests/training/test_metrics.py.)"""

import pandas as pd

from features import labels as lab
from tests.features.conftest import tx

D = pd.Timestamp("2026-01-01", tz="UTC")


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
