"""Point-in-time feature snapshots: every feature group for many as_of dates, written for the offline store.

`compute_snapshots` opens the integrated Parquet files in DuckDB (bounded memory, spilling to a temporary folder)
and runs each group once for all dates; `write_snapshots` merges them into `<out_dir>/<group>.parquet`, one file
per group (the Feast feature view's source), replacing the rows of any date computed again.

Dates: a snapshot at date c reads activity with ts < c, so it holds the data up to and including the day before c
(`snapshot_for` / `data_through` convert between the two). `input_fingerprints` says, per snapshot date, what the
snapshot read, so a later run can tell which dates a corrected or late-arriving row has made stale.

The Spark engine (`features.spark_snapshots`) runs this same `iter_snapshots` on buckets of personas, given the whole
data's `Vocabulary`, and assembles each group's file from the buckets' parts with `write_parts`; so does the
embedded engine on large data (`features.snapshot_buckets`, one bucket after the other, a range of `personas` each).
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.affinity import affinity_features
from features.attributes import channel_features, first_activity, profile_features
from features.engagement import engagement_features
from features.realtime import realtime_features
from features.transactions import as_of_index, transaction_features
from persona.faults import kill_point
from persona.workspace import conform

Progress = Callable[[str, float], None]
GROUPS = ("attributes", "transactions", "engagement", "affinity", "realtime")
ACTIVITY = ("transactions", "events", "interactions")
# Profile columns that summarise all activity, the future of every snapshot included: never features.
LEAKY_PROFILE_COLUMNS = ("first_seen", "last_seen", "records", "channels")
ROW_GROUP_ROWS = 262_144
# A range of personas, (lo, hi): lo <= persona_id < hi, None for no bound on that side (see `persona_sql`).
PersonaRange = tuple[object | None, object | None]


DAY = pd.Timedelta(days=1)


def _utc(value: pd.Timestamp | str) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")


def snapshot_for(day: pd.Timestamp | str) -> pd.Timestamp:
    """The snapshot date holding all data up to and including `day` (a calendar date in UTC): the midnight after it.

    `--as-of 1997-09-30` means the snapshot at 1997-10-01 00:00 UTC, which reads every row with ts < 1997-10-01."""
    ts = _utc(day)
    if ts != ts.normalize():
        raise ValueError(f"as-of {ts}: expected a calendar date such as {ts.date()} (data up to and including that "
                         "whole day, UTC), not a time of day")
    return ts + DAY


def data_through(snapshot: pd.Timestamp | str) -> pd.Timestamp:
    """The last day (UTC) whose data a snapshot at this date holds: the day before it (see `snapshot_for`)."""
    return (_utc(snapshot) - pd.Timedelta(microseconds=1)).normalize()


def snapshot_grid(data_end: pd.Timestamp, *, every_days: int, count: int) -> list[pd.Timestamp]:
    """`count` midnight-UTC dates, ascending: the day after `data_end` (the scoring date), then every `every_days`
    days back from it."""
    if every_days < 1 or count < 1:
        raise ValueError(f"snapshot_grid needs every_days >= 1 and count >= 1, got {every_days} and {count}")
    end = pd.Timestamp(data_end)
    end = end.tz_localize("UTC") if end.tz is None else end.tz_convert("UTC")
    last = (end + pd.Timedelta(days=1)).normalize()
    return [last - pd.Timedelta(days=every_days * i) for i in range(count - 1, -1, -1)]


def data_end(integrated: Path) -> pd.Timestamp:
    """The last activity timestamp (UTC) in the integrated transactions and events."""
    files = [integrated / f"{name}.parquet" for name in ("transactions", "events")]
    files = [f for f in files if f.exists()]
    if not files:
        raise FileNotFoundError(f"{integrated}: neither transactions.parquet nor events.parquet: "
                                "run `persona integrate` first")
    con = duckdb.connect()
    try:
        union = " UNION ALL ".join(f"SELECT max(epoch_ns(ts)) AS t FROM {parquet_sql(f)}" for f in files)
        (t,) = con.execute(f"SELECT max(t) FROM ({union})").fetchone()
    finally:
        con.close()
    if t is None:
        raise ValueError(f"{integrated}: no activity with a timestamp in {[f.name for f in files]}")
    return pd.Timestamp(int(t), tz="UTC")


# --- what a snapshot read ---------------------------------------------------------------------------------------
# A fingerprint is "rows:hash" with hash the sum, modulo 2**64, of DuckDB's hash of every column of every row: it does
# not depend on row order, so the same rows written in another order by another run fingerprint the same, while one
# changed, added or removed row changes it. DuckDB's hash may change between DuckDB releases: FINGERPRINT_METHOD
# names the one used, and a manifest written with another method fingerprints nothing (every date is recomputed).
FINGERPRINT_METHOD = f"rows+sum(hash(row)) mod 2^64, duckdb {duckdb.__version__}"
LOGGED_EVENTS = "logged_events"  # the online service's event log, counted with the events
PROFILES = "profiles"
# Which inputs each group reads: a change in one of these recomputes the group (profiles: attributes only).
GROUP_INPUTS = {"attributes": (*ACTIVITY, LOGGED_EVENTS, PROFILES), **{g: (*ACTIVITY, LOGGED_EVENTS)
                                                                    for g in GROUPS if g != "attributes"}}


def input_fingerprints(integrated: Path, as_of_dates: Sequence[pd.Timestamp], *,
                       extra_events: Path | None = None) -> dict[str, dict[str, str]]:
    """Per snapshot date (ISO string), a fingerprint ("rows:hash") of every input a snapshot at that date reads.

    Activity sources (transactions, events, interactions, the logged events in `extra_events`) count their rows with
    ts < the date, so a row of day D changes the fingerprint of every date after D and of none before. The profiles
    hold one row per persona as it is now, read whole by the attributes group: their fingerprint is the same for every
    date. A source that does not exist is left out. One pass over each file in DuckDB: each row is placed in the
    interval of the first snapshot date after it (a bisection of the dates, so that nothing is sorted and memory does
    not grow with the rows), then the intervals are summed cumulatively.
    """
    integrated = Path(integrated)
    dates = as_of_index(as_of_dates)
    files = {name: integrated / f"{name}.parquet" for name in ACTIVITY}
    if extra_events is not None:
        files[LOGGED_EVENTS] = Path(extra_events)
    files = {name: f for name, f in files.items() if f.exists()}
    keys = [str(d) for d in dates]
    out: dict[str, dict[str, str]] = {k: {} for k in keys}
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        interval = _interval_sql("t", [int(d.value) // 1000 for d in dates])  # microseconds, as TIMESTAMPTZ holds
        for name, path in files.items():
            rows = con.execute(f"""
                WITH r AS (SELECT epoch_us(ts::TIMESTAMPTZ) AS t, hash(*COLUMNS(*)) AS h FROM {parquet_sql(path)}
                           WHERE ts IS NOT NULL)
                SELECT k, count(*), (sum(h) % 18446744073709551616)::UBIGINT
                FROM (SELECT {interval} AS k, h FROM r) WHERE k < {len(dates)} GROUP BY k""").fetchall()
            per = {int(k): (int(n), int(h)) for k, n, h in rows}
            n = h = 0
            for i, key in enumerate(keys):  # one step per snapshot date, not per row
                dn, dh = per.get(i, (0, 0))
                n, h = n + dn, (h + dh) % 2**64
                out[key][name] = f"{n}:{h:016x}"
        profiles = integrated / "profiles.parquet"
        if profiles.exists():
            cols = ", ".join('"' + c.replace('"', '""') + '"' for c in _profile_columns(profiles))
            n, h = con.execute(f"SELECT count(*), coalesce(sum(hash({cols})) % 18446744073709551616, 0)::UBIGINT "
                               f"FROM {parquet_sql(profiles)}").fetchone()
            for key in keys:
                out[key][PROFILES] = f"{int(n)}:{int(h):016x}"
    finally:
        con.close()
    return out


def _interval_sql(column: str, bounds: Sequence[int], lo: int = 0, hi: int | None = None) -> str:
    """SQL for how many of `bounds` (ascending) are at or below `column`, i.e. the index of the first bound above it
    (len(bounds): none), by bisection: log2(len(bounds)) comparisons a row."""
    hi = len(bounds) if hi is None else hi
    if lo == hi:
        return str(lo)
    mid = (lo + hi) // 2
    return (f"CASE WHEN {column} < {bounds[mid]} THEN {_interval_sql(column, bounds, lo, mid)} "
            f"ELSE {_interval_sql(column, bounds, mid + 1, hi)} END")


def stale_groups(current: Mapping[str, str], previous: Mapping[str, str] | None) -> tuple[tuple[str, ...], str]:
    """The groups a snapshot date must be computed again for, and why (empty: its inputs are unchanged).

    `current` and `previous` are one date's fingerprints now and when it was written (None: never written, or by a
    persona that recorded no fingerprint)."""
    if previous is None:
        return GROUPS, "not computed yet"
    changed = sorted(name for name in {*current, *previous} if current.get(name) != previous.get(name))
    if not changed:
        return (), ""
    groups = tuple(g for g in GROUPS if set(GROUP_INPUTS[g]) & set(changed))
    return groups, "; ".join(_change(name, previous.get(name), current.get(name)) for name in changed)


def _change(name: str, before: str | None, after: str | None) -> str:
    if before is None:
        return f"{name} appeared"
    if after is None:
        return f"{name} disappeared"
    n0, n1 = int(before.split(":")[0]), int(after.split(":")[0])
    what = "rows" if name == PROFILES else "rows before this date"
    return f"{name} changed ({n0:,} -> {n1:,} {what})" if n0 != n1 else f"{name} changed ({n1:,} {what}, edited)"


@dataclass(frozen=True)
class Vocabulary:
    """What decides a group's columns and is read from the whole data, for a run over a part of the personas.

    Every feature of a persona is a function of that persona's own records, except which columns exist: one set per
    category (`aff_`, `tx_categories_365d`), per vendor interest (`attr_vendor_int_`), and whether an activity
    relation exists at all. A run over one bucket of personas (the Spark engine, `features.spark_snapshots`) is
    given the whole data's vocabulary, so that every bucket yields the columns, in the order, and the values that one
    run over everyone yields.

    `relations`: the activity relations that exist (events too when only the logged events have rows);
    `categories`: relation -> its distinct raw `category` values over all rows (transactions, events with the logged
    events); `vendor_interests`: the distinct raw `|`-separated tokens of the profiles of personas with any activity.
    """

    relations: tuple[str, ...]
    categories: Mapping[str, tuple] = field(default_factory=dict)
    vendor_interests: tuple[str, ...] = ()


MAX_VOCABULARY = 100_000  # distinct values of one vocabulary: more is not a vocabulary but an identifier


def check_vocabulary_size(values: int) -> None:
    """Refuse a vocabulary of more than MAX_VOCABULARY values (categories and vendor interests together)."""
    if values > MAX_VOCABULARY:
        raise ValueError(f"more than {MAX_VOCABULARY:,} distinct categories and vendor interests: a feature column "
                         "is made per value, so a category column holds identifiers rather than categories: clean "
                         "it in the sources")


# Stands in the attributes group for the whole data's vendor interests: its first activity is after every date, so it
# never gets a row, while its profile holds every token (the group's columns are the tokens of its personas).
VOCABULARY_PERSONA = "\x00vocabulary"


def compute_snapshots(integrated: Path, as_of_dates: Sequence[pd.Timestamp], *, progress: Progress | None = None,
                      threads: int = 2, memory_limit: str = "3GB", extra_events: Path | None = None,
                      groups: Sequence[str] | None = None, vocabulary: Vocabulary | None = None,
                      personas: PersonaRange | None = None) -> dict[str, pd.DataFrame]:
    """Every feature group (GROUPS order; only `groups` when given) for all `as_of_dates`, from the Parquet files
    in `integrated`.

    transactions.parquet is required; events, interactions and profiles are optional (a group with no input is
    left out of the result). All frames are held at once: at 1M customers x 13 dates that is ~7-8 GB, so a large
    grid should stream instead: `write_snapshots(iter_snapshots(...), out_dir)` holds one group at a time.
    """
    return dict(iter_snapshots(integrated, as_of_dates, progress=progress, threads=threads,
                               memory_limit=memory_limit, extra_events=extra_events, groups=groups,
                               vocabulary=vocabulary, personas=personas))


def iter_snapshots(integrated: Path, as_of_dates: Sequence[pd.Timestamp], *, progress: Progress | None = None,
                   threads: int = 2, memory_limit: str = "3GB", extra_events: Path | None = None,
                   groups: Sequence[str] | None = None, vocabulary: Vocabulary | None = None,
                   personas: PersonaRange | None = None) -> Iterator[tuple[str, pd.DataFrame]]:
    """(group, frame) for each feature group in GROUPS order, computed one at a time (see `compute_snapshots`).

    DuckDB runs with `threads` and `memory_limit` and spills to a temporary folder removed at the end.
    `extra_events`: a Parquet file of events attributed elsewhere (the online service's event log: persona_id, ts,
    event_type, category), counted with the integrated events.

    `vocabulary`: when `integrated` holds only some personas (a bucket of the Spark engine), the whole data's (see
    `Vocabulary`); None (the default) reads it from the data, as one run over everyone. Its categories join each view
    as rows without a persona and a time, which only the vocabulary scans read: every feature query reads rows with
    both (`Periods.keep_sql`, `first_activity`). An input `<name>.parquet` may be a folder of Parquet parts.

    `personas`: `(lo, hi)`, only the personas with lo <= persona_id < hi (None: unbounded on that side), read from
    the same files (each scan skips the row groups outside the range; integrate publishes them sorted by
    persona_id); give it with the whole data's `vocabulary`, which holds what the records left out would add.
    """
    integrated = Path(integrated)
    unknown = sorted(set(groups or ()) - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown feature groups {unknown} (expected some of {list(GROUPS)})")
    dates = list(as_of_index(as_of_dates))
    tx_path = integrated / "transactions.parquet"
    if not tx_path.exists():
        raise FileNotFoundError(f"{tx_path}: no transactions: run `persona integrate` first")
    rel = {name: name for name in ACTIVITY if (integrated / f"{name}.parquet").exists()}
    sources = {name: parquet_parts(integrated / f"{name}.parquet") for name in rel}
    if extra_events is not None and Path(extra_events).exists() and (
            vocabulary is not None or parquet_rows(Path(extra_events))):
        rel["events"] = "events"
        sources.setdefault("events", []).extend(parquet_parts(Path(extra_events)))
    if vocabulary is not None:
        missing = sorted(set(vocabulary.relations) - set(rel))
        if missing:
            raise FileNotFoundError(f"{integrated}: no {missing} (the whole data has them): a bucket needs every "
                                    "relation, empty or not")
        rel = {name: name for name in rel if name in vocabulary.relations}
    tx, ev, ix = rel.get("transactions"), rel.get("events"), rel.get("interactions")

    def attributes(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
        profiles = _read_profiles(integrated / "profiles.parquet", personas)
        first = first_activity(con, list(rel.values()))
        if vocabulary is not None and vocabulary.vendor_interests and "vendor_interests" in profiles.columns:
            first, profiles = _with_vocabulary_persona(first, profiles, vocabulary.vendor_interests)
        return profile_features(profiles, as_of_dates=dates, activity_first_seen=first,
                                channels=channel_features(con, rel, as_of_dates=dates))

    steps: list[tuple[str, Callable[[duckdb.DuckDBPyConnection], pd.DataFrame | None]]] = [
        ("attributes", attributes),
        ("transactions", lambda con: transaction_features(con, tx, as_of_dates=dates)),
        ("engagement", lambda con: engagement_features(con, ev, as_of_dates=dates, interactions=ix)
         if (ev or ix) else None),
        ("affinity", lambda con: affinity_features(con, tx, as_of_dates=dates, events=ev)),
        ("realtime", lambda con: realtime_features(con, ev, as_of_dates=dates, transactions=tx)),
    ]
    if groups is not None:
        steps = [(g, step) for g, step in steps if g in groups]
    where = persona_sql(personas)
    spill = tempfile.mkdtemp(prefix="persona-features-")
    try:
        for i, (group, step) in enumerate(steps):
            if progress:
                progress(f"features: {group} for {len(dates)} date(s)", i / len(steps))
            # a connection per group: what DuckDB holds after one group's queries is released before the next
            con = duckdb.connect(config={"threads": threads, "memory_limit": memory_limit,
                                         "temp_directory": spill, "preserve_insertion_order": False})
            try:
                for name in rel:
                    union = " UNION ALL BY NAME ".join(f"SELECT * FROM read_parquet('{_sql_path(p)}'){where}"
                                                       for p in sources[name])
                    values = (vocabulary.categories.get(name) if vocabulary is not None else None) or ()
                    if values:
                        con.register(f"_vocabulary_{name}", pa.table({"category": pa.array(list(values))}))
                        union += f" UNION ALL BY NAME SELECT category FROM _vocabulary_{name}"
                    con.execute(f"CREATE VIEW {name} AS {union}")
                frame = step(con)
            finally:
                con.close()
            if frame is not None:
                yield group, frame
            del frame
            # Arrow's allocator keeps freed memory for reuse: give it back before the next group
            gc.collect()
            pa.default_memory_pool().release_unused()
        if progress:
            progress("features computed", 1.0)
    finally:
        shutil.rmtree(spill, ignore_errors=True)


def parquet_parts(path: Path) -> list[Path]:
    """The Parquet files of an input: the file itself, or the parts in a folder of them (as Spark writes)."""
    path = Path(path)
    return sorted(path.glob("*.parquet")) if path.is_dir() else [path]


def parquet_rows(path: Path) -> int:
    """The rows of an input (a file or a folder of parts, see `parquet_parts`), from the files' footers."""
    return sum(pq.read_metadata(p).num_rows for p in parquet_parts(path))


def parquet_sql(path: Path) -> str:
    """DuckDB's scan of an input (a file or a folder of parts, see `parquet_parts`), for a FROM clause."""
    files = ", ".join(f"'{_sql_path(p)}'" for p in parquet_parts(path))
    return f"read_parquet([{files}], union_by_name = true)"


def persona_sql(personas: PersonaRange | None) -> str:
    """A WHERE clause keeping the records of a range of personas, `(lo, hi)`: lo <= persona_id < hi (None: no bound
    on that side); records without a persona are left out. Empty without a range."""
    if personas is None:
        return ""
    lo, hi = personas
    keep = ["persona_id IS NOT NULL"]
    keep += [f"persona_id >= {_sql_value(lo)}"] if lo is not None else []
    keep += [f"persona_id < {_sql_value(hi)}"] if hi is not None else []
    return " WHERE " + " AND ".join(keep)


def _sql_value(value: object) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    raise TypeError(f"persona_id bound {value!r}: expected a string or a number")


def _with_vocabulary_persona(first: pd.DataFrame, profiles: pd.DataFrame,
                             tokens: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`first` and `profiles` with VOCABULARY_PERSONA: first activity after every date, all vendor interests."""
    never = pd.DataFrame({"persona_id": pd.array([VOCABULARY_PERSONA], dtype=first["persona_id"].dtype),
                          "first_seen": pd.DatetimeIndex([pd.Timestamp.max], tz="UTC").as_unit("ns")})
    row = pd.DataFrame({"persona_id": pd.array([VOCABULARY_PERSONA], dtype=profiles["persona_id"].dtype),
                        "vendor_interests": pd.array(["|".join(tokens)], dtype=profiles["vendor_interests"].dtype)})
    return (pd.concat([first, never], ignore_index=True),
            pd.concat([profiles, row], ignore_index=True))


def _profile_columns(path: Path) -> list[str]:
    """The profile columns attributes may use (no identifiers, nothing that summarises activity)."""
    names = pq.read_schema(parquet_parts(path)[0]).names
    return [c for c in names if c not in LEAKY_PROFILE_COLUMNS and not c.endswith("_hash") and not c.startswith("n_")]


def _read_profiles(path: Path, personas: PersonaRange | None = None) -> pd.DataFrame:
    """The profile columns attributes may use (see `_profile_columns`); only a range of personas' with `personas`
    (as `persona_sql`: row groups outside it are skipped by their statistics)."""
    if not path.exists():
        return pd.DataFrame({"persona_id": pd.Series([], dtype="string")})
    cols = _profile_columns(path)
    keep = None
    if personas is not None:
        lo, hi = personas
        keep = pc.field("persona_id").is_valid()
        keep = keep & (pc.field("persona_id") >= lo) if lo is not None else keep
        keep = keep & (pc.field("persona_id") < hi) if hi is not None else keep
    table = pq.read_table(path, columns=cols, filters=keep)
    return table.to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow")}.get)


def write_snapshots(frames: Mapping[str, pd.DataFrame] | Iterable[tuple[str, pd.DataFrame]], out_dir: Path, *,
                    created: pd.Timestamp | None = None) -> dict[str, Path]:
    """Write each group to `out_dir/<group>.parquet`, merged with the dates already there (a recomputed date's rows
    replace the old ones), with a `created_timestamp` column (`created`, default now, on the new rows). Rows are
    ordered by event_timestamp, one date per row group; each file is replaced atomically (temp + os.replace).
    `frames` may be a dict or an iterable of (group, frame), e.g. `iter_snapshots(...)`, written as they come."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = pd.Timestamp.now(tz="UTC") if created is None else pd.Timestamp(created).tz_convert("UTC")
    paths = {}
    for group, frame in (frames.items() if isinstance(frames, Mapping) else frames):
        path = out_dir / f"{group}.parquet"
        _write_group(frame, path, stamp)
        paths[group] = path
        kill_point("features.group_written")
        del frame  # with a generator, the next group is computed only after this one is released
    return paths


def _write_group(frame: pd.DataFrame, path: Path, created: pd.Timestamp) -> None:
    if not frame["event_timestamp"].is_monotonic_increasing:
        frame = frame.sort_values(["event_timestamp", "persona_id"], kind="stable")
    ts_ns = pd.DatetimeIndex(frame["event_timestamp"]).as_unit("ns").asi8
    fresh = set(pd.unique(ts_ns).tolist())
    # types from a head, not from zero rows: an object column (persona_id from plain pandas) has no type when empty
    schema = pa.Schema.from_pandas(frame.head(1000), preserve_index=False).remove_metadata()

    def rows_of(d: int) -> Iterator[pa.Table]:  # one date of the new frame, converted slice by slice to bound memory
        lo, hi = ts_ns.searchsorted(d, "left"), ts_ns.searchsorted(d, "right")
        yield pa.Table.from_pandas(frame.iloc[lo:hi], preserve_index=False)

    _merge_dates(path, schema, fresh, rows_of, created)


def write_parts(parts: Sequence[Path], path: Path, *, created: pd.Timestamp | None = None) -> int:
    """Write one group to `path` from Parquet parts (e.g. one per bucket of personas), merged with the dates already
    there as `write_snapshots` does; returns the rows written from the parts.

    Every part must have the same schema and be sorted by (event_timestamp, persona_id), and the parts' personas
    must come in ascending ranges (part i's before part i+1's): the file is then in (event_timestamp, persona_id)
    order, as `write_snapshots` writes it, while only one date of one part is held at a time."""
    parts = [Path(p) for p in parts]
    if not parts:
        raise ValueError(f"{path}: no parts to write")
    schema = pq.read_schema(parts[0]).remove_metadata()
    for p in parts[1:]:
        other = pq.read_schema(p).remove_metadata()
        if not other.equals(schema):
            raise ValueError(f"{p}: its columns differ from {parts[0]}'s (every part of a group must have the same "
                             f"columns): {sorted(set(other.names) ^ set(schema.names)) or 'same names, other types'}")
    when = schema.field("event_timestamp").type
    fresh: set[int] = set()
    for p in parts:
        ts = pq.read_table(p, columns=["event_timestamp"]).column(0)
        fresh |= set(pc.unique(ts).cast(pa.timestamp("ns", tz=when.tz)).cast(pa.int64()).to_pylist())
    stamp = pd.Timestamp.now(tz="UTC") if created is None else pd.Timestamp(created).tz_convert("UTC")

    def rows_of(d: int) -> Iterator[pa.Table]:
        day = pa.scalar(d, type=pa.timestamp("ns", tz=when.tz)).cast(when)
        for p in parts:
            yield pq.read_table(p, filters=pc.field("event_timestamp") == day)

    return _merge_dates(path, schema, fresh, rows_of, stamp)


def _merge_dates(path: Path, schema: pa.Schema, fresh: set[int], rows_of: Callable[[int], Iterator[pa.Table]],
                 created: pd.Timestamp) -> int:
    """Write `path` anew: for each date (ns) in `fresh` the new rows from `rows_of(date)`, for every other date of the
    old file its rows, dates ascending, a `created_timestamp` on the new rows; atomically (temp + os.replace).
    Returns the new rows written."""
    schema = _with_created(schema)
    old: set[int] = set()
    before = pq.ParquetFile(path) if path.exists() else None
    if before is not None:  # read a row group at a time: memory bounded by a row group, not by the file
        for g in range(before.num_row_groups):
            old_ts = before.read_row_group(g, columns=["event_timestamp"]).column("event_timestamp")
            old |= set(pd.unique(pd.DatetimeIndex(old_ts.to_pandas()).as_unit("ns").asi8).tolist())
        schema = pa.unify_schemas([schema, _with_created(before.schema_arrow.remove_metadata())],
                                  promote_options="permissive")
    schema = _microsecond_times(schema)
    stamp = pa.scalar(created.floor("us").value // 1000, type=_TS)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    written = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for d in sorted(fresh | old):
                if d in fresh:
                    # slices of one date are gathered up to a row group, so that many small parts make few groups
                    pending: list[pa.Table] = []
                    for part in rows_of(d):
                        part = part.append_column("created_timestamp", pa.repeat(stamp, part.num_rows))
                        pending.append(conform(part, schema))
                        written += part.num_rows
                        if sum(t.num_rows for t in pending) >= ROW_GROUP_ROWS:
                            writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                            pending = []
                    if pending:
                        writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                    del pending
                else:  # a date kept from the file: its own row groups, found from their statistics
                    for part in _rows_of_date(before, d):
                        writer.write_table(conform(part, schema), row_group_size=ROW_GROUP_ROWS)
                        del part
        if before is not None:
            before.close()
        os.replace(tmp, path)
    finally:
        if before is not None:
            before.close()
        if tmp.exists():
            tmp.unlink()
    return written


def _rows_of_date(file: pq.ParquetFile, d: int) -> Iterator[pa.Table]:
    """The rows of date `d` (ns) in a snapshot file, a row group at a time; the row groups of other dates are
    skipped by their statistics."""
    meta = file.metadata
    when = file.schema_arrow.field("event_timestamp").type
    day = d // {"s": 10**9, "ms": 10**6, "us": 1000, "ns": 1}[when.unit]
    raw = day * 1000 if when.unit == "s" else day  # Parquet keeps seconds as milliseconds
    j = next(k for k in range(meta.num_columns) if meta.schema.column(k).path == "event_timestamp")
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(j).statistics
        if (stats is not None and stats.has_min_max and isinstance(stats.min_raw, int)
                and not stats.min_raw <= raw <= stats.max_raw):
            continue
        part = file.read_row_group(g)
        yield part.filter(pc.equal(part.column("event_timestamp"), pa.scalar(day, type=when)))


# Feast's DuckDB offline store cannot filter timestamp[ns, tz] when materialising: snapshots keep microseconds.
_TS = pa.timestamp("us", tz="UTC")


def _microsecond_times(schema: pa.Schema) -> pa.Schema:
    for name in ("event_timestamp", "created_timestamp"):
        i = schema.get_field_index(name)
        schema = schema.set(i, pa.field(name, _TS))
    return schema


def _with_created(schema: pa.Schema) -> pa.Schema:
    if "created_timestamp" in schema.names:
        return schema
    return schema.append(pa.field("created_timestamp", pa.timestamp("ns", tz="UTC")))


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")
