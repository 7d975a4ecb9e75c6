"""Labels: what each model tag predicts, computed from the purchases in the window after a snapshot date.

A label for snapshot date c looks only at [c, c + horizon); features for c look only before c. A date is
usable only when its whole window is observed (c + horizon <= end of data).

Each model tag names its label function in features/model_tags.py; every one is called alike,
`f(con, source, *, dates, horizon_days)`, and returns persona_id, event_timestamp and a `label` column (or, for a
per-column tag such as interest, one column per output).
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import pandas as pd

from features.transactions import net_amount_expr, return_expr

# Amounts (one policy for features, labels, models and baselines; features/transactions.py applies it to features):
# - a RETURN (refund) is a row flagged `is_return`, with status 'returned', or with a negative amount. It is never a
#   purchase occasion; its absolute amount is subtracted from spend (net spend).
# - a row with amount 0 that is not a return is a purchase occasion worth nothing: the customer came back (churn,
#   frequency, recency count it), spend does not grow.
# So: churn = no purchase occasion in the window; value = max(0, net spend in the window); interest = a purchase
# occasion in the category.


def _dates_table(con: duckdb.DuckDBPyConnection, dates: Sequence[pd.Timestamp]) -> str:
    name = "_label_dates"
    frame = pd.DataFrame({"as_of": pd.to_datetime(list(dates), utc=True).astype("datetime64[us, UTC]")})
    con.register(name, frame)
    return name


def _purchases(con: duckdb.DuckDBPyConnection, source: str) -> str:
    """Every transaction as (persona_id, ts, category, purchase: a purchase occasion?, net: its signed value), by
    the policy features/transactions.py defines (`return_expr`, `net_amount_expr`), so labels and features agree."""
    cols = {c[0] for c in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    ret = return_expr(cols)
    category = "category" if "category" in cols else "NULL::VARCHAR"
    # ts::TIMESTAMPTZ: DuckDB 2.0 will not compare nanosecond and microsecond time-zone timestamps directly.
    return (f"(SELECT persona_id, ts::TIMESTAMPTZ AS ts, {category} AS category, NOT ({ret}) AS purchase, "
            f"coalesce({net_amount_expr(cols)}, 0) AS net FROM {source})")


def labelled_dates(dates: Sequence[pd.Timestamp], *, data_end: pd.Timestamp, horizon_days: int) -> list[pd.Timestamp]:
    """Snapshot dates whose label window is fully observed."""
    return [d for d in dates if d + pd.Timedelta(days=horizon_days) <= data_end]


def customer_labels(con: duckdb.DuckDBPyConnection, source: str, *, dates: Sequence[pd.Timestamp],
                    horizon_days: int, label: str) -> pd.DataFrame:
    """One row per (customer with a purchase occasion before the date, date), with `label`, a SQL aggregate over
    the transactions up to the end of the window (`t.ts >= d.as_of` selects those inside it; `t.purchase` and
    `t.net` follow the amount policy above).

    What most label functions are: churn and value below are each one aggregate, and so is a new model tag's
    (features/model_tags.py) when it is about the customers who have bought."""
    d = _dates_table(con, dates)
    p = _purchases(con, source)
    return con.execute(f"""
        SELECT t.persona_id, d.as_of AS event_timestamp, {label} AS label
        FROM {p} t JOIN {d} d ON t.ts < d.as_of + INTERVAL {int(horizon_days)} DAY
        GROUP BY t.persona_id, d.as_of
        HAVING count(*) FILTER (WHERE t.ts < d.as_of AND t.purchase) > 0
        ORDER BY 2, 1""").df()


def churn_labels(con: duckdb.DuckDBPyConnection, source: str, *, dates: Sequence[pd.Timestamp],
                 horizon_days: int) -> pd.DataFrame:
    """churned = 1 when a customer who bought before the date makes no purchase in the next `horizon_days` (a $0
    order counts as a purchase, a refund does not)."""
    return customer_labels(con, source, dates=dates, horizon_days=horizon_days,
                           label="CAST(count(*) FILTER (WHERE t.ts >= d.as_of AND t.purchase) = 0 AS INTEGER)")


def value_labels(con: duckdb.DuckDBPyConnection, source: str, *, dates: Sequence[pd.Timestamp],
                 horizon_days: int) -> pd.DataFrame:
    """Net spend (purchases minus refunds, floored at 0) in the next `horizon_days` for everyone with a purchase
    before the date (0 for those who do not buy)."""
    return customer_labels(con, source, dates=dates, horizon_days=horizon_days,
                           label="greatest(coalesce(sum(t.net) FILTER (WHERE t.ts >= d.as_of), 0), 0)::DOUBLE")


def interest_labels(con: duckdb.DuckDBPyConnection, source: str, *, dates: Sequence[pd.Timestamp],
                    horizon_days: int, population: pd.DataFrame) -> pd.DataFrame:
    """One 0/1 column per category: bought in it within the next `horizon_days`, for every persona of `population`.

    `population` (persona_id, event_timestamp) lists who is scored at each date (everyone known by then).
    """
    d = _dates_table(con, dates)
    p = _purchases(con, source)
    bought = con.execute(f"""
        SELECT DISTINCT t.persona_id, d.as_of AS event_timestamp, t.category
        FROM {p} t JOIN {d} d ON t.ts >= d.as_of AND t.ts < d.as_of + INTERVAL {int(horizon_days)} DAY
        WHERE t.category IS NOT NULL AND t.purchase""").df()
    out = population[["persona_id", "event_timestamp"]].reset_index(drop=True)
    if bought.empty:  # no category column, or no categorised purchase in any window: no label column
        return out
    bought["event_timestamp"] = pd.to_datetime(bought["event_timestamp"], utc=True)
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True)
    wide = pd.crosstab([bought["persona_id"], bought["event_timestamp"]], bought["category"]).clip(upper=1)
    out = out.merge(wide.reset_index(), on=["persona_id", "event_timestamp"], how="left")
    cats = [c for c in wide.columns]
    out[cats] = out[cats].fillna(0).astype("int8")
    return out


def customer_interest_labels(con: duckdb.DuckDBPyConnection, source: str, *, dates: Sequence[pd.Timestamp],
                             horizon_days: int) -> pd.DataFrame:
    """`interest_labels` for the customers churn and value are labelled for (a purchase occasion before the date):
    the interest tag's label function."""
    population = value_labels(con, source, dates=dates, horizon_days=horizon_days)[["persona_id", "event_timestamp"]]
    return interest_labels(con, source, dates=dates, horizon_days=horizon_days, population=population)
