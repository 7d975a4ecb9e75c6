"""The vocabulary of the expression language (its four types, keywords, functions) and the tree `parse` builds.

Every node is a frozen dataclass: equal trees compare equal whatever their positions, and `str()` writes a node back
fully parenthesised, which is how tests and messages show what the parser understood.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Union

NUMBER, STRING, BOOL, LIST = "number", "string", "bool", "list"
TYPES = (NUMBER, STRING, BOOL, LIST)
KEYWORDS = frozenset({"and", "or", "not", "between", "in", "contains", "is", "null", "true", "false"})
FUNCTIONS: dict[str, tuple[int, int | None]] = {"coalesce": (1, None), "abs": (1, 1), "min": (2, None),
                                                "max": (2, None)}
COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")


def describe_type(kind: str) -> str:
    """A type as a message names it: "a number", "a true/false condition" (the type check's and the tag loader's)."""
    return {NUMBER: "a number", STRING: "a string", BOOL: "a true/false condition", LIST: "a list"}.get(kind, kind)


def fmt_number(value: float) -> str:
    """A number as a person writes it: 50, not 50.0."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


@dataclass(frozen=True)
class Expr:
    """A node of a parsed expression; `pos` is the 0-based offset of the text it starts at (not part of equality)."""

    pos: int = field(default=0, compare=False, kw_only=True)

    def children(self) -> tuple[Expr, ...]:
        """The direct sub-expressions."""
        return ()

    def walk(self) -> Iterator[Expr]:
        """This node and every node below it, depth first."""
        yield self
        for child in self.children():
            yield from child.walk()

    def names(self) -> set[str]:
        """Every identifier the expression references (columns, tags, segments)."""
        return {node.name for node in self.walk() if isinstance(node, Name)}


@dataclass(frozen=True)
class Number(Expr):
    value: float

    def __str__(self) -> str:
        return fmt_number(self.value)


@dataclass(frozen=True)
class String(Expr):
    value: str

    def __str__(self) -> str:
        return "'" + self.value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class Boolean(Expr):
    value: bool

    def __str__(self) -> str:
        return "true" if self.value else "false"


Literal = Union[Number, String, Boolean]


@dataclass(frozen=True)
class Name(Expr):
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Neg(Expr):
    operand: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.operand,)

    def __str__(self) -> str:
        return f"-({self.operand})"


@dataclass(frozen=True)
class Arith(Expr):
    op: str
    left: Expr
    right: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.left, self.right)

    def __str__(self) -> str:
        return f"({self.left} {self.op} {self.right})"


@dataclass(frozen=True)
class Compare(Expr):
    op: str
    left: Expr
    right: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.left, self.right)

    def __str__(self) -> str:
        return f"({self.left} {self.op} {self.right})"


@dataclass(frozen=True)
class Between(Expr):
    operand: Expr
    low: Expr
    high: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.operand, self.low, self.high)

    def __str__(self) -> str:
        return f"({self.operand} between {self.low} and {self.high})"


@dataclass(frozen=True)
class InList(Expr):
    operand: Expr
    values: tuple[Literal, ...]
    negated: bool = False

    def children(self) -> tuple[Expr, ...]:
        return (self.operand, *self.values)

    def __str__(self) -> str:
        return f"({self.operand} {'not in' if self.negated else 'in'} [{', '.join(map(str, self.values))}])"


@dataclass(frozen=True)
class Contains(Expr):
    operand: Expr
    value: Literal

    def children(self) -> tuple[Expr, ...]:
        return (self.operand, self.value)

    def __str__(self) -> str:
        return f"({self.operand} contains {self.value})"


@dataclass(frozen=True)
class IsNull(Expr):
    operand: Expr
    negated: bool = False

    def children(self) -> tuple[Expr, ...]:
        return (self.operand,)

    def __str__(self) -> str:
        return f"({self.operand} is {'not ' if self.negated else ''}null)"


@dataclass(frozen=True)
class Not(Expr):
    operand: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.operand,)

    def __str__(self) -> str:
        return f"(not {self.operand})"


@dataclass(frozen=True)
class And(Expr):
    items: tuple[Expr, ...]

    def children(self) -> tuple[Expr, ...]:
        return self.items

    def __str__(self) -> str:
        return "(" + " and ".join(map(str, self.items)) + ")"


@dataclass(frozen=True)
class Or(Expr):
    items: tuple[Expr, ...]

    def children(self) -> tuple[Expr, ...]:
        return self.items

    def __str__(self) -> str:
        return "(" + " or ".join(map(str, self.items)) + ")"


@dataclass(frozen=True)
class Call(Expr):
    func: str
    args: tuple[Expr, ...]

    def children(self) -> tuple[Expr, ...]:
        return self.args

    def __str__(self) -> str:
        return f"{self.func}({', '.join(map(str, self.args))})"

