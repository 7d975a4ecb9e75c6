"""Real-time features (`rt_`): the last activity and the views and cart adds of the last hour and day.

These are the columns serving later overwrites with live values in the online store, so the batch values here must
mean exactly what the live ones will: counts over [as_of - 1 h, as_of) and [as_of - 24 h, as_of), and the epoch
seconds of the last event or transaction strictly before as_of.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import numpy as np
import pandas as pd
import pyarrow.compute as pc

from features.transactions import (T_US, FeatureBlock, PeriodTable, Periods, by_offset, columns_of, empty_frame,
                                   require)

HOUR_US = 3_600_000_000
COUNTS = {"rt_views_1h": ("product_view", 1), "rt_cart_adds_1h": ("cart_add", 1),
          "rt_views_24h": ("product_view", 24), "rt_cart_adds_24h": ("cart_add", 24)}


def realtime_features(con: duckdb.DuckDBPyConnection, source: str | None, *, as_of_dates: Sequence[pd.Timestamp],
                      transactions: str | None = None) -> pd.DataFrame:
    """`rt_` features for every persona with any event or transaction before each as_of date.

    `source`: app events (persona_id, ts, event_type) or None; `transactions` (persona_id, ts) or None.
    rt_last_event_ts is int64 epoch seconds (floored); the counts are float32 and absent without events'
    event_type.
    """
    ev_cols = columns_of(con, source) if source else set()
    if source:
        require(ev_cols, ["persona_id", "ts"], source)
    if transactions:
        require(columns_of(con, transactions), ["persona_id", "ts"], transactions)
    if not source and not transactions:
        raise ValueError("realtime_features needs events or transactions (both were None)")
    return by_offset(_realtime, as_of_dates, con=con, source=source, transactions=transactions,
                     has_type="event_type" in ev_cols)


def _realtime(dates: pd.DatetimeIndex, off: int, *, con: duckdb.DuckDBPyConnection, source: str | None,
              transactions: str | None, has_type: bool) -> pd.DataFrame:
    counted = bool(source and has_type)
    names = list(COUNTS) if counted else []
    if not len(dates):
        return empty_frame(["rt_last_event_ts", *names], int64=["rt_last_event_ts"])
    per = Periods.of(dates, off, [])
    parts = [f"SELECT persona_id, {per.day_sql()} AS day, max({T_US}) AS last_t FROM {rel} "
             f"WHERE {per.keep_sql()} GROUP BY ALL" for rel in (source, transactions) if rel]
    tab = PeriodTable.fetch(con, f"""
        SELECT persona_id, {per.period_sql("day")} AS j, max(last_t) AS last_t, count(*)::INTEGER AS n
        FROM ({" UNION ALL ".join(parts)}) GROUP BY ALL""", per)
    out = FeatureBlock(per, tab.pids, tab.cumsum("n"), names)
    last = tab.running("last_t", "max")
    out.put_int64("rt_last_event_ts", lambda k: np.nan_to_num(last[:, per.at(k)]) // 1_000_000)
    del last
    if counted:
        # Only the last day before each date matters: those events are read once and matched to dates exactly.
        lo = int(dates[0].value // 1000) - 24 * HOUR_US
        as_of = ", ".join(f"({k}, {u}::BIGINT)" for k, u in enumerate(per.as_of_us))
        recent = con.sql(f"""
            WITH d(k, as_of_us) AS (VALUES {as_of})
            SELECT e.persona_id, d.k,
                   count(*) FILTER (WHERE e.event_type = 'product_view' AND e.t >= d.as_of_us - {HOUR_US}) AS v1,
                   count(*) FILTER (WHERE e.event_type = 'cart_add' AND e.t >= d.as_of_us - {HOUR_US}) AS c1,
                   count(*) FILTER (WHERE e.event_type = 'product_view') AS v24,
                   count(*) FILTER (WHERE e.event_type = 'cart_add') AS c24
            FROM (SELECT persona_id, {T_US} AS t, event_type FROM {source}
                  WHERE {per.keep_sql()} AND {T_US} >= {lo} AND event_type IN ('product_view', 'cart_add')) e
            JOIN d ON e.t < d.as_of_us AND e.t >= d.as_of_us - {24 * HOUR_US}
            GROUP BY ALL""").to_arrow_table()
        code = pc.index_in(recent.column("persona_id"), value_set=tab.pids).to_numpy(zero_copy_only=False)
        kk = recent.column("k").to_numpy(zero_copy_only=False)
        for name, col in zip(COUNTS, ("v1", "c1", "v24", "c24")):
            values = recent.column(col).to_numpy(zero_copy_only=False).astype(np.float32)
            dense = np.zeros((len(dates), tab.n_personas), dtype=np.float32)
            dense[kk, code] = values
            out.put(name, lambda k, dense=dense: dense[k])
    return out.frame(order=["rt_last_event_ts", *names])
