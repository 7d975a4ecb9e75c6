"""Tag history: one dated snapshot of every persona's tags per rescoring, and who entered or left each tag value.

Layout, partitioned by date (Hive style, so DuckDB, Spark and pyarrow read `<ws>/tags` as one dataset):

    <ws>/tags/date=2025-10-01 -> ../.tag-versions/2025-10-01.<id>     a symlink: the published snapshot of the date
    <ws>/.tag-versions/2025-10-01.<id>/part-0.parquet                 persona_id, model scores, one column per tag
    <ws>/.tag-versions/2025-10-01.<id>/_meta.json                     as-of, model versions, rule statistics, counts

A snapshot is written into a hidden `tags/.tmp-<id>` folder (`_meta.json` last), moved whole into the version store
and published by swapping the `date=` link with one rename, as integration swaps its `current` link: at every
instant each date shows its last complete snapshot, and a reader that resolved a version keeps reading it. Read the
table through the links, one level deep: DuckDB `read_parquet('<ws>/tags/*/*.parquet', hive_partitioning=true)` or
`pyarrow.dataset.dataset('<ws>/tags', partitioning='hive')` (DuckDB's `**` does not follow symlinks).

The version store lives beside `tags/`, not inside it, so that no glob over `tags/` meets a version twice. Versions
no link points to (the one a write replaced, those `prune` unlinked, one a killed run never linked) are deleted at
the start of the next write, never by the call that unlinked them. What a crashed write leaves inside `tags/` is
removed by `clean_partial`, except that a complete snapshot whose date shows none is published rather than deleted.
A plain `date=` folder written by earlier versions is read as it is and swapped for a link when its date is written
again, in one exchange-rename on Linux (elsewhere in two renames, a crash between them finished by `clean_partial`).
One writer at a time: two rescores at once could collect each other's versions (`persona schedule` holds a lock; a
manual run beside it does not).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from persona.faults import kill_point
from persona.workspace import Workspace

DIRNAME = "tags"
VERSIONS = ".tag-versions"  # beside tags/, see the module docstring
META = "_meta.json"
PART = "part-0.parquet"
LEFTOVERS = (".tmp-", ".old-", ".link-")  # what a crashed write leaves in tags/ (.old-: the pre-version code)


def root(ws: Workspace) -> Path:
    return ws.root / DIRNAME


def versions(ws: Workspace) -> Path:
    """The folder holding every snapshot version (see the module docstring)."""
    return ws.root / VERSIONS


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


def read_table(ws: Workspace, date: str | None = None, columns: list[str] | None = None) -> pa.Table:
    """One snapshot (the latest by default) as Arrow: list-valued tags as list arrays, categories as dictionaries."""
    return pq.read_table(_folder(ws, resolve_date(ws, date)) / PART, columns=columns)


def read(ws: Workspace, date: str | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """One snapshot (the latest by default) as a DataFrame: categorical tags come back as pandas categoricals."""
    table = read_table(ws, date, columns)
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
    """Deal with what a crashed write left in `tags/`; returns the names dealt with.

    An interrupted link swap is finished when its date shows no snapshot, else dropped; a complete hidden snapshot
    (a `.tmp-`, or `.old-` from the pre-version code killed between its two renames) is published when its date
    shows none (the newest such of a date); every other leftover is deleted. Cleaning never deletes a date's only
    complete copy. Versions are not touched here: unreferenced ones go at the start of `write`.
    """
    base = root(ws)
    if not base.is_dir():
        return []
    leftovers = sorted((p for p in base.iterdir() if p.name.startswith(LEFTOVERS)), key=lambda p: p.name)
    for p in leftovers:
        if p.is_symlink():
            date = _version_date(Path(os.readlink(p)).name)
            if date and _complete(p) and not _complete(_folder(ws, date)):
                _swap_in(ws, p, date)
            else:
                p.unlink()
    adopt: dict[str, Path] = {}
    for p in leftovers:
        if p.is_symlink() or not p.is_dir() or not (p / META).is_file():
            continue
        date = _meta_date(p)
        if date and not _complete(_folder(ws, date)):
            best = adopt.get(date)
            if best is None or (p / META).stat().st_mtime_ns > (best / META).stat().st_mtime_ns:
                adopt[date] = p
    for date, p in adopt.items():
        store = versions(ws)
        store.mkdir(exist_ok=True)
        version = store / f"{date}.{uuid.uuid4().hex[:12]}"
        os.rename(p, version)
        _link(ws, date, version)
    for p in leftovers:
        _remove(p)
    return [p.name for p in leftovers]


def write(ws: Workspace, date: str, table: pa.Table, meta: Mapping) -> Path:
    """Publish the snapshot of `date` atomically (see the module docstring); returns its `date=` link."""
    base = root(ws)
    base.mkdir(parents=True, exist_ok=True)
    store = versions(ws)
    store.mkdir(exist_ok=True)
    clean_partial(ws)
    _collect(ws)
    token = uuid.uuid4().hex[:12]
    tmp = base / f".tmp-{token}"
    tmp.mkdir()
    version = store / f"{date}.{token}"
    try:
        pq.write_table(table, tmp / PART, compression="zstd", row_group_size=262_144)
        _fsync(tmp / PART)
        with open(tmp / META, "w", encoding="utf-8") as fh:
            json.dump(dict(meta), fh, ensure_ascii=False, indent=1, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, version)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    kill_point("tags.written")
    _link(ws, date, version)
    kill_point("tags.linked")
    return _folder(ws, date)


def prune(ws: Workspace, keep: int) -> list[str]:
    """Unpublish all but the `keep` newest snapshots; returns the dates removed (their data goes at the next write)."""
    dates = list_dates(ws)
    gone = dates[:-keep] if keep and len(dates) > keep else []
    for d in gone:
        folder = _folder(ws, d)
        if _plain(folder):  # from the pre-version code: out of sight in one rename, collected like a version
            store = versions(ws)
            store.mkdir(exist_ok=True)
            os.rename(folder, store / f"{d}.{uuid.uuid4().hex[:12]}")
        else:
            folder.unlink()
    return gone


def _link(ws: Workspace, date: str, version: Path) -> None:
    """Point `date=<date>` at `version` in one step."""
    tmp = root(ws) / f".link-{uuid.uuid4().hex[:12]}"
    os.symlink(Path("..") / VERSIONS / version.name, tmp)  # relative: a copied workspace keeps working
    _swap_in(ws, tmp, date)


def _swap_in(ws: Workspace, link: Path, date: str) -> None:
    """Rename `link` over `date=<date>`; a plain folder there (the old layout) moves to the version store."""
    final = _folder(ws, date)
    if not _plain(final):
        os.replace(link, final)
        return
    old = versions(ws) / f"{date}.{uuid.uuid4().hex[:12]}"
    if _exchange(link, final):  # `link` now names the old folder
        os.rename(link, old)
    else:  # no atomic exchange here: the date is hidden for one rename; clean_partial finishes a crash in between
        os.rename(final, old)
        os.replace(link, final)


def _collect(ws: Workspace) -> list[str]:
    """Delete the versions no `date=` link points to; returns their names."""
    store = versions(ws)
    if not store.is_dir():
        return []
    live = {Path(os.readlink(p)).name for p in root(ws).iterdir() if p.is_symlink()} if root(ws).is_dir() else set()
    gone = sorted(v.name for v in store.iterdir() if v.name not in live)
    for name in gone:
        _remove(store / name)
    return gone


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def _complete(folder: Path) -> bool:
    return (folder / META).is_file()


def _plain(folder: Path) -> bool:
    """A real folder (the layout before versions), not a link."""
    return folder.is_dir() and not folder.is_symlink()


def _version_date(name: str) -> str | None:
    """The date of a version folder's name (`2025-10-01.<id>`)."""
    date, sep, _ = name.rpartition(".")
    return date if sep and date else None


def _meta_date(folder: Path) -> str | None:
    try:
        date = json.loads((folder / META).read_text(encoding="utf-8")).get("date")
    except (OSError, ValueError, AttributeError):
        return None
    return str(date) if date else None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two names in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    if sys.platform != "linux":
        return False
    rename = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if rename is None:
        return False
    if rename(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


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
