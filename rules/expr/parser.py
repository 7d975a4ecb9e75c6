"""The tokenizer and the recursive-descent parser of the expression language (grammar: `rules.expr`).

Each precedence level of the grammar is one method. Errors name the column and carry the text, so `str()` of an
ExprError shows the expression with a caret under the offending character.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from rules.errors import ExprError
from rules.expr.tree import (COMPARISONS, FUNCTIONS, KEYWORDS, And, Arith, Between, Boolean, Call, Compare, Contains,
                             Expr, InList, IsNull, Literal, Name, Neg, Not, Number, Or, String)


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
