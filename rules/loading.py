"""Loading tag files: YAML read with line numbers, validated into `TagDef`s, expressions parsed, then resolved.

A tag file holds `tags:` (a list), optionally `segments:` (kept as raw YAML nodes for the segment engine) and
`optional_inputs: true` (a tag whose input columns this workspace lacks is dropped and listed in
`TagSet.unavailable` instead of being an error; the shipped defaults use it). Every error is a `RuleError` whose
message starts `path/to/file.yaml:LINE: `, the line of the offending node: YAML is composed into nodes (which keep
their marks) before pydantic validates it, and a pydantic error's location is walked back to its node.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import BaseModel, ValidationError

from rules.errors import ExprError, RuleError, caret, suggest
from rules.expr.parser import parse
from rules.expr.tree import TYPES, Compare, Expr, Name, Number, fmt_number
from rules.expr.values import infer_type
from rules.resolve import resolve
from rules.tagdef import (KINDS, RFM_SEGMENTS, SPECS, BucketSpec, ElseSpec, EnumSpec, EnumValueSpec, FlagSpec, Located,
                          Names, RfmSpec, ScoreSpec, SegmentSource, TagDef, TagSpec, TopSpec, ValueSpec)
from rules.tags import TagSet

DEFAULT_DIR = Path(__file__).resolve().parent / "default"
_FILE_KEYS = ("tags", "segments", "optional_inputs")
_BRANCHES = ("str", "Names", "ElseSpec")     # how pydantic names the members of `str | Names` unions in a loc


def column_types(frame: pd.DataFrame) -> dict[str, str]:
    """The `columns` argument of `load_tagset` for a frame: column -> "number" | "string" | "bool" | "list"."""
    return {str(c): infer_type(frame[c]) for c in frame.columns}


def load_tagset(paths: Sequence[Path | str], *, columns: Mapping[str, str]) -> TagSet:
    """Load, validate and order the tags of `paths` (files, or directories: every *.yaml / *.yml inside, sorted).

    `columns`: the input columns available in this workspace -> "number" | "string" ("bool" and "list" also
    accepted). An id defined twice, an unknown column or tag, a type mismatch, a dependency cycle or any malformed
    node is a RuleError naming the file and line.
    """
    bad = {c: t for c, t in columns.items() if t not in TYPES}
    if bad:
        name, kind = next(iter(bad.items()))
        raise RuleError(f"<columns>:0: column {name!r} has type {kind!r}; expected one of {', '.join(TYPES)}")
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted([*p.glob("*.yaml"), *p.glob("*.yml")]))   # as the segment loader reads them
        elif p.exists():
            files.append(p)
        else:
            raise RuleError(f"{p}:0: no such file or directory")
    raw: list[TagDef] = []
    segments: list[SegmentSource] = []
    seen: dict[str, TagDef] = {}
    for f in files:
        tags, seg = _load_file(f)
        segments.extend(seg)
        for t in tags:
            if t.id in seen:
                first = seen[t.id]
                raise t.error(f"id already defined at {first.source}; tag ids must be unique across all files")
            seen[t.id] = t
            raw.append(t)
    return resolve(raw, dict(columns), segments)


def _load_file(path: Path) -> tuple[list[TagDef], list[SegmentSource]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(f"{path}:0: cannot read the file ({exc})") from None
    try:
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        what = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise RuleError(f"{path}:{line}: invalid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise RuleError(f"{path}:1: invalid YAML: {exc}") from None
    if root is None:
        raise RuleError(f"{path}:1: empty file: expected a mapping with 'tags:' (a list of tags)")
    _check_duplicate_keys(path, root)
    if not isinstance(root, yaml.MappingNode):
        raise RuleError(f"{path}:{_line(root)}: expected a mapping with 'tags:' (a list of tags), found {_kind(root)}")
    top = {k.value: (k, v) for k, v in root.value}
    for key, (knode, _) in top.items():
        if key not in _FILE_KEYS:
            raise RuleError(f"{path}:{_line(knode)}: unknown top-level key {key!r}{suggest(key, _FILE_KEYS)}; "
                            f"expected {', '.join(_FILE_KEYS)}")
    optional = False
    if "optional_inputs" in top:
        node = top["optional_inputs"][1]
        value = _construct(node)
        if not isinstance(value, bool):
            raise RuleError(f"{path}:{_line(node)}: optional_inputs must be true or false, found {node.value!r}")
        optional = value
    segments = []
    if "segments" in top:
        knode, vnode = top["segments"]
        segments.append(SegmentSource(path, _line(knode), vnode))
    tags: list[TagDef] = []
    if "tags" in top:
        node = top["tags"][1]
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            return tags, segments
        if not isinstance(node, yaml.SequenceNode):
            raise RuleError(f"{path}:{_line(node)}: 'tags' must be a list of tags, found {_kind(node)}")
        for item in node.value:
            tags.append(_load_tag(path, item, optional))
    return tags, segments


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"{node.value!r}"


def _construct(node: yaml.Node) -> Any:
    return yaml.SafeLoader("").construct_document(node)


def _check_duplicate_keys(path: Path, node: yaml.Node) -> None:
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in n.value:
                if isinstance(k, yaml.ScalarNode):
                    if k.value in seen:
                        raise RuleError(f"{path}:{_line(k)}: key {k.value!r} appears twice in one mapping "
                                        f"(first at line {seen[k.value]})")
                    seen[k.value] = _line(k)
                stack.append(v)
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)


def _node_at(node: yaml.Node, loc: Sequence[Any]) -> tuple[yaml.Node, list[Any]]:
    """The deepest node along `loc` and the part of `loc` that led to it (pydantic's union branch names dropped)."""
    path: list[Any] = []
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            hit = next(((k, v) for k, v in node.value if k.value == part), None)
            if hit is None:
                break
            node = hit[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        path.append(part)
    return node, path


def _key_line(node: yaml.MappingNode, key: str) -> int:
    return next((_line(k) for k, _ in node.value if k.value == key), _line(node))


def _show_loc(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _load_tag(path: Path, node: yaml.Node, optional: bool) -> TagDef:
    if not isinstance(node, yaml.MappingNode):
        raise RuleError(f"{path}:{_line(node)}: each tag must be a mapping (id, name, category, kind, ...), "
                        f"found {_kind(node)}")
    data = _construct(node)
    tag_id = data.get("id") if isinstance(data.get("id"), str) else None
    who = f"tag {tag_id!r}" if tag_id else "tag"
    kind = data.get("kind")
    if kind is None:
        raise RuleError(f"{path}:{_line(node)}: {who}: missing field 'kind' (one of {', '.join(KINDS)})")
    if kind not in SPECS:
        raise RuleError(f"{path}:{_key_line(node, 'kind')}: {who}: unknown kind {kind!r}"
                        f"{suggest(str(kind), KINDS)}; expected one of {', '.join(KINDS)}")
    model = SPECS[kind]
    try:
        spec = model.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(path, node, who, model, exc) from None
    lines = {"id": _key_line(node, "id")}
    tag = TagDef(spec=spec, path=path, line=_line(node), lines=lines, optional=optional)
    _prepare(tag, node)
    return tag


def _validation_error(path: Path, node: yaml.MappingNode, who: str, model: type[TagSpec],
                      exc: ValidationError) -> RuleError:
    messages, done = [], set()
    rank = {"extra_forbidden": 0, "missing": 2}       # an unknown key first: it usually explains a missing field
    for err in sorted(exc.errors(), key=lambda e: rank.get(e["type"], 1)):
        loc = err["loc"]
        branch = next((p for p in loc if p in _BRANCHES), None)
        if branch is not None:              # a union (text or mapping): report the branch that matches the node
            at, _ = _node_at(node, loc[:loc.index(branch)])
            if isinstance(at, yaml.MappingNode) == (branch == "str"):
                continue
            loc = tuple(p for p in loc if p not in _BRANCHES)
        target, found = _node_at(node, loc)
        where = _show_loc(found) or "tag"
        if err["type"] == "missing":
            line, text = _line(target), f"missing field {loc[-1]!r}" + (f" in {where}" if found else "")
        elif err["type"] == "extra_forbidden":
            key = str(loc[-1])
            parent, _ = _node_at(node, loc[:-1])
            fields = _fields_of(model, loc[:-1])
            line = _key_line(parent, key) if isinstance(parent, yaml.MappingNode) else _line(target)
            text = f"unknown key {key!r}{suggest(key, fields)}" + (f"; expected one of {', '.join(fields)}"
                                                                     if fields else "")
            if " " in key and isinstance(parent, yaml.MappingNode) and parent.flow_style:
                text += " (a comma inside {...} starts a new key: quote text that contains commas)"
        else:
            line = _line(target)
            shown = target.value if isinstance(target, yaml.ScalarNode) else _kind(target)
            msg = err["msg"].replace("a valid dictionary or instance of Names", "a mapping {zh: ..., en: ...}") \
                .replace("a valid dictionary or instance of ElseSpec", "a mapping {value: ..., name: {zh, en}}")
            text = f"{where}: {msg} (found {shown!r})"
        if (line, where) in done:
            continue
        done.add((line, where))
        messages.append(f"{path}:{line}: {who}: {text}")
    return RuleError("\n".join(messages))


def _fields_of(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The keys allowed at `loc` inside `model` (for did-you-mean on an unknown key)."""
    nested = {"values": EnumValueSpec, "name": Names, "else": ElseSpec, "description": Names}
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int):
            continue
        current = nested.get(str(part))
        if current is None:
            return []
    return [f.alias or n for n, f in current.model_fields.items()]


# --- per kind: parse expressions, check shapes ---

def _expr_line(node: yaml.Node, pos: int) -> int:
    """The file line of character `pos` of a scalar (exact for plain one-line and literal-block scalars)."""
    if isinstance(node, yaml.ScalarNode) and node.style == "|":
        return _line(node) + 1 + node.value.count("\n", 0, pos)
    return _line(node)


def _parse_into(tag: TagDef, node: yaml.MappingNode, role: str, loc: Sequence[Any], text: str) -> Expr:
    target, _ = _node_at(node, loc)
    try:
        parsed = parse(text)
    except ExprError as err:
        line = _expr_line(target, err.position)
        raise RuleError(f"{tag.path}:{line}: tag {tag.id!r}: {role}: {err.message}\n{caret(text, err.position)}") \
            from None
    tag.exprs[role] = Located(role, text, parsed, _line(target))
    tag.lines[role] = _line(target)
    return parsed


def _named(value: str, name: Names | None) -> tuple[str, str, str]:
    return (value, name.zh, name.en) if name else (value, value, value)


def _prepare(tag: TagDef, node: yaml.MappingNode) -> None:
    s = tag.spec
    if isinstance(s, FlagSpec):
        _parse_into(tag, node, "when", ("when",), s.when)
    elif isinstance(s, EnumSpec):
        names: dict[str, int] = {}
        values = []
        for i, v in enumerate(s.values):
            vline = _line(_node_at(node, ("values", i))[0])
            if v.value in names:
                raise tag.error(f"value {v.value!r} is declared twice (first at line {names[v.value]})", vline)
            names[v.value] = vline
            tag.lines[f"values[{i}]"] = vline
            _parse_into(tag, node, f"values[{i}].when", ("values", i, "when"), v.when)
            values.append(_named(v.value, v.name))
        if s.else_ is not None:
            other = s.else_ if isinstance(s.else_, ElseSpec) else ElseSpec(value=s.else_)
            if other.value not in names:
                values.append(_named(other.value, other.name))
            tag.lines["else"] = _key_line(node, "else")
        tag.values = tuple(values)
    elif isinstance(s, BucketSpec):
        _parse_into(tag, node, "input", ("input",), s.input)
        if s.population is not None:
            _parse_into(tag, node, "population", ("population",), s.population)
        if (s.edges is None) == (s.quantiles is None):
            raise tag.error("a bucket needs exactly one of 'edges' (fixed) or 'quantiles' (learnt by fit)",
                            _key_line(node, "edges") if s.edges is not None else tag.line)
        cuts, key = (s.edges, "edges") if s.edges is not None else (s.quantiles, "quantiles")
        cut_node = _node_at(node, (key,))[0]
        if not cuts:
            raise tag.error(f"{key} must not be empty", _line(cut_node))
        for i in range(1, len(cuts)):
            if not cuts[i] > cuts[i - 1]:
                raise tag.error(f"{key} must be strictly increasing, but {key}[{i}] = {fmt_number(cuts[i])} follows "
                                f"{fmt_number(cuts[i - 1])}", _line(_node_at(node, (key, i))[0]))
        if key == "quantiles" and not (0 < cuts[0] and cuts[-1] < 1):
            raise tag.error("quantiles must lie strictly between 0 and 1", _line(cut_node))
        if any(not math.isfinite(c) for c in cuts):
            raise tag.error(f"{key} must be finite numbers", _line(cut_node))
        if len(s.labels) != len(cuts) + 1:
            raise tag.error(f"{len(cuts)} {key} make {len(cuts) + 1} buckets, but {len(s.labels)} labels are given",
                            _key_line(node, "labels"))
        dup = next((x for i, x in enumerate(s.labels) if x in s.labels[:i]), None)
        if dup is not None:
            raise tag.error(f"label {dup!r} appears twice", _key_line(node, "labels"))
        tag.values = tuple((x, x, x) for x in s.labels)
    elif isinstance(s, RfmSpec):
        for role in ("recency", "frequency", "monetary"):
            _parse_into(tag, node, role, (role,), getattr(s, role))
        if s.population is not None:
            _parse_into(tag, node, "population", ("population",), s.population)
        else:
            freq = tag.exprs["frequency"]
            tag.exprs["population"] = Located("population", f"{freq.text} > 0",
                                              Compare(">", freq.expr, Number(0.0)), freq.line)
            tag.lines["population"] = freq.line
        tag.values = RFM_SEGMENTS
    elif isinstance(s, (ScoreSpec, ValueSpec)):
        parsed = _parse_into(tag, node, "input", ("input",), s.input)
        if isinstance(s, ScoreSpec) and not isinstance(parsed, Name):
            raise tag.error(f"a score passes one model-score column through; input must be a column name, "
                            f"found {s.input!r} (use kind: value for a computed number)", tag.lines["input"])
    elif isinstance(s, TopSpec):
        tag.lines["pattern"] = _key_line(node, "pattern")
        if s.pattern.count("*") != 1 or not re.fullmatch(r"[A-Za-z0-9_*]+", s.pattern):
            raise tag.error(f"pattern must be a column name with one '*' standing for the category "
                            f"(e.g. 'interest_*'), found {s.pattern!r}", tag.lines["pattern"])

