"""Resolution of loaded tags: names, availability, dependency order, types and exclusivity, into a `TagSet`.

This runs once every file is read, because a tag may use a tag of another file: only then is a name known to be a
tag, a column or a typo, and only in dependency order are the types of the tags a tag reads known.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Mapping

import pandas as pd

from rules.errors import ExprError, RuleError, caret, suggest
from rules.expr.boxes import box_of, box_overlap, describe_box
from rules.expr.check import typecheck
from rules.expr.tree import BOOL, NUMBER, describe_type
from rules.tagdef import LANG_TYPE, SegmentSource, TagDef
from rules.tags import TagSet


def resolve(raw: list[TagDef], columns: dict[str, str], segments: list[SegmentSource]) -> TagSet:
    """The TagSet of the tags read from every file (`raw`, in file order), given the workspace's input columns.

    Names become tag references or input columns; tags of optional files whose inputs are missing (or that depend on
    such a tag) go to `unavailable`; then dependency order, types and exclusivity are checked, all as RuleErrors.
    """
    ids = {t.id: t for t in raw}
    unavailable: dict[str, str] = {}
    for t in raw:
        if t.id in columns and not (t.kind == "score" and t.exprs["input"].text.strip() == t.id):
            raise t.error(f"id is also the name of an input column; choose another id (only a score tag may "
                          f"share the name of the model-score column it passes through)", t.lines["id"])
        refs, cols = [], []
        for loc in t.exprs.values():
            for name in sorted(loc.expr.names()):
                own_column = name == t.id and t.kind == "score"   # a score's own column, not the tag itself
                if name in ids and not own_column:
                    refs.append(name)
                elif name in columns:
                    cols.append(name)
                else:
                    reason = f"unknown column {name!r}{suggest(name, [*columns, *ids])}"
                    if not t.optional:
                        raise t.error(reason, loc.line)
                    unavailable.setdefault(t.id, f"missing column {name!r}")
        if t.kind == "top":
            rx = re.compile(re.escape(t.spec.pattern).replace(r"\*", "(.+)") + r"\Z")
            found = sorted((m.group(1), c) for c in columns if (m := rx.match(c)) and columns[c] == NUMBER)
            if not found:
                if not t.optional:
                    raise t.error(f"pattern {t.spec.pattern!r} matches no number column", t.lines["pattern"])
                unavailable.setdefault(t.id, f"no column matches {t.spec.pattern!r}")
            t.top_columns = tuple(found)
            cols.extend(c for _, c in found)
            t.values = tuple((cat, cat, cat) for cat, _ in found)
        t.tag_refs = tuple(dict.fromkeys(refs))
        t.columns = tuple(dict.fromkeys(cols))
    _check_cycles(raw)
    ordered = _order(raw)
    for t in ordered:                       # availability flows along dependencies
        if t.id in unavailable:
            continue
        gone = next((r for r in t.tag_refs if r in unavailable), None)
        if gone is not None:
            if not t.optional:
                dep = ids[gone]
                raise t.error(f"depends on tag {gone!r} ({dep.source}), which is unavailable in this workspace: "
                              f"{unavailable[gone]}", t.line)
            unavailable[t.id] = f"depends on unavailable tag {gone!r}"
    tags = [t for t in ordered if t.id not in unavailable]
    types = {c: k for c, k in columns.items()}
    domains: dict[str, list[str]] = {}
    for t in tags:
        _typecheck(t, types, domains)
        types[t.id] = LANG_TYPE[t.value_type]
        if t.value_type in ("category", "list"):
            domains[t.id] = [v for v, _, _ in t.values]
        if t.kind == "enum" and t.spec.exclusive:
            _check_exclusive(t)
        if t.value_type == "category":
            t.dtype = pd.CategoricalDtype([v for v, _, _ in t.values])
    return TagSet(tags=tags, unavailable=unavailable, segment_nodes=segments, column_types=dict(columns))


def _check_cycles(raw: list[TagDef]) -> None:
    ids = {t.id: t for t in raw}
    state: dict[str, int] = {}       # 1 visiting, 2 done

    def visit(tid: str, stack: list[str]) -> None:
        state[tid] = 1
        stack.append(tid)
        for ref in ids[tid].tag_refs:
            if state.get(ref) == 1:
                cycle = stack[stack.index(ref):] + [ref]
                first = ids[cycle[0]]
                chain = " -> ".join(f"{c} ({ids[c].source})" for c in cycle)
                raise RuleError(f"{first.source}: tag {first.id!r}: dependency cycle: {chain}")
            if state.get(ref) is None:
                visit(ref, stack)
        stack.pop()
        state[tid] = 2

    for t in raw:
        if t.id not in state:
            visit(t.id, [])


def _order(raw: list[TagDef]) -> list[TagDef]:
    """Dependency order, otherwise file order (Kahn's algorithm with the file position as priority)."""
    position = {t.id: i for i, t in enumerate(raw)}
    waiting = {t.id: len(t.tag_refs) for t in raw}
    users: dict[str, list[str]] = {t.id: [] for t in raw}
    for t in raw:
        for r in t.tag_refs:
            users[r].append(t.id)
    ready = [position[t.id] for t in raw if not t.tag_refs]
    heapq.heapify(ready)
    out = []
    while ready:
        t = raw[heapq.heappop(ready)]
        out.append(t)
        for u in users[t.id]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, position[u])
    return out


_ROLE_TYPES = {"when": BOOL, "population": BOOL, "input": NUMBER, "recency": NUMBER,
               "frequency": NUMBER, "monetary": NUMBER}


def _typecheck(tag: TagDef, types: Mapping[str, str], domains: Mapping[str, list[str]]) -> None:
    for role, loc in tag.exprs.items():
        want = _ROLE_TYPES[role.rsplit(".", 1)[-1]]
        try:
            got = typecheck(loc.expr, types, domains=domains)
        except ExprError as err:
            raise tag.error(f"{role}: {err.message}\n{caret(loc.text, err.position)}", loc.line) from None
        if got != want:
            hint = " (a condition such as 'x > 0')" if want == BOOL else ""
            raise tag.error(f"{role} must be {describe_type(want)}{hint}, but {loc.text!r} is {describe_type(got)}",
                            loc.line)


def _check_exclusive(tag: TagDef) -> None:
    boxes = []
    for i, v in enumerate(tag.spec.values):
        loc = tag.exprs[f"values[{i}].when"]
        box = box_of(loc.expr)
        if box is None:
            tag.static_exclusive = False
            continue
        for j, other_value, other in boxes:
            overlap = box_overlap(other, box)
            if overlap is not None:
                raise tag.error(f"exclusive, but values {other_value!r} and {v.value!r} overlap where "
                                f"{describe_box(overlap)}", tag.lines[f"values[{i}]"])
        boxes.append((i, v.value, box))

