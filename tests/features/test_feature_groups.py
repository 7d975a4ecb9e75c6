"""Feature groups: each against a plain pandas reference on random data, point-in-time (nothing at or after as_of
changes a feature), window edges, missing optional columns and personas without history.

The reference below loops over (persona, as_of) and follows each feature's definition literally; the groups compute
all dates in one DuckDB query, so agreement on random data with records placed on the window edges is the check.
"""

import duckdb
import numpy as np
import pandas as pd
import pytest

from features.affinity import affinity_features
from features.attributes import channel_features, first_activity, profile_features
from features.engagement import engagement_features
from features.realtime import realtime_features
from features.transactions import sanitise, transaction_features

UTC = "UTC"
DAY = pd.Timedelta(days=1)
A1 = pd.Timestamp("2026-03-01", tz=UTC)
# midnights (the usual grid) and one at another time of day, which gets its own day grid
AS_OF = [A1, pd.Timestamp("2026-04-01", tz=UTC), pd.Timestamp("2026-04-20 13:30", tz=UTC)]
CATS = ["apparel", "beauty", "Home & Garden", "books"]


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------

def _random_ts(rng: np.random.Generator, n: int) -> pd.Series:
    """Times over the 15 months before the last date, a third of them on window edges of some as_of date."""
    start = pd.Timestamp("2025-02-01", tz=UTC)
    span = (AS_OF[-1] - start).value
    ts = start.value + rng.integers(0, span, n)
    edge = rng.random(n) < 0.35
    base = np.array([d.value for d in AS_OF])[rng.integers(0, len(AS_OF), n)]
    offsets = np.array([0, 1, 7, 30, 90, 180, 365, 60]) * DAY.value
    jitter = rng.choice([-1, 0, 1, -3_600 * 10**9, 10**9], n)  # a nanosecond either side, an hour before, a second after
    ts = np.where(edge, base - offsets[rng.integers(0, len(offsets), n)] + jitter, ts)
    return pd.Series(pd.to_datetime(ts, utc=True))


def make_data(seed: int = 7, personas: int = 25) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    pids = np.array([f"P{i:03d}" for i in range(personas)])
    n = 700
    tx = pd.DataFrame({
        "persona_id": rng.choice(pids, n), "channel": rng.choice(["online", "store"], n),
        "ts": _random_ts(rng, n), "amount": np.round(rng.gamma(2, 80, n), 2),
        "category": rng.choice(CATS + [None], n),
        "discount": np.where(rng.random(n) < 0.3, np.round(rng.random(n) * 30, 2), 0.0),
        "status": rng.choice(["paid", "returned", None], n, p=[0.45, 0.1, 0.45]),
        "is_return": rng.choice([True, False, None], n, p=[0.05, 0.5, 0.45]),
    })
    tx.loc[rng.random(n) < 0.1, "discount"] = np.nan
    tx.loc[rng.random(n) < 0.05, "amount"] = 0.0  # $0 orders: purchases worth nothing
    tx.loc[rng.random(n) < 0.05, "amount"] *= -1  # refunds given as negative amounts, mostly without a flag
    m = 2500
    ev = pd.DataFrame({
        "persona_id": rng.choice(pids[: personas - 3], m), "channel": "app", "ts": _random_ts(rng, m),
        "event_type": rng.choice(["session_start", "product_view", "search", "cart_add"], m, p=[.2, .45, .15, .2]),
        "category": rng.choice(CATS + [None], m),
    })
    ev.loc[ev["event_type"] == "session_start", "category"] = None
    # a burst in the last hours before each date, for the 1 h / 24 h counts
    burst = []
    for d in AS_OF:
        k = 40
        burst.append(pd.DataFrame({
            "persona_id": rng.choice(pids[:5], k), "channel": "app",
            "ts": d - pd.to_timedelta(rng.integers(-2 * 3600, 26 * 3600, k), unit="s"),
            "event_type": rng.choice(["product_view", "cart_add"], k), "category": rng.choice(CATS, k)}))
    ev = pd.concat([ev, *burst], ignore_index=True)
    ix = pd.DataFrame({"persona_id": rng.choice(pids, 400), "channel": "social", "ts": _random_ts(rng, 400),
                       "action": rng.choice(["like", "share"], 400)})
    return {"transactions": tx, "events": ev, "interactions": ix}


def connect(*, threads: int = 2, **frames: pd.DataFrame) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(config={"threads": threads})
    for name, frame in frames.items():
        con.register(name, frame)
    return con


# ---------------------------------------------------------------------------------------------------------------
# the reference: literal definitions, one (persona, as_of) at a time
# ---------------------------------------------------------------------------------------------------------------

def _is_return(tx: pd.DataFrame) -> pd.Series:
    r = pd.Series(False, index=tx.index)
    if "is_return" in tx:
        r |= tx["is_return"].astype("boolean").fillna(False).astype(bool)
    if "status" in tx:
        r |= tx["status"].fillna("").eq("returned")
    return r | (tx["amount"] < 0) if "amount" in tx else r


def _in(ts: pd.Series, a: pd.Timestamp, days: float | None = None) -> pd.Series:
    ok = ts < a
    return ok & (ts >= a - pd.Timedelta(days=days)) if days is not None else ok


def _days(x) -> float:
    return x / DAY


def _grid_day(ts: pd.Series, a: pd.Timestamp) -> np.ndarray:
    """Whole days on the as_of's grid (its day is 0), in integers: float days lose the nanosecond at a year."""
    return (ts - a).to_numpy().astype("timedelta64[ns]").astype(np.int64) // DAY.value


def ref_transactions(tx: pd.DataFrame, dates) -> pd.DataFrame:
    """The amount policy: returns (flagged or negative) subtract their absolute amount from spend and are no purchase;
    a $0 order is a purchase worth 0."""
    tx = tx.assign(ret=_is_return(tx))
    tx = tx.assign(net=np.where(tx.ret, -tx.amount.abs(), tx.amount))
    rows = []
    for a in dates:
        for pid, g in tx[tx.ts < a].groupby("persona_id"):
            p, r = g[~g.ret].sort_values("ts"), g[g.ret]
            row = {"persona_id": pid, "event_timestamp": a}
            row["tx_recency_days"] = _days(a - p.ts.max()) if len(p) else np.nan
            row["tx_tenure_days"] = _days(a - p.ts.min()) if len(p) else np.nan
            for w in (7, 30, 90, 180, 365):
                row[f"tx_count_{w}d"] = len(p[_in(p.ts, a, w)])
                row[f"tx_spend_{w}d"] = g[_in(g.ts, a, w)].net.sum()
            row["tx_count_all"], row["tx_spend_all"] = len(p), g.net.sum()
            y = p[_in(p.ts, a, 365)]
            row["tx_aov_365d"] = y.amount.sum() / len(y) if len(y) else np.nan
            prev = (g.ts < a - 90 * DAY) & (g.ts >= a - 180 * DAY)
            prev_spend, prev_count = g[prev].net.sum(), int((prev & ~g.ret).sum())
            row["tx_spend_trend"] = max(row["tx_spend_90d"], 0) / (max(prev_spend, 0) + 1)
            row["tx_count_trend"] = row["tx_count_90d"] / (prev_count + 1)
            row["tx_spend_diff_90d"] = row["tx_spend_90d"] - prev_spend
            row["tx_count_diff_90d"] = row["tx_count_90d"] - prev_count
            days = np.unique(_grid_day(p.ts, a))
            gaps = np.diff(days).astype(float)
            row["tx_ipi_mean_days"] = gaps.mean() if len(gaps) else np.nan
            row["tx_ipi_std_days"] = gaps.std(ddof=1) if len(gaps) >= 2 else np.nan
            row["tx_ipi_cv"] = row["tx_ipi_std_days"] / row["tx_ipi_mean_days"]
            row["tx_ipi_last_days"] = gaps[-1] if len(gaps) else np.nan
            row["tx_recency_over_ipi"] = row["tx_recency_days"] / row["tx_ipi_mean_days"]
            row["tx_weekend_share"] = (p.ts.dt.dayofweek >= 5).mean() if len(p) else np.nan
            row["tx_same_quarter_share"] = (p.ts.dt.quarter == a.quarter).mean() if len(p) else np.nan
            ry = r[_in(r.ts, a, 365)]
            row["tx_return_rate_365d"] = len(ry) / (len(y) + len(ry)) if len(y) + len(ry) else np.nan
            if "channel" in tx:
                row["tx_online_share_365d"] = (y.channel == "online").mean() if len(y) else np.nan
            if "discount" in tx:
                known = y[y.discount.notna()]
                row["tx_discount_share_365d"] = (known.discount > 0).mean() if len(known) else np.nan
                base = known.amount.sum() + known.discount.sum()
                row["tx_discount_rate_365d"] = known.discount.sum() / base if base else np.nan
            if "category" in tx:
                row["tx_categories_365d"] = y.category.dropna().map(sanitise).nunique()
            per_day = p.amount.groupby(_grid_day(p.ts, a)).sum()
            if len(p):
                row["tx_btyd_frequency"] = len(per_day) - 1
                row["tx_btyd_recency"] = per_day.index.max() - per_day.index.min()
                row["tx_btyd_T"] = -per_day.index.min()
                row["tx_btyd_monetary"] = per_day.iloc[1:].mean() if len(per_day) > 1 else 0.0
            else:
                row.update(tx_btyd_frequency=np.nan, tx_btyd_recency=np.nan, tx_btyd_T=np.nan,
                           tx_btyd_monetary=np.nan)
            rows.append(row)
    return pd.DataFrame(rows)


def ref_engagement(ev: pd.DataFrame, ix: pd.DataFrame, dates) -> pd.DataFrame:
    rows = []
    for a in dates:
        e_all, i_all = ev[ev.ts < a], ix[ix.ts < a]
        for pid in sorted(set(e_all.persona_id) | set(i_all.persona_id)):
            e, i = e_all[e_all.persona_id == pid], i_all[i_all.persona_id == pid]
            row = {"persona_id": pid, "event_timestamp": a}
            for t, stem in [("session_start", "sessions"), ("product_view", "views"), ("search", "searches"),
                            ("cart_add", "cart_adds")]:
                for w in (7, 30, 90):
                    row[f"eng_{stem}_{w}d"] = int((_in(e.ts, a, w) & (e.event_type == t)).sum())
            e30 = e[_in(e.ts, a, 30)]
            row["eng_active_days_30d"] = len(np.unique(_grid_day(e30.ts, a)))
            row["eng_days_since_last_visit"] = _days(a - e.ts.max()) if len(e) else np.nan
            prev60 = ((e.ts < a - 30 * DAY) & (e.ts >= a - 90 * DAY) & (e.event_type == "product_view")).sum()
            row["eng_views_trend"] = (row["eng_views_30d"] / 30) / ((prev60 + 1) / 60)
            for w in (30, 90):
                row[f"eng_social_{w}d"] = int(_in(i.ts, a, w).sum())
            rows.append(row)
    return pd.DataFrame(rows)


def ref_affinity(tx: pd.DataFrame, ev: pd.DataFrame, dates) -> pd.DataFrame:
    tx = tx.assign(ret=_is_return(tx), cat=tx.category.map(lambda c: sanitise(c) if c else None))
    ev = ev.assign(cat=ev.category.map(lambda c: sanitise(c) if c else None))
    cats = sorted(set(tx.cat.dropna()) | set(ev.cat.dropna()))
    rows = []
    for a in dates:
        t_all, e_all = tx[tx.ts < a], ev[ev.ts < a]
        for pid in sorted(set(t_all.persona_id) | set(e_all.persona_id)):
            t, e = t_all[t_all.persona_id == pid], e_all[e_all.persona_id == pid]
            row = {"persona_id": pid, "event_timestamp": a}
            views90 = e[(e.event_type == "product_view") & _in(e.ts, a, 90) & e.cat.notna()]
            for c in cats:
                v = e[(e.event_type == "product_view") & (e.cat == c)]
                k = e[(e.event_type == "cart_add") & (e.cat == c)]
                b = t[~t.ret & (t.cat == c)]
                row[f"aff_view_{c}_30d"] = _in(v.ts, a, 30).sum()
                row[f"aff_view_{c}_90d"] = _in(v.ts, a, 90).sum()
                row[f"aff_cart_{c}_30d"] = _in(k.ts, a, 30).sum()
                row[f"aff_buy_{c}_365d"] = _in(b.ts, a, 365).sum()
                row[f"aff_buy_{c}_90d"] = _in(b.ts, a, 90).sum()
                row[f"aff_view_share_{c}_90d"] = (row[f"aff_view_{c}_90d"] / len(views90)) if len(views90) else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def ref_realtime(ev: pd.DataFrame, tx: pd.DataFrame, dates) -> pd.DataFrame:
    act = pd.concat([ev[["persona_id", "ts"]], tx[["persona_id", "ts"]]])
    rows = []
    for a in dates:
        for pid, g in act[act.ts < a].groupby("persona_id"):
            e = ev[(ev.persona_id == pid) & (ev.ts < a)]
            row = {"persona_id": pid, "event_timestamp": a, "rt_last_event_ts": g.ts.max().value // 10**9}
            for t, stem in [("product_view", "views"), ("cart_add", "cart_adds")]:
                row[f"rt_{stem}_1h"] = ((e.event_type == t) & (e.ts >= a - pd.Timedelta(hours=1))).sum()
                row[f"rt_{stem}_24h"] = ((e.event_type == t) & (e.ts >= a - pd.Timedelta(hours=24))).sum()
            rows.append(row)
    return pd.DataFrame(rows)


def ref_channels(data: dict[str, pd.DataFrame], dates) -> pd.DataFrame:
    act = pd.concat([f.assign(ch=f["channel"].fillna(name) if "channel" in f else name)[["persona_id", "ts", "ch"]]
                     for name, f in data.items()])
    rows = []
    for a in dates:
        for pid, g in act[act.ts < a].groupby("persona_id"):
            rows.append({"persona_id": pid, "event_timestamp": a,
                         "attr_n_channels_365d": g[_in(g.ts, a, 365)].ch.nunique()})
    return pd.DataFrame(rows)


def assert_matches(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Same rows in (event_timestamp, persona_id) order, same columns, values equal to float32 precision."""
    expected = expected.sort_values(["event_timestamp", "persona_id"], ignore_index=True)
    assert list(actual.columns) == list(expected.columns)
    assert actual["persona_id"].tolist() == expected["persona_id"].tolist()
    assert (actual["event_timestamp"] == pd.to_datetime(expected["event_timestamp"], utc=True)).all()
    for col in actual.columns[2:]:
        np.testing.assert_allclose(actual[col].to_numpy(np.float64), expected[col].to_numpy(np.float64),
                                   rtol=2e-5, atol=2e-4, equal_nan=True, err_msg=col)


def check_contract(frame: pd.DataFrame, prefix: str) -> None:
    assert list(frame.columns[:2]) == ["persona_id", "event_timestamp"]
    assert str(frame["event_timestamp"].dtype) == "datetime64[ns, UTC]"
    assert pd.api.types.is_string_dtype(frame["persona_id"])
    for col in frame.columns[2:]:
        assert col.startswith(prefix), col
        assert frame[col].dtype in (np.float32, np.float64, np.int64), (col, frame[col].dtype)
    assert not frame.duplicated(["persona_id", "event_timestamp"]).any()
    keys = frame[["event_timestamp", "persona_id"]]
    assert keys.equals(keys.sort_values(["event_timestamp", "persona_id"], ignore_index=True))


# ---------------------------------------------------------------------------------------------------------------
# each group against the reference
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data() -> dict[str, pd.DataFrame]:
    return make_data()


def test_transactions_match_the_reference(data):
    tx = data["transactions"]
    got = transaction_features(connect(tx=tx), "tx", as_of_dates=AS_OF)
    check_contract(got, "tx_")
    assert_matches(got, ref_transactions(tx, AS_OF)[got.columns])
    assert {"tx_btyd_frequency", "tx_btyd_recency", "tx_btyd_T", "tx_btyd_monetary"} <= set(got.columns)


def test_engagement_matches_the_reference(data):
    ev, ix = data["events"], data["interactions"]
    got = engagement_features(connect(ev=ev, ix=ix), "ev", as_of_dates=AS_OF, interactions="ix")
    check_contract(got, "eng_")
    assert_matches(got, ref_engagement(ev, ix, AS_OF)[got.columns])


def test_affinity_matches_the_reference(data):
    tx, ev = data["transactions"], data["events"]
    got = affinity_features(connect(tx=tx, ev=ev), "tx", as_of_dates=AS_OF, events="ev")
    check_contract(got, "aff_")
    assert "aff_view_home_garden_90d" in got.columns  # sanitised
    expected = ref_affinity(tx, ev, AS_OF)
    assert set(got.columns) == set(expected.columns)
    assert_matches(got, expected[got.columns])


def test_realtime_matches_the_reference(data):
    tx, ev = data["transactions"], data["events"]
    got = realtime_features(connect(tx=tx, ev=ev), "ev", as_of_dates=AS_OF, transactions="tx")
    check_contract(got, "rt_")
    assert got["rt_last_event_ts"].dtype == np.int64
    assert got["rt_views_1h"].sum() > 0 and got["rt_cart_adds_24h"].sum() > 0
    assert_matches(got, ref_realtime(ev, tx, AS_OF)[got.columns])


def test_channel_count_matches_the_reference(data):
    con = connect(**data)
    got = channel_features(con, {n: n for n in data}, as_of_dates=AS_OF)
    assert_matches(got, ref_channels(data, AS_OF))


# ---------------------------------------------------------------------------------------------------------------
# point in time
# ---------------------------------------------------------------------------------------------------------------

def _future(data: dict[str, pd.DataFrame], a: pd.Timestamp) -> dict[str, pd.DataFrame]:
    """The data plus, for existing and brand-new personas, records at exactly `a` and after it: a huge order, a
    return, views, cart adds, a session and social activity."""
    out = {}
    who = ["P000", "P001", "NEW_PERSONA"]
    when = [a, a + pd.Timedelta(microseconds=1), a + DAY, a + 400 * DAY]
    tx = pd.DataFrame([{"persona_id": p, "channel": "online", "ts": t, "amount": 1e9, "category": "jewelry",
                        "discount": 5e8, "status": s, "is_return": None}
                       for p in who for t in when for s in ("paid", "returned")])
    ev = pd.DataFrame([{"persona_id": p, "channel": "app", "ts": t, "event_type": e, "category": "jewelry"}
                       for p in who for t in when for e in ("session_start", "product_view", "cart_add", "search")])
    ix = pd.DataFrame([{"persona_id": p, "channel": "social", "ts": t, "action": "like"} for p in who for t in when])
    for name, extra in (("transactions", tx), ("events", ev), ("interactions", ix)):
        out[name] = pd.concat([data[name], extra.astype({"ts": "datetime64[ns, UTC]"})], ignore_index=True)
    return out


@pytest.mark.parametrize("a", [A1, AS_OF[2]])
def test_nothing_at_or_after_as_of_changes_any_feature(data, a):
    later = _future(data, a)
    dates = [d for d in AS_OF if d <= a]

    def run(d: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        # one thread: the runs are compared bit for bit, and with more DuckDB may add floats in another order
        con = connect(tx=d["transactions"], ev=d["events"], ix=d["interactions"], threads=1)
        first = first_activity(con, ["tx", "ev", "ix"])
        profiles = pd.DataFrame({"persona_id": ["P000", "NEW_PERSONA"], "gender": ["female", "male"]})
        return {
            "tx": transaction_features(con, "tx", as_of_dates=dates),
            "eng": engagement_features(con, "ev", as_of_dates=dates, interactions="ix"),
            "aff": affinity_features(con, "tx", as_of_dates=dates, events="ev"),
            "rt": realtime_features(con, "ev", as_of_dates=dates, transactions="tx"),
            "attr": profile_features(profiles, as_of_dates=dates, activity_first_seen=first,
                                     channels=channel_features(con, {"tx": "tx", "ev": "ev", "ix": "ix"},
                                                               as_of_dates=dates)),
        }

    before, after = run(data), run(later)
    for group in before:
        b, f = before[group], after[group]
        # a category first seen in the future adds (empty) columns; every existing column is unchanged
        assert set(b.columns) <= set(f.columns)
        pd.testing.assert_frame_equal(b, f[b.columns], check_exact=True, obj=group)
        new_cols = [c for c in f.columns if c not in b.columns]
        assert (f[new_cols].fillna(0) == 0).all().all(), group
        assert "NEW_PERSONA" not in set(f["persona_id"]), group


def test_window_edges_are_half_open():
    """[as_of - n days, as_of): a purchase exactly n days back counts, a nanosecond earlier does not, and one a
    nanosecond before as_of counts."""
    a = pd.Timestamp("2026-05-01", tz=UTC)
    ns = pd.Timedelta(1, "ns")
    ts = [a - ns, a - 7 * DAY, a - 7 * DAY - ns, a - 30 * DAY, a - 365 * DAY, a - 365 * DAY - ns, a]
    tx = pd.DataFrame({"persona_id": "P", "ts": pd.to_datetime(ts, utc=True), "amount": [1, 2, 4, 8, 16, 32, 64.0]})
    got = transaction_features(connect(tx=tx), "tx", as_of_dates=[a]).iloc[0]
    assert got["tx_count_7d"] == 2 and got["tx_spend_7d"] == 3
    assert got["tx_count_30d"] == 4 and got["tx_spend_30d"] == 15
    assert got["tx_count_365d"] == 5 and got["tx_spend_365d"] == 31
    assert got["tx_count_all"] == 6 and got["tx_spend_all"] == 63  # the order at as_of itself is not seen
    assert got["tx_recency_days"] == pytest.approx(0, abs=1e-6)


def test_btyd_inputs_count_purchase_days():
    a = pd.Timestamp("2026-05-31", tz=UTC)
    first = pd.Timestamp("2026-05-01 10:00", tz=UTC)
    tx = pd.DataFrame({"persona_id": "P",
                       "ts": [first, first + pd.Timedelta(hours=5), first + 10 * DAY, first + 10 * DAY + pd.Timedelta(hours=1),
                              first + 20 * DAY],
                       "amount": [10.0, 5.0, 30.0, 10.0, 60.0], "is_return": [False, False, False, False, True]})
    got = transaction_features(connect(tx=tx), "tx", as_of_dates=[a]).iloc[0]
    assert got["tx_btyd_frequency"] == 1  # two purchase days; the return does not count
    assert got["tx_btyd_recency"] == 10
    assert got["tx_btyd_T"] == 30
    assert got["tx_btyd_monetary"] == 40  # the repeat day's spend
    assert got["tx_return_rate_365d"] == pytest.approx(0.2)


# ---------------------------------------------------------------------------------------------------------------
# missing optional columns, personas without history
# ---------------------------------------------------------------------------------------------------------------

def test_bring_your_own_minimal_columns(data):
    """persona_id, ts, amount only: every group still runs; features that need a missing column are absent."""
    tx = data["transactions"][["persona_id", "ts", "amount"]]
    con = connect(tx=tx)
    t = transaction_features(con, "tx", as_of_dates=AS_OF)
    for absent in ("tx_online_share_365d", "tx_discount_rate_365d", "tx_categories_365d"):
        assert absent not in t.columns
    assert_matches(t, ref_transactions(tx, AS_OF)[t.columns])
    aff = affinity_features(con, "tx", as_of_dates=AS_OF)
    assert list(aff.columns) == ["persona_id", "event_timestamp"] and len(aff) == len(t)
    rt = realtime_features(con, None, as_of_dates=AS_OF, transactions="tx")
    assert list(rt.columns) == ["persona_id", "event_timestamp", "rt_last_event_ts"]
    attr = profile_features(pd.DataFrame({"persona_id": pd.Series([], dtype="string")}), as_of_dates=AS_OF,
                            activity_first_seen=first_activity(con, ["tx"]),
                            channels=channel_features(con, {"transactions": "tx"}, as_of_dates=AS_OF))
    assert list(attr.columns) == ["persona_id", "event_timestamp", "attr_n_channels_365d"]
    assert set(attr["attr_n_channels_365d"]) <= {0.0, 1.0}


def test_partial_optional_columns(data):
    tx = data["transactions"][["persona_id", "ts", "amount", "category"]]  # no channel, discount, status, is_return
    ev = data["events"][["persona_id", "ts"]]  # no event_type, no category
    con = connect(tx=tx, ev=ev)
    t = transaction_features(con, "tx", as_of_dates=AS_OF)
    assert "tx_categories_365d" in t.columns and "tx_return_rate_365d" in t.columns
    eng = engagement_features(con, "ev", as_of_dates=AS_OF)
    assert list(eng.columns[2:]) == ["eng_active_days_30d", "eng_days_since_last_visit"]
    aff = affinity_features(con, "tx", as_of_dates=AS_OF, events="ev")
    assert any(c.startswith("aff_buy_") for c in aff.columns) and not any("view" in c for c in aff.columns)
    rt = realtime_features(con, "ev", as_of_dates=AS_OF, transactions="tx")
    assert list(rt.columns[2:]) == ["rt_last_event_ts"]
    only_social = engagement_features(connect(ix=data["interactions"]), None, as_of_dates=AS_OF, interactions="ix")
    assert list(only_social.columns[2:]) == ["eng_social_30d", "eng_social_90d"]


def test_personas_without_history():
    a = pd.Timestamp("2026-05-01", tz=UTC)
    tx = pd.DataFrame({"persona_id": ["ONLY_RETURN", "LATER", "BUYER"],
                       "ts": pd.to_datetime(["2026-04-10", "2026-05-02", "2026-04-20"], utc=True),
                       "amount": [50.0, 70.0, 20.0], "status": ["returned", "paid", "paid"]})
    con = connect(tx=tx)
    t = transaction_features(con, "tx", as_of_dates=[a]).set_index("persona_id")
    assert "LATER" not in t.index  # nothing before as_of: no row at all
    r = t.loc["ONLY_RETURN"]
    assert r["tx_count_all"] == 0 and r["tx_return_rate_365d"] == 1
    assert r["tx_spend_365d"] == -50  # net spend: the refund of an order from before the data
    assert np.isnan(r["tx_recency_days"]) and np.isnan(r["tx_aov_365d"]) and np.isnan(r["tx_btyd_frequency"])
    assert np.isnan(t.loc["BUYER", "tx_ipi_mean_days"]) and t.loc["BUYER", "tx_btyd_monetary"] == 0
    # no date, or a date before everything: empty frames with the full schema
    for dates in ([], [pd.Timestamp("2020-01-01", tz=UTC)]):
        empty = transaction_features(con, "tx", as_of_dates=dates)
        assert len(empty) == 0 and list(empty.columns) == list(t.reset_index().columns)
    profiles = pd.DataFrame({"persona_id": ["ONLY_PROFILE", "BUYER"], "gender": ["female", "female"]})
    attr = profile_features(profiles, as_of_dates=[a], activity_first_seen=first_activity(con, ["tx"]))
    assert attr["persona_id"].tolist() == ["BUYER", "ONLY_RETURN"]  # activity decides; a profile alone does not
    assert attr.set_index("persona_id")["attr_gender_female"].tolist()[0] == 1
    assert np.isnan(attr.set_index("persona_id").loc["ONLY_RETURN", "attr_gender_female"])


def test_no_dates_give_empty_frames_with_the_full_schema(data):
    con = connect(tx=data["transactions"], ev=data["events"], ix=data["interactions"])
    for run in (lambda d: engagement_features(con, "ev", as_of_dates=d, interactions="ix"),
                lambda d: affinity_features(con, "tx", as_of_dates=d, events="ev"),
                lambda d: realtime_features(con, "ev", as_of_dates=d, transactions="tx"),
                lambda d: channel_features(con, {"tx": "tx", "ev": "ev"}, as_of_dates=d)):
        full, empty = run(AS_OF[:1]), run([])
        assert len(empty) == 0 and list(empty.columns) == list(full.columns)


def test_naive_dates_are_refused():
    tx = pd.DataFrame({"persona_id": ["P"], "ts": pd.to_datetime(["2026-01-01"], utc=True), "amount": [1.0]})
    with pytest.raises(ValueError, match="timezone-aware"):
        transaction_features(connect(tx=tx), "tx", as_of_dates=[pd.Timestamp("2026-02-01")])


def test_missing_required_column_names_the_relation():
    tx = pd.DataFrame({"persona_id": ["P"], "ts": pd.to_datetime(["2026-01-01"], utc=True)})
    with pytest.raises(ValueError, match=r"tx: missing column\(s\) \['amount'\]"):
        transaction_features(connect(tx=tx), "tx", as_of_dates=[A1])


def test_many_categories_use_a_bit_string():
    a = pd.Timestamp("2026-05-01", tz=UTC)
    n = 70
    tx = pd.DataFrame({"persona_id": ["P"] * n + ["Q"], "amount": 1.0,
                       "ts": pd.to_datetime(["2026-04-01"] * (n + 1), utc=True),
                       "category": [f"cat {i}" for i in range(n)] + ["cat 3"]})
    got = transaction_features(connect(tx=tx), "tx", as_of_dates=[a]).set_index("persona_id")
    assert got.loc["P", "tx_categories_365d"] == n and got.loc["Q", "tx_categories_365d"] == 1


# ---------------------------------------------------------------------------------------------------------------
# attributes
# ---------------------------------------------------------------------------------------------------------------

def test_profile_attributes_are_encoded_numerically():
    dates = [pd.Timestamp("2026-01-01", tz=UTC), pd.Timestamp("2026-07-01", tz=UTC)]
    first = pd.DataFrame({"persona_id": ["A", "B", "C"],
                          "first_seen": pd.to_datetime(["2025-01-01", "2025-06-01", "2026-03-01"], utc=True)})
    profiles = pd.DataFrame({
        "persona_id": ["A", "B", "C"], "gender": ["female", "male", None],
        "birth_date": [pd.Timestamp("1990-07-01").date(), None, pd.Timestamp("2030-01-01").date()],
        "income_band": ["high", "low", "upper_middle"], "vendor_interests": ["beauty|Skin Care", None, "beauty"],
        "partner_spend_beauty": [10.0, None, 1.0], "partner_spend_home": [5.0, None, None],
        "city_tier": [1.0, 2.0, None], "city_income_index": [120.0, 90.0, None], "city_population": [1e6, 2e5, None],
        "consent_marketing": [True, False, None],
        "first_seen": pd.to_datetime(["2020-01-01"] * 3, utc=True), "records": [1, 2, 3],  # never used
    })
    got = profile_features(profiles, as_of_dates=dates, activity_first_seen=first)
    check_contract(got, "attr_")
    assert [(p, t.month) for p, t in zip(got.persona_id, got.event_timestamp)] == [("A", 1), ("B", 1), ("A", 7),
                                                                                    ("B", 7), ("C", 7)]
    g = got.set_index(["persona_id", got.event_timestamp.dt.month])
    assert g.loc[("A", 1), "attr_age"] == pytest.approx(35.5, abs=0.01)
    assert g.loc[("A", 7), "attr_age"] == pytest.approx(36.0, abs=0.01)
    assert np.isnan(g.loc[("B", 7), "attr_age"]) and np.isnan(g.loc[("C", 7), "attr_age"])  # unknown, unborn
    assert g.loc[("A", 7), "attr_gender_female"] == 1 and g.loc[("B", 7), "attr_gender_female"] == 0
    assert np.isnan(g.loc[("C", 7), "attr_gender_female"])
    assert g["attr_income_band"].tolist() == [3, 0, 3, 0, 2]
    assert g.loc[("A", 7), "attr_vendor_int_skin_care"] == 1 and g.loc[("C", 7), "attr_vendor_int_skin_care"] == 0
    assert np.isnan(g.loc[("B", 7), "attr_vendor_int_beauty"])
    assert g.loc[("A", 7), "attr_partner_spend_total"] == 15 and g.loc[("C", 7), "attr_partner_spend_total"] == 1
    assert np.isnan(g.loc[("B", 7), "attr_partner_spend_total"])
    assert g["attr_consent_marketing"].fillna(-1).tolist() == [1, 0, 1, 0, -1]
    assert not any(c in got.columns for c in ("attr_first_seen", "attr_records", "first_seen", "records"))
