"""Value standardisation for integrating customer data sources.

Every source system spells the same fact differently: phones with or without
``+86``, trunk zeros and dashes, e-mails in mixed case, ids exported from
spreadsheets as ``123.0``, timestamps with and without offsets, prices with
currency signs and thousands separators, booleans as ``是``/``Y``/``1``, codes
from each system's own vocabulary. Identity resolution (OneID) and feature
computation only work when these are reduced to one canonical spelling first,
so this module offers small, pure, vectorised functions, one per kind of value.
Each takes a ``pd.Series`` and returns a new Series with the same index and
name, an explicit missing value (``<NA>``/``NaN``/``NaT``) wherever the input
cannot be trusted, and never mutates its input or raises on bad data. Work is
done once per distinct value (``pd.factorize``) because customer columns are
highly repetitive and run to millions of rows.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "STRING_DTYPE",
    "map_codes",
    "mention_keys",
    "normalise_emails",
    "normalise_identifiers",
    "normalise_ids",
    "normalise_phones",
    "parse_bools",
    "parse_numbers",
    "parse_timestamps",
    "phone_reachable",
    "salted_hash",
    "sha256_hex",
]

#: dtype of every text result of this module.
STRING_DTYPE = pd.StringDtype("pyarrow")

# libphonenumber limits (phonenumberutil._MIN_LENGTH_FOR_NSN and friends).
_MIN_NSN = 2
_MAX_NSN = 17
_MAX_PHONE_INPUT = 250

_LETTER = re.compile(r"[^\W\d_]")  # any Unicode letter
_SPREADSHEET_FLOAT = r"^([+-]?[0-9]+)\.0+$"  # "13812345678.0" -> "13812345678"
_PHONE_SEP = r"[ ()./-]"
_PHONE_SHAPE = rf"{_PHONE_SEP}*(?:\+{_PHONE_SEP}*)?[0-9][0-9 ()./-]*"
_PHONE_PLUS = rf"^{_PHONE_SEP}*\+"
_EMAIL = r"[^@\s]+@[^@\s]+\.[^@\s.]+"
_NULL_TOKENS = ["", "nan", "null", "none"]
_NUMBER = re.compile(
    r"^(?P<s1>[+-]?)\s*(?:[¥￥$]|rmb|cny)?\s*(?P<s2>[+-]?)"
    r"(?P<num>[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?P<exp>[eE][+-]?[0-9]+)?\s*元?$",
    re.IGNORECASE,
)
_TRUE = frozenset({"y", "yes", "true", "t", "1", "是"})
_FALSE = frozenset({"n", "no", "false", "f", "0", "否"})
# A time part followed by "Z" or a +hh[:mm] offset (a bare date "2025-01-02" has no time part).
_ISO_OFFSET = r"[T ].*[0-9]\s*(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)$"


# --------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------


def _scalar_text(value: object) -> str:
    """Text of one non-null scalar; integral floats lose their ``.0``."""
    if isinstance(value, str):
        return value
    if isinstance(value, (float, np.floating)) and np.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _is_arrow_text(values: pd.Series) -> bool:
    return isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "pyarrow"


def _arrow_text(values: pd.Series) -> pa.Array:
    """The pyarrow string array behind a ``string[pyarrow]`` Series, as one chunk."""
    arr = pa.array(values.array)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr.cast(pa.string())


def _factorize_text(values: pd.Series) -> tuple[np.ndarray, pa.Array]:
    """Codes (-1 = missing) and the distinct values as text in a pyarrow string array."""
    if _is_arrow_text(values):
        encoded = _arrow_text(values).dictionary_encode()
        codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.intp)
        return codes, encoded.dictionary
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    objects = np.asarray(uniques, dtype=object)
    if values.dtype == object:
        try:
            return codes, pa.array(objects, type=pa.string())
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            # Mixed scalars: factorize merges 1, 1.0 and True, so canonicalise
            # each value first and factorize the text.
            codes, uniques = pd.factorize(values.map(_scalar_text, na_action="ignore"), use_na_sentinel=True)
            objects = np.asarray(uniques, dtype=object)
    return codes, pa.array([_scalar_text(v) for v in objects], type=pa.string())


def _expand_text(codes: np.ndarray, uniques: pa.Array | list[str | None], like: pd.Series) -> pd.Series:
    """Series of STRING_DTYPE holding ``uniques[codes]`` (code -1 -> <NA>)."""
    arr = uniques if isinstance(uniques, pa.Array) else pa.array(uniques, type=pa.string())
    taken = arr.take(pa.array(codes, mask=codes < 0))
    return pd.Series(STRING_DTYPE.__from_arrow__(taken), index=like.index, name=like.name)


def _bools(arr: pa.Array) -> np.ndarray:
    """pyarrow boolean array -> numpy bool (null -> False)."""
    return pc.fill_null(arr, False).to_numpy(zero_copy_only=False)


def _fullmatch(arr: pa.Array, pattern: str) -> np.ndarray:
    return _bools(pc.match_substring_regex(arr, f"^(?:{pattern})$"))


# --------------------------------------------------------------------------
# phones
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Desc:
    pattern: str
    lengths: tuple[int, ...]


@dataclass(frozen=True)
class _PhonePlan:
    """The pieces of a region's phonenumbers metadata the fast path needs."""

    cc: str
    general: _Desc
    local_lengths: tuple[int, ...]
    types: tuple[_Desc, ...]
    national_prefix: str | None  # national_prefix_for_parsing (a regex)
    idd: str | None  # international_prefix (a regex)


_TYPE_DESCS = (
    "premium_rate", "toll_free", "shared_cost", "voip", "personal_number",
    "pager", "uan", "voicemail", "fixed_line", "mobile",
)


def _phone_plan(region: str) -> _PhonePlan | None:
    """Fast-path plan for ``region``; None when the fast path does not apply.

    The fast path covers regions whose calling code belongs to them alone and
    that have no national-prefix transform rule (e.g. CN, GB, DE, JP); other
    regions are parsed by phonenumbers value by value (correct, slower).
    """
    md = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if md is None:
        raise ValueError(f"unknown phone region {region!r}")
    if len(phonenumbers.region_codes_for_country_code(md.country_code)) != 1 or md.national_prefix_transform_rule:
        return None
    types = tuple(
        _Desc(d.national_number_pattern, tuple(d.possible_length))
        for d in (getattr(md, name) for name in _TYPE_DESCS)
        if d is not None and d.national_number_pattern
    )
    return _PhonePlan(
        cc=str(md.country_code),
        general=_Desc(md.general_desc.national_number_pattern, tuple(md.general_desc.possible_length)),
        local_lengths=tuple(md.general_desc.possible_length_local_only),
        types=types,
        national_prefix=md.national_prefix_for_parsing or None,
        idd=md.international_prefix or None,
    )


def _matches_desc(nsn: pa.Array, lengths: np.ndarray, desc: _Desc) -> np.ndarray:
    """phonenumbers' _is_number_matching_desc, vectorised."""
    ok = np.isin(lengths, desc.lengths) if desc.lengths else np.ones(len(nsn), dtype=bool)
    out = np.zeros(len(nsn), dtype=bool)
    if ok.any():
        idx = np.flatnonzero(ok)
        out[idx] = _fullmatch(nsn.take(pa.array(idx)), desc.pattern)
    return out


def _strip_national_prefix(nsn: pa.Array, plan: _PhonePlan) -> pa.Array:
    """phonenumbers' _maybe_strip_national_prefix_carrier_code (no transform rule)."""
    if plan.national_prefix is None:
        return nsn
    rest = pc.replace_substring_regex(nsn, f"^(?:{plan.national_prefix})", "", max_replacements=1)
    matched = _lengths(rest) < _lengths(nsn)
    keep = _fullmatch(nsn, plan.general.pattern) & ~_fullmatch(rest, plan.general.pattern)
    return pc.if_else(pa.array(matched & ~keep), rest, nsn)


def _lengths(arr: pa.Array) -> np.ndarray:
    return pc.utf8_length(arr).to_numpy(zero_copy_only=False)


def _phones_fast(text: pa.Array, plan: _PhonePlan) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """E.164 of the possible numbers among plainly formatted ones, which of them are valid, and the values decided.

    Mirrors phonenumbers.parse + _possible + is_valid_number for strings made of digits,
    spaces and ``()./-`` with an optional leading ``+``, when the number
    belongs to the plan's own calling code. Everything else is left undecided.
    """
    n = len(text)
    cc, lcc = plan.cc, len(plan.cc)
    shape = _fullmatch(text, _PHONE_SHAPE) & (_lengths(text) <= _MAX_PHONE_INPUT)
    plus = _bools(pc.match_substring_regex(text, _PHONE_PLUS))
    digits = pc.replace_substring_regex(text, "[^0-9]", "")
    n_digits = _lengths(digits)
    starts_cc = _bools(pc.starts_with(digits, cc))
    after_cc = pc.utf8_slice_codeunits(digits, lcc)

    if plan.idd is not None:
        rest = pc.replace_substring_regex(digits, f"^(?:{plan.idd})", "", max_replacements=1)
        n_rest = _lengths(rest)
        idd = ~plus & (n_rest < n_digits) & ~_bools(pc.starts_with(rest, "0"))
        rest_cc = _bools(pc.starts_with(rest, cc))
    else:
        rest, n_rest = digits, n_digits
        idd = rest_cc = np.zeros(n, dtype=bool)
    default = ~plus & ~idd

    # Country calling code: '+cc', IDD + cc, or a bare leading cc that only
    # makes sense once stripped (phonenumbers' _maybe_extract_country_code).
    pot = _strip_national_prefix(after_cc, plan)
    gen_full = _fullmatch(digits, plan.general.pattern)
    gen_pot = _fullmatch(pot, plan.general.pattern)
    too_long = ~np.isin(n_digits, plan.local_lengths) & (n_digits > max(plan.general.lengths))
    use_pot = default & starts_cc & ((~gen_full & gen_pot) | too_long)
    nsn0 = pc.if_else(pa.array(plus), after_cc, digits)
    nsn0 = pc.if_else(pa.array(idd), pc.utf8_slice_codeunits(rest, lcc), nsn0)
    nsn0 = pc.if_else(pa.array(use_pot), pot, nsn0)
    undecided = ~shape | (plus & ~starts_cc) | (idd & (n_rest > _MIN_NSN) & ~rest_cc)
    failed = (idd & (n_rest <= _MIN_NSN)) | (_lengths(nsn0) < _MIN_NSN)

    # National prefix, kept only if what remains has a possible length.
    nsn1 = _strip_national_prefix(nsn0, plan)
    n1 = _lengths(nsn1)
    accept = ~np.isin(n1, plan.local_lengths) & (np.isin(n1, plan.general.lengths) | (n1 > max(plan.general.lengths)))
    nsn = pc.if_else(pa.array(accept), nsn1, nsn0)
    n_nsn = _lengths(nsn)
    failed |= n_nsn > _MAX_NSN

    # phonenumbers' is_possible_number_with_reason == IS_POSSIBLE (no type: the general lengths; a local-only
    # length comes first there), and a national number that is not all zeros (see _possible).
    possible = (~failed & ~undecided & np.isin(n_nsn, plan.general.lengths) & ~np.isin(n_nsn, plan.local_lengths)
                & _bools(pc.match_substring_regex(nsn, "[1-9]")))
    valid = _matches_desc(nsn, n_nsn, plan.general)
    any_type = np.zeros(n, dtype=bool)
    for desc in plan.types:
        any_type |= _matches_desc(nsn, n_nsn, desc)
    e164 = pc.binary_join_element_wise(pa.scalar("+" + cc), nsn, "")
    out = pc.if_else(pa.array(possible), e164, pa.nulls(n, pa.string()))
    return out, possible & valid & any_type, ~undecided


def _possible(number: phonenumbers.PhoneNumber) -> bool:
    """A number that could exist: a possible length for its country (phonenumbers' IS_POSSIBLE).

    Stricter than phonenumbers.is_possible_number in two ways: a local-only length (a fixed line without its area
    code, ``12345`` in CN) is refused, since it names a different line in every area; and so is an all-zero national
    number (``00000000000``), which is a placeholder, not a number.
    """
    return (number.national_number != 0 and phonenumbers.is_possible_number_with_reason(number)
            == phonenumbers.ValidationResult.IS_POSSIBLE)


def _phone_slow(text: str, region: str) -> tuple[str | None, bool]:
    """One value through phonenumbers: (E.164 when possible, else None; whether valid). Letters are refused."""
    if _LETTER.search(text):
        return None, False
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None, False
    if not _possible(number):
        return None, False
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), phonenumbers.is_valid_number(number)


def _parse_phones(values: pd.Series, region: str) -> tuple[np.ndarray, pa.Array, np.ndarray]:
    """Codes of ``values`` into their distinct values, the E.164 of each distinct value (null when not possible),
    and whether each is valid; the fast path first, then phonenumbers for what it leaves undecided."""
    region = region.upper()
    plan = _phone_plan(region)
    codes, uniques = _factorize_text(values)
    text = pc.replace_substring_regex(pc.utf8_trim_whitespace(uniques), _SPREADSHEET_FLOAT, r"\1")
    if plan is not None and len(text):
        out, valid, decided = _phones_fast(text, plan)
    else:
        out, valid = pa.nulls(len(text), pa.string()), np.zeros(len(text), dtype=bool)
        decided = np.zeros(len(text), dtype=bool)
    if not decided.all():
        left = np.flatnonzero(~decided)
        slow = [_phone_slow(t, region) for t in text.take(pa.array(left)).to_pylist()]
        out = pc.replace_with_mask(out, pa.array(~decided), pa.array([e for e, _ in slow], type=pa.string()))
        valid = valid.copy()
        valid[left] = [v for _, v in slow]
    return codes, out, valid


def normalise_phones(values: pd.Series, region: str = "CN") -> pd.Series:
    """Raw phone strings -> E.164 (``+8613812345678``), or <NA> when the number could not exist.

    A number is kept when it could exist: a country calling code and a possible length for that country
    (phonenumbers' is_possible_number, without local-only lengths or an all-zero number; see `_possible`), whether
    or not its range is assigned: that is `phone_reachable`'s question, not linking's. Numbers without a country
    code are read as numbers of ``region``. Spreadsheet floats (``13812345678.0``) are accepted; any letter makes the
    value invalid. Distinct values in plain formats of ``region``'s own calling code are decided by a vectorised
    path built from phonenumbers' metadata (same result as phonenumbers); the rest go through
    ``phonenumbers.parse`` one distinct value at a time.
    """
    codes, out, _ = _parse_phones(values, region)
    return _expand_text(codes, out, values)


def phone_reachable(values: pd.Series, region: str = "CN") -> pd.Series:
    """Whether each phone (raw or E.164) is in an assigned number range (phonenumbers' is_valid_number), so that a
    call or SMS can reach it: True, False for a possible but unassigned number (linked, never messaged), <NA> where
    `normalise_phones` gives <NA>. A ``boolean`` Series with the index and name of ``values``."""
    codes, out, valid = _parse_phones(values, region)
    known = pc.is_valid(out).to_numpy(zero_copy_only=False)
    flag = pd.array(valid, dtype="boolean")
    flag[~known] = pd.NA
    result = flag.take(codes, allow_fill=True) if len(flag) else pd.array(np.full(len(codes), pd.NA), dtype="boolean")
    return pd.Series(result, index=values.index, name=values.name, dtype="boolean")


# --------------------------------------------------------------------------
# e-mails, ids
# --------------------------------------------------------------------------


def normalise_emails(values: pd.Series) -> pd.Series:
    """Trim and casefold e-mail addresses; <NA> when not plausibly an address."""
    codes, uniques = _factorize_text(values)
    text = pd.Series(uniques.to_pylist(), dtype=object).str.strip().str.casefold()
    ok = text.str.fullmatch(_EMAIL).fillna(False).to_numpy(dtype=bool)
    return _expand_text(codes, text.where(ok, None).tolist(), values)


def normalise_ids(values: pd.Series) -> pd.Series:
    """Opaque ids as trimmed text; ``123.0`` -> ``123``; empty/nan/null/none -> <NA>; case kept."""
    codes, uniques = _factorize_text(values)
    text = pc.replace_substring_regex(pc.utf8_trim_whitespace(uniques), _SPREADSHEET_FLOAT, r"\1")
    null = pc.is_in(pc.utf8_lower(text), value_set=pa.array(_NULL_TOKENS))
    return _expand_text(codes, pc.if_else(null, pa.nulls(len(text), pa.string()), text), values)


def normalise_identifiers(values: pd.Series, how: str, region: str = "CN") -> pd.Series:
    """Identifier values normalised by their type's rule (`identity.identifiers.<type>.normalise`:
    ``phone``, ``email`` or ``id``), so that every stage spells (and hashes) an identifier the same way."""
    if how == "phone":
        return normalise_phones(values, region)
    if how == "email":
        return normalise_emails(values)
    return normalise_ids(values)


# --------------------------------------------------------------------------
# timestamps, numbers, booleans
# --------------------------------------------------------------------------


def _text_array(values: pd.Series) -> pa.Array:
    """Values as a pyarrow string array of the same length (null where missing)."""
    if _is_arrow_text(values):
        return _arrow_text(values)
    if values.dtype == object or isinstance(values.dtype, pd.StringDtype):
        try:
            return pa.array(np.asarray(values, dtype=object), type=pa.string(), from_pandas=True)
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            pass
    text = values.map(_scalar_text, na_action="ignore")
    return pa.array(np.asarray(text, dtype=object), type=pa.string(), from_pandas=True)


def _localise(naive: pd.DatetimeIndex, tz: str) -> pd.DatetimeIndex:
    """Naive wall times in ``tz`` -> UTC; DST gaps shift forward, folds take standard time."""
    local = naive.tz_localize(tz, ambiguous=np.zeros(len(naive), dtype=bool), nonexistent="shift_forward")
    return local.tz_convert("UTC")


def _naive_utc_ns(index: pd.DatetimeIndex) -> np.ndarray:
    """UTC instants of a tz-aware index as naive datetime64[ns]."""
    return index.tz_convert("UTC").tz_localize(None).as_unit("ns").to_numpy()


def _utc_series(instants: np.ndarray, like: pd.Series) -> pd.Series:
    return pd.Series(instants, index=like.index, name=like.name).dt.tz_localize("UTC")


def parse_timestamps(values: pd.Series, fmt: str, tz: str) -> pd.Series:
    """Parse to ``datetime64[ns, UTC]``; NaT where unparseable, never raises on data.

    ``fmt``: ``"iso"`` (ISO 8601; values with an offset or ``Z`` are converted,
    naive ones are wall time in ``tz``; offsets may differ row to row),
    ``"epoch_s"``, ``"epoch_ms"`` (numbers or numeric text), ``"date"``
    (``YYYY-MM-DD``, midnight in ``tz``), or a strftime pattern (wall time in
    ``tz`` unless the pattern has ``%z``). Raises ValueError for an unknown ``fmt``.
    """
    if fmt not in ("iso", "epoch_s", "epoch_ms", "date") and "%" not in fmt:
        raise ValueError(f"unknown timestamp format {fmt!r}")
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return _utc_series(_naive_utc_ns(pd.DatetimeIndex(values)), values)
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return _utc_series(_naive_utc_ns(_localise(pd.DatetimeIndex(values), tz)), values)

    if fmt in ("epoch_s", "epoch_ms"):
        if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
            numbers = values.to_numpy(dtype="float64", na_value=np.nan)
        else:
            text = pc.utf8_trim_whitespace(_text_array(values)).to_numpy(zero_copy_only=False)
            numbers = pd.to_numeric(text, errors="coerce").astype("float64")
        unit, bound = ("s", 9.2e9) if fmt == "epoch_s" else ("ms", 9.2e12)  # ns range ~1678..2262
        numbers = np.where(np.abs(numbers) < bound, numbers, np.nan)
        parsed = pd.to_datetime(numbers, unit=unit, utc=True, errors="coerce")
        return _utc_series(_naive_utc_ns(parsed), values)

    text = pc.utf8_trim_whitespace(_text_array(values))
    if fmt == "iso":
        text = pc.utf8_upper(text)  # RFC 3339 allows a lower-case "t" and "z"
        aware = _bools(pc.match_substring_regex(text, _ISO_OFFSET))
        groups = [(aware, True, "ISO8601"), (~aware, False, "ISO8601")]
    else:
        pattern = "%Y-%m-%d" if fmt == "date" else fmt
        groups = [(np.ones(len(text), dtype=bool), "%z" in pattern, pattern)]
    out = np.full(len(text), np.datetime64("NaT", "ns"))
    for mask, has_offset, pattern in groups:
        if not mask.any():
            continue
        part = text.filter(pa.array(mask)).to_numpy(zero_copy_only=False)
        # utc=True even for naive text, so that a stray offset can never raise
        # "mixed time zones"; naive wall times are then re-localised in tz.
        parsed = pd.DatetimeIndex(pd.to_datetime(part, format=pattern, utc=True, errors="coerce"))
        if not has_offset:
            parsed = _localise(parsed.tz_localize(None), tz)
        out[mask] = _naive_utc_ns(parsed)
    return _utc_series(out, values)


def parse_numbers(values: pd.Series) -> pd.Series:
    """Parse amounts to float64 (NaN when invalid); allows ``¥``/``￥``/``RMB``, ``1,299`` groups, signs."""
    if pd.api.types.is_numeric_dtype(values.dtype):
        return pd.Series(values.to_numpy(dtype="float64", na_value=np.nan), index=values.index, name=values.name)
    codes, uniques = _factorize_text(values)
    text = pd.Series(uniques.to_pylist(), dtype=object).str.strip()
    parts = text.str.extract(_NUMBER)
    s1, s2 = parts["s1"].fillna(""), parts["s2"].fillna("")
    literal = (s1 + s2) + parts["num"].str.replace(",", "", regex=False) + parts["exp"].fillna("")
    literal = literal.where((s1 == "") | (s2 == ""))
    numbers = pd.to_numeric(literal, errors="coerce").to_numpy(dtype="float64")
    out = np.append(numbers, np.nan)[codes]
    return pd.Series(out, index=values.index, name=values.name)


def parse_bools(values: pd.Series) -> pd.Series:
    """y/yes/true/t/1/是 -> True, n/no/false/f/0/否 -> False (trimmed, any case), else <NA>."""
    codes, uniques = _factorize_text(values)

    def one(text: str) -> bool | None:
        key = text.strip().casefold()
        return True if key in _TRUE else False if key in _FALSE else None

    arr = pd.array([one(t) for t in uniques.to_pylist()], dtype="boolean")
    return pd.Series(arr.take(codes, allow_fill=True), index=values.index, name=values.name)


# --------------------------------------------------------------------------
# codes and hashes
# --------------------------------------------------------------------------


def map_codes(values: pd.Series, mapping: Mapping[str, str | None]) -> tuple[pd.Series, int]:
    """Unify codes through ``mapping`` (keys compared trimmed + casefolded).

    A key mapped to None means "unknown" (<NA>); a value not in the mapping is
    kept as its trimmed, casefolded text; empty -> <NA>. Returns the codes and
    how many non-empty values were not in the mapping. Raises ValueError if two
    keys collide after normalisation with different targets.
    """
    table: dict[str, str | None] = {}
    for key, target in mapping.items():
        norm = str(key).strip().casefold()
        if norm in table and table[norm] != target:
            raise ValueError(f"mapping keys collide after trim+casefold: {norm!r}")
        table[norm] = target
    codes, uniques = _factorize_text(values)
    out: list[str | None] = []
    unmapped = np.zeros(len(uniques), dtype=bool)
    for i, text in enumerate(uniques.to_pylist()):
        key = text.strip().casefold()
        if not key:
            out.append(None)
        elif key in table:
            out.append(table[key])
        else:
            out.append(key)
            unmapped[i] = True
    counts = np.bincount(codes[codes >= 0], minlength=len(uniques))
    return _expand_text(codes, out, values), int(counts[unmapped].sum())


def _hash_each(values: pd.Series, prefix: str) -> pd.Series:
    codes, uniques = _factorize_text(values)
    sha = hashlib.sha256
    digests = [sha((prefix + text).encode("utf-8")).hexdigest() for text in uniques.to_pylist()]
    return _expand_text(codes, digests, values)


def salted_hash(values: pd.Series, salt: str) -> pd.Series:
    """Hex sha256 of ``salt + "|" + value`` (UTF-8) per non-null value; <NA> stays <NA>.

    Values are hashed as given (normalise them first); non-text values use
    their text form (``123.0`` -> ``"123"``). An empty salt is refused.
    """
    if not salt:
        raise ValueError("salted_hash needs a non-empty salt")
    return _hash_each(values, salt + "|")


def sha256_hex(values: pd.Series) -> pd.Series:
    """Plain hex sha256 (UTF-8) per non-null value, to match vendors' hashed keys."""
    return _hash_each(values, "")


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
