"""Tag definitions: YAML files validated into typed tags, ordered by dependency, fitted and evaluated over frames.

A tag file holds `tags:` (a list), optionally `segments:` (kept as raw YAML nodes for the segment engine) and
`optional_inputs: true` (a tag whose input columns this workspace lacks is dropped and listed in
`TagSet.unavailable` instead of being an error; the shipped defaults use it). Every error is a `RuleError` whose
message starts `path/to/file.yaml:LINE: `, the line of the offending node.

    tags:
      - id: age_band                        # snake_case, unique across all files
        name: {zh: 年龄段, en: Age band}
        category: basic                     # basic | consumption | behaviour | predictive | enrichment
        kind: enum                          # flag | enum | bucket | rfm | score | value | top
        exclusive: true
        values:
          - {value: under_18, name: {zh: 18岁以下, en: Under 18}, when: attr_age < 18}
          - {value: adult, name: {zh: 成年, en: Adult}, when: attr_age >= 18}

Population statistics (quantile edges, RFM means or medians) are learnt by `TagSet.fit` and passed to
`TagSet.evaluate`, which never recomputes them: the batch job fits and evaluates, online scoring evaluates a few rows
with the statistics of the last batch run.
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rules import expr as ex
from rules.errors import ExprError, RuleError, caret

DEFAULT_DIR = Path(__file__).resolve().parent / "default"

CATEGORIES = {"basic": "基础属性", "consumption": "消费特征", "behaviour": "行为偏好", "predictive": "预测标签",
              "enrichment": "外部增补"}
KINDS = ("flag", "enum", "bucket", "rfm", "score", "value", "top")
DEFAULT_TYPE = {"score": "model", "value": "statistic"}
VALUE_TYPE = {"flag": "bool", "enum": "category", "bucket": "category", "rfm": "category", "score": "number",
              "value": "number", "top": "list"}
LANG_TYPE = {"bool": ex.BOOL, "category": ex.STRING, "number": ex.NUMBER, "list": ex.LIST}
# (value, zh, en) in the classic order; the code is (M low) * 4 + (R low) * 2 + (F low)
RFM_SEGMENTS = (
    ("important_value", "重要价值客户", "Important value customer"),
    ("important_develop", "重要发展客户", "Important develop customer"),
    ("important_keep", "重要保持客户", "Important keep customer"),
    ("important_retain", "重要挽留客户", "Important retain customer"),
    ("general_value", "一般价值客户", "General value customer"),
    ("general_develop", "一般发展客户", "General develop customer"),
    ("general_keep", "一般保持客户", "General keep customer"),
    ("general_retain", "一般挽留客户", "General retain customer"),
)
_ID = re.compile(r"[a-z][a-z0-9_]*\Z")


# ---------------------------------------------------------------------------------------------------------------
# the file format, as pydantic models (unknown keys forbidden)
# ---------------------------------------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Names(_Strict):
    """A display name in Chinese and English."""
    zh: str
    en: str


class EnumValueSpec(_Strict):
    value: str
    name: Names | None = None
    when: str


class ElseSpec(_Strict):
    value: str
    name: Names | None = None


class TagSpec(_Strict):
    """The fields every tag has."""
    id: str
    name: Names
    category: Literal["basic", "consumption", "behaviour", "predictive", "enrichment"]
    kind: Literal["flag", "enum", "bucket", "rfm", "score", "value", "top"]
    type: Literal["rule", "model", "statistic", "enrichment"] | None = None
    owner: str = ""
    description: str | Names = ""
    cadence: str = "daily"
    version: int = Field(1, ge=1)

    @field_validator("id")
    @classmethod
    def _snake_case(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError(f"{v!r} is not snake_case (lower-case letters, digits and _, starting with a letter)")
        if v in ex.KEYWORDS or v in ex.FUNCTIONS:
            raise ValueError(f"{v!r} is a word of the expression language; choose another id")
        return v


class FlagSpec(TagSpec):
    when: str


class EnumSpec(TagSpec):
    values: list[EnumValueSpec] = Field(min_length=1)
    else_: str | ElseSpec | None = Field(None, alias="else")
    exclusive: bool = False


class BucketSpec(TagSpec):
    input: str
    edges: list[float] | None = None
    quantiles: list[float] | None = None
    labels: list[str] = Field(min_length=2)
    population: str | None = None


class RfmSpec(TagSpec):
    recency: str
    frequency: str
    monetary: str
    split: Literal["mean", "median"] = "mean"
    population: str | None = None


class ScoreSpec(TagSpec):
    input: str


class ValueSpec(TagSpec):
    input: str


class TopSpec(TagSpec):
    pattern: str
    n: int = Field(3, ge=1)
    min: float | None = None


SPECS: dict[str, type[TagSpec]] = {"flag": FlagSpec, "enum": EnumSpec, "bucket": BucketSpec, "rfm": RfmSpec,
                                   "score": ScoreSpec, "value": ValueSpec, "top": TopSpec}
_FILE_KEYS = ("tags", "segments", "optional_inputs")
_BRANCHES = ("str", "Names", "ElseSpec")     # how pydantic names the members of `str | Names` unions in a loc


# ---------------------------------------------------------------------------------------------------------------
# the typed result
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Located:
    """A parsed expression with where it was written."""
    role: str            # "when", "values[2].when", "input", "population", "recency", ...
    text: str
    expr: ex.Expr
    line: int


@dataclass
class TagDef:
    """One validated tag: its spec, parsed expressions, references and output shape."""
    spec: TagSpec
    path: Path
    line: int
    lines: dict[str, int]                          # role -> line of the expression / field
    exprs: dict[str, Located] = field(default_factory=dict)
    values: tuple[tuple[str, str, str], ...] = ()  # (value, zh, en) in category order, for category / list kinds
    tag_refs: tuple[str, ...] = ()                 # tags read
    columns: tuple[str, ...] = ()                  # input columns read directly
    top_columns: tuple[tuple[str, str], ...] = ()  # (category, column), sorted by category, for `top`
    optional: bool = False                         # from a file with optional_inputs: true
    static_exclusive: bool = True                  # every value of an exclusive enum is a box (no data check needed)
    _dtype: pd.CategoricalDtype | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def type(self) -> str:
        return self.spec.type or DEFAULT_TYPE.get(self.kind, "enrichment" if self.spec.category == "enrichment"
                                                   else "rule")

    @property
    def value_type(self) -> str:
        return VALUE_TYPE[self.kind]

    @property
    def source(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def needs_fit(self) -> bool:
        """Whether evaluation needs statistics learnt by `TagSet.fit`."""
        return self.kind == "rfm" or (self.kind == "bucket" and self.spec.quantiles is not None)

    def error(self, message: str, line: int | None = None) -> RuleError:
        return RuleError(f"{self.path}:{line or self.line}: tag {self.id!r}: {message}")


@dataclass(frozen=True)
class SegmentSource:
    """The raw `segments:` node of one file (not interpreted here); nodes keep their `start_mark` lines."""
    path: Path
    line: int
    node: yaml.Node


@dataclass
class TagSet:
    """Validated tags in dependency order, ready to `fit` and `evaluate` over frames."""
    tags: list[TagDef]
    unavailable: dict[str, str]
    segment_nodes: list[SegmentSource]
    column_types: dict[str, str]                   # input column -> language type, as given to load_tagset

    def __post_init__(self) -> None:
        self._by_id = {t.id: t for t in self.tags}
        self._inputs = frozenset(c for t in self.tags for c in t.columns)

    def __getitem__(self, tag_id: str) -> TagDef:
        return self._by_id[tag_id]

    def __contains__(self, tag_id: object) -> bool:
        return tag_id in self._by_id

    def __len__(self) -> int:
        return len(self.tags)

    def inputs(self) -> set[str]:
        """The input columns the tags read."""
        return set(self._inputs)

    def types(self) -> dict[str, str]:
        """Language type ("number", "string", "bool", "list") of every name an expression may use: columns and tags."""
        out = dict(self.column_types)
        out.update({t.id: LANG_TYPE[t.value_type] for t in self.tags})
        return out

    def domains(self) -> dict[str, list[str]]:
        """The values each category or list tag can take (what `typecheck` checks string literals against)."""
        return {t.id: [v for v, _, _ in t.values] for t in self.tags if t.value_type in ("category", "list")}

    # --- fit / evaluate ---
    def fit(self, frame: Mapping[str, Any], n: int | None = None) -> dict:
        """Population statistics of the tags that need them (quantile edges, RFM means or medians), keyed by tag id.

        JSON-serialisable. Tags the fitted ones depend on are evaluated on the way (with the statistics fitted so far:
        the order is the dependency order). `frame` is a DataFrame, or columns by name with `n` rows.
        """
        self._check_columns(frame.keys())
        stats: dict[str, Any] = {}
        env = _Env(self, frame, len(frame) if n is None else n, stats, getattr(frame, "index", None))
        for tag in self.tags:
            if tag.needs_fit:
                stats[tag.id] = _fit(tag, env)
        return stats

    def evaluate(self, frame: pd.DataFrame, stats: Mapping[str, Any]) -> pd.DataFrame:
        """One column per tag, same index as `frame`: flag "boolean", enum/bucket/rfm Categorical (categories = the
        declared values, in order), score/value float64, top a column of tuples (None when every input is null).

        `stats` is what `fit` returned (possibly after a JSON round trip); nothing is recomputed from `frame`, so a
        one-row frame gets the same answer it would get inside the batch.
        """
        out = self.evaluate_columns(frame, len(frame), stats, labels=frame.index)
        return pd.DataFrame(out, index=frame.index, copy=False)

    def evaluate_columns(self, columns: Mapping[str, Any], n: int, stats: Mapping[str, Any], *,
                         labels: Sequence | None = None) -> dict[str, Any]:
        """`evaluate` on columns given by name (numpy arrays, Series...) of `n` rows, without building a DataFrame:
        the tag columns `evaluate` would hold, by tag id. For a few rows (online scoring) a DataFrame's per-column
        overhead costs more than the rules. `labels` name rows in error messages (default: their positions)."""
        self._check_columns(columns.keys())
        for tag in self.tags:
            if tag.needs_fit:
                _check_stats(tag, stats)
        env = _Env(self, columns, n, stats, labels)
        return {t.id: _to_column(t, env.tag(t.id)) for t in self.tags}

    def _check_columns(self, names) -> None:
        missing = self._inputs.difference(names)
        if missing:
            name = sorted(missing)[0]
            tag = next(t for t in self.tags if name in t.columns)
            raise tag.error(f"the frame has no column {name!r} (it had when the tags were loaded; "
                            f"{len(missing)} input column(s) missing in all)")

    # --- metadata ---
    def catalog(self) -> list[dict]:
        """Per tag (dependency order): what a tag catalogue or UI shows. JSON-serialisable."""
        out = []
        for t in self.tags:
            s = t.spec
            desc = s.description
            values = [{"value": v, "zh": zh, "en": en} for v, zh, en in t.values]
            if t.kind == "flag":
                values = [{"value": True, "zh": "是", "en": "yes"}, {"value": False, "zh": "否", "en": "no"}]
            out.append({
                "id": t.id, "name_zh": s.name.zh, "name_en": s.name.en, "category": s.category,
                "category_zh": CATEGORIES[s.category], "type": t.type, "kind": t.kind, "value_type": t.value_type,
                "values": values, "owner": s.owner,
                "description": desc.en if isinstance(desc, Names) else desc,
                "description_zh": desc.zh if isinstance(desc, Names) else desc,
                "cadence": s.cadence, "version": s.version, "source": t.source,
                "inputs": sorted(self._closure_columns(t)), "depends_on": list(t.tag_refs),
            })
        return out

    def _closure_columns(self, tag: TagDef) -> set[str]:
        cols, stack, seen = set(tag.columns), list(tag.tag_refs), set()
        while stack:
            ref = stack.pop()
            if ref not in seen:
                seen.add(ref)
                cols.update(self._by_id[ref].columns)
                stack.extend(self._by_id[ref].tag_refs)
        return cols


# ---------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------

def column_types(frame: pd.DataFrame) -> dict[str, str]:
    """The `columns` argument of `load_tagset` for a frame: column -> "number" | "string" | "bool" | "list"."""
    return {str(c): ex.infer_type(frame[c]) for c in frame.columns}


def load_tagset(paths: Sequence[Path | str], *, columns: Mapping[str, str]) -> TagSet:
    """Load, validate and order the tags of `paths` (files, or directories: every *.yaml / *.yml inside, sorted).

    `columns`: the input columns available in this workspace -> "number" | "string" ("bool" and "list" also
    accepted). An id defined twice, an unknown column or tag, a type mismatch, a dependency cycle or any malformed
    node is a RuleError naming the file and line.
    """
    bad = {c: t for c, t in columns.items() if t not in ex.TYPES}
    if bad:
        name, kind = next(iter(bad.items()))
        raise RuleError(f"<columns>:0: column {name!r} has type {kind!r}; expected one of {', '.join(ex.TYPES)}")
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
    return _resolve(raw, dict(columns), segments)


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
            raise RuleError(f"{path}:{_line(knode)}: unknown top-level key {key!r}{ex.suggest(key, _FILE_KEYS)}; "
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
                        f"{ex.suggest(str(kind), KINDS)}; expected one of {', '.join(KINDS)}")
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
            text = f"unknown key {key!r}{ex.suggest(key, fields)}" + (f"; expected one of {', '.join(fields)}"
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


def _parse_into(tag: TagDef, node: yaml.MappingNode, role: str, loc: Sequence[Any], text: str) -> ex.Expr:
    target, _ = _node_at(node, loc)
    try:
        parsed = ex.parse(text)
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
                raise tag.error(f"{key} must be strictly increasing, but {key}[{i}] = {ex._fmt(cuts[i])} follows "
                                f"{ex._fmt(cuts[i - 1])}", _line(_node_at(node, (key, i))[0]))
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
                                              ex.Compare(">", freq.expr, ex.Number(0.0)), freq.line)
            tag.lines["population"] = freq.line
        tag.values = RFM_SEGMENTS
    elif isinstance(s, (ScoreSpec, ValueSpec)):
        parsed = _parse_into(tag, node, "input", ("input",), s.input)
        if isinstance(s, ScoreSpec) and not isinstance(parsed, ex.Name):
            raise tag.error(f"a score passes one model-score column through; input must be a column name, "
                            f"found {s.input!r} (use kind: value for a computed number)", tag.lines["input"])
    elif isinstance(s, TopSpec):
        tag.lines["pattern"] = _key_line(node, "pattern")
        if s.pattern.count("*") != 1 or not re.fullmatch(r"[A-Za-z0-9_*]+", s.pattern):
            raise tag.error(f"pattern must be a column name with one '*' standing for the category "
                            f"(e.g. 'interest_*'), found {s.pattern!r}", tag.lines["pattern"])


# ---------------------------------------------------------------------------------------------------------------
# resolution: names, availability, order, types, exclusivity
# ---------------------------------------------------------------------------------------------------------------

def _resolve(raw: list[TagDef], columns: dict[str, str], segments: list[SegmentSource]) -> TagSet:
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
                    reason = f"unknown column {name!r}{ex.suggest(name, [*columns, *ids])}"
                    if not t.optional:
                        raise t.error(reason, loc.line)
                    unavailable.setdefault(t.id, f"missing column {name!r}")
        if t.kind == "top":
            rx = re.compile(re.escape(t.spec.pattern).replace(r"\*", "(.+)") + r"\Z")
            found = sorted((m.group(1), c) for c in columns if (m := rx.match(c)) and columns[c] == ex.NUMBER)
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
            t._dtype = pd.CategoricalDtype([v for v, _, _ in t.values])
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


_ROLE_TYPES = {"when": ex.BOOL, "population": ex.BOOL, "input": ex.NUMBER, "recency": ex.NUMBER,
               "frequency": ex.NUMBER, "monetary": ex.NUMBER}


def _typecheck(tag: TagDef, types: Mapping[str, str], domains: Mapping[str, list[str]]) -> None:
    for role, loc in tag.exprs.items():
        want = _ROLE_TYPES[role.rsplit(".", 1)[-1]]
        try:
            got = ex.typecheck(loc.expr, types, domains=domains)
        except ExprError as err:
            raise tag.error(f"{role}: {err.message}\n{caret(loc.text, err.position)}", loc.line) from None
        if got != want:
            hint = " (a condition such as 'x > 0')" if want == ex.BOOL else ""
            raise tag.error(f"{role} must be {ex._a(want)}{hint}, but {loc.text!r} is {ex._a(got)}", loc.line)


def _check_exclusive(tag: TagDef) -> None:
    boxes = []
    for i, v in enumerate(tag.spec.values):
        loc = tag.exprs[f"values[{i}].when"]
        box = ex.box_of(loc.expr)
        if box is None:
            tag.static_exclusive = False
            continue
        for j, other_value, other in boxes:
            overlap = ex.box_overlap(other, box)
            if overlap is not None:
                raise tag.error(f"exclusive, but values {other_value!r} and {v.value!r} overlap where "
                                f"{ex.describe_box(overlap)}", tag.lines[f"values[{i}]"])
        boxes.append((i, v.value, box))


# ---------------------------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------------------------

_SMALL = 256      # rows; below this, `top` takes the path with less Python overhead per call


class _Env:
    """Columns of one frame and tag values, each computed once, on first use."""

    def __init__(self, tagset: TagSet, frame: Mapping[str, Any], n: int, stats: Mapping[str, Any],
                 labels: Sequence | None = None) -> None:
        self.tagset = tagset
        self.frame = frame  # a DataFrame or any mapping of column name -> values
        self.n = n
        self.labels = labels
        self.stats = stats
        self.columns: dict[str, ex.Value] = {}
        self.tags: dict[str, ex.Value] = {}

    def column(self, name: str) -> ex.Value:
        value = self.columns.get(name)
        if value is None:
            kind = self.tagset.column_types[name]
            try:
                value = ex.to_value(self.frame[name], kind)
            except (TypeError, ValueError) as exc:
                tag = next(t for t in self.tagset.tags if name in t.columns)
                raise tag.error(f"column {name!r} should hold {ex._a(kind)}s: {exc}") from None
            self.columns[name] = value
        return value

    def tag(self, tag_id: str) -> ex.Value:
        value = self.tags.get(tag_id)
        if value is None:
            tag = self.tagset[tag_id]
            value = ex.broadcast(_compute(tag, self), self.n)
            self.tags[tag_id] = value
        return value

    def lookup_for(self, tag: TagDef):
        def lookup(name: str) -> ex.Value:
            if name in self.tagset and not (name == tag.id):
                return self.tag(name)
            return self.column(name)
        return lookup

    def run(self, tag: TagDef, role: str) -> ex.Value:
        return ex.broadcast(ex.evaluate_value(tag.exprs[role].expr, self.lookup_for(tag)), self.n)


def _compute(tag: TagDef, env: _Env) -> ex.Value:
    kind = tag.kind
    if kind == "flag":
        return env.run(tag, "when")
    if kind in ("score", "value"):
        return env.run(tag, "input")
    if kind == "enum":
        return _enum(tag, env)
    if kind == "bucket":
        return _bucket(tag, env)
    if kind == "rfm":
        return _rfm(tag, env)
    return _top(tag, env)


def _enum(tag: TagDef, env: _Env) -> ex.Value:
    spec: EnumSpec = tag.spec
    n = env.n
    codes = np.full(n, -1, np.int64)
    taken = np.zeros(n, bool)
    check = spec.exclusive and not tag.static_exclusive
    hits = np.zeros(n, np.int8) if check else None
    for i in range(len(spec.values)):
        match = env.run(tag, f"values[{i}].when").value
        if check:
            hits += match
        new = match & ~taken
        codes[new] = i
        taken |= new
    if spec.else_ is not None:
        other = spec.else_ if isinstance(spec.else_, str) else spec.else_.value
        codes[~taken] = [v for v, _, _ in tag.values].index(other)
    if check:
        many = hits >= 2
        count = int(many.sum())
        if count:
            row = int(np.argmax(many))
            both = [spec.values[i].value for i in range(len(spec.values))
                    if env.run(tag, f"values[{i}].when").value[row]]
            label = env.labels[row] if env.labels is not None else row
            raise tag.error(f"exclusive, but {count} row(s) match more than one value (row {label!r} matches "
                            f"{' and '.join(map(repr, both))})")
    return ex.StringValue(codes, tuple(v for v, _, _ in tag.values))


def _check_stats(tag: TagDef, stats: Mapping[str, Any]) -> None:
    entry = stats.get(tag.id)
    if not isinstance(entry, Mapping):
        raise tag.error("needs population statistics: `stats` has no entry for it (run TagSet.fit on the "
                        "population and pass its result)")
    if tag.kind == "bucket":
        if [float(q) for q in entry.get("quantiles") or []] != list(tag.spec.quantiles):
            raise tag.error(f"statistics were fitted for quantiles {entry.get('quantiles')}, but the tag now has "
                            f"{tag.spec.quantiles}: fit again")
        edges = entry.get("edges")
        if edges is not None and len(edges) != len(tag.spec.quantiles):
            raise tag.error(f"fitted edges {edges} do not match the quantiles {tag.spec.quantiles}: fit again")
    elif entry.get("split") != tag.spec.split:
        raise tag.error(f"statistics were fitted with split {entry.get('split')!r}, but the tag now has "
                        f"{tag.spec.split!r}: fit again")


def _population(tag: TagDef, env: _Env) -> np.ndarray | None:
    if "population" not in tag.exprs:
        return None
    return env.run(tag, "population").value


def _bucket(tag: TagDef, env: _Env) -> ex.Value:
    spec: BucketSpec = tag.spec
    x = env.run(tag, "input").data
    cats = tuple(spec.labels)
    edges = spec.edges if spec.edges is not None else env.stats[tag.id]["edges"]
    if edges is None:
        return ex.StringValue(np.full(env.n, -1, np.int64), cats)
    codes = np.searchsorted(np.asarray(edges, np.float64), x, side="right").astype(np.int64)
    null = np.isnan(x)
    pop = _population(tag, env)
    if pop is not None:
        null |= ~pop
    codes[null] = -1
    return ex.StringValue(codes, cats)


def _fit(tag: TagDef, env: _Env) -> dict:
    pop = _population(tag, env)
    if tag.kind == "bucket":
        x = env.run(tag, "input").data
        keep = ~np.isnan(x) if pop is None else (~np.isnan(x) & pop)
        values = x[keep]
        edges = np.quantile(values, tag.spec.quantiles).tolist() if values.size else None
        return {"kind": "bucket", "quantiles": list(tag.spec.quantiles), "edges": edges,
                "population": int(values.size), "version": tag.spec.version}
    r, f, m = (env.run(tag, role).data for role in ("recency", "frequency", "monetary"))
    keep = pop & ~(np.isnan(r) | np.isnan(f) | np.isnan(m))
    stat = np.mean if tag.spec.split == "mean" else np.median
    size = int(keep.sum())
    out = {"kind": "rfm", "split": tag.spec.split, "population": size, "version": tag.spec.version}
    for role, x in (("recency", r), ("frequency", f), ("monetary", m)):
        out[role] = float(stat(x[keep])) if size else None
    return out


def _rfm(tag: TagDef, env: _Env) -> ex.Value:
    st = env.stats[tag.id]
    r, f, m = (env.run(tag, role).data for role in ("recency", "frequency", "monetary"))
    cats = tuple(v for v, _, _ in RFM_SEGMENTS)
    if st.get("recency") is None:
        return ex.StringValue(np.full(env.n, -1, np.int64), cats)
    scored = _population(tag, env) & ~(np.isnan(r) | np.isnan(f) | np.isnan(m))
    r_low = ~(r < st["recency"])                 # recency: fewer days is better
    f_low = ~(f > st["frequency"])
    m_low = ~(m > st["monetary"])
    code = m_low.astype(np.int64) * 4 + r_low * 2 + f_low
    return ex.StringValue(np.where(scored, code, -1), cats)


def _top(tag: TagDef, env: _Env) -> ex.Value:
    """The best `n` categories per row, by repeated column-wise maxima: k comparisons of whole columns per pass, no
    row-major stacking (a (rows x k) argmax or argsort is several times slower at a million rows)."""
    spec: TopSpec = tag.spec
    n, k = env.n, len(tag.top_columns)
    width = min(spec.n, k)
    score = np.empty((k, n), np.float64)
    known = np.zeros(n, bool)
    for j, (_, c) in enumerate(tag.top_columns):
        x = env.column(c).data
        has = ~np.isnan(x)
        known |= has
        score[j] = np.where(has if spec.min is None else has & (x >= spec.min), x, -np.inf)
    if n <= _SMALL:                                  # a few rows (online): one stable argsort beats k * n passes
        rank = np.argsort(-score.T, axis=1, kind="stable")[:, :width]
        valid = np.take_along_axis(score.T, rank, axis=1) > -np.inf
        order = np.where(valid, rank, -1).astype(np.int64)
        return ex.ListValue(order, tuple(c for c, _ in tag.top_columns), known)
    order = np.full((n, width), -1, np.int64)
    flat = score.reshape(-1)
    cells = np.arange(n)
    small = np.int16 if k < 2**15 else np.int64
    best_val = np.empty(n, np.float64)
    best = np.empty(n, small)
    better = np.empty(n, bool)
    for j in range(width):
        best_val[:] = score[0]
        best[:] = 0
        for i in range(1, k):                        # strict '>': a tie goes to the first category by name
            np.greater(score[i], best_val, out=better)
            # best = i where better: branch-free arithmetic (a masked store is ~20x slower on random masks)
            np.multiply(best, ~better, out=best)
            best += better.astype(small) * small(i)
            np.maximum(best_val, score[i], out=best_val)
        np.copyto(order[:, j], best, where=best_val > -np.inf)
        if j + 1 < width:
            flat[best.astype(np.int64) * n + cells] = -np.inf
    return ex.ListValue(order, tuple(c for c, _ in tag.top_columns), known)


def _to_column(tag: TagDef, value: ex.Value) -> Any:
    if isinstance(value, ex.BoolValue):
        return pd.arrays.BooleanArray(value.value, ~value.known)
    if isinstance(value, ex.NumberValue):
        return value.data
    if isinstance(value, ex.StringValue):
        dtype = tag._dtype
        codes = value.codes.astype(np.int8 if len(dtype.categories) < 127 else np.int32)
        return pd.Categorical.from_codes(codes, dtype=dtype, validate=False)
    return ex.list_to_objects(value)
