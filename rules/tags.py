"""The tag set: validated tags in dependency order, fitted and evaluated over frames, and described for a catalogue.

Population statistics (quantile edges, RFM means or medians) are learnt by `TagSet.fit` and passed to
`TagSet.evaluate`, which never recomputes them: the batch job fits and evaluates, online scoring evaluates a few rows
with the statistics of the last batch run. Tag sets are built by `rules.loading.load_tagset`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rules.expr.evaluation import evaluate_value
from rules.expr.tree import describe_type
from rules.expr.values import (BoolValue, ListValue, NumberValue, StringValue, Value, broadcast, list_to_objects,
                               to_value)
from rules.tagdef import (CATEGORIES, LANG_TYPE, RFM_SEGMENTS, BucketSpec, EnumSpec, Names, SegmentSource, TagDef,
                          TopSpec)


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

    def subset(self, ids) -> TagSet:
        """The same tag definitions, only those of `ids` (in this set's dependency order): each is computed by the
        same code from the same inputs. The caller names every tag a kept tag reads."""
        keep = set(ids)
        return dataclasses.replace(self, tags=[t for t in self.tags if t.id in keep])

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

    def fit_inputs(self, frame: Mapping[str, Any], n: int, stats: Mapping[str, Any],
                   ids: Sequence[str]) -> dict[str, tuple[dict[str, np.ndarray], np.ndarray]]:
        """What `fit` reduces for each tag of `ids` (tags that need fitting): its values by role ("input" of a
        bucket; "recency", "frequency", "monetary" of an rfm tag) over the `n` rows of `frame`, and the mask of the
        rows it keeps; `stats` holds the statistics of the fitted tags these read. `fit_result` turns reduced values
        into the entry `fit` gives: a distributed fit (rules.spark_fit) reduces these per partition."""
        self._check_columns(frame.keys())
        env = _Env(self, frame, n, stats, getattr(frame, "index", None))
        return {t: _fit_inputs(self[t], env) for t in ids}

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
        self.columns: dict[str, Value] = {}
        self.tags: dict[str, Value] = {}

    def column(self, name: str) -> Value:
        value = self.columns.get(name)
        if value is None:
            kind = self.tagset.column_types[name]
            try:
                value = to_value(self.frame[name], kind)
            except (TypeError, ValueError) as exc:
                tag = next(t for t in self.tagset.tags if name in t.columns)
                raise tag.error(f"column {name!r} should hold {describe_type(kind)}s: {exc}") from None
            self.columns[name] = value
        return value

    def tag(self, tag_id: str) -> Value:
        value = self.tags.get(tag_id)
        if value is None:
            tag = self.tagset[tag_id]
            value = broadcast(_compute(tag, self), self.n)
            self.tags[tag_id] = value
        return value

    def lookup_for(self, tag: TagDef):
        def lookup(name: str) -> Value:
            if name in self.tagset and not (name == tag.id):
                return self.tag(name)
            return self.column(name)
        return lookup

    def run(self, tag: TagDef, role: str) -> Value:
        return broadcast(evaluate_value(tag.exprs[role].expr, self.lookup_for(tag)), self.n)


def _compute(tag: TagDef, env: _Env) -> Value:
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


def _enum(tag: TagDef, env: _Env) -> Value:
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
    return StringValue(codes, tuple(v for v, _, _ in tag.values))


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


def _bucket(tag: TagDef, env: _Env) -> Value:
    spec: BucketSpec = tag.spec
    x = env.run(tag, "input").data
    cats = tuple(spec.labels)
    edges = spec.edges if spec.edges is not None else env.stats[tag.id]["edges"]
    if edges is None:
        return StringValue(np.full(env.n, -1, np.int64), cats)
    codes = np.searchsorted(np.asarray(edges, np.float64), x, side="right").astype(np.int64)
    null = np.isnan(x)
    pop = _population(tag, env)
    if pop is not None:
        null |= ~pop
    codes[null] = -1
    return StringValue(codes, cats)


def _fit_inputs(tag: TagDef, env: _Env) -> tuple[dict[str, np.ndarray], np.ndarray]:
    pop = _population(tag, env)
    if tag.kind == "bucket":
        x = env.run(tag, "input").data
        return {"input": x}, (~np.isnan(x) if pop is None else (~np.isnan(x) & pop))
    r, f, m = (env.run(tag, role).data for role in ("recency", "frequency", "monetary"))
    return {"recency": r, "frequency": f, "monetary": m}, pop & ~(np.isnan(r) | np.isnan(f) | np.isnan(m))


def _fit(tag: TagDef, env: _Env) -> dict:
    roles, keep = _fit_inputs(tag, env)
    if tag.kind == "bucket":
        values = roles["input"][keep]
        edges = np.quantile(values, tag.spec.quantiles).tolist() if values.size else None
        return fit_result(tag, int(values.size), {"edges": edges})
    stat = np.mean if tag.spec.split == "mean" else np.median
    size = int(keep.sum())
    return fit_result(tag, size, {role: float(stat(x[keep])) if size else None for role, x in roles.items()})


def fit_result(tag: TagDef, population: int, fitted: Mapping[str, Any]) -> dict:
    """The statistics entry of a fitted tag (what `fit` returns for it) from its population size and what was
    fitted: "edges" of a bucket tag; "recency", "frequency", "monetary" of an rfm tag."""
    if tag.kind == "bucket":
        return {"kind": "bucket", "quantiles": list(tag.spec.quantiles), "edges": fitted["edges"],
                "population": population, "version": tag.spec.version}
    out = {"kind": "rfm", "split": tag.spec.split, "population": population, "version": tag.spec.version}
    for role in ("recency", "frequency", "monetary"):
        out[role] = fitted[role]
    return out


def _rfm(tag: TagDef, env: _Env) -> Value:
    st = env.stats[tag.id]
    r, f, m = (env.run(tag, role).data for role in ("recency", "frequency", "monetary"))
    cats = tuple(v for v, _, _ in RFM_SEGMENTS)
    if st.get("recency") is None:
        return StringValue(np.full(env.n, -1, np.int64), cats)
    scored = _population(tag, env) & ~(np.isnan(r) | np.isnan(f) | np.isnan(m))
    r_low = ~(r < st["recency"])                 # recency: fewer days is better
    f_low = ~(f > st["frequency"])
    m_low = ~(m > st["monetary"])
    code = m_low.astype(np.int64) * 4 + r_low * 2 + f_low
    return StringValue(np.where(scored, code, -1), cats)


def _top(tag: TagDef, env: _Env) -> Value:
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
        return ListValue(order, tuple(c for c, _ in tag.top_columns), known)
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
    return ListValue(order, tuple(c for c, _ in tag.top_columns), known)


def _to_column(tag: TagDef, value: Value) -> Any:
    if isinstance(value, BoolValue):
        return pd.arrays.BooleanArray(value.value, ~value.known)
    if isinstance(value, NumberValue):
        return value.data
    if isinstance(value, StringValue):
        dtype = tag.dtype
        codes = value.codes.astype(np.int8 if len(dtype.categories) < 127 else np.int32)
        return pd.Categorical.from_codes(codes, dtype=dtype, validate=False)
    return list_to_objects(value)
