"""Vectorised evaluation: every node of the tree is one or a few numpy operations over whole columns, never a
Python loop over rows, with null handled as the language defines it (Kleene logic, null on division by zero).

`evaluate` is the checked entry point over a frame; `evaluate_value` is the tag engine's, which has checked types at
load and hands values (not Series) in and out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from rules.errors import ExprError, suggest
from rules.expr.check import typecheck
from rules.expr.tree import (And, Arith, Between, Boolean, Call, Compare, Contains, Expr, InList, IsNull, Name, Neg,
                             Not, Number, Or, String)
from rules.expr.values import (BoolValue, ListValue, NumberValue, StringValue, Value, to_series, to_value,
                               type_of)

_ORDER_OPS = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
              "==": np.equal, "!=": np.not_equal}
_TRUE = np.True_


def _notnan(a: Any) -> Any:
    return ~np.isnan(a)


def _kleene_and(a: BoolValue, b: BoolValue) -> BoolValue:
    known = (a.known & b.known) | (a.known & ~a.value) | (b.known & ~b.value)
    return BoolValue(a.value & b.value, known)


def _kleene_or(a: BoolValue, b: BoolValue) -> BoolValue:
    value = a.value | b.value
    return BoolValue(value, value | (a.known & b.known))


def _align_strings(a: StringValue, b: StringValue) -> tuple[Any, Any, tuple[str, ...]]:
    """Both code arrays expressed over one category tuple."""
    if a.categories == b.categories:
        return a.codes, b.codes, a.categories
    cats = list(a.categories)
    index = {c: i for i, c in enumerate(cats)}
    for c in b.categories:
        if c not in index:
            index[c] = len(cats)
            cats.append(c)
    remap = np.array([index[c] for c in b.categories] + [-1], dtype=np.int64)   # code -1 -> last entry -> -1
    return a.codes, remap[b.codes], tuple(cats)


def evaluate_value(expr: Expr, lookup: Callable[[str], Value]) -> Value:
    """Evaluate `expr` to a Value, reading each name through `lookup` (used by the tag engine; no type check here)."""
    return _Evaluator(lookup).eval(expr)


class _Evaluator:
    def __init__(self, lookup: Callable[[str], Value]) -> None:
        self.lookup = lookup

    def eval(self, node: Expr) -> Value:
        return getattr(self, "_" + type(node).__name__)(node)

    def num(self, node: Expr) -> Any:
        return self.eval(node).data

    def _Number(self, node: Number) -> Value:
        return NumberValue(np.float64(node.value))

    def _String(self, node: String) -> Value:
        return StringValue(np.int64(0), (node.value,))

    def _Boolean(self, node: Boolean) -> Value:
        return BoolValue(np.bool_(node.value), _TRUE)

    def _Name(self, node: Name) -> Value:
        return self.lookup(node.name)

    def _Neg(self, node: Neg) -> Value:
        return NumberValue(-self.num(node.operand))

    def _Arith(self, node: Arith) -> Value:
        a, b = self.num(node.left), self.num(node.right)
        with np.errstate(all="ignore"):
            if node.op == "+":
                return NumberValue(a + b)
            if node.op == "-":
                return NumberValue(a - b)
            if node.op == "*":
                return NumberValue(a * b)
            out = np.divide(a, b)
            zero = b == 0
            if np.ndim(zero) == 0:
                return NumberValue(np.float64(np.nan) if zero else out) if np.ndim(out) == 0 else \
                    NumberValue(np.full_like(out, np.nan) if zero else out)
            if zero.any():
                out = np.where(zero, np.nan, out)
            return NumberValue(out)

    def _Compare(self, node: Compare) -> Value:
        a, b = self.eval(node.left), self.eval(node.right)
        if isinstance(a, NumberValue):
            value = _ORDER_OPS[node.op](a.data, b.data)
            known = _notnan(a.data) & _notnan(b.data)
            return BoolValue(value & known if node.op == "!=" else value, known)
        if isinstance(a, BoolValue):
            known = a.known & b.known
            value = (a.value == b.value) if node.op == "==" else (a.value != b.value)
            return BoolValue(value & known, known)
        if isinstance(a, StringValue):
            if np.ndim(b.codes) == 0 and np.ndim(a.codes) != 0:
                a, b = b, a
            if np.ndim(a.codes) == 0 and np.ndim(b.codes) != 0:        # literal vs column: one code comparison
                literal = a.categories[int(a.codes)]
                code = b.categories.index(literal) if literal in b.categories else -2
                known = b.codes >= 0
                value = (b.codes == code) if node.op == "==" else (b.codes != code) & known
                return BoolValue(value, known)
            ac, bc, _ = _align_strings(a, b)
            known = (ac >= 0) & (bc >= 0)
            value = (ac == bc) if node.op == "==" else (ac != bc)
            return BoolValue(value & known, known)
        raise TypeError(f"cannot compare {type_of(a)} values")

    def _Between(self, node: Between) -> Value:
        a, lo, hi = self.num(node.operand), self.num(node.low), self.num(node.high)
        known = _notnan(a) & _notnan(lo) & _notnan(hi)
        return BoolValue((a >= lo) & (a <= hi), known)

    def _InList(self, node: InList) -> Value:
        a = self.eval(node.operand)
        if isinstance(a, NumberValue):
            known = _notnan(a.data)
            hit = np.isin(a.data, [v.value for v in node.values])
        elif isinstance(a, StringValue):
            known = a.codes >= 0
            codes = [a.categories.index(v.value) for v in node.values if v.value in a.categories]
            hit = np.isin(a.codes, codes) if codes else np.zeros(np.shape(a.codes), bool)
        else:
            wanted = {bool(v.value) for v in node.values}
            known = a.known
            hit = known if wanted == {True, False} else (a.value if True in wanted else ~a.value & known)
        return BoolValue((~hit & known) if node.negated else hit, known)

    def _Contains(self, node: Contains) -> Value:
        a = self.eval(node.operand)
        wanted = node.value.value
        if wanted in a.categories and a.order.shape[1]:
            hit = (a.order == a.categories.index(wanted)).any(axis=1)
        else:
            hit = np.zeros(len(a.known), bool)
        return BoolValue(hit & a.known, a.known)

    def _IsNull(self, node: IsNull) -> Value:
        a = self.eval(node.operand)
        if isinstance(a, NumberValue):
            known = _notnan(a.data)
        elif isinstance(a, StringValue):
            known = a.codes >= 0
        else:
            known = np.asarray(a.known)
        return BoolValue(known if node.negated else ~known, _TRUE)

    def _Not(self, node: Not) -> Value:
        a = self.eval(node.operand)
        return BoolValue(~a.value & a.known, a.known)

    def _And(self, node: And) -> Value:
        out = self.eval(node.items[0])
        for item in node.items[1:]:
            out = _kleene_and(out, self.eval(item))
        return out

    def _Or(self, node: Or) -> Value:
        out = self.eval(node.items[0])
        for item in node.items[1:]:
            out = _kleene_or(out, self.eval(item))
        return out

    def _Call(self, node: Call) -> Value:
        args = [self.eval(a) for a in node.args]
        if node.func == "abs":
            return NumberValue(np.abs(args[0].data))
        if node.func in ("min", "max"):
            fold = np.minimum if node.func == "min" else np.maximum
            out = args[0].data
            for a in args[1:]:
                out = fold(out, a.data)
            return NumberValue(out)
        out = args[0]                                                        # coalesce
        for a in args[1:]:
            if isinstance(out, NumberValue):
                out = NumberValue(np.where(np.isnan(out.data), a.data, out.data))
            elif isinstance(out, BoolValue):
                out = BoolValue(np.where(out.known, out.value, a.value), out.known | a.known)
            else:
                oc, ac, cats = _align_strings(out, a)
                out = StringValue(np.where(oc >= 0, oc, ac), cats)
        return out


def evaluate(expr: Expr, columns: Mapping[str, Any], *, index: pd.Index | None = None) -> pd.Series:
    """Evaluate `expr` over `columns` (a DataFrame or a mapping of name -> array-like) and return a Series.

    The Series is "boolean" (nullable) for conditions, float64 with NaN for numbers, Categorical for strings and
    object of tuples (None = null) for lists. Input types are inferred from the columns: numeric dtypes are numbers,
    bool / "boolean" are conditions, Categorical / str are strings, tuples or lists are lists. The expression is type
    checked first (ExprError on a mismatch). The index is the DataFrame's, or `index`, or a RangeIndex.
    """
    names = sorted(expr.names())
    missing = [n for n in names if n not in columns]
    if missing:
        node = next(node for node in expr.walk() if isinstance(node, Name) and node.name == missing[0])
        raise ExprError(f"unknown column {missing[0]!r}{suggest(missing[0], list(columns))} "
                        f"(column {node.pos + 1})", node.pos)
    values = {n: to_value(columns[n]) for n in names}
    typecheck(expr, {n: type_of(v) for n, v in values.items()})
    if index is None:
        index = getattr(columns, "index", None) if isinstance(columns, pd.DataFrame) else None
    if index is not None:
        n = len(index)
    elif values:
        first = next(iter(values.values()))
        n = len(first.known) if isinstance(first, (BoolValue, ListValue)) else len(
            first.data if isinstance(first, NumberValue) else first.codes)
    else:
        n = len(next(iter(columns.values()))) if len(columns) else 1
    return to_series(evaluate_value(expr, values.__getitem__), n, index)
