"""Engagement features (`eng_`): sessions, product views, searches and cart adds in the app, social interactions.

Point in time: a feature for date `as_of` only sees events and interactions with `ts < as_of`. Events are counted
per (persona, day) (for active days), then per (persona, period) in one query; windows are differences of running
sums (see `features.transactions` for the method).
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import numpy as np
import pandas as pd

from features.transactions import (DAY_US, T_US, FeatureBlock, PeriodTable, Periods, by_offset, columns_of,
                                   empty_frame, require)

WINDOWS = (7, 30, 90)
# event_type -> feature stem
EVENT_TYPES = {"session_start": "sessions", "product_view": "views", "search": "searches", "cart_add": "cart_adds"}


def engagement_features(con: duckdb.DuckDBPyConnection, source: str | None, *, as_of_dates: Sequence[pd.Timestamp],
                        interactions: str | None = None) -> pd.DataFrame:
    """`eng_` features for every persona with any event or interaction before each as_of date.

    `source`: app events (persona_id, ts, event_type) or None; `interactions`: social interactions (persona_id, ts)
    or None. Without event_type only active days and the last visit are computed; without interactions there are no
    eng_social_* columns; without events only eng_social_*. eng_days_since_last_visit is NaN for a persona with no
    event yet; eng_views_trend = (views in 30 d / 30) / ((views in the 60 d before + 1) / 60).
    """
    ev_cols = columns_of(con, source) if source else set()
    if source:
        require(ev_cols, ["persona_id", "ts"], source)
    if interactions:
        require(columns_of(con, interactions), ["persona_id", "ts"], interactions)
    if not source and not interactions:
        raise ValueError("engagement_features needs events or interactions (both were None)")
    return by_offset(_engagement, as_of_dates, con=con, source=source, has_type="event_type" in ev_cols,
                     interactions=interactions)


def _engagement(dates: pd.DatetimeIndex, off: int, *, con: duckdb.DuckDBPyConnection, source: str | None,
                has_type: bool, interactions: str | None) -> pd.DataFrame:
    stems = list(EVENT_TYPES.values()) if (source and has_type) else []
    names = [f"eng_{s}_{w}d" for s in stems for w in WINDOWS]
    names += ["eng_active_days_30d", "eng_days_since_last_visit"] if source else []
    names += ["eng_views_trend"] if stems else []
    names += [f"eng_social_{w}d" for w in (30, 90)] if interactions else []
    if not len(dates):
        return empty_frame(names)
    per = Periods.of(dates, off, WINDOWS)
    parts = []
    if source:
        counts = "".join(f", sum((event_type = '{t}')::INTEGER) AS {s}" for t, s in EVENT_TYPES.items() if s in stems)
        parts.append(f"""
            SELECT persona_id, {per.day_sql()} AS day, count(*)::INTEGER AS events, 1 AS active, max({T_US}) AS last_t,
                   0 AS social{counts}
            FROM {source} WHERE {per.keep_sql()} GROUP BY ALL""")
    if interactions:
        zeros = "".join(f", 0 AS {s}" for s in stems)
        parts.append(f"""
            SELECT persona_id, {per.day_sql()} AS day, 0 AS events, 0 AS active, NULL::BIGINT AS last_t,
                   1 AS social{zeros}
            FROM {interactions} WHERE {per.keep_sql()}""")
    sums = "".join(f", sum({c})::INTEGER AS {c}" for c in ["events", "active", "social", *stems])
    tab = PeriodTable.fetch(con, f"""
        SELECT persona_id, {per.period_sql("day")} AS j, max(last_t) AS last_t{sums}
        FROM ({" UNION ALL ".join(parts)}) GROUP BY ALL""", per)
    out = FeatureBlock(per, tab.pids, tab.cumsum(tab.col("events") + tab.col("social")), names)
    at = per.at

    def window(c: np.ndarray, k: int, w: int) -> np.ndarray:
        return c[:, at(k)] - c[:, at(k, w)]

    for s in stems:
        c = tab.cumsum(s)
        for w in WINDOWS:
            out.put(f"eng_{s}_{w}d", lambda k, c=c, w=w: window(c, k, w))
        if s == "views":
            out.put("eng_views_trend",
                    lambda k, c=c: (window(c, k, 30) / 30) / ((c[:, at(k, 30)] - c[:, at(k, 90)] + 1) / 60))
        del c
    if source:
        active = tab.cumsum("active")
        out.put("eng_active_days_30d", lambda k: window(active, k, 30))
        del active
        last = tab.running("last_t", "max")
        out.put("eng_days_since_last_visit", lambda k: (per.as_of_us[k] - last[:, at(k)]) / DAY_US)
        del last
    if interactions:
        social = tab.cumsum("social")
        for w in (30, 90):
            out.put(f"eng_social_{w}d", lambda k, w=w: window(social, k, w))
    return out.frame()
