"""Vectorised string building: ids, times, amounts, phone spellings and hashes as Arrow string arrays.

The sources format millions of values; building them from numpy byte matrices and pyarrow compute kernels keeps that
work in C with no Python per value (SHA-256 aside, which goes through hashlib).
"""

from __future__ import annotations

import hashlib
import re
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.generate.vocabulary import DAY


def fixed_strings(mat: np.ndarray) -> pa.StringArray:
    """A string array from an (n, width) uint8 matrix of ASCII/UTF-8 bytes, every value exactly ``width`` bytes."""
    mat = np.ascontiguousarray(mat, dtype=np.uint8)
    n, width = mat.shape
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(width)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(mat))


def to_matrix(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(n, max_len) uint8 matrix (zero padded) and byte lengths of a string array (nulls read as empty)."""
    arr = pc.fill_null(arr, "") if arr.null_count else arr
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    off = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=n + 1, offset=arr.offset * 4).astype(np.int64)
    lens = np.diff(off)
    width = int(lens.max()) if n else 0
    if width == 0:
        return np.zeros((n, 0), np.uint8), lens
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)
    cols = np.arange(width)
    idx = np.minimum(off[:-1, None] + cols, data.size - 1)
    return np.where(cols < lens[:, None], data[idx], 0).astype(np.uint8), lens


def from_matrix(mat: np.ndarray, lens: np.ndarray) -> pa.StringArray:
    """The first ``lens`` bytes of each row of ``mat`` as a string array (the way back from ``to_matrix``)."""
    n = len(lens)
    data = mat[np.arange(mat.shape[1]) < lens[:, None]]
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(lens, out=offsets[1:])
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(data)))


def _put_digits(mat: np.ndarray, pos: int, values: np.ndarray, width: int) -> None:
    v = values.astype(np.int64)
    for k in range(width):
        mat[:, pos + width - 1 - k] = 48 + (v % 10)
        v = v // 10


def id_text(prefix: str, values: np.ndarray, width: int, valid: np.ndarray | None = None) -> pa.Array:
    """``prefix`` + zero-padded decimal ``values``; null where not ``valid``."""
    p = prefix.encode()
    mat = np.empty((len(values), len(p) + width), np.uint8)
    mat[:, :len(p)] = np.frombuffer(p, np.uint8)
    _put_digits(mat, len(p), np.maximum(values, 0), width)
    out = fixed_strings(mat)
    if valid is not None and not valid.all():
        out = pc.if_else(pa.array(valid), out, pa.scalar(None, pa.string()))
    return out


def days_to_civil(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(year, month, day) of days since 1970-01-01 (proleptic Gregorian, vectorised)."""
    z = days.astype(np.int64) + 719468
    era = np.floor_divide(z, 146097)
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = np.where(mp < 10, mp + 3, mp - 9)
    y = yoe + era * 400 + (m <= 2)
    return y, m, d


def fmt_time(secs: np.ndarray, fmt: str) -> pa.StringArray:
    """Format seconds since the epoch (wall clock, no zone arithmetic) with %Y %m %d %H %M %S and literals."""
    secs = secs.astype(np.int64)
    days = np.floor_divide(secs, DAY)
    sod = secs - days * DAY
    y, mo, d = days_to_civil(days)
    fields = {"Y": (y, 4), "m": (mo, 2), "d": (d, 2), "H": (sod // 3600, 2), "M": (sod // 60 % 60, 2),
              "S": (sod % 60, 2)}
    tokens = re.findall(r"%[YmdHMS]|[^%]", fmt)
    width = sum(fields[t[1]][1] if t.startswith("%") else len(t.encode()) for t in tokens)
    mat = np.empty((len(secs), width), np.uint8)
    pos = 0
    for t in tokens:
        if t.startswith("%"):
            values, w = fields[t[1]]
            _put_digits(mat, pos, values, w)
        else:
            raw = t.encode()
            w = len(raw)
            mat[:, pos:pos + w] = np.frombuffer(raw, np.uint8)
        pos += w
    return fixed_strings(mat)


def fmt_cents(cents: np.ndarray) -> pa.StringArray:
    """Integer cents -> '129.90'."""
    cents = np.maximum(cents.astype(np.int64), 0)
    yuan = pc.cast(pa.array(cents // 100), pa.string())
    frac = pc.utf8_lpad(pc.cast(pa.array(cents % 100), pa.string()), width=2, padding="0")
    return pc.binary_join_element_wise(yuan, frac, ".")


def take(vocab: Iterable[str], idx: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """vocab[idx] as a string array; null where not ``valid``."""
    voc = pa.array(list(vocab), pa.string())
    mask = None if valid is None else np.ascontiguousarray(~np.asarray(valid, bool))
    ia = pa.array(np.ascontiguousarray(idx, np.int32), mask=mask)
    return voc.take(ia)


def concat(*parts, sep: str = "") -> pa.Array:
    """Row-wise concatenation of string arrays and literal strings."""
    return pc.binary_join_element_wise(*[pa.scalar(p) if isinstance(p, str) else p for p in parts], sep)


def null_where(arr: pa.Array, mask: np.ndarray) -> pa.Array:
    """``arr`` with nulls where ``mask``."""
    if not mask.any():
        return arr
    return pc.if_else(pa.array(mask), pa.scalar(None, arr.type), arr)


def fmt_phone(digits: np.ndarray, codes: np.ndarray) -> pa.Array:
    """Spell 11-digit numbers (int64) in formats ``codes`` (vocabulary.PHONE_FMT); null where digits or code < 0."""
    valid = (digits > 0) & (codes >= 0)
    s = pc.cast(pa.array(np.where(valid, digits, 10000000000)), pa.string())
    a = pc.utf8_slice_codeunits(s, 0, 3)
    b = pc.utf8_slice_codeunits(s, 3, 7)
    c = pc.utf8_slice_codeunits(s, 7, 11)
    forms = [
        s, concat("+86 ", a, " ", b, " ", c), concat("+86-", a, "-", b, "-", c), concat("0086 ", s),
        concat("86-", s), concat("(+86)", a, " ", b, " ", c), concat("0", s), concat(a, "-", b, "-", c),
        concat(" ", a, " ", b, " ", c, " "), concat("+86", s),
        pc.utf8_slice_codeunits(s, 0, 5), concat(pc.utf8_slice_codeunits(s, 0, 10), "x"),          # broken
    ]
    used = np.unique(codes[valid])
    if used.size == 0:
        return pa.nulls(len(digits), pa.string())
    if used.size == 1:
        out = forms[int(used[0])]
    else:
        out = pc.choose(pa.array(np.where(valid, codes, used[0]).astype(np.int8)), *forms)
    return null_where(out, ~valid)


def sha256_hex(arr: pa.Array) -> pa.StringArray:
    """Lower-case hex SHA-256 of each (UTF-8) value of a string array (hashlib: C speed, a few hundred ns a value)."""
    return pa.array([None if v is None else hashlib.sha256(v.encode("utf-8")).hexdigest() for v in arr.to_pylist()],
                    pa.string())
