"""The two errors of the rule engine: one for an expression (with its position), one for a rule file (with its line).

Also the two helpers their messages share, whoever raises them (parser, type check, evaluator, tag loader): a caret
under the offending character, and a did-you-mean for a misspelt name.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ExprError(ValueError):
    """A bad expression: `message` says what, `position` (0-based character offset) says where.

    `str()` adds the expression with a caret under the offending character when the text is known.
    """

    def __init__(self, message: str, position: int, text: str | None = None) -> None:
        self.message = message
        self.position = position
        self.text = text
        super().__init__(self._render())

    def _render(self) -> str:
        if self.text is None:
            return self.message
        return f"{self.message}\n{caret(self.text, self.position)}"

    def with_text(self, text: str) -> ExprError:
        """The same error, rendered with the expression it refers to."""
        return ExprError(self.message, self.position, text)


class RuleError(ValueError):
    """Any problem with a tag file or a tag evaluation; the message starts `path/to/file.yaml:LINE: `."""


def caret(text: str, position: int, indent: str = "    ") -> str:
    """Two lines: the expression (first line of it holding `position`) and a caret under `position`."""
    start = text.rfind("\n", 0, position) + 1
    end = text.find("\n", position)
    line = text[start:end if end >= 0 else len(text)]
    return f"{indent}{line}\n{indent}{' ' * (position - start)}^"


def suggest(name: str, candidates: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or ''."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
