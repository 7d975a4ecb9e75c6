"""Transaction features (`tx_`): recency, frequency and spend in windows, purchase rhythm, BTYD inputs.

Point in time: a feature for date `as_of` only sees transactions with `ts < as_of`.

How all dates are computed at once (the helpers below are shared by every feature group):
- days are counted on a grid aligned with the dates (midnight UTC for the usual grid), so "day < as_of's day" is
  exactly "ts < as_of" and a window of n days is exactly [as_of - n days, as_of);
- the day axis is cut at every window edge of every date (as_of, as_of - 7 d, as_of - 30 d, ...): the *periods*;
- ONE DuckDB query sums the records per (persona, period) with plain aggregates;
- numpy turns those sums into a (personas x periods) cumulative matrix per measure, and a windowed value for a
  date is the difference of two of its columns; "last/first" values use a running max/min instead.
The cost is linear in the records (one scan, one aggregation) plus personas x periods per measure, instead of
records x dates for a join of records with a table of dates; memory stays bounded at 1M customers.

Amounts (one policy for every feature; `return_expr` and `net_amount_expr` below are its only definition, and
training's labels follow the same rules):
- a RETURN (refund) is a row with is_return true, status 'returned', or a negative amount. It is never a purchase
  occasion (no count, recency, first/last purchase, interval, BTYD input); its absolute amount is subtracted from
  spend. Spend features (tx_spend_*) are NET spend: purchases minus refunds in the window, so a window holding a
  refund of an older order can be negative.
- an amount of 0 that is not a return is a purchase occasion worth nothing: it counts for counts, recency, intervals
  and BTYD frequency/recency/T, and adds 0 to spend. Per-purchase values (tx_aov_365d, tx_btyd_monetary) are means
  of purchase amounts over purchase occasions, zeros included, refunds left out (a refund is not an order).
- a missing amount (NULL or NaN) is an error naming the relation: ingest quarantines such rows (missing_field), so
  none reaches here from `persona integrate`, and no value is made up for one.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

DAY_US = 86_400_000_000
# Epoch microseconds of `ts`, truncated (a cast to TIMESTAMPTZ would round 999 ns up into the next microsecond).
T_US = "(epoch_ns(ts) // 1000)"
WINDOWS = (7, 30, 90, 180, 365)


# ----------------------------------------------------------------------------------------------------------------
# Shared by the feature groups
# ----------------------------------------------------------------------------------------------------------------

def as_of_index(as_of_dates: Sequence[pd.Timestamp]) -> pd.DatetimeIndex:
    """The as_of dates as a sorted, de-duplicated UTC index; naive dates are refused (their zone is a guess)."""
    idx = pd.DatetimeIndex([pd.Timestamp(d) for d in as_of_dates])
    if len(idx) and idx.tz is None:
        raise ValueError("as_of_dates must be timezone-aware (e.g. pd.Timestamp('2026-01-01', tz='UTC')); "
                         f"found naive {idx[0]}")
    if not len(idx):
        return pd.DatetimeIndex([], tz="UTC").as_unit("ns")
    return idx.tz_convert("UTC").as_unit("ns").unique().sort_values()


def columns_of(con: duckdb.DuckDBPyConnection, source: str) -> set[str]:
    """Column names of a relation or `read_parquet(...)` expression."""
    return {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}


def require(cols: set[str], needed: Sequence[str], source: str) -> None:
    missing = [c for c in needed if c not in cols]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; found {sorted(cols)}")


def return_expr(cols: set[str]) -> str:
    """A return (refund) is `is_return OR status = 'returned' OR amount < 0`, with whichever columns exist."""
    parts = []
    if "is_return" in cols:
        parts.append("coalesce(is_return, false)")
    if "status" in cols:
        parts.append("coalesce(status, '') = 'returned'")
    if "amount" in cols:
        parts.append("coalesce(amount < 0, false)")
    return " OR ".join(parts) if parts else "false"


def net_amount_expr(cols: set[str]) -> str:
    """A row's signed value in spend: minus its absolute amount for a return, its amount otherwise (NULL stays NULL)."""
    return f"(CASE WHEN {return_expr(cols)} THEN -abs(amount) ELSE amount END)::DOUBLE"


def sanitise(name: str) -> str:
    """A category as it appears in a column name: lower case, [a-z0-9_]."""
    return re.sub(r"[^a-z0-9]+", "_", str(name).strip().lower()).strip("_")


def category_index(con: duckdb.DuckDBPyConnection, sources: Sequence[tuple[str, str]]) -> tuple[list[str], str]:
    """Sanitised categories seen in `(source, column)` pairs (sorted) and a SQL template mapping a raw value to its
    0-based index (-1 for none): `expr.format(col=...)`. The set describes the data's schema, not its values over
    time, so all rows are read: the columns stay the same for every date."""
    raw: set[str] = set()
    for source, col in sources:
        raw |= {r[0] for r in con.execute(f"SELECT DISTINCT {col} FROM {source} WHERE {col} IS NOT NULL").fetchall()}
    raw_sorted = sorted(raw)
    names = sorted({sanitise(r) for r in raw_sorted} - {""})
    if not names:
        return [], "-1"
    pos = {n: i for i, n in enumerate(names)}
    lits = ", ".join("'" + r.replace("'", "''") + "'" for r in raw_sorted)
    idx = ", ".join("-1" if sanitise(r) == "" else str(pos[sanitise(r)]) for r in raw_sorted)
    return names, f"([{idx}, -1]::INTEGER[])[coalesce(list_position([{lits}], {{col}}), {len(raw_sorted) + 1})]"


@dataclass(frozen=True)
class Periods:
    """The day axis cut at every window edge of every date (one time-of-day group of dates).

    Period j holds the days d with edges[j-1] <= d < edges[j] (period 0: everything before edges[0]), so the records
    before the edge edges[i] are exactly periods 0..i: column i of a cumulative matrix.
    """

    dates: pd.DatetimeIndex
    offset_us: int
    edges: np.ndarray  # grid days, ascending

    @classmethod
    def of(cls, dates: pd.DatetimeIndex, offset_us: int, windows: Sequence[int]) -> Periods:
        days = (dates.asi8 // 1000 - offset_us) // DAY_US
        edges = np.unique(np.concatenate([days] + [days - w for w in windows])) if len(days) else days
        return cls(dates, offset_us, edges.astype(np.int64))

    @property
    def n(self) -> int:
        return len(self.edges)

    @property
    def days(self) -> np.ndarray:
        """Each date's grid day."""
        return (self.dates.asi8 // 1000 - self.offset_us) // DAY_US

    @property
    def as_of_us(self) -> np.ndarray:
        return self.dates.asi8 // 1000

    def at(self, k: int, back_days: int = 0) -> int:
        """The column holding everything before date k minus `back_days` days."""
        return int(np.searchsorted(self.edges, self.days[k] - back_days))

    def day_sql(self) -> str:
        """The grid day of a record (floor, so times before 1970 are right too)."""
        return f"floor(({T_US} - {self.offset_us}) / {DAY_US}.0)::BIGINT"

    def period_sql(self, day: str) -> str:
        """The period of a grid day, by table lookup (records at or after the last date must be filtered)."""
        e = self.edges
        if not len(e):
            return "0"
        lut = np.searchsorted(e, np.arange(e[0], e[-1]), side="right").tolist()
        return (f"CASE WHEN {day} < {e[0]} THEN 0 ELSE ({lut or [0]}::INTEGER[])[{day} - {e[0]} + 1] END")

    def keep_sql(self) -> str:
        """Rows worth reading: persona and time known, before the last date."""
        if not len(self.dates):
            return "false"
        return f"persona_id IS NOT NULL AND ts IS NOT NULL AND epoch_ns(ts) < {int(self.dates[-1].value)}"


@dataclass
class PeriodTable:
    """A (persona, period) aggregate fetched from DuckDB: persona codes 0..P-1 in persona_id order."""

    pids: pa.Array  # sorted persona ids; code c is pids[c]
    code: np.ndarray
    j: np.ndarray
    measures: dict[str, np.ndarray]
    periods: Periods

    @classmethod
    def fetch(cls, con: duckdb.DuckDBPyConnection, sql: str, periods: Periods,
              pids: pa.Array | None = None) -> PeriodTable:
        """Run `sql` (columns persona_id, j, measures...) and fetch it with integer persona codes: each persona_id
        crosses over once, not once per row. With `pids`, code into that list (rows of other personas are left out).
        The aggregate waits in a temporary table of `con` (spillable), dropped at the end."""
        tag = uuid.uuid4().hex
        agg, codes = f"_persona_periods_{tag}", f"_persona_codes_{tag}"
        con.execute(f"CREATE TEMP TABLE {agg} AS {sql}")
        try:
            if pids is None:
                pids = con.sql(f"SELECT DISTINCT persona_id FROM {agg} ORDER BY persona_id").to_arrow_table()
                pids = pids.column(0).combine_chunks().cast(pa.string())
            con.register(codes, pa.table({"persona_id": pids, "code": np.arange(len(pids), dtype=np.int32)}))
            try:
                table = con.sql(f"SELECT c.code, t.* EXCLUDE (persona_id) FROM {agg} t "
                                f"JOIN {codes} c ON t.persona_id = c.persona_id").to_arrow_table()
            finally:
                con.unregister(codes)
        finally:
            con.execute(f"DROP TABLE IF EXISTS {agg}")
        measures = {}
        for name in table.column_names:
            col = table.column(name)
            # an integer sum is HUGEINT in DuckDB, decimal128 in Arrow: numpy would make Python objects of it
            col = col.cast(pa.float64()) if pa.types.is_decimal(col.type) else col
            numeric_with_nulls = col.null_count and (pa.types.is_integer(col.type) or pa.types.is_floating(col.type))
            measures[name] = (col.cast(pa.float64()) if numeric_with_nulls else col).to_numpy(zero_copy_only=False)
        del table
        code, j = measures.pop("code").astype(np.int32), measures.pop("j").astype(np.int32)
        return cls(pids, code, j, measures, periods)

    @property
    def n_personas(self) -> int:
        return len(self.pids)

    def col(self, name: str) -> np.ndarray:
        """A measure as numpy (float64 with NaN where the value was null)."""
        return self.measures[name]

    def cumsum(self, weights: np.ndarray | str | None = None, where: np.ndarray | None = None, *,
               exact: bool = False) -> np.ndarray:
        """(personas x periods) running sums of a measure (a column name or values per row; null counts as 0).
        float32, which counts exactly up to 16M per persona; `exact` (money) gives float64."""
        w = self.col(weights) if isinstance(weights, str) else weights
        code, j = self.code, self.j
        if where is not None:
            code, j, w = code[where], j[where], (w[where] if w is not None else None)
        if w is not None:
            w = np.nan_to_num(np.asarray(w, dtype=np.float64))
        flat = np.bincount(code.astype(np.int64) * self.periods.n + j, weights=w,
                           minlength=self.n_personas * self.periods.n)
        out = flat.reshape(self.n_personas, self.periods.n)
        if not exact:
            out = out.astype(np.float32)
            del flat
        return np.cumsum(out, axis=1, out=out)

    def running(self, values: np.ndarray | str, how: str, dtype: type = np.float64) -> np.ndarray:
        """(personas x periods) running max (`how="max"`) or min of a per-(persona, period) value; NaN before the
        first non-null. Each (persona, period) appears once in the table. float64 for times in microseconds;
        float32 is exact for days."""
        v = np.asarray(self.col(values) if isinstance(values, str) else values, dtype=dtype)
        fill = -np.inf if how == "max" else np.inf
        out = np.full((self.n_personas, self.periods.n), fill, dtype=dtype)
        ok = ~np.isnan(v)
        out[self.code[ok], self.j[ok]] = v[ok]
        (np.maximum if how == "max" else np.minimum).accumulate(out, axis=1, out=out)
        out[np.isinf(out)] = np.nan
        return out

    def latest(self, values: np.ndarray | str) -> np.ndarray:
        """(personas x periods) float32 value of the latest period up to each column that has a non-null one; NaN
        before the first."""
        v = np.asarray(self.col(values) if isinstance(values, str) else values, dtype=np.float32)
        ok = ~np.isnan(v)
        code, j = self.code[ok], self.j[ok]
        pos = np.full((self.n_personas, self.periods.n), -1, dtype=np.int32)
        pos[code, j] = j
        np.maximum.accumulate(pos, axis=1, out=pos)
        vals = np.full((self.n_personas, self.periods.n), np.nan, dtype=np.float32)
        vals[code, j] = v[ok]
        missing = pos < 0
        np.maximum(pos, 0, out=pos)
        vals = np.take_along_axis(vals, pos, axis=1)
        del pos
        vals[missing] = np.nan
        return vals


class FeatureBlock:
    """The output of a group for one time-of-day group of dates: for date k, the personas whose running record
    count is positive before it, in persona_id order; features in one float32 block (no copy into pandas)."""

    def __init__(self, periods: Periods, pids: pa.Array, records: np.ndarray, names: Sequence[str]) -> None:
        self.periods, self.pids, self.names = periods, pids, list(names)
        self.rows = [np.flatnonzero(records[:, periods.at(k)] > 0) for k in range(len(periods.dates))]
        self.start = np.concatenate([[0], np.cumsum([len(r) for r in self.rows])]).astype(np.int64)
        self.block = np.full((len(self.names), int(self.start[-1])), np.nan, dtype=np.float32)
        self.extra: dict[str, np.ndarray] = {}

    def put(self, name: str, per_date: Callable[[int], np.ndarray]) -> None:
        """Set feature `name` from a function of the date index returning a value per persona."""
        f = self.names.index(name)
        for k, rows in enumerate(self.rows):
            self.block[f, self.start[k]:self.start[k + 1]] = np.asarray(per_date(k))[rows]

    def put_int64(self, name: str, per_date: Callable[[int], np.ndarray]) -> None:
        """An int64 feature, kept out of the float32 block."""
        self.extra[name] = np.concatenate([np.asarray(per_date(k))[rows].astype(np.int64)
                                           for k, rows in enumerate(self.rows)] or [np.zeros(0, np.int64)])

    def frame(self, order: Sequence[str] | None = None) -> pd.DataFrame:
        """persona_id, event_timestamp, then the features (in `order` when given)."""
        take = np.concatenate(self.rows) if self.rows else np.zeros(0, np.int64)
        ts = np.repeat(self.periods.dates.asi8, [len(r) for r in self.rows])
        keys = pd.DataFrame({
            "persona_id": pd.array(self.pids.take(pa.array(take, pa.int64())), dtype=pd.StringDtype("pyarrow")),
            "event_timestamp": pd.DatetimeIndex(ts, tz="UTC").as_unit("ns")})
        parts = [keys, pd.DataFrame(self.block.T, columns=self.names, copy=False)]
        if self.extra:
            parts.append(pd.DataFrame(self.extra))
        out = pd.concat(parts, axis=1, copy=False)
        return out if order is None else out[["persona_id", "event_timestamp", *order]]


def empty_frame(names: Sequence[str], int64: Sequence[str] = ()) -> pd.DataFrame:
    """A group's frame without rows (no date, or nothing before any date)."""
    cols = {"persona_id": pd.array([], dtype=pd.StringDtype("pyarrow")),
            "event_timestamp": pd.DatetimeIndex([], tz="UTC").as_unit("ns")}
    cols.update({n: np.zeros(0, np.int64 if n in int64 else np.float32) for n in names})
    return pd.DataFrame(cols)


def by_offset(fn: Callable[..., pd.DataFrame], as_of_dates: Sequence[pd.Timestamp], **kwargs) -> pd.DataFrame:
    """Run `fn(dates, offset_us, **kwargs)` once per time-of-day group of the dates (one group for any grid of
    midnights) and stack the results in (event_timestamp, persona_id) order."""
    dates = as_of_index(as_of_dates)
    offsets = (dates.asi8 // 1000) % DAY_US
    groups = [(int(o), dates[offsets == o]) for o in np.unique(offsets)] or [(0, dates)]
    frames = [fn(g, off, **kwargs) for off, g in groups]
    if len(frames) == 1:
        return frames[0]
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["event_timestamp", "persona_id"], kind="stable", ignore_index=True)


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den != 0, num / np.where(den != 0, den, 1), np.nan)


# ----------------------------------------------------------------------------------------------------------------
# The transaction group
# ----------------------------------------------------------------------------------------------------------------

def transaction_features(con: duckdb.DuckDBPyConnection, source: str, *,
                         as_of_dates: Sequence[pd.Timestamp]) -> pd.DataFrame:
    """`tx_` features for every persona with any transaction (a return included) before each as_of date.

    `source`: a relation with at least persona_id, ts, amount; channel, discount, category, status and is_return
    are used when present (their features are absent otherwise). One row is one purchase or one return; amounts
    follow the policy in the module docstring (net spend; $0 orders are purchase occasions; a missing amount is an
    error). Returns are counted in tx_return_rate_365d.

    For sparse buyers (most customers buy once or twice), with "purchase days" the days on the as_of's grid with a
    purchase occasion:
    - tx_tenure_days: days since the first purchase (the customer's age); tx_recency_days: since the last one;
    - tx_ipi_*: intervals in whole days between consecutive purchase days: mean (NaN below 2 purchase days),
      std and coefficient of variation std/mean (regularity; NaN below 3 purchase days), the last interval (NaN
      below 2), and tx_recency_over_ipi = days since the last purchase / mean interval (overdue when above 1);
    - tx_weekend_share: share of purchase occasions on a Saturday or Sunday (UTC calendar), all history;
    - tx_same_quarter_share: share of purchase occasions in the calendar quarter (UTC) of the as_of date, in any
      earlier year or earlier in this quarter: a seasonality signal that needs no future data;
    - trends: tx_spend_trend = max(0, spend 90 d) / (max(0, spend in the 90 d before) + 1) (net spend floored at 0 so
      the ratio keeps its meaning), tx_spend_diff_90d = spend 90 d - spend in the 90 d before (net, may be
      negative); tx_count_trend and tx_count_diff_90d likewise with purchase counts.

    BTYD inputs count whole days on the as_of's grid (a "period" of the lifetimes convention is a day):
    tx_btyd_frequency = purchase days - 1, tx_btyd_recency = last - first purchase day,
    tx_btyd_T = as_of's day - first purchase day (so recency <= T - 1), tx_btyd_monetary = mean purchase value of the
    repeat purchase days, $0 orders included (0 without repeat). All are NaN for a persona whose only records are
    returns.
    """
    cols = columns_of(con, source)
    require(cols, ["persona_id", "ts", "amount"], source)
    categories, cat_map = (category_index(con, [(source, "category")]) if "category" in cols else ([], "-1"))
    return by_offset(_transactions, as_of_dates, con=con, source=source, cols=cols, categories=categories,
                     cat_map=cat_map)


def transaction_feature_names(cols: set[str], has_categories: bool) -> list[str]:
    names = ["tx_recency_days", "tx_tenure_days"]
    for w in WINDOWS:
        names += [f"tx_count_{w}d", f"tx_spend_{w}d"]
    names += ["tx_count_all", "tx_spend_all", "tx_aov_365d", "tx_spend_trend", "tx_count_trend", "tx_spend_diff_90d",
              "tx_count_diff_90d", "tx_ipi_mean_days", "tx_ipi_std_days", "tx_ipi_cv", "tx_ipi_last_days",
              "tx_recency_over_ipi", "tx_weekend_share", "tx_same_quarter_share", "tx_return_rate_365d"]
    names += ["tx_online_share_365d"] if "channel" in cols else []
    names += ["tx_discount_share_365d", "tx_discount_rate_365d"] if "discount" in cols else []
    names += ["tx_categories_365d"] if has_categories else []
    return names + ["tx_btyd_frequency", "tx_btyd_recency", "tx_btyd_T", "tx_btyd_monetary"]


def _transactions(dates: pd.DatetimeIndex, off: int, *, con: duckdb.DuckDBPyConnection, source: str, cols: set[str],
                  categories: list[str], cat_map: str) -> pd.DataFrame:
    names = transaction_feature_names(cols, bool(categories))
    if not len(dates):
        return empty_frame(names)
    per = Periods.of(dates, off, WINDOWS)
    online, disc = "channel" in cols, "discount" in cols
    P = "(NOT is_ret)"
    raw = [f"coalesce(channel = 'online', false) AS online"] if online else []
    raw += ["discount"] if disc else []
    quarters = range(4)
    daily = [f"sum({P}::INTEGER)::INTEGER AS n", "sum(net) AS spend", f"sum(CASE WHEN {P} THEN amount END) AS buy",
             "sum(is_ret::INTEGER)::INTEGER AS n_ret", f"min(CASE WHEN {P} THEN t END) AS first_t",
             f"max(CASE WHEN {P} THEN t END) AS last_t", "count(*) FILTER (WHERE no_amount)::INTEGER AS n_null",
             f"sum(({P} AND weekend)::INTEGER)::INTEGER AS n_weekend",
             *(f"sum(({P} AND quarter = {q})::INTEGER)::INTEGER AS n_q{q}" for q in quarters)]
    per_period = ["sum(n)::INTEGER AS n", "sum(spend) AS spend", "sum(buy) AS buy", "sum(n_ret)::INTEGER AS n_ret",
                  "min(first_t) AS first_t", "max(last_t) AS last_t", "sum(n_null)::INTEGER AS n_null",
                  "sum(n_weekend)::INTEGER AS n_weekend", *(f"sum(n_q{q})::INTEGER AS n_q{q}" for q in quarters),
                  "sum(gap)::DOUBLE AS gap_s", "sum(gap * gap)::DOUBLE AS gap_s2", "count(gap)::INTEGER AS gap_n",
                  "arg_max(gap, day) FILTER (WHERE gap IS NOT NULL) AS last_gap",
                  "(count(*) FILTER (WHERE n > 0))::INTEGER AS pdays", "min(day) FILTER (WHERE n > 0) AS first_day",
                  "max(day) FILTER (WHERE n > 0) AS last_day",
                  "arg_min(buy, day) FILTER (WHERE n > 0) AS first_day_buy"]
    if online:
        daily.append(f"sum(({P} AND online)::INTEGER) AS n_online")
        per_period.append("sum(n_online)::INTEGER AS n_online")
    if disc:
        daily += [f"sum(({P} AND discount IS NOT NULL)::INTEGER) AS n_disc_known",
                  f"sum(({P} AND discount > 0)::INTEGER) AS n_disc", f"sum(CASE WHEN {P} THEN discount END) AS disc",
                  f"sum(CASE WHEN {P} AND discount IS NOT NULL THEN amount END) AS disc_base"]
        per_period += ["sum(n_disc_known)::INTEGER AS n_disc_known", "sum(n_disc)::INTEGER AS n_disc", "sum(disc) AS disc",
                       "sum(disc_base) AS disc_base"]
    # Calendar facts from epoch microseconds (a TIMESTAMPTZ's weekday or month would follow the session's time zone):
    # 1970-01-01 was a Thursday, so (days since the epoch + 3) mod 7 is 0 on Mondays; make_timestamp is naive UTC.
    utc_day = f"(({T_US} // {DAY_US}) + 3) % 7"
    base = f"""
        SELECT persona_id, {T_US} AS t, {per.day_sql()} AS day, amount, ({return_expr(cols)}) AS is_ret,
               {net_amount_expr(cols)} AS net, (amount IS NULL OR isnan(amount::DOUBLE)) AS no_amount,
               ({utc_day} + 7) % 7 >= 5 AS weekend, (month(make_timestamp({T_US})) - 1) // 3 AS quarter
               {"".join(", " + r for r in raw)}{", " + cat_map.format(col="category") + " AS cat" if categories else ""}
        FROM {source} WHERE {per.keep_sql()}"""
    # Intervals between consecutive purchase days: a lag over each persona's purchases (the partition by is_ret keeps
    # returns out of it) gives 0 between orders of one day and the interval on the first order of a later day, so the
    # day's interval is the max over its orders (NULL on the first purchase day). Summed per period; the period's
    # last interval is that of its latest day.
    tab = PeriodTable.fetch(con, f"""
        WITH r AS ({base}),
        g AS (SELECT *, CASE WHEN NOT is_ret
                            THEN day - lag(day) OVER (PARTITION BY persona_id, is_ret ORDER BY day) END AS gap_row
              FROM r),
        daily AS (SELECT persona_id, day, {", ".join(daily)}, max(gap_row) FILTER (WHERE gap_row > 0) AS gap
                  FROM g GROUP BY persona_id, day)
        SELECT persona_id, {per.period_sql("day")} AS j, {", ".join(per_period)}
        FROM daily GROUP BY ALL""", per)
    n_null = int(np.nansum(tab.col("n_null")))
    if n_null:
        raise ValueError(f"{source}: {n_null} transaction(s) before {dates[-1]} have no amount (NULL or NaN); "
                         "`persona integrate` quarantines such rows (missing_field: amount): fix or drop them, a "
                         "value is not made up for them")
    out = FeatureBlock(per, tab.pids, tab.cumsum(tab.col("n") + tab.col("n_ret")), names)
    at = per.at

    def window(c: np.ndarray, k: int, w: int | None) -> np.ndarray:
        return c[:, at(k)] - (c[:, at(k, w)] if w else 0)

    def before(c: np.ndarray, k: int) -> np.ndarray:
        """The 90 days before the last 90."""
        return c[:, at(k, 90)] - c[:, at(k, 180)]

    n, spend = tab.cumsum("n"), tab.cumsum("spend", exact=True)
    for w in WINDOWS:
        out.put(f"tx_count_{w}d", lambda k, w=w: window(n, k, w))
        out.put(f"tx_spend_{w}d", lambda k, w=w: window(spend, k, w))
    out.put("tx_count_all", lambda k: n[:, at(k)])
    out.put("tx_spend_all", lambda k: spend[:, at(k)])
    out.put("tx_spend_trend",
            lambda k: np.maximum(window(spend, k, 90), 0) / (np.maximum(before(spend, k), 0) + 1))
    out.put("tx_spend_diff_90d", lambda k: window(spend, k, 90) - before(spend, k))
    out.put("tx_count_trend", lambda k: window(n, k, 90) / (before(n, k) + 1))
    out.put("tx_count_diff_90d", lambda k: window(n, k, 90) - before(n, k))
    del spend
    buy = tab.cumsum("buy", exact=True)
    out.put("tx_aov_365d", lambda k: ratio(window(buy, k, 365), window(n, k, 365)))
    n_ret = tab.cumsum("n_ret")
    out.put("tx_return_rate_365d", lambda k: ratio(window(n_ret, k, 365), window(n_ret, k, 365) + window(n, k, 365)))
    del n_ret
    c = tab.cumsum("n_weekend")
    out.put("tx_weekend_share", lambda k: ratio(c[:, at(k)], n[:, at(k)]))
    del c
    same_quarter = [np.zeros(0)] * len(dates)
    date_quarters = np.asarray(dates.quarter) - 1
    for q in np.unique(date_quarters):
        c = tab.cumsum(f"n_q{q}")
        for k in np.flatnonzero(date_quarters == q):
            same_quarter[k] = c[:, at(k)].copy()  # a copy: a view would keep all of `c` alive
        del c
    out.put("tx_same_quarter_share", lambda k: ratio(same_quarter[k], n[:, at(k)]))
    del same_quarter
    if online:
        c = tab.cumsum("n_online")
        out.put("tx_online_share_365d", lambda k: ratio(window(c, k, 365), window(n, k, 365)))
        del c
    if disc:
        known, nd = tab.cumsum("n_disc_known"), tab.cumsum("n_disc")
        out.put("tx_discount_share_365d", lambda k: ratio(window(nd, k, 365), window(known, k, 365)))
        del known, nd
        d, b = tab.cumsum("disc", exact=True), tab.cumsum("disc_base", exact=True)
        out.put("tx_discount_rate_365d", lambda k: ratio(window(d, k, 365), window(b, k, 365) + window(d, k, 365)))
        del d, b
    last = tab.running("last_t", "max")
    out.put("tx_recency_days", lambda k: (per.as_of_us[k] - last[:, at(k)]) / DAY_US)
    del last
    first = tab.running("first_t", "min")
    out.put("tx_tenure_days", lambda k: (per.as_of_us[k] - first[:, at(k)]) / DAY_US)
    del first
    gs, gs2, gn = tab.cumsum("gap_s", exact=True), tab.cumsum("gap_s2", exact=True), tab.cumsum("gap_n")
    out.put("tx_ipi_mean_days", lambda k: ratio(gs[:, at(k)], gn[:, at(k)]))

    def ipi_std(k: int) -> np.ndarray:
        s, s2, m = gs[:, at(k)], gs2[:, at(k)], gn[:, at(k)]
        var = ratio(s2 - ratio(s * s, m), m - 1)
        return np.where(m >= 2, np.sqrt(np.maximum(var, 0)), np.nan)

    out.put("tx_ipi_std_days", ipi_std)
    del gs, gs2, gn
    f = out.names.index
    # from features already in the block: the mean interval is at least one day, never 0
    out.block[f("tx_ipi_cv")] = out.block[f("tx_ipi_std_days")] / out.block[f("tx_ipi_mean_days")]
    out.block[f("tx_recency_over_ipi")] = out.block[f("tx_recency_days")] / out.block[f("tx_ipi_mean_days")]
    last_gap = tab.latest("last_gap")
    out.put("tx_ipi_last_days", lambda k: last_gap[:, at(k)])
    del last_gap, n
    pdays = tab.cumsum("pdays")
    first_day = tab.running("first_day", "min", np.float32)
    last_day = tab.running("last_day", "max", np.float32)
    # purchase value of the first purchase day: the first period with a purchase holds it
    has = tab.col("pdays") > 0
    fdb = np.full(tab.n_personas, np.nan)
    order = np.lexsort((tab.j[has], tab.code[has]))
    codes_h, fdb_h = tab.code[has][order], np.asarray(tab.col("first_day_buy"), dtype=np.float64)[has][order]
    firsts = np.flatnonzero(np.r_[True, codes_h[1:] != codes_h[:-1]]) if len(codes_h) else np.zeros(0, np.int64)
    fdb[codes_h[firsts]] = fdb_h[firsts]
    out.put("tx_btyd_frequency", lambda k: np.where(pdays[:, at(k)] > 0, pdays[:, at(k)] - 1, np.nan))
    out.put("tx_btyd_recency", lambda k: last_day[:, at(k)] - first_day[:, at(k)])
    out.put("tx_btyd_T", lambda k: per.days[k] - first_day[:, at(k)])
    out.put("tx_btyd_monetary", lambda k: np.where(
        pdays[:, at(k)] > 1, ratio(buy[:, at(k)] - fdb, pdays[:, at(k)] - 1),
        np.where(pdays[:, at(k)] == 1, 0.0, np.nan)))
    del pdays, first_day, last_day, buy
    if categories:
        cats = PeriodTable.fetch(con, f"""
            SELECT persona_id, {per.period_sql("day")} AS j, cat, count(*)::INTEGER AS buys
            FROM ({base}) WHERE NOT is_ret AND cat >= 0 GROUP BY ALL""", per, pids=tab.pids)
        cat = cats.col("cat")
        distinct = [np.zeros(tab.n_personas) for _ in range(len(dates))]
        for i in range(len(categories)):
            c = cats.cumsum("buys", where=cat == i)
            for k in range(len(dates)):
                distinct[k] += window(c, k, 365) > 0
            del c
        out.put("tx_categories_365d", lambda k: distinct[k])
    return out.frame()
