"""Attribute features (`attr_`): demographics, city, enrichment and consent from the profile, plus the channel count.

The profile is one row per persona as it is now, so only attributes that do not describe activity are used:
`first_seen`, `last_seen`, `records` and `channels` span all data (the future of every snapshot date) and are never
read. Which personas get a row for a date comes from their activity instead (any record before the date), and
`attr_n_channels_365d` is counted from activity before the date, not from the profile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.transactions import (FeatureBlock, PeriodTable, Periods, as_of_index, by_offset, columns_of,
                                   empty_frame, require, sanitise)

INCOME_BANDS = {"low": 0, "middle": 1, "upper_middle": 2, "high": 3}
DAYS_PER_YEAR = 365.2425
NS_PER_DAY = 86_400 * 10**9


def first_activity(con: duckdb.DuckDBPyConnection, sources: Sequence[str]) -> pd.DataFrame:
    """persona_id, first_seen (UTC): the first record of each persona over the activity relations."""
    for rel in sources:
        require(columns_of(con, rel), ["persona_id", "ts"], rel)
    union = " UNION ALL ".join(f"SELECT persona_id, min(epoch_ns(ts)) AS t FROM {rel} "
                               "WHERE persona_id IS NOT NULL AND ts IS NOT NULL GROUP BY persona_id" for rel in sources)
    table = con.sql(f"SELECT persona_id, min(t) AS t FROM ({union}) GROUP BY persona_id ORDER BY persona_id"
                    ).to_arrow_table()
    return pd.DataFrame({
        "persona_id": pd.array(table.column("persona_id").cast(pa.string()), dtype=pd.StringDtype("pyarrow")),
        "first_seen": pd.DatetimeIndex(table.column("t").to_numpy(zero_copy_only=False).astype(np.int64), tz="UTC")})


def channel_features(con: duckdb.DuckDBPyConnection, sources: Mapping[str, str], *,
                     as_of_dates: Sequence[pd.Timestamp]) -> pd.DataFrame:
    """attr_n_channels_365d: distinct channels with activity in the 365 days before as_of, for every persona with
    any record before it (0 when the activity is older). `sources` maps a name to a relation; a relation without a
    `channel` column (or a null channel) counts as the channel of its name."""
    chans = {name: "channel" in columns_of(con, rel) for name, rel in sources.items()}
    return by_offset(_channels, as_of_dates, con=con, sources=sources, chans=chans)


def _channels(dates: pd.DatetimeIndex, off: int, *, con: duckdb.DuckDBPyConnection, sources: Mapping[str, str],
              chans: Mapping[str, bool]) -> pd.DataFrame:
    if not len(dates):
        return empty_frame(["attr_n_channels_365d"])
    per = Periods.of(dates, off, [365])
    parts = []
    for name, rel in sources.items():
        label = "'" + name.replace("'", "''") + "'"
        ch = f"coalesce(channel, {label})" if chans[name] else label
        parts.append(f"SELECT persona_id, {ch} AS ch, {per.day_sql()} AS day FROM {rel} WHERE {per.keep_sql()}")
    tab = PeriodTable.fetch(con, f"""
        SELECT persona_id, {per.period_sql("day")} AS j, ch, count(*)::INTEGER AS n
        FROM ({" UNION ALL ".join(parts)}) GROUP BY ALL""", per)
    out = FeatureBlock(per, tab.pids, tab.cumsum("n"), ["attr_n_channels_365d"])
    ch = tab.col("ch")
    n_channels = [np.zeros(tab.n_personas, dtype=np.float32) for _ in range(len(dates))]
    for value in np.unique(ch):
        c = tab.cumsum("n", where=ch == value)
        for k in range(len(dates)):
            n_channels[k] += (c[:, per.at(k)] - c[:, per.at(k, 365)]) > 0
        del c
    out.put("attr_n_channels_365d", lambda k: n_channels[k])
    return out.frame()


def profile_features(profiles: pd.DataFrame, *, as_of_dates: Sequence[pd.Timestamp],
                     activity_first_seen: pd.DataFrame, channels: pd.DataFrame | None = None) -> pd.DataFrame:
    """`attr_` features for every persona whose first activity (`activity_first_seen`: persona_id, first_seen, e.g.
    from `first_activity`) is before each as_of date, in (event_timestamp, persona_id) order.

    Profile columns that are missing give no feature; a persona without a profile row gets NaN. `channels` (from
    `channel_features`, same personas and dates) adds attr_n_channels_365d. Encodings: attr_gender_female 1/0/NaN,
    attr_income_band 0 (low) .. 3 (high) / NaN, attr_consent_marketing 1/0/NaN, attr_vendor_int_{c} 1/0, NaN
    when the persona has no vendor data; attr_age in years at as_of (NaN when unknown or not yet born).
    """
    dates = as_of_index(as_of_dates)
    first = activity_first_seen[["persona_id", "first_seen"]].dropna()
    first = first.drop_duplicates("persona_id").sort_values("persona_id", ignore_index=True)
    pids = first["persona_id"].astype(pd.StringDtype("pyarrow"))
    first_ns = pd.DatetimeIndex(pd.to_datetime(first["first_seen"], utc=True)).as_unit("ns").asi8
    per_date = [np.flatnonzero(first_ns < d.value) for d in dates]
    take = np.concatenate(per_date) if per_date else np.zeros(0, dtype=np.int64)
    k = np.repeat(np.arange(len(dates)), [len(p) for p in per_date])
    as_of_ns = dates.asi8[k] if len(dates) else np.zeros(0, dtype=np.int64)

    static = _static_attributes(profiles, pids)
    keys = pd.DataFrame({"persona_id": pids.take(take).reset_index(drop=True),
                         "event_timestamp": pd.DatetimeIndex(as_of_ns, tz="UTC").as_unit("ns")})
    names = (["attr_age"] if "birth_date" in profiles.columns else []) + list(static)
    names += ["attr_n_channels_365d"] if channels is not None else []
    # One float32 block, feature-major, so that the DataFrame wraps it without a copy.
    block = np.empty((len(names), len(take)), dtype=np.float32)
    first_static = 1 if "birth_date" in profiles.columns else 0
    for j, col in enumerate(static, start=first_static):
        np.take(static[col], take, out=block[j])
    if "birth_date" in profiles.columns:
        birth = _birth_ns(profiles, pids)[take]
        age = (as_of_ns - birth) / (NS_PER_DAY * DAYS_PER_YEAR)
        age[(birth == np.iinfo(np.int64).min) | (age < 0)] = np.nan
        block[0] = age
    if channels is not None:
        block[-1] = _align(keys, channels, "attr_n_channels_365d")
    return pd.concat([keys, pd.DataFrame(block.T, columns=names, copy=False)], axis=1, copy=False)


def _birth_ns(profiles: pd.DataFrame, pids: pd.Series) -> np.ndarray:
    """Birth dates aligned with `pids` as epoch ns (int64 min where unknown)."""
    birth = profiles.drop_duplicates("persona_id").set_index("persona_id")["birth_date"]
    birth = pd.to_datetime(birth, errors="coerce", utc=True).reindex(pd.Index(pids.astype(object)))
    values = pd.DatetimeIndex(birth).as_unit("ns").asi8.copy()
    return values


def _static_attributes(profiles: pd.DataFrame, pids: pd.Series) -> dict[str, np.ndarray]:
    """Per-persona attribute columns (float32), aligned with `pids`."""
    prof = profiles.drop_duplicates("persona_id").set_index("persona_id").reindex(pd.Index(pids.astype(object)))
    cols: dict[str, np.ndarray] = {}

    def f32(values) -> np.ndarray:
        return pd.to_numeric(pd.Series(values, index=prof.index), errors="coerce").to_numpy(np.float32,
                                                                                           na_value=np.nan)

    if "gender" in prof.columns:
        g = prof["gender"].astype("string").str.strip().str.lower()
        cols["attr_gender_female"] = f32(g.map({"female": 1.0, "male": 0.0}))
    for name in ("city_tier", "city_income_index", "city_population"):
        if name in prof.columns:
            cols[f"attr_{name}"] = f32(prof[name])
    if "income_band" in prof.columns:
        band = prof["income_band"].astype("string").str.strip().str.lower()
        cols["attr_income_band"] = f32(band.map(INCOME_BANDS))
    if "vendor_interests" in prof.columns:
        vi = prof["vendor_interests"].astype("string")
        known = vi.notna().to_numpy()
        tokens = vi.dropna().str.split("|").explode()
        clean = {t: sanitise(t) for t in tokens.dropna().unique()}
        tokens = tokens.map(clean).fillna("")
        tokens = tokens[tokens.astype(bool)]
        for c in sorted(set(tokens)):
            has = np.zeros(len(prof), dtype=np.float32)
            hit = prof.index.get_indexer(tokens.index[tokens.to_numpy() == c].unique())
            has[hit] = 1.0
            has[~known] = np.nan
            cols[f"attr_vendor_int_{c}"] = has
    spend_cols = sorted(c for c in prof.columns if c.startswith("partner_spend_") and sanitise(c[14:]))
    if spend_cols:
        spend = {}
        for c in spend_cols:
            name = f"attr_partner_spend_{sanitise(c[14:])}"
            v = f32(prof[c])
            spend[name] = v if name not in spend else np.where(np.isnan(spend[name]), v, spend[name] + np.nan_to_num(v))
        cols.update(spend)
        stacked = np.vstack(list(spend.values()))
        total = np.nansum(stacked, axis=0)
        total[np.isnan(stacked).all(axis=0)] = np.nan
        cols["attr_partner_spend_total"] = total.astype(np.float32)
    if "consent_marketing" in prof.columns:
        cols["attr_consent_marketing"] = f32(prof["consent_marketing"].astype("boolean").astype("Float32"))
    return cols


def _align(frame: pd.DataFrame, other: pd.DataFrame, column: str) -> np.ndarray:
    """`other[column]` on the rows of `frame` (by persona_id and event_timestamp); 0 where `other` has no row.
    Both come sorted the same way, so the usual case is a check and a copy rather than a join."""
    same = (len(other) == len(frame)
            and (pd.DatetimeIndex(other["event_timestamp"]).as_unit("ns").asi8
                 == pd.DatetimeIndex(frame["event_timestamp"]).asi8).all()
            and pc.all(pc.equal(pa.array(other["persona_id"].astype(pd.StringDtype("pyarrow")).array),
                                pa.array(frame["persona_id"].array))).as_py() is not False)
    if same:
        return other[column].to_numpy(np.float32)
    merged = frame[["persona_id", "event_timestamp"]].merge(
        other[["persona_id", "event_timestamp", column]], how="left", on=["persona_id", "event_timestamp"])
    return merged[column].fillna(0).to_numpy(np.float32)
