"""Transaction features for sparse buyers and the amount policy, on a hand-made log with exact expected values.

Four customers, two snapshot dates (midnight UTC): a one-time buyer, a regular buyer (every 14 days, all on
Wednesdays), a customer with a $0 order, a negative-amount refund and a flagged refund, and a seasonal buyer.
"""

import duckdb
import numpy as np
import pandas as pd
import pytest

from features.affinity import affinity_features
from features.transactions import transaction_features

APRIL, JULY = pd.Timestamp("2026-04-01", tz="UTC"), pd.Timestamp("2026-07-01", tz="UTC")  # Q2, Q3
REGULAR_DAYS = pd.date_range("2026-04-01", periods=7, freq="14D", tz="UTC")  # Wednesdays, 04-01 .. 06-24


def _log() -> pd.DataFrame:
    rows = [
        ("ONCE", "2026-05-10 10:00", 30.0, False, "music"),  # a Sunday
        *[("REGULAR", f"{d:%Y-%m-%d %H:%M}", 20.0, False, "music") for d in REGULAR_DAYS],
        ("REGULAR", "2026-07-01 00:00", 999.0, False, "music"),  # exactly at JULY: not seen by it
        ("ZERO_REFUND", "2026-03-02 09:00", 100.0, False, "books"),  # a Monday
        ("ZERO_REFUND", "2026-03-02 18:00", 0.0, False, "books"),  # a $0 order on the same day
        ("ZERO_REFUND", "2026-06-20 12:00", 0.0, False, "books"),  # a $0 order on a Saturday
        ("ZERO_REFUND", "2026-06-25 12:00", -40.0, False, "books"),  # a refund as a negative amount
        ("ZERO_REFUND", "2026-06-26 12:00", 25.0, True, "books"),  # a refund flagged is_return
        ("SEASONAL", "2025-07-15 08:00", 50.0, False, "music"),  # Q3, a Tuesday
        ("SEASONAL", "2025-12-20 08:00", 70.0, False, "music"),  # Q4, a Saturday
        ("SEASONAL", "2026-03-10 08:00", 60.0, False, "music"),  # Q1, a Tuesday
    ]
    tx = pd.DataFrame(rows, columns=["persona_id", "ts", "amount", "is_return", "category"])
    return tx.assign(ts=pd.to_datetime(tx["ts"], utc=True))


def features(tx: pd.DataFrame, dates=(APRIL, JULY)) -> pd.DataFrame:
    con = duckdb.connect(config={"threads": 1})
    con.register("tx", tx)
    got = transaction_features(con, "tx", as_of_dates=list(dates))
    return got.set_index(["persona_id", got["event_timestamp"].dt.month]).drop(columns="event_timestamp")


@pytest.fixture(scope="module")
def got() -> pd.DataFrame:
    return features(_log())


def check(row: pd.Series, expected: dict) -> None:
    for name, value in expected.items():
        if np.isnan(value):
            assert np.isnan(row[name]), (name, row[name])
        else:
            assert row[name] == pytest.approx(value, rel=1e-6, abs=1e-5), (name, row[name], value)


def test_one_time_buyer(got):
    check(got.loc[("ONCE", 7)], {
        "tx_count_all": 1, "tx_spend_all": 30, "tx_tenure_days": 51 + 14 / 24, "tx_recency_days": 51 + 14 / 24,
        "tx_ipi_mean_days": np.nan, "tx_ipi_std_days": np.nan, "tx_ipi_cv": np.nan, "tx_ipi_last_days": np.nan,
        "tx_recency_over_ipi": np.nan, "tx_weekend_share": 1, "tx_same_quarter_share": 0,
        "tx_btyd_frequency": 0, "tx_btyd_recency": 0, "tx_btyd_T": 52, "tx_btyd_monetary": 0})
    assert ("ONCE", 4) not in got.index  # first purchase after APRIL


def test_regular_buyer(got):
    check(got.loc[("REGULAR", 7)], {
        "tx_count_all": 7, "tx_spend_all": 140, "tx_tenure_days": 91, "tx_recency_days": 7,
        "tx_ipi_mean_days": 14, "tx_ipi_std_days": 0, "tx_ipi_cv": 0, "tx_ipi_last_days": 14,
        "tx_recency_over_ipi": 0.5, "tx_weekend_share": 0, "tx_same_quarter_share": 0,
        # 90 days = [04-02, 07-01): six orders; the 90 before hold the one of 04-01
        "tx_count_90d": 6, "tx_spend_90d": 120, "tx_count_diff_90d": 5, "tx_count_trend": 6 / 2,
        "tx_spend_diff_90d": 100, "tx_spend_trend": 120 / 21, "tx_aov_365d": 20,
        "tx_btyd_frequency": 6, "tx_btyd_recency": 84, "tx_btyd_T": 91, "tx_btyd_monetary": 20})


def test_zero_orders_and_refunds_follow_the_amount_policy(got):
    """$0 orders are purchase occasions worth 0; a negative amount and a flagged row are refunds: no purchase, and
    their absolute amounts come off the (net) spend."""
    check(got.loc[("ZERO_REFUND", 4)], {
        "tx_count_all": 2, "tx_spend_all": 100, "tx_aov_365d": 50, "tx_btyd_frequency": 0,
        "tx_btyd_monetary": 0, "tx_ipi_mean_days": np.nan, "tx_return_rate_365d": 0})
    check(got.loc[("ZERO_REFUND", 7)], {
        "tx_count_all": 3, "tx_spend_all": 100 + 0 + 0 - 40 - 25, "tx_spend_90d": -65, "tx_spend_365d": 35,
        "tx_count_90d": 1, "tx_count_diff_90d": 1 - 2, "tx_count_trend": 1 / 3,
        "tx_spend_diff_90d": -65 - 100, "tx_spend_trend": 0,  # net spend floored at 0 in the ratio
        "tx_aov_365d": 100 / 3, "tx_return_rate_365d": 2 / 5,
        "tx_recency_days": 10.5, "tx_tenure_days": 121 - 9 / 24,  # the last purchase is the $0 order of 06-20
        "tx_ipi_mean_days": 110, "tx_ipi_std_days": np.nan, "tx_ipi_cv": np.nan, "tx_ipi_last_days": 110,
        "tx_recency_over_ipi": 10.5 / 110, "tx_weekend_share": 1 / 3,
        "tx_btyd_frequency": 1, "tx_btyd_recency": 110, "tx_btyd_T": 121,
        "tx_btyd_monetary": 0})  # the repeat day's value is the $0 order


def test_seasonality_is_the_quarter_of_the_snapshot(got):
    check(got.loc[("SEASONAL", 4)], {"tx_same_quarter_share": 0, "tx_weekend_share": 1 / 3})  # Q2: none
    check(got.loc[("SEASONAL", 7)], {"tx_same_quarter_share": 1 / 3,  # Q3: the order of 2025-07-15
                                     "tx_ipi_mean_days": 119, "tx_ipi_last_days": 80,
                                     "tx_ipi_std_days": np.std([158, 80], ddof=1),
                                     "tx_ipi_cv": np.std([158, 80], ddof=1) / 119})


def test_a_row_at_the_snapshot_is_not_seen(got):
    """Point in time: REGULAR's first order is at APRIL 00:00 and an order of 999 at JULY 00:00; neither is seen by
    its date, and removing the rows at or after a date changes nothing for it."""
    assert ("REGULAR", 4) not in got.index
    assert got.loc[("REGULAR", 7), "tx_spend_all"] == 140
    tx = _log()
    for date, month in ((APRIL, 4), (JULY, 7)):
        alone = features(tx[tx.ts < date], [date])
        pd.testing.assert_frame_equal(alone, got.xs(month, level=1, drop_level=False), check_exact=True)


def test_a_missing_amount_is_refused_with_its_relation():
    tx = _log()
    tx.loc[3, "amount"] = np.nan
    with pytest.raises(ValueError, match=r"tx: 1 transaction\(s\) .* have no amount .*quarantines"):
        features(tx)
    # after the last date it is not read at all
    later = pd.concat([_log(), pd.DataFrame({"persona_id": ["ONCE"], "ts": pd.to_datetime(["2026-08-01"], utc=True),
                                             "amount": [np.nan], "is_return": [False], "category": ["music"]})])
    assert len(features(later)) == len(features(_log()))


def test_refunds_are_not_category_purchases():
    con = duckdb.connect(config={"threads": 1})
    con.register("tx", _log())
    aff = affinity_features(con, "tx", as_of_dates=[JULY]).set_index("persona_id")
    assert aff.loc["ZERO_REFUND", "aff_buy_books_365d"] == 3  # 100, $0, $0; not the two refunds
    assert aff.loc["REGULAR", "aff_buy_music_365d"] == 7
