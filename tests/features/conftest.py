"""What the label and model-tag tests share: a DuckDB connection in UTC, transactions written row by row, and the
label function of the toy `repeat_buyer` tag that tests add to the registry (tests/training/test_train.py trains
it; import it from here)."""

import duckdb
import pandas as pd
import pytest

from features import labels as lab


def tx(*rows) -> pd.DataFrame:
    """Transactions (persona_id, ts, amount, category, is_return), one tuple a row, `ts` in UTC."""
    frame = pd.DataFrame(rows, columns=["persona_id", "ts", "amount", "category", "is_return"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame


def repeat_labels(con, source, *, dates, horizon_days):
    """The toy tag's label function: two purchase occasions or more in the window (one SQL aggregate)."""
    return lab.customer_labels(con, source, dates=dates, horizon_days=horizon_days,
                               label="CAST(count(*) FILTER (WHERE t.ts >= d.as_of AND t.purchase) >= 2 AS INTEGER)")


@pytest.fixture
def con():
    """A DuckDB connection whose session time zone is UTC, as training's."""
    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")
    yield c
    c.close()
