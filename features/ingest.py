"""Read raw source files, validate every row, standardise it to the canonical schema, and stage it.

A file becomes three staged outputs, each written atomically:
- accepted rows (canonical fields, UTC time, a row key and a mention key; no raw identifiers),
- its identifier mentions (mention key -> normalised identifiers), the only place raw phones and emails stay,
- quarantined rows, each with its source, file, row number, reason and the raw values.
Counts reconcile per file: read = accepted + quarantined.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features import standardise as std
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


@dataclass
class StagedFile:
    accepted: pd.DataFrame
    mentions: pd.DataFrame
    quarantined: pd.DataFrame
    invalid_identifiers: dict[str, int] = field(default_factory=dict)
    unmapped_codes: dict[str, int] = field(default_factory=dict)

    @property
    def read(self) -> int:
        return len(self.accepted) + len(self.quarantined)


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


def _is_blank(values: pd.Series) -> np.ndarray:
    if values.dtype.kind in "biuf":
        return values.isna().to_numpy()
    text = values.astype(ARROW_STR).str.strip()
    return (text.isna() | (text == "")).to_numpy(dtype=bool)


def standardise_file(raw: RawFile, spec: SourceSpec, cfg: PersonaConfig, *, source: str, file_id: str,
                     now: pd.Timestamp, seen_row_keys: np.ndarray | SeenKeys) -> StagedFile:
    """Validate and standardise one file's rows; pure: returns accepted rows, mentions and quarantine."""
    frame = raw.frame
    n = len(frame)
    reason = np.full(n, None, dtype=object)

    def fail(mask: np.ndarray, why: str | tuple[pd.Series, str, str]) -> None:
        """Give rows that fail a check (and no earlier one) a reason; per-row text is built for those rows only."""
        hit = mask & pd.isna(reason)
        if not hit.any():
            return
        if isinstance(why, tuple):
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

    # Identifiers.
    ids = pd.DataFrame(index=frame.index)
    invalid: dict[str, int] = {}
    for id_type, column in spec.identifiers.items():
        how = cfg.identity.identifiers[id_type].normalise
        col = frame[column]
        if how == "phone":
            value = std.normalise_phones(col, cfg.phone_region)
        elif how == "email":
            value = std.normalise_emails(col)
        else:
            value = std.normalise_ids(col)
        dropped = int((value.isna().to_numpy() & ~_is_blank(col)).sum())
        if dropped:
            invalid[id_type] = dropped
        ids[id_type] = value.to_numpy(dtype=object)
    fail(ids.isna().all(axis=1).to_numpy(), "no_identifier: no valid " + "/".join(spec.identifiers))

    # Duplicates: the same key (and time) seen earlier in this file or in files already staged.
    key_cols = [frame[c].astype(ARROW_STR).str.strip() for c in spec.key] if spec.key else \
        [frame[c].astype(ARROW_STR) for c in frame.columns]
    key_frame = pd.concat(key_cols, axis=1, ignore_index=True)
    if spec.timestamp is not None:
        key_frame["ts"] = out["ts"].to_numpy(dtype="datetime64[ns]", na_value=np.datetime64("NaT"))
    row_key = pd.util.hash_pandas_object(key_frame, index=False).to_numpy()
    valid_so_far = pd.isna(reason)
    first = ~pd.Series(row_key).where(valid_so_far).duplicated(keep="first").to_numpy() | ~valid_so_far
    seen = (seen_row_keys.contains(row_key, exclude=file_id) if isinstance(seen_row_keys, SeenKeys)
            else np.isin(row_key, seen_row_keys))
    dup = valid_so_far & (~first | seen)
    fail(dup, "duplicate: " + ("+".join(spec.key) if spec.key else "identical row") + " seen before")

    ok = pd.isna(reason)
    out["row_key"] = row_key
    id_cols = list(spec.identifiers)
    mention_frame = ids[id_cols].copy()
    mention_frame.insert(0, "_source", source)
    out["mention_key"] = pd.util.hash_pandas_object(mention_frame, index=False).to_numpy()
    out.insert(0, "file_id", file_id)
    out.insert(0, "source", source)

    accepted = out.loc[ok].reset_index(drop=True)
    mentions = _mentions(out.loc[ok, "mention_key"], ids.loc[ok])
    quarantined = _quarantine(frame.loc[~ok], raw.rows[~ok], reason[~ok], raw.malformed, source, file_id)
    return StagedFile(accepted, mentions, quarantined, invalid, unmapped)


def _mentions(mention_key: pd.Series, ids: pd.DataFrame) -> pd.DataFrame:
    long = ids.assign(mention_key=mention_key.to_numpy()).melt(
        id_vars="mention_key", var_name="id_type", value_name="value"
    ).dropna(subset=["value"])
    return long.drop_duplicates(["mention_key", "id_type", "value"]).reset_index(drop=True).astype(
        {"id_type": "string", "value": "string"}
    )


def _quarantine(bad: pd.DataFrame, rows: np.ndarray, reasons: np.ndarray, malformed: pd.DataFrame,
                source: str, file_id: str) -> pd.DataFrame:
    """Rejected rows with their raw values (as JSON text); typed explicitly so an empty file has the same schema."""
    raw_json = [json.dumps(r, ensure_ascii=False, default=str) for r in bad.to_dict(orient="records")]
    rejected = pd.DataFrame({"row": rows, "reason": reasons, "raw": raw_json})
    q = pd.concat([rejected, malformed], ignore_index=True).sort_values("row", kind="stable")
    q.insert(0, "file_id", file_id)
    q.insert(0, "source", source)
    return q.astype(QUARANTINE_SCHEMA).reset_index(drop=True)
