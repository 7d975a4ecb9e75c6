"""The type check: the type of an expression given the type of each name, before anything is evaluated.

A string compared with a number, a list used where one value is needed or a category value that does not exist is
an error at load time, positioned on the offending node, not a column of nulls discovered in production.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rules.errors import ExprError, suggest
from rules.expr.tree import (BOOL, LIST, NUMBER, STRING, TYPES, And, Arith, Between, Boolean, Call, Compare, Contains,
                             Expr, InList, IsNull, Literal, Name, Neg, Not, Number, Or, String, describe_type)


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
            raise self.fail(f"{what} needs {article} {kind}, but {_show(node)} is {describe_type(found)}", node)

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
                    raise self.fail(f"cannot compare {describe_type(left)} {_show(node.left)} with "
                                    f"{describe_type(right)} {_show(node.right)}", node)
                self.domain_check(node.left, node.right)
                self.domain_check(node.right, node.left)
            elif left != NUMBER or right != NUMBER:
                bad = node.left if left != NUMBER else node.right
                found = left if bad is node.left else right
                raise self.fail(f"{node.op!r} orders numbers, but {_show(bad)} is {describe_type(found)}", node)
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
                    raise self.fail(f"list value {str(literal)} is {describe_type(self.check(literal))} but "
                                    f"{_show(node.operand)} is {describe_type(kind)}", literal)
                self.domain_check(node.operand, literal)
            return BOOL
        if isinstance(node, Contains):
            kind = self.check(node.operand)
            if kind != LIST:
                raise self.fail(f"'contains' needs a list, but {_show(node.operand)} is {describe_type(kind)} "
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
                    raise self.fail(f"{node.func}() needs numbers, but {_show(arg)} is {describe_type(kind)}", arg)
            return NUMBER
        raise TypeError(f"not an expression node: {node!r}")

