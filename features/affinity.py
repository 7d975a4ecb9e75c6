"""Category affinity features (`aff_`): views, cart adds and purchases per category in recent windows.

Categories are data, not constants: one set of columns per category seen in the transactions or events (its name
sanitised to [a-z0-9_]), so a new category adds columns rather than being dropped. Point in time: a feature for
`as_of` only sees rows with `ts < as_of`. Records are counted per (persona, period, category) in one query and
windows are differences of running sums (see `features.transactions` for the method).
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import numpy as np
import pandas as pd

from features.transactions import (FeatureBlock, PeriodTable, Periods, by_offset, category_index, columns_of,
                                   empty_frame, ratio, require, return_expr)

WINDOWS = (30, 90, 365)


def affinity_features(con: duckdb.DuckDBPyConnection, source: str | None, *, as_of_dates: Sequence[pd.Timestamp],
                      events: str | None = None) -> pd.DataFrame:
    """`aff_` features for every persona with any transaction or event before each as_of date.

    `source`: transactions (persona_id, ts, category; returns excluded from purchases) or None; `events`: app events
    (persona_id, ts, event_type, category) or None. Per category c: aff_view_{c}_30d, aff_view_{c}_90d,
    aff_cart_{c}_30d and aff_view_share_{c}_90d (its share of the persona's categorised views in 90 days, NaN
    without any) from events; aff_buy_{c}_365d and aff_buy_{c}_90d from transactions. A relation without the
    columns contributes no features (but its personas still get rows).
    """
    tx_cols = columns_of(con, source) if source else set()
    ev_cols = columns_of(con, events) if events else set()
    if source:
        require(tx_cols, ["persona_id", "ts"], source)
    if events:
        require(ev_cols, ["persona_id", "ts"], events)
    if not source and not events:
        raise ValueError("affinity_features needs transactions or events (both were None)")
    use_tx = bool(source) and "category" in tx_cols
    use_ev = bool(events) and {"category", "event_type"} <= ev_cols
    pairs = ([(source, "category")] if use_tx else []) + ([(events, "category")] if use_ev else [])
    categories, cat_map = category_index(con, pairs) if pairs else ([], "-1")
    return by_offset(_affinity, as_of_dates, con=con, source=source, events=events, tx_cols=tx_cols,
                     use_tx=use_tx, use_ev=use_ev, categories=categories, cat_map=cat_map)


def affinity_feature_names(categories: Sequence[str], use_tx: bool, use_ev: bool) -> list[str]:
    names = []
    for c in categories:
        names += [f"aff_view_{c}_30d", f"aff_view_{c}_90d", f"aff_cart_{c}_30d"] if use_ev else []
        names += [f"aff_buy_{c}_365d", f"aff_buy_{c}_90d"] if use_tx else []
        names += [f"aff_view_share_{c}_90d"] if use_ev else []
    return names


def _affinity(dates: pd.DatetimeIndex, off: int, *, con: duckdb.DuckDBPyConnection, source: str | None,
              events: str | None, tx_cols: set[str], use_tx: bool, use_ev: bool, categories: list[str],
              cat_map: str) -> pd.DataFrame:
    names = affinity_feature_names(categories, use_tx, use_ev)
    if not len(dates):
        return empty_frame(names)
    per = Periods.of(dates, off, WINDOWS)
    cat = cat_map.format(col="category")
    parts = []
    # Every record counts for the row set (cat -1 when there is none, or no category column).
    if source:
        buy = f"(NOT ({return_expr(tx_cols)}))::INTEGER" if use_tx else "0"
        parts.append(f"""
            SELECT persona_id, {per.day_sql()} AS day, {cat if use_tx else "-1"} AS cat,
                   0 AS views, 0 AS carts, {buy} AS buys
            FROM {source} WHERE {per.keep_sql()}""")
    if events:
        views = "(event_type = 'product_view')::INTEGER" if use_ev else "0"
        carts = "(event_type = 'cart_add')::INTEGER" if use_ev else "0"
        parts.append(f"""
            SELECT persona_id, {per.day_sql()} AS day, {cat if use_ev else "-1"} AS cat,
                   {views} AS views, {carts} AS carts, 0 AS buys
            FROM {events} WHERE {per.keep_sql()}""")
    tab = PeriodTable.fetch(con, f"""
        SELECT persona_id, {per.period_sql("day")} AS j, cat, count(*)::INTEGER AS n,
               sum(views)::INTEGER AS views, sum(carts)::INTEGER AS carts, sum(buys)::INTEGER AS buys
        FROM ({" UNION ALL ".join(parts)}) GROUP BY ALL""", per)
    out = FeatureBlock(per, tab.pids, tab.cumsum("n"), names)
    at = per.at

    def window(c: np.ndarray, k: int, w: int) -> np.ndarray:
        return c[:, at(k)] - c[:, at(k, w)]

    cats = tab.col("cat")
    if use_ev:
        all_views = tab.cumsum("views", where=cats >= 0)
        total_90 = [window(all_views, k, 90) for k in range(len(dates))]
        del all_views
    for i, c in enumerate(categories):
        mine = cats == i
        if use_ev:
            v, k_ = tab.cumsum("views", where=mine), tab.cumsum("carts", where=mine)
            out.put(f"aff_view_{c}_30d", lambda k: window(v, k, 30))
            out.put(f"aff_view_{c}_90d", lambda k: window(v, k, 90))
            out.put(f"aff_cart_{c}_30d", lambda k: window(k_, k, 30))
            out.put(f"aff_view_share_{c}_90d", lambda k: ratio(window(v, k, 90), total_90[k]))
            del v, k_
        if use_tx:
            b = tab.cumsum("buys", where=mine)
            out.put(f"aff_buy_{c}_365d", lambda k: window(b, k, 365))
            out.put(f"aff_buy_{c}_90d", lambda k: window(b, k, 90))
            del b
    return out.frame()
