"""Tag history: one dated snapshot of every persona's tags per rescoring, and who entered or left each tag value.

Layout, partitioned by date (Hive style, so DuckDB, Spark and pyarrow read `<ws>/tags` as one dataset):

    <ws>/tags/date=2025-10-01/part-0.parquet   persona_id, model scores, one column per tag
    <ws>/tags/date=2025-10-01/_meta.json       as-of, model versions, rule statistics, counts, coverage

A snapshot is written into a hidden folder beside its final place and renamed into it in one step, `_meta.json`
last inside it: a reader never sees half a snapshot, and a crashed run leaves only a hidden folder that the next
run removes. A date written again replaces the earlier snapshot of that date.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from persona.workspace import Workspace

DIRNAME = "tags"
META = "_meta.json"
PART = "part-0.parquet"


def root(ws: Workspace) -> Path:
    return ws.root / DIRNAME


def _folder(ws: Workspace, date: str) -> Path:
    return root(ws) / f"date={date}"


def list_dates(ws: Workspace) -> list[str]:
    """Dates (YYYY-MM-DD) of the complete snapshots, oldest first."""
    base = root(ws)
    if not base.is_dir():
        return []
    return sorted(p.name[5:] for p in base.iterdir() if p.name.startswith("date=") and (p / META).is_file())


def latest_date(ws: Workspace) -> str | None:
    dates = list_dates(ws)
    return dates[-1] if dates else None


def resolve_date(ws: Workspace, date: str | None) -> str:
    """`date` if a snapshot has it, the latest snapshot when None; a clear error otherwise."""
    dates = list_dates(ws)
    if not dates:
        raise FileNotFoundError(f"{root(ws)}: no tag snapshots yet (run `persona rescore`)")
    if date is None or date == "latest":
        return dates[-1]
    if date == "previous":
        if len(dates) < 2:
            raise FileNotFoundError(f"{root(ws)}: only one tag snapshot ({dates[0]}); no previous one to compare")
        return dates[-2]
    if date not in dates:
        raise FileNotFoundError(f"no tag snapshot dated {date!r} (snapshots: {', '.join(dates[-10:])})")
    return date


def read_meta(ws: Workspace, date: str | None = None) -> dict:
    date = resolve_date(ws, date)
    return json.loads((_folder(ws, date) / META).read_text(encoding="utf-8"))


def read(ws: Workspace, date: str | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """One snapshot (the latest by default) as a DataFrame: categorical tags come back as pandas categoricals."""
    date = resolve_date(ws, date)
    table = pq.read_table(_folder(ws, date) / PART, columns=columns)
    frame = table.to_pandas()
    for name, col in frame.items():
        if pa.types.is_list(table.schema.field(name).type):
            frame[name] = col.map(lambda v: tuple(v) if v is not None else ())
    return frame


def _is_list_column(col: pd.Series) -> bool:
    """A column of tuples/lists (a list-valued tag), judged by its first non-null value (not every row)."""
    if col.dtype != object or not len(col):
        return False
    idx = col.first_valid_index()
    return idx is not None and isinstance(col.at[idx], (tuple, list))


def to_arrow(frame: pd.DataFrame) -> pa.Table:
    """Snapshot columns to Arrow: categoricals as dictionary strings, tuples as list<string>, nullable booleans."""
    arrays, names = [], []
    for name, col in frame.items():
        if isinstance(col.dtype, pd.CategoricalDtype):
            # codes and categories straight into a dictionary array: no per-row strings
            arr = pa.DictionaryArray.from_arrays(pa.array(col.cat.codes.to_numpy(), mask=col.isna().to_numpy()),
                                                 pa.array([str(c) for c in col.cat.categories], type=pa.string()))
        elif _is_list_column(col):
            arr = pa.array(col.where(col.notna(), None).tolist(), type=pa.list_(pa.string()))
        elif str(col.dtype) == "boolean":
            arr = pa.array(col.to_numpy(dtype=object, na_value=None), type=pa.bool_())
        elif name == "persona_id":
            arr = pa.array(col.astype(str).to_numpy(), type=pa.string())
        else:
            arr = pa.array(col)
        arrays.append(arr)
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


def clean_partial(ws: Workspace) -> list[str]:
    """Remove what a crashed write left behind (hidden folders); returns their names."""
    base = root(ws)
    if not base.is_dir():
        return []
    gone = []
    for p in base.iterdir():
        if p.name.startswith(".tmp-") or p.name.startswith(".old-"):
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p.name)
    return gone


def write(ws: Workspace, date: str, table: pa.Table, meta: Mapping) -> Path:
    """Publish the snapshot of `date` atomically (see the module docstring); returns its folder."""
    base = root(ws)
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        pq.write_table(table, tmp / PART, compression="zstd", row_group_size=262_144)
        with open(tmp / META, "w", encoding="utf-8") as fh:
            json.dump(dict(meta), fh, ensure_ascii=False, indent=1, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        final = _folder(ws, date)
        if final.exists():
            old = base / f".old-{uuid.uuid4().hex[:12]}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def prune(ws: Workspace, keep: int) -> list[str]:
    """Delete all but the `keep` newest snapshots; returns the dates removed."""
    dates = list_dates(ws)
    gone = dates[:-keep] if keep and len(dates) > keep else []
    for d in gone:
        shutil.rmtree(_folder(ws, d), ignore_errors=True)
    return gone


def _memberships(frame: pd.DataFrame, tag: str) -> pd.DataFrame:
    """(persona_id, value) pairs holding each value of a tag; list tags contribute one pair per element."""
    col = frame[tag]
    if _is_list_column(col):
        pairs = pd.DataFrame({"persona_id": frame["persona_id"], "value": col}).explode("value").dropna()
    else:
        pairs = pd.DataFrame({"persona_id": frame["persona_id"], "value": col}).dropna()
    pairs["value"] = pairs["value"].astype(str)
    return pairs


def diff(ws: Workspace, a: str, b: str, *, tags: list[str] | None = None, sample: int = 5) -> dict:
    """Who entered and who left each tag value between snapshots `a` and `b` (`b` the later one).

    Numeric tags (scores) are left out: they have no values to enter or leave. Returns per tag and value the
    counts before and after, entered and left, and a few persona ids of each.
    """
    a, b = resolve_date(ws, a), resolve_date(ws, b)
    meta_b = read_meta(ws, b)
    kinds = {t["id"]: t["value_type"] for t in meta_b.get("tags", [])}
    wanted = [t for t, k in kinds.items() if k in ("bool", "category", "list") and (not tags or t in tags)]
    unknown = sorted(set(tags or []) - set(kinds))
    if unknown:
        raise KeyError(f"no tag {unknown} in the snapshot of {b} (tags: {', '.join(sorted(kinds))})")
    names_a = set(pq.read_schema(_folder(ws, a) / PART).names)
    old = read(ws, a, columns=["persona_id", *[t for t in wanted if t in names_a]])
    new = read(ws, b, columns=["persona_id", *wanted])
    out: dict = {"from": a, "to": b, "personas": {"from": len(old), "to": len(new)}, "tags": {}}
    for tag in wanted:
        if tag not in new.columns:
            continue
        before = _memberships(old, tag) if tag in old.columns else pd.DataFrame(columns=["persona_id", "value"])
        after = _memberships(new, tag)
        merged = before.merge(after, on=["persona_id", "value"], how="outer", indicator=True)
        values = {}
        for value, grp in merged.groupby("value", sort=True):
            entered = grp.loc[grp["_merge"] == "right_only", "persona_id"]
            left = grp.loc[grp["_merge"] == "left_only", "persona_id"]
            values[str(value)] = {
                "before": int((grp["_merge"] != "right_only").sum()), "after": int((grp["_merge"] != "left_only").sum()),
                "entered": int(len(entered)), "left": int(len(left)),
                "entered_sample": sorted(entered.astype(str))[:sample], "left_sample": sorted(left.astype(str))[:sample],
            }
        out["tags"][tag] = values
    return out


def coverage(frame: pd.DataFrame, tag_ids: list[str]) -> dict[str, float]:
    """Share of personas with a value of each tag (a list tag counts when it holds at least one value)."""
    n = max(len(frame), 1)
    out = {}
    for t in tag_ids:
        if t not in frame.columns:
            continue
        col = frame[t]
        if _is_list_column(col):
            has = (col.str.len().fillna(0) > 0).to_numpy()
        else:
            has = col.notna().to_numpy()
        out[t] = float(np.count_nonzero(has) / n)
    return out


def distribution(frame: pd.DataFrame, tag: str, *, bins: int = 10) -> list[dict]:
    """Value counts of a tag (share of personas); numeric tags are binned into deciles."""
    col = frame[tag]
    n = max(len(frame), 1)
    if _is_list_column(col):
        counts = col.explode().dropna().value_counts()
    elif pd.api.types.is_float_dtype(col.dtype):
        known = col.dropna()
        if known.empty:
            return []
        counts = pd.qcut(known, q=bins, duplicates="drop").value_counts().sort_index()
    else:
        counts = col.dropna().astype(str).value_counts()
    return [{"value": str(k), "count": int(v), "share": float(v / n)} for k, v in counts.items()]
