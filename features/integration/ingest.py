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

import base64
import hashlib
import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.integration import standardise as std
from persona.config import CANONICAL_FIELDS, REQUIRED_FIELDS, PersonaConfig, SourceSpec

EARLIEST = pd.Timestamp("1990-01-01", tz="UTC")
# Typed canonical fields: how a raw value is parsed, and the reason a non-empty value that fails parsing gets.
_PARSERS = {"number": std.parse_numbers, "bool": std.parse_bools}


# Arrow-backed strings: trimming and comparing millions of values stays in Arrow's C++ kernels.
ARROW_STR = pd.StringDtype("pyarrow")
_ARROW_STRINGS = {pa.string(): ARROW_STR, pa.large_string(): ARROW_STR}


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
        hit = np.zeros(len(keys), dtype=bool)
        for file_id, sorted_keys in self._parts.items():
            if file_id == exclude or not len(sorted_keys):
                continue
            pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
            hit |= sorted_keys[pos] == keys
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
        frame = table.select(needed).to_pandas(types_mapper=_ARROW_STRINGS.get)
        return RawFile(frame, np.arange(1, len(frame) + 1, dtype=np.int64), _empty_malformed())

    try:
        with path.open("r", encoding=spec.csv.encoding, newline="") as fh:
            header_line = fh.readline()
    except UnicodeDecodeError:
        raise SourceFileError(f"{path}: not {spec.csv.encoding} text (set csv.encoding for this source)") from None
    if not header_line.strip():
        raise SourceFileError(f"{path}: empty file (expected a header row naming the columns)")
    bad: list[tuple[int, str, str]] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad.append((row.number - 1, f"malformed_row: expected {row.expected_columns} fields, found {row.actual_columns}",
                    row.text))
        return "skip"

    try:
        names = pacsv.read_csv(
            pa.py_buffer(header_line.encode("utf-8")), parse_options=pacsv.ParseOptions(delimiter=spec.csv.delimiter)
        ).column_names
        _check_columns(path, names, needed)
        # Single-threaded parsing is what gives the invalid-row handler exact line numbers.
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=False, encoding=spec.csv.encoding, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(delimiter=spec.csv.delimiter, invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, include_columns=needed, strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        raise SourceFileError(f"{path}: cannot be parsed as CSV ({exc})") from None
    frame = table.to_pandas(types_mapper=_ARROW_STRINGS.get)
    bad_rows = np.array([b[0] for b in bad], dtype=np.int64)
    total = len(frame) + len(bad_rows)
    rows = np.setdiff1d(np.arange(1, total + 1, dtype=np.int64), bad_rows, assume_unique=True)
    malformed = pd.DataFrame(bad, columns=["row", "reason", "raw"]) if bad else _empty_malformed()
    return RawFile(frame, rows[: len(frame)], malformed)


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
    first = ~pd.Series(row_key).where(valid_so_far).duplicated(keep="first").to_numpy() | ~valid_so_far
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


def mention_keys(ids: pd.DataFrame, source: str, salt: str) -> np.ndarray:
    """One key per row for its combination of normalised identifiers (one column per type, source order, None
    where missing), keyed with the salt: without it, a key cannot be recomputed from guessed phones or e-mails."""
    frame = ids.copy()
    frame.insert(0, "_source", source)
    return pd.util.hash_pandas_object(frame, index=False, hash_key=_mention_key_secret(salt)).to_numpy()


def _mention_key_secret(salt: str) -> str:
    # SipHash takes a 16-byte key: 16 base64 characters (96 bits) derived from the salt, never the salt itself.
    digest = hashlib.sha256(("persona mention key|" + salt).encode("utf-8")).digest()
    return base64.b64encode(digest).decode("ascii")[:16]


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
