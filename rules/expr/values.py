"""What evaluation works on: one value type per language type, and the conversions from and to pandas columns.

Strings are integer codes into a tuple of categories (a pandas Categorical's layout), so comparing a column with a
literal is one integer comparison; lists are a (rows x width) code matrix, so `contains` is one vectorised test.
The tag engine builds and reads these values directly, without a Series per tag.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Union

import numpy as np
import pandas as pd

from rules.expr.tree import BOOL, LIST, NUMBER, STRING, TYPES


class NumberValue(NamedTuple):
    """float64 array (or scalar) with NaN for null."""
    data: Any


class BoolValue(NamedTuple):
    """`value` and `known` bool arrays (or numpy bool scalars); value is False wherever known is False."""
    value: Any
    known: Any


class StringValue(NamedTuple):
    """Integer codes (-1 null) into `categories`; a scalar code for a literal."""
    codes: Any
    categories: tuple[str, ...]


class ListValue(NamedTuple):
    """`order`: (rows x width) int codes into `categories`, best first, -1 padding; `known`: False for a null list."""
    order: np.ndarray
    categories: tuple[str, ...]
    known: np.ndarray


Value = Union[NumberValue, BoolValue, StringValue, ListValue]


def type_of(value: Value) -> str:
    """The language type of an evaluated value."""
    return {NumberValue: NUMBER, BoolValue: BOOL, StringValue: STRING, ListValue: LIST}[type(value)]


def infer_type(data: Any) -> str:
    """The language type of a column given as a pandas Series, numpy array or list."""
    if isinstance(data, (NumberValue, BoolValue, StringValue, ListValue)):
        return type_of(data)
    dtype = getattr(data, "dtype", None)
    if dtype is None:
        data = np.asarray(data, dtype=object)
        dtype = data.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return STRING
    if pd.api.types.is_bool_dtype(dtype):
        return BOOL
    if pd.api.types.is_numeric_dtype(dtype):
        return NUMBER
    if pd.api.types.is_string_dtype(dtype) and not pd.api.types.is_object_dtype(dtype):
        return STRING
    values = pd.Series(np.asarray(data, dtype=object), copy=False)
    first = values.first_valid_index()
    item = None if first is None else values[first]
    if isinstance(item, (tuple, list, np.ndarray)):
        return LIST
    if isinstance(item, str):
        return STRING
    if isinstance(item, (bool, np.bool_)):
        return BOOL
    return NUMBER


def to_value(data: Any, kind: str | None = None) -> Value:
    """A column (Series, array, list; Categorical/object for strings, tuples or lists for lists) as an evaluation value."""
    if isinstance(data, (NumberValue, BoolValue, StringValue, ListValue)):
        return data
    kind = kind or infer_type(data)
    raw = data.to_numpy() if isinstance(data, pd.Series) and isinstance(data.dtype, np.dtype) else data
    if kind == NUMBER:
        if isinstance(raw, np.ndarray) and raw.dtype.kind in "fiu":
            return NumberValue(raw.astype(np.float64, copy=False))
        series = data if isinstance(data, pd.Series) else pd.Series(data)
        return NumberValue(pd.to_numeric(series, errors="raise").to_numpy(np.float64, na_value=np.nan))
    if kind == BOOL:
        if isinstance(raw, np.ndarray) and raw.dtype == bool:
            return BoolValue(raw, np.ones(len(raw), bool))
        series = data if isinstance(data, pd.Series) else pd.Series(data)
        known = series.notna().to_numpy()
        value = series.astype("boolean").to_numpy(bool, na_value=False)
        return BoolValue(value & known, known)
    if kind == STRING:
        cat = data.array if isinstance(data, pd.Series) else data
        if not isinstance(cat, pd.Categorical):
            cat = pd.Categorical(np.asarray(data, dtype=object))
        cats = tuple(str(c) for c in cat.categories)
        return StringValue(np.asarray(cat.codes, dtype=np.int64), cats)
    if kind == LIST:
        return _list_from_objects(data)
    raise ValueError(f"unknown type {kind!r} (expected one of {', '.join(TYPES)})")


def _list_from_objects(data: Any) -> ListValue:
    """Tuples / lists per row (None or NaN = null) as a ListValue, vectorised through pandas' explode."""
    series = pd.Series(np.asarray(data, dtype=object) if not isinstance(data, pd.Series) else data.to_numpy(object),
                       copy=False)
    n = len(series)
    known = series.notna().to_numpy()
    items = series[known].explode().dropna()
    if items.empty:
        return ListValue(np.full((n, 0), -1, np.int64), (), known)
    position = items.groupby(level=0).cumcount().to_numpy()
    codes, cats = pd.factorize(items.astype(str).to_numpy(), sort=True)
    order = np.full((n, int(position.max()) + 1), -1, np.int64)
    order[items.index.to_numpy(), position] = codes
    return ListValue(order, tuple(cats), known)


def broadcast(value: Value, n: int) -> Value:
    """The value with arrays of length n (literal-only expressions evaluate to scalars)."""
    if isinstance(value, NumberValue):
        return NumberValue(np.broadcast_to(np.asarray(value.data, np.float64), (n,)).copy()) \
            if np.ndim(value.data) == 0 else value
    if isinstance(value, BoolValue):
        if np.ndim(value.value) == 0 or np.ndim(value.known) == 0:
            return BoolValue(np.broadcast_to(value.value, (n,)).copy(), np.broadcast_to(value.known, (n,)).copy())
        return value
    if isinstance(value, StringValue):
        return StringValue(np.full(n, value.codes, np.int64), value.categories) if np.ndim(value.codes) == 0 \
            else value
    return value


def to_series(value: Value, n: int, index: pd.Index | None = None, *, name: str | None = None) -> pd.Series:
    """An evaluated value as a pandas Series: "boolean" (nullable), float64 with NaN, Categorical, or tuples (None=null)."""
    value = broadcast(value, n)
    index = index if index is not None else pd.RangeIndex(n)
    if isinstance(value, NumberValue):
        return pd.Series(value.data, index=index, name=name, copy=False)
    if isinstance(value, BoolValue):
        return pd.Series(pd.arrays.BooleanArray(value.value, ~value.known), index=index, name=name, copy=False)
    if isinstance(value, StringValue):
        return pd.Series(pd.Categorical.from_codes(value.codes, categories=list(value.categories)), index=index,
                         name=name, copy=False)
    return pd.Series(list_to_objects(value), index=index, name=name, copy=False)


def list_to_objects(value: ListValue) -> np.ndarray:
    """One tuple of category names per row (None for a null list), building each distinct tuple once."""
    order, known = value.order, value.known
    n, width = order.shape
    out = np.empty(n, dtype=object)
    if width == 0:
        out[:] = [()] * n
        out[~known] = None
        return out
    base = len(value.categories) + 1
    if base ** width < 2 ** 62:
        code = np.zeros(n, np.int64)
        for j in range(width - 1, -1, -1):
            code = code * base + (order[:, j] + 1)
        uniq, inverse = np.unique(code, return_inverse=True)
        rows = []
        for c in uniq.tolist():
            digits = []
            while c:
                c, d = divmod(c, base)
                digits.append(d)
            rows.append(tuple(value.categories[d - 1] for d in digits if d))
    else:
        uniq_rows, inverse = np.unique(order, axis=0, return_inverse=True)
        rows = [tuple(value.categories[d] for d in row if d >= 0) for row in uniq_rows.tolist()]
    table = np.empty(len(rows), dtype=object)
    table[:] = rows
    out = table[inverse.reshape(-1)]
    out[~known] = None
    return out
