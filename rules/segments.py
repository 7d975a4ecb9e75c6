"""Audience segments: who is in them, how many, how they differ from everyone else, and the export marketing sends.

A segment is declared in the rule YAML files under `segments:` (or given as an expression on the command line):

    segments:
      - id: vip_at_risk
        name: {zh: 高价值流失预警, en: High value at risk}
        when: "high_value_customer == 'high_value' and churn_risk_band == 'high'"
      - id: win_back
        union: [vip_at_risk, sleeping_big_spenders]        # or intersection: [...] / difference: [a, b]
        include_opted_out: false                           # the default

Expressions use the rule language (`rules.expr`) over the tags and scores of a tag snapshot, any feature at that
snapshot's date, and other segments by id. Customers who opted out of marketing (profile `consent_marketing` false)
are left out unless the segment says `include_opted_out: true`. Evaluation reads only the columns named, so counting
an audience of 1M personas takes a fraction of a second.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from persona.workspace import Workspace, write_parquet_atomic
from rules import expr as rx
from rules import history

ID = r"^[a-z][a-z0-9_]*$"


class SegmentError(ValueError):
    """A bad segment definition or expression; names the file and line, or the expression and the problem."""


class Names(BaseModel):
    model_config = ConfigDict(extra="forbid")
    zh: str = ""
    en: str = ""


class SegmentDef(BaseModel):
    """One declared segment: exactly one of `when`, `union`, `intersection`, `difference`."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=ID)
    name: Names = Names()
    description: str = ""
    owner: str = ""
    when: str | None = None
    union: list[str] | None = Field(None, min_length=2)
    intersection: list[str] | None = Field(None, min_length=2)
    difference: list[str] | None = Field(None, min_length=2, max_length=2)
    include_opted_out: bool = False
    source: str = ""

    @model_validator(mode="after")
    def _one_definition(self) -> SegmentDef:
        given = [k for k in ("when", "union", "intersection", "difference") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"segment {self.id!r}: give exactly one of when / union / intersection / difference "
                             f"(found {given or 'none'})")
        return self

    def references(self) -> set[str]:
        if self.when is not None:
            return rx.parse(self.when).names()
        return set(self.union or self.intersection or self.difference or [])


# --- loading ----------------------------------------------------------------------------------------------------
def _files(paths: Sequence[Path]) -> list[Path]:
    out = []
    for p in paths:
        p = Path(p)
        out += sorted(p.glob("*.yaml")) + sorted(p.glob("*.yml")) if p.is_dir() else [p] if p.is_file() else []
    return out


def _plain(node: yaml.Node):
    """A composed YAML node as plain Python (safe types only)."""
    return yaml.safe_load(yaml.serialize(node)) if node is not None else None


def load_segments(paths: Sequence[Path]) -> dict[str, SegmentDef]:
    """Every segment declared in the YAML files (or folders) given; errors name the file and line."""
    found: dict[str, SegmentDef] = {}
    for path in _files(paths):
        try:
            root = yaml.compose(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise SegmentError(f"{path}:{mark.line + 1 if mark else '?'}: not valid YAML: "
                               f"{getattr(exc, 'problem', exc)}") from None
        if not isinstance(root, yaml.MappingNode):
            continue
        node = next((v for k, v in root.value if k.value == "segments"), None)
        if node is None:
            continue
        if not isinstance(node, yaml.SequenceNode):
            raise SegmentError(f"{path}:{node.start_mark.line + 1}: 'segments' must be a list of segments")
        for item in node.value:
            line = item.start_mark.line + 1
            data = _plain(item)
            if not isinstance(data, dict):
                raise SegmentError(f"{path}:{line}: a segment must be a mapping with id and when/union/...")
            try:
                seg = SegmentDef.model_validate({**data, "source": f"{path}:{line}"})
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"])
                key_line = _key_line(item, err["loc"][0] if err["loc"] else None) or line
                raise SegmentError(f"{path}:{key_line}: segment {data.get('id', '?')!r}: "
                                   f"{where + ': ' if where else ''}{err['msg']}") from None
            if seg.when is not None:
                try:
                    rx.parse(seg.when)
                except rx.ExprError as exc:
                    raise SegmentError(f"{path}:{_key_line(item, 'when') or line}: segment {seg.id!r}: {exc}") from None
            if seg.id in found:
                raise SegmentError(f"{path}:{line}: segment {seg.id!r} is already defined at {found[seg.id].source}")
            found[seg.id] = seg
    return found


def _key_line(node: yaml.MappingNode, key) -> int | None:
    if key is None or not isinstance(node, yaml.MappingNode):
        return None
    for k, _ in node.value:
        if k.value == key:
            return k.start_mark.line + 1
    return None


# --- data -------------------------------------------------------------------------------------------------------
OPT_OUT_COLUMN = "opted_out_marketing"  # written into each tag snapshot by rescoring


def opted_out_of(ws: Workspace, persona_ids: pa.Array) -> np.ndarray:
    """Personas (in the order given) whose profile says they opted out of marketing; unknown consent is not an
    opt-out. Vectorised over Arrow: a hash lookup of the ids, no per-row Python."""
    current = ws.require_current("integrated", "run `persona integrate`")
    prof = pq.read_table(current / "profiles.parquet")
    if "consent_marketing" not in prof.column_names:
        return np.zeros(len(persona_ids), dtype=bool)
    pos = pc.index_in(persona_ids.cast(pa.string()), value_set=prof.column("persona_id").combine_chunks().cast(pa.string()))
    consent = pc.take(prof.column("consent_marketing").combine_chunks().cast(pa.bool_()), pos)
    return pc.fill_null(pc.invert(consent), False).to_numpy(zero_copy_only=False).astype(bool)


@dataclass
class Audience:
    """The data segments are evaluated over: one tag snapshot, with features and consent read on demand."""

    ws: Workspace
    date: str
    segments: dict[str, SegmentDef]
    size: int
    snapshot_columns: list[str]
    feature_columns: list[str]
    _columns: dict[str, object] = field(default_factory=dict)
    _masks: dict[str, np.ndarray] = field(default_factory=dict)
    _ids: pd.Series | None = None
    _tag_codes: list | None = None
    _numeric: dict | None = None

    @classmethod
    def open(cls, ws: Workspace, segments: Mapping[str, SegmentDef], date: str | None = None) -> Audience:
        from features import store as feature_store

        date = history.resolve_date(ws, date)
        path = history.root(ws) / f"date={date}" / history.PART
        meta = pq.read_metadata(path)
        names = meta.schema.to_arrow_schema().names
        features = []
        for _, file in feature_store.snapshot_files(ws).items():
            features += [c for c in pq.read_schema(file).names if c not in ("persona_id", "event_timestamp",
                                                                                "created_timestamp")]
        return cls(ws, date, dict(segments), meta.num_rows,
                   [c for c in names if c not in ("persona_id", OPT_OUT_COLUMN)], features)

    @property
    def _path(self) -> Path:
        return history.root(self.ws) / f"date={self.date}" / history.PART

    @property
    def persona_ids(self) -> pd.Series:
        """The snapshot's persona ids (read on first use: counting does not need them)."""
        if self._ids is None:
            self._ids = pq.read_table(self._path, columns=["persona_id"]).column(0).to_pandas()
        return self._ids

    def known_names(self) -> list[str]:
        return [*self.snapshot_columns, *self.feature_columns, *self.segments]

    def _load(self, names: Sequence[str]) -> None:
        from features.offline import offline_frame  # Feast loads only when a segment reads features

        want_snap = [n for n in names if n in self.snapshot_columns and n not in self._columns]
        want_feat = [n for n in names if n in self.feature_columns and n not in self.snapshot_columns
                     and n not in self._columns]
        if want_snap:
            frame = history.read(self.ws, self.date, columns=want_snap)
            for n in want_snap:
                self._columns[n] = frame[n]
        if want_feat:
            feats = offline_frame(self.ws, pd.Timestamp(self.date, tz="UTC"), columns=want_feat)
            feats = feats.set_index("persona_id").reindex(self.persona_ids.astype(str).to_numpy())
            for n in want_feat:
                self._columns[n] = feats[n].to_numpy()

    def columns(self, names: Sequence[str]) -> dict[str, object]:
        self._load(names)
        return {n: self._columns[n] for n in names}

    def tag_codes(self) -> list[TagCodes]:
        """The snapshot's category-like tags, factorised on first use (what `profile` counts)."""
        if self._tag_codes is None:
            self._tag_codes = tag_codes(self._path)
        return self._tag_codes

    def numeric(self) -> dict[str, tuple[np.ndarray, np.ndarray, float, int]]:
        """Per numeric column (the snapshot's scores, then every feature): values with NaN as 0, where finite, their
        sum and count; loaded on first use (`profile` averages them inside and outside a segment)."""
        if self._numeric is None:
            schema = pq.read_schema(self._path)
            scores = [f.name for f in schema if f.name != "persona_id" and pa.types.is_floating(f.type)]
            names = [*scores, *[f for f in self.feature_columns if f not in scores]]
            cols = self.columns(names)
            numeric = {}
            for name in names:
                v = np.asarray(pd.to_numeric(pd.Series(cols[name]), errors="coerce"), dtype=np.float64)
                finite = np.isfinite(v)
                v0 = np.where(finite, v, 0.0)
                numeric[name] = (v0, finite, float(np.sum(v0)), int(finite.sum()))
            self._numeric = numeric
        return self._numeric

    def opted_out(self) -> np.ndarray:
        """Personas who opted out of marketing: from the snapshot (rescoring records it), else from profiles."""
        if "__opted_out" not in self._masks:
            if OPT_OUT_COLUMN in pq.read_schema(self._path).names:
                col = pq.read_table(self._path, columns=[OPT_OUT_COLUMN]).column(0)
                mask = pc.fill_null(col, False).to_numpy(zero_copy_only=False).astype(bool)
            else:
                ids = pq.read_table(self._path, columns=["persona_id"]).column(0).combine_chunks()
                mask = opted_out_of(self.ws, ids)
            self._masks["__opted_out"] = mask
        return self._masks["__opted_out"]

    # --- evaluation ---------------------------------------------------------------------------------------------
    def _check_names(self, names: set[str], what: str) -> None:
        known = set(self.known_names())
        for n in sorted(names - known):
            close = difflib.get_close_matches(n, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SegmentError(f"{what}: unknown name {n!r}{hint}: not a tag, score, feature or segment of the "
                               f"snapshot {self.date}")

    def _expression_mask(self, text: str, what: str, stack: tuple[str, ...]) -> np.ndarray:
        try:
            tree = rx.parse(text)
        except rx.ExprError as exc:
            raise SegmentError(f"{what}: {exc}") from None
        names = tree.names()
        self._check_names(names, what)
        cols = self.columns([n for n in names if n not in self.segments])
        for s in names & set(self.segments):
            cols[s] = self.mask(s, stack=stack)
        try:
            result = rx.evaluate(tree, cols)
        except rx.ExprError as exc:
            raise SegmentError(f"{what}: {exc}") from None
        return _truthy(result, self.size, what)

    def mask(self, name: str, *, stack: tuple[str, ...] = ()) -> np.ndarray:
        """Members of a declared segment (opt-outs removed unless it includes them)."""
        if name in self._masks:
            return self._masks[name]
        if name in stack:
            raise SegmentError(f"segments refer to each other in a cycle: {' -> '.join([*stack, name])}")
        seg = self.segments[name]
        what = f"segment {name!r} ({seg.source})"
        inner = (*stack, name)
        if seg.when is not None:
            m = self._expression_mask(seg.when, what, inner)
        else:
            parts = seg.union or seg.intersection or seg.difference
            for p in parts:
                if p not in self.segments:
                    close = difflib.get_close_matches(p, sorted(self.segments), n=1)
                    raise SegmentError(f"{what}: unknown segment {p!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            masks = [self.mask(p, stack=inner) for p in parts]
            if seg.union:
                m = np.logical_or.reduce(masks)
            elif seg.intersection:
                m = np.logical_and.reduce(masks)
            else:
                m = masks[0] & ~masks[1]
        if not seg.include_opted_out:
            m = m & ~self.opted_out()
        self._masks[name] = m
        return m

    def select(self, expression_or_name: str, *, include_opted_out: bool = False) -> np.ndarray:
        """Members of a declared segment, or of an expression given on the command line."""
        if expression_or_name in self.segments:
            return self.mask(expression_or_name)
        m = self._expression_mask(expression_or_name, f"expression {expression_or_name!r}", ())
        return m if include_opted_out else m & ~self.opted_out()


def _truthy(result, n: int, what: str) -> np.ndarray:
    """A boolean result as a plain mask: null (unknown) is not a member."""
    if isinstance(result, pd.Series):
        if str(result.dtype) == "boolean":
            return result.fillna(False).to_numpy(dtype=bool)
        if result.dtype == bool:
            return result.to_numpy()
    arr = np.asarray(result)
    if arr.dtype == bool and arr.shape == (n,):
        return arr
    raise SegmentError(f"{what}: is not a condition (it gives {getattr(result, 'dtype', type(result))}, "
                       "not true/false): compare it, e.g. 'churn_risk >= 0.6'")


# --- operations -------------------------------------------------------------------------------------------------
def count(aud: Audience, target: str, *, include_opted_out: bool = False) -> dict:
    t0 = time.perf_counter()
    m = aud.select(target, include_opted_out=include_opted_out)
    return {"segment": target, "date": aud.date, "count": int(m.sum()), "population": aud.size,
            "share": float(m.mean()) if aud.size else 0.0, "seconds": round(time.perf_counter() - t0, 4)}


def export(aud: Audience, target: str, out: Path, *, include_opted_out: bool = False,
           identifiers: pa.Table | None = None) -> dict:
    """Write persona_id and the salted-hashed channel identifiers of the members to CSV or Parquet (atomically)."""
    m = aud.select(target, include_opted_out=include_opted_out)
    return write_members(aud, aud.persona_ids[m].astype(str), target if target in aud.segments else "expression", out,
                         identifiers=identifiers)


def hashed_identifiers(ws: Workspace) -> pa.Table:
    """persona_id and every salted-hashed identifier column of the published profiles (what exports carry)."""
    current = ws.require_current("integrated", "run `persona integrate`")
    hashes = [c for c in pq.read_schema(current / "profiles.parquet").names if c.endswith("_hash")]
    return pq.read_table(current / "profiles.parquet", columns=["persona_id", *hashes])


def write_members(aud: Audience, members: pd.Series, label: str, out: Path, *,
                  identifiers: pa.Table | None = None) -> dict:
    """The export of `members` (persona ids): their salted-hashed identifiers, to CSV or Parquet (atomically).
    Campaigns write their treatment list through this too; `identifiers` (`hashed_identifiers`) may be passed by a
    caller that keeps it (the console), else it is read."""
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise SegmentError(f"{out}: the export must end in .csv or .parquet")
    ids = identifiers if identifiers is not None else hashed_identifiers(aud.ws)
    wanted = pa.array(members.to_numpy(dtype=object), pa.string())
    pos = pc.index_in(wanted, value_set=ids.column("persona_id").combine_chunks().cast(pa.string()))
    picked = ids.take(pos)  # in the members' order; a member without a profile row gets nulls
    n = len(wanted)
    columns = {"persona_id": wanted, "segment": pa.array([label] * n, pa.string()) if n else pa.array([], pa.string()),
               "snapshot_date": pa.array([aud.date] * n, pa.string()) if n else pa.array([], pa.string())}
    for name in ids.column_names[1:]:
        columns[name] = picked.column(name)
    table = pa.table(columns)
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".parquet":
        write_parquet_atomic(out, table)
    else:  # Arrow's writer: several times pandas' on long hex columns; quotes only what needs quoting
        tmp = out.with_name(f".{out.name}.tmp")
        pacsv.write_csv(table, tmp, pacsv.WriteOptions(quoting_style="needed"))
        tmp.replace(out)
    return {"segment": label, "date": aud.date, "rows": int(n), "path": str(out), "columns": table.column_names}


def category_columns(frame: pd.DataFrame) -> list[str]:
    out = []
    for c, col in frame.items():
        if isinstance(col.dtype, pd.CategoricalDtype) or str(col.dtype) in ("boolean", "bool") or col.dtype == object:
            out.append(c)
    return out


@dataclass(frozen=True)
class TagCodes:
    """One category-like tag of a snapshot (a category, a string, a flag or a list of values), factorised once:
    its value labels in sorted order, the code of each (row, value) pair, and how many personas hold each value."""

    name: str
    labels: list[str]
    rows: np.ndarray | None  # the row of each pair; None when each row holds one value (codes are per row)
    codes: np.ndarray  # index into labels; -1: no value
    totals: np.ndarray  # personas holding each value, in the whole snapshot

    def counts(self, members: np.ndarray) -> np.ndarray:
        """Members (a mask over the snapshot's rows) holding each value."""
        inside = members if self.rows is None else members[self.rows]
        return np.bincount(self.codes[inside & (self.codes >= 0)], minlength=len(self.labels))


def tag_codes(path: Path) -> list[TagCodes]:
    """Every category-like column of a tag snapshot file, factorised with Arrow (no Python per row)."""
    table = pq.read_table(path)
    out = []
    for f in table.schema:
        if f.name in ("persona_id", OPT_OUT_COLUMN):
            continue
        col = table.column(f.name).combine_chunks()
        if pa.types.is_list(f.type) or pa.types.is_large_list(f.type):
            rows, values = pc.list_parent_indices(col).to_numpy(), pc.list_flatten(col)
        elif (pa.types.is_dictionary(f.type) or pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
              or pa.types.is_boolean(f.type)):
            rows, values = None, col
        else:
            continue
        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
        encoded = pc.dictionary_encode(values)
        labels = [str(v) for v in encoded.dictionary.to_pylist()]
        order = np.argsort(np.asarray(labels, dtype=object), kind="stable") if labels else np.zeros(0, np.intp)
        rank = np.empty(len(labels), dtype=np.int64)
        rank[order] = np.arange(len(labels))
        raw = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        codes = np.where(raw >= 0, rank[np.maximum(raw, 0)] if len(labels) else -1, -1)
        labels = [labels[i] for i in order]
        out.append(TagCodes(f.name, labels, rows, codes,
                            np.bincount(codes[codes >= 0], minlength=len(labels))))
    return out


def profile(aud: Audience, target: str, *, top: int = 12, include_opted_out: bool = False) -> dict:
    """Size, and how members differ from everyone else: over/under-indexed tag values and feature averages.

    Index = share of members with a value / share of non-members with it x 100 (100 = no difference). The snapshot's
    tags are factorised once per audience (`Audience.tag_codes`) and the features held as arrays, so a profile is a
    few counts over masks (the console draws it on every edit).
    """
    m = aud.select(target, include_opted_out=include_opted_out)
    n_in, n_out = int(m.sum()), int((~m).sum())
    result = {"segment": target, "date": aud.date, "size": n_in, "population": aud.size,
              "share": n_in / max(aud.size, 1), "tags": [], "features": []}
    if n_in == 0 or n_out == 0:
        return result
    rows = []
    for tc in aud.tag_codes():
        inside = tc.counts(m)
        outside = tc.totals - inside
        for label, a, b in zip(tc.labels, inside.tolist(), outside.tolist()):
            share_in, share_out = a / n_in, b / n_out
            if share_in == 0 and share_out == 0:
                continue
            rows.append({"tag": tc.name, "value": label, "share_in": round(share_in, 4),
                         "share_out": round(share_out, 4),
                         "index": round(100 * share_in / share_out, 1) if share_out > 0 else None})
    # Over-indexed values the segment is known for first, then what it lacks; tiny values are noise.
    over = sorted((r for r in rows if r["share_in"] >= 0.02 and (r["index"] is None or r["index"] > 100)),
                  key=lambda r: -(r["index"] or 1e9))
    under = sorted((r for r in rows if r["share_out"] >= 0.02 and r["index"] is not None and r["index"] < 100),
                   key=lambda r: r["index"])
    result["tags"] = over[:top] + under[:top // 2]
    frows = []
    mf = m.astype(np.float64)
    for f, (v0, finite, total, n_finite) in aud.numeric().items():
        a_n = int(np.count_nonzero(finite & m))
        b_n = n_finite - a_n
        if a_n == 0 or b_n == 0:
            continue
        s_in = float(np.sum(v0 * mf))
        a, b = s_in / a_n, (total - s_in) / b_n
        if a == 0 and b == 0:  # zero inside and out (a real-time counter at night): nothing to tell
            continue
        frows.append({"feature": f, "mean_in": a, "mean_out": b,
                      "index": round(100 * a / b, 1) if b != 0 else None})
    frows.sort(key=lambda r: -abs(np.log(max(abs(r["index"] or 1e4), 1e-3) / 100)))
    result["features"] = frows[:top]
    return result


def overlap(aud: Audience, names: Sequence[str]) -> dict:
    """Pairwise overlap of segments: members in both, and that count as a share of each."""
    masks = {n: aud.select(n) for n in names}
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = int((masks[a] & masks[b]).sum())
            pairs.append({"a": a, "b": b, "both": both, "share_of_a": both / max(int(masks[a].sum()), 1),
                          "share_of_b": both / max(int(masks[b].sum()), 1)})
    return {"date": aud.date, "sizes": {n: int(m.sum()) for n, m in masks.items()}, "pairs": pairs}

