"""The tag expression language: tokenizer, recursive-descent parser, AST, type check and vectorised evaluation.

Expressions are parsed into a tree once (at load) and evaluated over whole columns: every node is one or a few numpy
operations over all rows, never a Python loop over rows. There is no `eval` of strings anywhere.

Grammar (keywords and function names case-insensitive; identifiers case-sensitive):

    expr  := or ;  or := and ("or" and)* ;  and := not ("and" not)* ;  not := "not" not | test
    test  := sum [ ("=="|"!="|"<"|"<="|">"|">=") sum | "between" sum "and" sum | ["not"] "in" "[" literal ("," literal)* "]"
                 | "contains" literal | "is" ["not"] "null" ]
    sum   := term (("+"|"-") term)* ;  term := unary (("*"|"/") unary)* ;  unary := "-" unary | atom
    atom  := NUMBER | STRING | "true" | "false" | NAME | "(" expr ")" | FUNC "(" expr ("," expr)* ")"
    FUNC  := coalesce | abs | min | max

Types: every name has one of four types, checked before evaluation (`typecheck`), so a string compared with a number is
an error at load time, not a surprise at evaluation:

    number  float64 array, NaN = null
    string  integer codes into a tuple of categories, -1 = null (a pandas Categorical's layout)
    bool    two bool arrays (value, known); value is False wherever known is False
    list    a (rows x width) array of category codes, -1 padding, plus `known` (null list); from tuples or lists

Semantics: a comparison involving a null is null; `and` / `or` / `not` follow Kleene's three-valued logic; `is null`
is never null; division by zero is null; `min` / `max` are null when any argument is; `coalesce` takes the first
non-null argument. `between` is inclusive at both ends.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Union

import numpy as np
import pandas as pd

from rules.errors import ExprError

NUMBER, STRING, BOOL, LIST = "number", "string", "bool", "list"
TYPES = (NUMBER, STRING, BOOL, LIST)
KEYWORDS = frozenset({"and", "or", "not", "between", "in", "contains", "is", "null", "true", "false"})
FUNCTIONS: dict[str, tuple[int, int | None]] = {"coalesce": (1, None), "abs": (1, 1), "min": (2, None),
                                                "max": (2, None)}
COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


# ---------------------------------------------------------------------------------------------------------------
# tokens
# ---------------------------------------------------------------------------------------------------------------

class Token(NamedTuple):
    kind: str        # "num", "str", "name", "kw", "op", "end"
    text: str        # as written
    value: Any       # float, str (string content, name, lower-cased keyword or operator)
    pos: int         # 0-based offset of the first character


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|<|>|\+|-|\*|/|\(|\)|\[|\]|,)
""", re.VERBOSE)
_HINTS = {"=": "'=' is not an operator: use '==' to compare", "&": "use 'and'", "|": "use 'or'",
          "!": "use 'not' (or '!=' to compare)"}


def tokenize(text: str) -> list[Token]:
    """The tokens of `text`, ending with an "end" token; ExprError on a character that starts no token."""
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in "'\"":
            j, chars = i + 1, []
            while j < n and text[j] != ch:
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                chars.append(text[j])
                j += 1
            if j >= n:
                raise ExprError(f"unterminated string starting at column {i + 1}", i, text)
            tokens.append(Token("str", text[i:j + 1], "".join(chars), i))
            i = j + 1
            continue
        m = _TOKEN.match(text, i)
        if m is None:
            hint = _HINTS.get(ch)
            raise ExprError(f"unexpected character {ch!r} at column {i + 1}" + (f" ({hint})" if hint else ""), i, text)
        kind = m.lastgroup
        raw = m.group()
        if kind == "num":
            tokens.append(Token("num", raw, float(raw), i))
        elif kind == "name":
            low = raw.lower()
            tokens.append(Token("kw", raw, low, i) if low in KEYWORDS else Token("name", raw, raw, i))
        elif kind == "op":
            tokens.append(Token("op", raw, raw, i))
        i = m.end()
    tokens.append(Token("end", "", None, n))
    return tokens


# ---------------------------------------------------------------------------------------------------------------
# the tree
# ---------------------------------------------------------------------------------------------------------------

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
        return _fmt(self.value)


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


def _fmt(value: float) -> str:
    """A number as a person writes it: 50, not 50.0."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


# ---------------------------------------------------------------------------------------------------------------
# the parser
# ---------------------------------------------------------------------------------------------------------------

def parse(text: str) -> Expr:
    """Parse one expression; ExprError (message with the column and a caret under it) when it is not valid."""
    if not isinstance(text, str):
        raise ExprError(f"an expression must be text, found {type(text).__name__} {text!r}", 0)
    return _Parser(text).parse()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    # --- helpers ---
    def peek(self, k: int = 0) -> Token:
        return self.tokens[min(self.i + k, len(self.tokens) - 1)]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return tok

    def at_kw(self, word: str, k: int = 0) -> bool:
        tok = self.peek(k)
        return tok.kind == "kw" and tok.value == word

    def at_op(self, *ops: str) -> bool:
        tok = self.peek()
        return tok.kind == "op" and tok.value in ops

    def error(self, message: str, pos: int) -> ExprError:
        return ExprError(message, pos, self.text)

    def unexpected(self, tok: Token, expected: str | None = None) -> ExprError:
        found = "end of expression" if tok.kind == "end" else repr(tok.text)
        if expected:
            return self.error(f"expected {expected} at column {tok.pos + 1}, found {found}", tok.pos)
        return self.error(f"unexpected {found} at column {tok.pos + 1}", tok.pos)

    def expect_op(self, op: str) -> Token:
        if not self.at_op(op):
            raise self.unexpected(self.peek(), repr(op))
        return self.take()

    # --- grammar ---
    def parse(self) -> Expr:
        if self.peek().kind == "end":
            raise self.error("empty expression", 0)
        node = self.parse_or()
        if self.peek().kind != "end":
            raise self.unexpected(self.peek())
        return node

    def parse_or(self) -> Expr:
        items = [self.parse_and()]
        while self.at_kw("or"):
            self.take()
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else Or(tuple(items), pos=items[0].pos)

    def parse_and(self) -> Expr:
        items = [self.parse_not()]
        while self.at_kw("and"):
            self.take()
            items.append(self.parse_not())
        return items[0] if len(items) == 1 else And(tuple(items), pos=items[0].pos)

    def parse_not(self) -> Expr:
        if self.at_kw("not"):
            tok = self.take()
            return Not(self.parse_not(), pos=tok.pos)
        return self.parse_test()

    def parse_test(self) -> Expr:
        left = self.parse_sum()
        tok = self.peek()
        if tok.kind == "op" and tok.value in COMPARISONS:
            self.take()
            return Compare(tok.value, left, self.parse_sum(), pos=tok.pos)
        if self.at_kw("between"):
            self.take()
            low = self.parse_sum()
            if not self.at_kw("and"):
                raise self.unexpected(self.peek(), "'and' (between LOW and HIGH)")
            self.take()
            return Between(left, low, self.parse_sum(), pos=tok.pos)
        if self.at_kw("in") or (self.at_kw("not") and self.at_kw("in", 1)):
            negated = self.take().value == "not"
            if negated:
                self.take()
            return InList(left, self.parse_list(), negated, pos=tok.pos)
        if self.at_kw("contains"):
            self.take()
            return Contains(left, self.parse_literal(), pos=tok.pos)
        if self.at_kw("is"):
            self.take()
            negated = self.at_kw("not")
            if negated:
                self.take()
            if not self.at_kw("null"):
                raise self.unexpected(self.peek(), "'null' (is null / is not null)")
            self.take()
            return IsNull(left, negated, pos=tok.pos)
        return left

    def parse_list(self) -> tuple[Literal, ...]:
        self.expect_op("[")
        values = [self.parse_literal()]
        while self.at_op(","):
            self.take()
            values.append(self.parse_literal())
        self.expect_op("]")
        return tuple(values)

    def parse_literal(self) -> Literal:
        tok = self.peek()
        if tok.kind == "num":
            self.take()
            return Number(tok.value, pos=tok.pos)
        if tok.kind == "op" and tok.value == "-" and self.peek(1).kind == "num":
            self.take()
            return Number(-self.take().value, pos=tok.pos)
        if tok.kind == "str":
            self.take()
            return String(tok.value, pos=tok.pos)
        if tok.kind == "kw" and tok.value in ("true", "false"):
            self.take()
            return Boolean(tok.value == "true", pos=tok.pos)
        raise self.unexpected(tok, "a number, a quoted string, true or false")

    def parse_sum(self) -> Expr:
        left = self.parse_term()
        while self.at_op("+", "-"):
            tok = self.take()
            left = Arith(tok.value, left, self.parse_term(), pos=tok.pos)
        return left

    def parse_term(self) -> Expr:
        left = self.parse_unary()
        while self.at_op("*", "/"):
            tok = self.take()
            left = Arith(tok.value, left, self.parse_unary(), pos=tok.pos)
        return left

    def parse_unary(self) -> Expr:
        if self.at_op("-"):
            tok = self.take()
            operand = self.parse_unary()
            if isinstance(operand, Number):      # a negative literal stays a literal (range analysis needs it)
                return Number(-operand.value, pos=tok.pos)
            return Neg(operand, pos=tok.pos)
        return self.parse_atom()

    def parse_atom(self) -> Expr:
        tok = self.peek()
        if tok.kind == "num":
            self.take()
            return Number(tok.value, pos=tok.pos)
        if tok.kind == "str":
            self.take()
            return String(tok.value, pos=tok.pos)
        if tok.kind == "kw" and tok.value in ("true", "false"):
            self.take()
            return Boolean(tok.value == "true", pos=tok.pos)
        if tok.kind == "name":
            self.take()
            if not self.at_op("("):
                return Name(tok.value, pos=tok.pos)
            func = tok.value.lower()
            if func not in FUNCTIONS:
                raise self.error(f"unknown function {tok.text!r} at column {tok.pos + 1} "
                                 f"(functions: {', '.join(sorted(FUNCTIONS))})", tok.pos)
            self.take()
            args = [self.parse_or()]
            while self.at_op(","):
                self.take()
                args.append(self.parse_or())
            self.expect_op(")")
            low, high = FUNCTIONS[func]
            if len(args) < low or (high is not None and len(args) > high):
                want = f"exactly {low}" if low == high else f"at least {low}"
                raise self.error(f"{func}() takes {want} argument{'s' if (high or low) > 1 else ''}, "
                                 f"found {len(args)} (column {tok.pos + 1})", tok.pos)
            return Call(func, tuple(args), pos=tok.pos)
        if tok.kind == "op" and tok.value == "(":
            self.take()
            node = self.parse_or()
            self.expect_op(")")
            return node
        raise self.unexpected(tok)


# ---------------------------------------------------------------------------------------------------------------
# type check
# ---------------------------------------------------------------------------------------------------------------

def suggest(name: str, candidates: Iterator[str] | Sequence[str] | set[str]) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or ''."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _show(node: Expr) -> str:
    """A node as a message names it: 'name', 'text' or 12 for literals, 'a + b' for the rest."""
    if isinstance(node, (Number, String, Boolean)):
        return str(node)
    return repr(node.name if isinstance(node, Name) else str(node))


def typecheck(expr: Expr, types: Mapping[str, str], *, domains: Mapping[str, Sequence[str]] | None = None,
              text: str | None = None) -> str:
    """The type of `expr` ("number", "string", "bool" or "list") given the type of each name it references.

    `domains` optionally lists the values a string (or list) name can take: comparing it with a value outside them is
    an error (a typo that would silently match nothing). ExprError, positioned, on any mismatch.
    """
    try:
        return _Checker(types, domains or {}).check(expr)
    except ExprError as err:
        raise err.with_text(text) if text is not None else err


class _Checker:
    def __init__(self, types: Mapping[str, str], domains: Mapping[str, Sequence[str]]) -> None:
        self.types = types
        self.domains = domains

    def fail(self, message: str, node: Expr) -> ExprError:
        return ExprError(f"{message} (column {node.pos + 1})", node.pos)

    def want(self, node: Expr, kind: str, what: str) -> None:
        found = self.check(node)
        if found != kind:
            article = "an" if kind[0] in "aeiou" else "a"
            raise self.fail(f"{what} needs {article} {kind}, but {_show(node)} is {_a(found)}", node)

    def domain_check(self, operand: Expr, literal: Literal) -> None:
        if isinstance(operand, Name) and isinstance(literal, String) and operand.name in self.domains:
            domain = list(self.domains[operand.name])
            if literal.value not in domain:
                raise self.fail(f"{operand.name!r} has no value {literal.value!r}{suggest(literal.value, domain)}; "
                                f"its values are {', '.join(map(repr, domain)) or 'none'}", literal)

    def check(self, node: Expr) -> str:
        if isinstance(node, Number):
            return NUMBER
        if isinstance(node, String):
            return STRING
        if isinstance(node, Boolean):
            return BOOL
        if isinstance(node, Name):
            if node.name not in self.types:
                raise self.fail(f"unknown column {node.name!r}{suggest(node.name, self.types)}", node)
            kind = self.types[node.name]
            if kind not in TYPES:
                raise self.fail(f"{node.name!r} has unknown type {kind!r} (expected one of {', '.join(TYPES)})", node)
            return kind
        if isinstance(node, Neg):
            self.want(node.operand, NUMBER, "'-'")
            return NUMBER
        if isinstance(node, Arith):
            self.want(node.left, NUMBER, f"{node.op!r}")
            self.want(node.right, NUMBER, f"{node.op!r}")
            return NUMBER
        if isinstance(node, Compare):
            left, right = self.check(node.left), self.check(node.right)
            if node.op in ("==", "!="):
                if left != right or left == LIST:
                    raise self.fail(f"cannot compare {_a(left)} {_show(node.left)} with {_a(right)} "
                                    f"{_show(node.right)}", node)
                self.domain_check(node.left, node.right)
                self.domain_check(node.right, node.left)
            elif left != NUMBER or right != NUMBER:
                bad = node.left if left != NUMBER else node.right
                raise self.fail(f"{node.op!r} orders numbers, but {_show(bad)} is {_a(left if bad is node.left else right)}",
                                node)
            return BOOL
        if isinstance(node, Between):
            for part in (node.operand, node.low, node.high):
                self.want(part, NUMBER, "'between'")
            return BOOL
        if isinstance(node, InList):
            kind = self.check(node.operand)
            if kind == LIST:
                raise self.fail(f"'in' tests one value, but {_show(node.operand)} is a list (use 'contains')",
                                node)
            for literal in node.values:
                if self.check(literal) != kind:
                    raise self.fail(f"list value {str(literal)} is {_a(self.check(literal))} but "
                                    f"{_show(node.operand)} is {_a(kind)}", literal)
                self.domain_check(node.operand, literal)
            return BOOL
        if isinstance(node, Contains):
            kind = self.check(node.operand)
            if kind != LIST:
                raise self.fail(f"'contains' needs a list, but {_show(node.operand)} is {_a(kind)} "
                                f"(use '==' or 'in')", node)
            if not isinstance(node.value, String):
                raise self.fail(f"'contains' looks for a quoted string, found {node.value}", node.value)
            self.domain_check(node.operand, node.value)
            return BOOL
        if isinstance(node, IsNull):
            self.check(node.operand)
            return BOOL
        if isinstance(node, Not):
            self.want(node.operand, BOOL, "'not'")
            return BOOL
        if isinstance(node, (And, Or)):
            word = "'and'" if isinstance(node, And) else "'or'"
            for item in node.items:
                self.want(item, BOOL, word)
            return BOOL
        if isinstance(node, Call):
            kinds = [self.check(a) for a in node.args]
            if node.func == "coalesce":
                if kinds[0] == LIST or any(k != kinds[0] for k in kinds):
                    raise self.fail(f"coalesce() needs arguments of one type (number, string or bool), found "
                                    f"{', '.join(kinds)}", node)
                return kinds[0]
            for arg, kind in zip(node.args, kinds):
                if kind != NUMBER:
                    raise self.fail(f"{node.func}() needs numbers, but {_show(arg)} is {_a(kind)}", arg)
            return NUMBER
        raise TypeError(f"not an expression node: {node!r}")


def _a(kind: str) -> str:
    return {NUMBER: "a number", STRING: "a string", BOOL: "a true/false condition", LIST: "a list"}.get(kind, kind)


# ---------------------------------------------------------------------------------------------------------------
# values: what evaluation works on
# ---------------------------------------------------------------------------------------------------------------

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
_TRUE, _FALSE = np.True_, np.False_


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


# ---------------------------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------------------------

_ORDER_OPS = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
              "==": np.equal, "!=": np.not_equal}


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


# ---------------------------------------------------------------------------------------------------------------
# boxes: static overlap of exclusive conditions
# ---------------------------------------------------------------------------------------------------------------

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
            shown = [repr(v) if isinstance(v, str) else ("true" if v is True else "false" if v is False else _fmt(v))
                     for v in vals]
            parts.append(f"{name} = {shown[0]}" if len(shown) == 1 else f"{name} is in [{', '.join(shown)}]")
        elif c.low == c.high:
            parts.append(f"{name} = {_fmt(c.low)}")
        elif math.isinf(c.low) and math.isinf(c.high):
            parts.append(f"{name} is not null")
        elif math.isinf(c.low):
            parts.append(f"{name} {'<=' if c.high_closed else '<'} {_fmt(c.high)}")
        elif math.isinf(c.high):
            parts.append(f"{name} {'>=' if c.low_closed else '>'} {_fmt(c.low)}")
        else:
            parts.append(f"{name} is in {'[' if c.low_closed else '('}{_fmt(c.low)}, {_fmt(c.high)}"
                         f"{']' if c.high_closed else ')'}")
    return " and ".join(parts) or "every row"
