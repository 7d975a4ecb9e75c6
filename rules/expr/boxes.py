"""Boxes: the static overlap check of an exclusive enum's conditions, without data.

A condition that is a conjunction of comparisons of a column against literals is a box (column -> range or set of
values); two boxes that intersect prove two values can both match, and the intersection is the counterexample the
load error names. A condition that is not a box is left to the check on the data at evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

from rules.expr.tree import And, Between, Boolean, Compare, Expr, InList, Name, Not, Number, String, fmt_number


@dataclass(frozen=True)
class Interval:
    """A numeric range; infinite ends are open."""
    low: float = -math.inf
    low_closed: bool = False
    high: float = math.inf
    high_closed: bool = False

    def empty(self) -> bool:
        return self.low > self.high or (self.low == self.high and not (self.low_closed and self.high_closed))


Constraint = Union[Interval, frozenset]
Box = dict[str, Constraint]


def box_of(expr: Expr) -> Box | None:
    """The condition as a box (column -> range or set of values, all of which must hold), or None when it is not a
    conjunction of comparisons, betweens and in-lists of a column against literals."""
    items = expr.items if isinstance(expr, And) else (expr,)
    box: Box = {}
    for item in items:
        atom = _atom(item)
        if atom is None:
            return None
        if atom == ():
            continue
        name, constraint = atom
        box[name] = _intersect(box[name], constraint) if name in box else constraint
    return box


def _atom(node: Expr) -> tuple[str, Constraint] | tuple | None:
    if isinstance(node, Boolean) and node.value:
        return ()
    if isinstance(node, Name):                       # a bare flag: it must be true
        return node.name, frozenset({True})
    if isinstance(node, Not) and isinstance(node.operand, Name):
        return node.operand.name, frozenset({False})
    if isinstance(node, Compare):
        left, right, op = node.left, node.right, node.op
        if not isinstance(left, Name):
            left, right, op = right, left, {"<": ">", "<=": ">=", ">": "<", ">=": "<="}.get(op, op)
        if not isinstance(left, Name) or not isinstance(right, (Number, String, Boolean)):
            return None
        v = right.value
        if op == "==":
            return left.name, frozenset({v})
        if not isinstance(right, Number):
            return None
        ranges = {"<": Interval(high=v), "<=": Interval(high=v, high_closed=True),
                  ">": Interval(low=v), ">=": Interval(low=v, low_closed=True)}
        return (left.name, ranges[op]) if op in ranges else None
    if isinstance(node, Between) and isinstance(node.operand, Name) and isinstance(node.low, Number) \
            and isinstance(node.high, Number):
        return node.operand.name, Interval(node.low.value, True, node.high.value, True)
    if isinstance(node, InList) and not node.negated and isinstance(node.operand, Name):
        return node.operand.name, frozenset(v.value for v in node.values)
    return None


def _intersect(a: Constraint, b: Constraint) -> Constraint:
    if isinstance(a, frozenset) and isinstance(b, frozenset):
        return a & b
    if isinstance(a, frozenset) or isinstance(b, frozenset):
        values, interval = (a, b) if isinstance(a, frozenset) else (b, a)
        return frozenset(v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
                         and _inside(v, interval))
    low, low_closed = max((a.low, not a.low_closed), (b.low, not b.low_closed))
    high, high_closed = min((a.high, a.high_closed), (b.high, b.high_closed))
    return Interval(low, not low_closed, high, high_closed)


def _inside(v: float, i: Interval) -> bool:
    return (v > i.low or (v == i.low and i.low_closed)) and (v < i.high or (v == i.high and i.high_closed))


def box_overlap(a: Box, b: Box) -> Box | None:
    """Where boxes `a` and `b` both hold (a box), or None when no row can satisfy both."""
    out: Box = {}
    for name in [*a, *(k for k in b if k not in a)]:
        c = _intersect(a[name], b[name]) if name in a and name in b else a.get(name, b.get(name))
        if (isinstance(c, frozenset) and not c) or (isinstance(c, Interval) and c.empty()):
            return None
        out[name] = c
    return out


def describe_box(box: Box) -> str:
    """'attr_age is in [50, 55] and attr_city_tier = 1' (everywhere when the box has no constraint)."""
    parts = []
    for name, c in box.items():
        if isinstance(c, frozenset):
            vals = sorted(c, key=lambda v: (str(type(v)), v))
            shown = [repr(v) if isinstance(v, str) else
                     ("true" if v is True else "false" if v is False else fmt_number(v)) for v in vals]
            parts.append(f"{name} = {shown[0]}" if len(shown) == 1 else f"{name} is in [{', '.join(shown)}]")
        elif c.low == c.high:
            parts.append(f"{name} = {fmt_number(c.low)}")
        elif math.isinf(c.low) and math.isinf(c.high):
            parts.append(f"{name} is not null")
        elif math.isinf(c.low):
            parts.append(f"{name} {'<=' if c.high_closed else '<'} {fmt_number(c.high)}")
        elif math.isinf(c.high):
            parts.append(f"{name} {'>=' if c.low_closed else '>'} {fmt_number(c.low)}")
        else:
            parts.append(f"{name} is in {'[' if c.low_closed else '('}{fmt_number(c.low)}, {fmt_number(c.high)}"
                         f"{']' if c.high_closed else ')'}")
    return " and ".join(parts) or "every row"
