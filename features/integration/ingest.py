"""Read raw source files, validate every row, standardise it to the canonical schema, and stage it.

A file becomes three staged outputs, each written atomically:
- accepted rows (canonical fields, UTC time, a row key and a mention key; no identifiers),
- its identifier mentions (mention key -> identifier type and salted hash of the normalised value; no raw value),
- quarantined rows, each with its source, file, row number, reason and the raw values (a row whose identifier is
  longer than `identity.max_identifier_length` among them).
The normalised raw values themselves (`StagedFile.identifiers`) are handed to integration in memory only: the
published identity map is the one table that keeps them.
A row carrying a forgotten identifier (a person's erasure, `persona forget`) is dropped whole, valid or not, and
only counted: per file, read = accepted + quarantined + erased.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.integration import standardise as std
from features.integration.standardise import mention_keys  # also staging's
from persona.config import CANONICAL_FIELDS, REQUIRED_FIELDS, PersonaConfig, SourceSpec

EARLIEST = pd.Timestamp("1990-01-01", tz="UTC")
# Typed canonical fields: how a raw value is parsed, and the reason a non-empty value that fails parsing gets.
_PARSERS = {"number": std.parse_numbers, "bool": std.parse_bools}


# Arrow-backed strings: trimming and comparing millions of values stays in Arrow's C++ kernels.
ARROW_STR = pd.StringDtype("pyarrow")
ARROW_STRINGS = {pa.string(): ARROW_STR, pa.large_string(): ARROW_STR}


QUARANTINE_SCHEMA = {"source": ARROW_STR, "file_id": ARROW_STR, "row": "int64", "reason": ARROW_STR, "raw": ARROW_STR}


class SeenKeys:
    """Row keys already accepted from a source's files: one sorted array per file, checked by binary search.

    Keeping the files apart makes re-staging one file cheap (drop its array) and each check O(n log m),
    instead of re-reading and re-hashing every other file's keys for every new file.
    """

    def __init__(self) -> None:
        self._parts: dict[str, np.ndarray] = {}

    def add(self, file_id: str, keys: np.ndarray) -> None:
        self._parts[file_id] = np.sort(np.asarray(keys, dtype=np.uint64))

    def contains(self, keys: np.ndarray, *, exclude: str | None = None) -> np.ndarray:
        return _in_sorted([k for file_id, k in self._parts.items() if file_id != exclude], keys)


def _in_sorted(runs: list[np.ndarray], keys: np.ndarray) -> np.ndarray:
    """Which keys are in one of the sorted uint64 `runs`. The keys are sorted once, so each run's binary searches walk
    it in order: an order of magnitude faster than random probes into an array of millions."""
    keys = np.asarray(keys, dtype=np.uint64)
    order = np.argsort(keys)
    needles, found, hit = keys[order], np.zeros(len(keys), dtype=bool), np.empty(len(keys), dtype=bool)
    for run in runs:
        if len(run):
            found |= run[np.minimum(np.searchsorted(run, needles), len(run) - 1)] == needles
    hit[order] = found
    return hit


class SourceFileError(ValueError):
    """A whole file is unusable (unreadable, empty, missing mapped columns); the message names file and problem."""


@dataclass(frozen=True)
class RawFile:
    """A source file read as text: the parsed rows with their 1-based row numbers, and the malformed ones."""

    frame: pd.DataFrame
    rows: np.ndarray
    malformed: pd.DataFrame  # row, reason, raw


MENTION_COLUMNS = ["mention_key", "id_type", "value_hash"]


@dataclass
class StagedFile:
    """One standardised file: what is staged (accepted, mentions, quarantined) and, in memory only, the raw values."""

    accepted: pd.DataFrame
    mentions: pd.DataFrame  # mention_key, id_type, value_hash
    quarantined: pd.DataFrame
    identifiers: pd.DataFrame  # id_type, value, value_hash: the mentions' normalised values; never written
    erased: int = 0
    invalid_identifiers: dict[str, int] = field(default_factory=dict)
    unmapped_codes: dict[str, int] = field(default_factory=dict)
    # Rows whose phone could exist but is outside every assigned range: linked, flagged not reachable.
    unreachable_identifiers: dict[str, int] = field(default_factory=dict)

    @property
    def read(self) -> int:
        return len(self.accepted) + len(self.quarantined) + self.erased


def _needed_columns(spec: SourceSpec) -> list[str]:
    cols = list(spec.identifiers.values()) + list(spec.fields.values()) + list(spec.key)
    if spec.timestamp is not None:
        cols.append(spec.timestamp.column)
    return list(dict.fromkeys(cols))


def read_source_file(path: Path, spec: SourceSpec) -> RawFile:
    """Read one CSV or Parquet file; every value as text (CSV) so that validation, not the reader, decides."""
    needed = _needed_columns(spec)
    if not path.is_file():
        raise SourceFileError(f"{path}: file not found")
    if spec.file_format == "parquet":
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise SourceFileError(f"{path}: not a readable Parquet file ({exc})") from None
        _check_columns(path, table.column_names, needed)
        frame = table.select(needed).to_pandas(types_mapper=ARROW_STRINGS.get)
        return RawFile(frame, np.arange(1, len(frame) + 1, dtype=np.int64), _empty_malformed())

    bad: list[tuple[int, str, str]] = []
    try:
        table = pacsv.read_csv(path, **_csv_options(path, spec, needed, bad))
    except pa.ArrowInvalid as exc:
        raise SourceFileError(f"{path}: cannot be parsed as CSV ({exc})") from None
    frame = table.to_pandas(types_mapper=ARROW_STRINGS.get)
    bad_rows = np.array([b[0] for b in bad], dtype=np.int64)
    total = len(frame) + len(bad_rows)
    rows = np.setdiff1d(np.arange(1, total + 1, dtype=np.int64), bad_rows, assume_unique=True)
    malformed = pd.DataFrame(bad, columns=["row", "reason", "raw"]) if bad else _empty_malformed()
    return RawFile(frame, rows[: len(frame)], malformed)


def _csv_options(path: Path, spec: SourceSpec, needed: list[str], bad: list[tuple[int, str, str]]) -> dict:
    """The pyarrow CSV options of a source file, once its header is checked; malformed rows go to `bad`
    (row number, reason, text) as the reader meets them, in file order."""
    try:
        with path.open("r", encoding=spec.csv.encoding, newline="") as fh:
            header_line = fh.readline()
    except UnicodeDecodeError:
        raise SourceFileError(f"{path}: not {spec.csv.encoding} text (set csv.encoding for this source)") from None
    if not header_line.strip():
        raise SourceFileError(f"{path}: empty file (expected a header row naming the columns)")

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad.append((row.number - 1, f"malformed_row: expected {row.expected_columns} fields, found {row.actual_columns}",
                    row.text))
        return "skip"

    try:
        names = pacsv.read_csv(
            pa.py_buffer(header_line.encode("utf-8")), parse_options=pacsv.ParseOptions(delimiter=spec.csv.delimiter)
        ).column_names
    except pa.ArrowInvalid as exc:
        raise SourceFileError(f"{path}: cannot be parsed as CSV ({exc})") from None
    _check_columns(path, names, needed)
    # Single-threaded parsing is what gives the invalid-row handler exact line numbers.
    return {"read_options": pacsv.ReadOptions(use_threads=False, encoding=spec.csv.encoding, block_size=1 << 24),
            "parse_options": pacsv.ParseOptions(delimiter=spec.csv.delimiter, invalid_row_handler=on_invalid),
            "convert_options": pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                    include_columns=needed, strings_can_be_null=False)}


def _empty_malformed() -> pd.DataFrame:
    return pd.DataFrame({"row": pd.Series(dtype="int64"), "reason": pd.Series(dtype=ARROW_STR),
                         "raw": pd.Series(dtype=ARROW_STR)})


def _check_columns(path: Path, present: list[str], needed: list[str]) -> None:
    missing = [c for c in needed if c not in present]
    if missing:
        raise SourceFileError(
            f"{path}: missing column(s) {missing} that persona.yaml maps for this source (found {present})"
        )


def _text_lengths(values: pd.Series) -> np.ndarray:
    """Characters of each value once trimmed (0 where missing), as int64."""
    text = values.astype(ARROW_STR).str.strip().str.len()
    return text.fillna(0).to_numpy(dtype=np.int64)


def _is_blank(values: pd.Series) -> np.ndarray:
    if values.dtype.kind in "biuf":
        return values.isna().to_numpy()
    text = values.astype(ARROW_STR).str.strip()
    return (text.isna() | (text == "")).to_numpy(dtype=bool)


def standardise_file(raw: RawFile, spec: SourceSpec, cfg: PersonaConfig, *, source: str, file_id: str,
                     now: pd.Timestamp, seen_row_keys: np.ndarray | SeenKeys, salt: str,
                     forgotten: Mapping[str, Collection[str]] | None = None) -> StagedFile:
    """Validate and standardise one file's rows; pure: returns accepted rows, mentions and quarantine.

    Identifiers are hashed with `salt`; a row carrying one of the `forgotten` hashes (per identifier type) is erased.
    """
    frame = raw.frame
    n = len(frame)
    reason = np.full(n, None, dtype=object)

    def fail(mask: np.ndarray, why: str | tuple[pd.Series, str, str] | Callable[[np.ndarray], np.ndarray]) -> None:
        """Give rows that fail a check (and no earlier one) a reason; per-row text is built for those rows only
        (a callable gets the rows' mask and returns their texts)."""
        hit = mask & pd.isna(reason)
        if not hit.any():
            return
        if callable(why):
            reason[hit] = why(hit)
        elif isinstance(why, tuple):
            col, what, expected = why
            found = col[hit].astype("string").fillna("").str.slice(0, 40)
            reason[hit] = (what + " = '" + found + "' (expected " + expected + ")").to_numpy(dtype=object)
        else:
            reason[hit] = why

    out = pd.DataFrame({"row": raw.rows})
    # Time.
    if spec.timestamp is not None:
        col = frame[spec.timestamp.column]
        ts = std.parse_timestamps(col, spec.timestamp.format, spec.timestamp.timezone or cfg.timezone)
        blank = _is_blank(col)
        fail(blank, f"missing_timestamp: {spec.timestamp.column} is empty")
        bad = ts.isna().to_numpy() & ~blank
        fail(bad, (col, f"bad_timestamp: {spec.timestamp.column}", f"format {spec.timestamp.format}"))
        out_of_range = ((ts < EARLIEST) | (ts > now + pd.Timedelta(days=1))).fillna(False).to_numpy(dtype=bool)
        fail(out_of_range, (col, f"timestamp_out_of_range: {spec.timestamp.column}",
                                    f"between {EARLIEST.date()} and {now.date()}"))
        out["ts"] = ts.reset_index(drop=True)
    else:
        out["ts"] = pd.Series(pd.NaT, index=out.index, dtype="datetime64[ns, UTC]")

    # Canonical fields.
    unmapped: dict[str, int] = {}
    types = CANONICAL_FIELDS[spec.kind]
    for name, column in spec.fields.items():
        col = frame[column]
        kind = types[name]
        blank = _is_blank(col)
        if kind in _PARSERS:
            value = _PARSERS[kind](col)
            fail(value.isna().to_numpy() & ~blank, (col, f"bad_{kind}: {name}", f"a {kind}"))
        elif kind == "date":
            value = std.parse_timestamps(col, "date", "UTC").dt.tz_localize(None).dt.normalize()
            fail(value.isna().to_numpy() & ~blank, (col, f"bad_date: {name}", "YYYY-MM-DD"))
        elif kind == "timestamp":
            value = std.parse_timestamps(col, "iso", cfg.timezone)
            fail(value.isna().to_numpy() & ~blank, (col, f"bad_timestamp: {name}", "ISO 8601"))
        elif kind == "code":
            value, missed = std.map_codes(col, cfg.mappings.get(name, {}))
            if missed and name in cfg.mappings:
                unmapped[name] = unmapped.get(name, 0) + missed
        else:
            value = std.normalise_ids(col)
        out[name] = value.reset_index(drop=True)

    for name in REQUIRED_FIELDS[spec.kind]:
        fail(pd.isna(out[name]).to_numpy(), f"missing_field: {name} is empty")

    # Identifiers, and the erasure of rows carrying a forgotten one.
    ids = pd.DataFrame(index=frame.index)
    invalid: dict[str, int] = {}
    unreachable: dict[str, int] = {}
    erased = np.zeros(n, dtype=bool)
    limit = cfg.identity.max_identifier_length
    for id_type, column in spec.identifiers.items():
        col = frame[column]
        # An over-long value is no identifier (no phone, e-mail or account id is that long) but a broken export
        # or an attack: its row is quarantined rather than the value silently linked or dropped.
        length = _text_lengths(col)
        fail(length > limit, lambda hit, column=column, length=length: (
            f"identifier_too_long: {column} has " + pd.Series(length[hit]).astype(str)
            + f" characters (identity.max_identifier_length = {limit})").to_numpy(dtype=object))
        how = cfg.identity.identifiers[id_type].normalise
        value = std.normalise_identifiers(col, how, cfg.phone_region)
        dropped = int((value.isna().to_numpy() & ~_is_blank(col)).sum())
        if dropped:
            invalid[id_type] = dropped
        if how == "phone":  # linked all the same; counted so the report says how many cannot be messaged
            flagged = int((~std.phone_reachable(value, cfg.phone_region)).sum())
            if flagged:
                unreachable[id_type] = flagged
        ids[id_type] = value.to_numpy(dtype=object, na_value=None)
        if forgotten and forgotten.get(id_type):
            erased |= _hashes_in(value, salt, forgotten[id_type])
    fail(ids.isna().all(axis=1).to_numpy(), "no_identifier: no valid " + "/".join(spec.identifiers))

    # Duplicates: the same key (and time) seen earlier in this file or in files already staged.
    key_cols = [frame[c].astype(ARROW_STR).str.strip() for c in spec.key] if spec.key else \
        [frame[c].astype(ARROW_STR) for c in frame.columns]
    key_frame = pd.concat(key_cols, axis=1, ignore_index=True)
    if spec.timestamp is not None:
        key_frame["ts"] = out["ts"].to_numpy(dtype="datetime64[ns]", na_value=np.datetime64("NaT"))
    row_key = pd.util.hash_pandas_object(key_frame, index=False).to_numpy()
    valid_so_far = pd.isna(reason) & ~erased
    first = np.ones(n, dtype=bool)  # on the exact uint64 keys (a float64 detour would merge neighbouring keys)
    first[valid_so_far] = ~pd.Series(row_key[valid_so_far]).duplicated(keep="first").to_numpy()
    seen = (seen_row_keys.contains(row_key, exclude=file_id) if isinstance(seen_row_keys, SeenKeys)
            else np.isin(row_key, seen_row_keys))
    dup = valid_so_far & (~first | seen)
    fail(dup, "duplicate: " + ("+".join(spec.key) if spec.key else "identical row") + " seen before")

    ok = pd.isna(reason) & ~erased
    rejected = ~pd.isna(reason) & ~erased
    out["row_key"] = row_key
    out["mention_key"] = mention_keys(ids, source, salt)
    out.insert(0, "file_id", file_id)
    out.insert(0, "source", source)

    accepted = out.loc[ok].reset_index(drop=True)
    mentions, identifiers = _mentions(out.loc[ok, "mention_key"], ids.loc[ok], salt)
    malformed = raw.malformed
    if forgotten and len(malformed):
        hit = carries(malformed["raw"], cfg, salt, forgotten, delimiter=spec.csv.delimiter)
        malformed = malformed.loc[~hit]
        erased_malformed = int(hit.sum())
    else:
        erased_malformed = 0
    quarantined = _quarantine(frame.loc[rejected], raw.rows[rejected], reason[rejected], malformed, source, file_id)
    return StagedFile(accepted, mentions, quarantined, identifiers, int(erased.sum()) + erased_malformed,
                      invalid, unmapped, unreachable)


def _hashes_in(values: pd.Series, salt: str, wanted: Collection[str]) -> np.ndarray:
    """Which values' salted hashes are `wanted`; each distinct value hashed once."""
    codes, uniques = pd.factorize(values)
    if not len(uniques):
        return np.zeros(len(values), dtype=bool)
    hit = std.salted_hash(pd.Series(uniques, dtype="string"), salt).isin(list(wanted)).to_numpy(dtype=bool,
                                                                                                na_value=False)
    return (codes >= 0) & hit[np.maximum(codes, 0)]


def _mentions(mention_key: pd.Series, ids: pd.DataFrame, salt: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long mentions (mention_key, id_type, value_hash), and the distinct (id_type, value, value_hash) they hold.

    Hashed after de-duplication: a file of millions of events carries a few thousand distinct mentions."""
    keys = mention_key.to_numpy()
    long = pd.concat([pd.DataFrame({"mention_key": keys, "id_type": t, "value": ids[t].to_numpy()})
                      for t in ids.columns], ignore_index=True)
    long = long.dropna(subset=["value"]).drop_duplicates().astype({"id_type": "string", "value": "string"})
    long["value_hash"] = std.salted_hash(long["value"], salt).astype("string")
    mentions = long[MENTION_COLUMNS].reset_index(drop=True)
    identifiers = long.drop_duplicates(["id_type", "value_hash"])[["id_type", "value", "value_hash"]]
    return mentions, identifiers.reset_index(drop=True)


def carries(raw: pd.Series, cfg: PersonaConfig, salt: str, hashes: Mapping[str, Collection[str]], *,
            delimiter: str = ",") -> np.ndarray:
    """Which quarantined raw values (a JSON object of a row's columns, or a malformed line's text) hold one of the
    identifier `hashes` (salted, per type) in any field, whatever its spelling there; a boolean per value.

    Every field is tried as every identifier type: a phone in an unexpected column still counts.
    """
    fields: list[str] = []
    owner: list[int] = []
    for i, text in enumerate(raw.tolist()):
        if text is None or text is pd.NA or (isinstance(text, float) and np.isnan(text)):
            continue
        try:
            parsed = json.loads(text)
        except (TypeError, ValueError):
            parsed = None
        values = ([v for v in parsed.values() if v is not None] if isinstance(parsed, dict)
                  else str(text).split(delimiter))
        fields += [str(v) for v in values]
        owner += [i] * len(values)
    hit = np.zeros(len(raw), dtype=bool)
    if not fields:
        return hit
    candidates = pd.Series(fields, dtype=ARROW_STR)
    owners = np.asarray(owner, dtype=np.int64)
    for id_type, wanted in hashes.items():
        spec = cfg.identity.identifiers.get(id_type)
        if spec is None or not wanted:
            continue
        value = std.normalise_identifiers(candidates, spec.normalise, cfg.phone_region)
        found = std.salted_hash(value, salt).isin(list(wanted)).to_numpy(dtype=bool, na_value=False)
        hit[owners[found]] = True
    return hit


def _quarantine(bad: pd.DataFrame, rows: np.ndarray, reasons: np.ndarray, malformed: pd.DataFrame,
                source: str, file_id: str) -> pd.DataFrame:
    """Rejected rows with their raw values (as JSON text); typed explicitly so an empty file has the same schema."""
    raw_json = [json.dumps(r, ensure_ascii=False, default=str) for r in bad.to_dict(orient="records")]
    rejected = pd.DataFrame({"row": rows, "reason": reasons, "raw": raw_json})
    q = pd.concat([rejected, malformed], ignore_index=True).sort_values("row", kind="stable")
    q.insert(0, "file_id", file_id)
    q.insert(0, "source", source)
    return q.astype(QUARANTINE_SCHEMA).reset_index(drop=True)


# --- streaming: a file staged in bounded chunks, equal to standardise_file(read_source_file(...)) on the whole file
@dataclass
class StagedCounts:
    """What `stage_file` keeps of a file: its manifest counts (`counts()`), the row keys it accepted (sorted uint64)
    and the distinct raw identifiers of its mentions (id_type, value, value_hash; Arrow strings, never written)."""

    read: int
    accepted: int
    quarantined: int
    erased: int
    reasons: dict[str, int]
    invalid_identifiers: dict[str, int]
    unmapped_codes: dict[str, int]
    unreachable_identifiers: dict[str, int]
    row_keys: np.ndarray
    identifiers: pd.DataFrame

    def counts(self) -> dict:
        return {k: getattr(self, k) for k in ("read", "accepted", "quarantined", "erased", "reasons",
                                              "invalid_identifiers", "unmapped_codes", "unreachable_identifiers")}


class _KeySet(SeenKeys):
    """uint64 keys added batch by batch: sorted runs, merged when of similar size (a check is a few binary searches),
    with the keys of `outer` (the caller's seen keys) in every check too."""

    def __init__(self, outer: np.ndarray | SeenKeys | None = None) -> None:
        super().__init__()
        self.outer, self.runs = outer, []

    def add_keys(self, keys: np.ndarray) -> None:
        self.runs.append(np.sort(np.asarray(keys, dtype=np.uint64)))
        while len(self.runs) > 1 and len(self.runs[-2]) <= 2 * len(self.runs[-1]):
            last = self.runs.pop()
            self.runs.append(np.sort(np.concatenate([self.runs.pop(), last]), kind="stable"))  # merges two runs

    def contains(self, keys: np.ndarray, *, exclude: str | None = None) -> np.ndarray:
        hit = (self.outer.contains(keys, exclude=exclude) if isinstance(self.outer, SeenKeys)
               else np.isin(keys, self.outer) if self.outer is not None else np.zeros(len(keys), dtype=bool))
        return hit | _in_sorted(self.runs, keys)

    def sorted_keys(self) -> np.ndarray:
        return np.sort(np.concatenate(self.runs), kind="stable") if self.runs else np.zeros(0, dtype=np.uint64)


class _Sink:
    """A Parquet file written batch by batch under a temporary name in its folder, renamed over `target` by `commit`;
    its schema is the first batch's, with text for a column of nulls there (an empty frame's text column)."""

    def __init__(self, target: Path) -> None:
        self.target, self.writer = target, None
        self.tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")

    def write(self, data: pd.DataFrame | pa.Table) -> None:
        table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
        if self.writer is None:
            schema = pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in table.schema],
                               metadata=table.schema.metadata)
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.tmp, schema, compression="zstd")  # as write_parquet_atomic
        if table.num_rows:
            self.writer.write_table(table.cast(self.writer.schema))

    def commit(self) -> None:
        self.writer.close()
        os.replace(self.tmp, self.target)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.tmp.unlink(missing_ok=True)


def _rechunk(batches: Iterator[pa.RecordBatch], schema: pa.Schema, size: int, error: str) -> Iterator[pa.Table]:
    """Tables of `size` rows (the last one shorter; one empty table when there is no row); a reader's error on the way
    raised as read_source_file raises it for the whole file (`error`: its text before the reader's message)."""
    held, count, emitted = [], 0, False
    try:
        for batch in batches:
            held.append(batch)
            count += batch.num_rows
            while count >= size:
                table = pa.Table.from_batches(held, schema=schema)
                yield table.slice(0, size)
                emitted, held, count = True, table.slice(size).to_batches(), count - size
    except (pa.ArrowException, OSError) as exc:
        raise SourceFileError(f"{error} ({exc})") from None
    if count or not emitted:
        yield pa.Table.from_batches(held, schema=schema)


def _raw_chunks(path: Path, spec: SourceSpec, size: int) -> Iterator[RawFile]:
    """The file as read_source_file reads it, in chunks of at most `size` parsed rows with their row numbers; each
    malformed row comes with the chunk of the rows around it (after the last parsed row: in a chunk of its own)."""
    needed = _needed_columns(spec)
    if not path.is_file():
        raise SourceFileError(f"{path}: file not found")
    if spec.file_format == "parquet":
        error = f"{path}: not a readable Parquet file"
        try:
            pf = pq.ParquetFile(path)
            _check_columns(path, pf.schema_arrow.names, needed)
            # With its pandas metadata, as read_table reads it; an integer (boolean) column with a null anywhere in
            # the file (read alone) gets the dtype pandas then gives it, in every chunk (float64 / object / metadata).
            schema = pa.schema([pf.schema_arrow.field(c) for c in needed], metadata=pf.schema_arrow.metadata)
            nulls = pa.Table.from_arrays([pa.nulls(1, f.type) for f in schema], schema=schema).to_pandas(
                types_mapper=ARROW_STRINGS.get)
            widen = {c: nulls[c].dtype for c in needed if (pa.types.is_integer(t := schema.field(c).type)
                     or pa.types.is_boolean(t)) and any(b.column(0).null_count for b in pf.iter_batches(columns=[c]))}
            batches = (b.select(needed) for b in pf.iter_batches(batch_size=size, columns=needed,
                                                                  use_pandas_metadata=False))
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise exc if isinstance(exc, SourceFileError) else SourceFileError(f"{error} ({exc})") from None
        start = 1
        for table in _rechunk(batches, schema, size, error):
            frame = table.to_pandas(types_mapper=ARROW_STRINGS.get)
            yield RawFile(frame.astype({c: t for c, t in widen.items() if frame[c].dtype != t}),
                          np.arange(start, start + len(frame), dtype=np.int64), _empty_malformed())
            start += len(frame)
        return
    bad: list[tuple[int, str, str]] = []
    options = _csv_options(path, spec, needed, bad)
    try:
        reader = pacsv.open_csv(path, **options)
    except pa.ArrowInvalid as exc:
        raise SourceFileError(f"{path}: cannot be parsed as CSV ({exc})") from None
    start, taken = 1, 0  # the first row number the next parsed row can have; malformed rows handed out so far
    for table in _rechunk(reader, reader.schema, size, f"{path}: cannot be parsed as CSV"):
        pending = bad[taken:]  # every malformed row before this chunk's last parsed row is known by now
        skip = np.array([b[0] for b in pending], dtype=np.int64)
        rows = np.setdiff1d(np.arange(start, start + table.num_rows + len(skip), dtype=np.int64), skip,
                            assume_unique=True)[: table.num_rows]
        start = int(rows[-1]) + 1 if len(rows) else start
        mine = pending[: int((skip < start).sum())]
        taken += len(mine)
        yield RawFile(table.to_pandas(types_mapper=ARROW_STRINGS.get), rows,
                      pd.DataFrame(mine, columns=["row", "reason", "raw"]) if mine else _empty_malformed())
    if taken < len(bad):
        yield RawFile(reader.schema.empty_table().to_pandas(types_mapper=ARROW_STRINGS.get),
                      np.zeros(0, dtype=np.int64), pd.DataFrame(bad[taken:], columns=["row", "reason", "raw"]))


def stage_file(path: Path, spec: SourceSpec, cfg: PersonaConfig, *, source: str, file_id: str, now: pd.Timestamp,
               seen_row_keys: np.ndarray | SeenKeys, salt: str, forgotten: Mapping[str, Collection[str]] | None,
               out_rows: Path, out_mentions: Path, out_quarantine: Path, chunk_rows: int = 1_000_000) -> StagedCounts:
    """`standardise_file(read_source_file(path, spec), ...)` with its three outputs written to out_*, in chunks of at
    most `chunk_rows` rows: the same Parquet rows in the same order and the same counts, in memory bounded by the
    chunk. Each output appears complete or not at all; mentions are distinct by (identifier type, mention key) across
    chunks. Raises SourceFileError as read_source_file does, also for a fault found past the first chunk."""
    earlier, seen = _KeySet(seen_row_keys), {t: _KeySet() for t in spec.identifiers}  # row keys; mention keys by type
    found: dict[str, list[pd.DataFrame]] = {t: [] for t in seen}
    rows, mentions, quarantine = _Sink(out_rows), _Sink(out_mentions), _Sink(out_quarantine)
    parts = {t: _Sink(out_mentions) for t in seen}  # per type: the file's mention order is type by type
    n, groups = Counter(), {k: Counter() for k in ("reasons", "invalid_identifiers", "unmapped_codes",
                                                   "unreachable_identifiers")}
    try:
        for raw in _raw_chunks(path, spec, max(int(chunk_rows), 1)):
            staged = standardise_file(raw, spec, cfg, source=source, file_id=file_id, now=now, salt=salt,
                                      seen_row_keys=earlier, forgotten=forgotten)
            del raw  # before the next chunk is read
            earlier.add_keys(staged.accepted["row_key"].to_numpy(dtype=np.uint64))
            rows.write(staged.accepted)
            quarantine.write(staged.quarantined)
            mentions.write(staged.mentions.iloc[:0])  # the schema, should no mention come
            for t in seen:
                mine = staged.mentions[(staged.mentions["id_type"] == t).to_numpy(dtype=bool)]
                mine = mine[~seen[t].contains(mine["mention_key"].to_numpy(dtype=np.uint64))]
                seen[t].add_keys(mine["mention_key"].to_numpy(dtype=np.uint64))
                parts[t].write(mine)
                found[t].append(staged.identifiers[(staged.identifiers["id_type"] == t).to_numpy(dtype=bool)]
                                .astype(ARROW_STR))
                if sum(map(len, found[t])) > 2 * len(found[t][0]) + 100_000:  # keep the distinct ones only
                    found[t] = [pd.concat(found[t], ignore_index=True).drop_duplicates("value_hash")]
            n.update(read=staged.read, accepted=len(staged.accepted), quarantined=len(staged.quarantined),
                     erased=staged.erased)
            for k, counted in groups.items():
                counted.update(staged.quarantined["reason"].str.split(":").str[0].value_counts().to_dict()
                               if k == "reasons" else getattr(staged, k))
            del staged
        for part in parts.values():
            part.writer.close()
            for batch in pq.ParquetFile(part.tmp).iter_batches(use_pandas_metadata=False):
                mentions.write(pa.Table.from_batches([batch]))
            part.abort()
        for sink in (rows, mentions, quarantine):
            sink.commit()
    except BaseException:
        for sink in (rows, mentions, quarantine, *parts.values()):
            sink.abort()
        raise
    identifiers = pd.concat([pd.concat(f, ignore_index=True).drop_duplicates("value_hash") for f in found.values()],
                            ignore_index=True)  # every type has a frame: each chunk gives one, maybe empty
    return StagedCounts(*(int(n[k]) for k in ("read", "accepted", "quarantined", "erased")),
                        *({k: int(v) for k, v in g.most_common()} for g in groups.values()),
                        earlier.sorted_keys(), identifiers.reset_index(drop=True))
