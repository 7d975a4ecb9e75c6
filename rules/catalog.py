"""The tag catalog: every tag, rule or model, with its definition, coverage, distribution and last change.

The definitions come from the workspace's tag set (the defaults shipped in `rules/default` plus the workspace's own
files); coverage and distributions from the latest tag snapshot written by `persona rescore`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pyarrow.parquet as pq

from feature_repo import definitions as defs
from features import store as feature_store
from persona.config import PersonaConfig
from persona.workspace import Workspace
from rules import history
from rules.loading import DEFAULT_DIR, load_tagset
from rules.tags import TagSet

CATEGORY_ZH = {"basic": "基础属性", "consumption": "消费特征", "behaviour": "行为偏好", "predictive": "预测标签",
               "enrichment": "外部增补"}


def workspace_columns(ws: Workspace) -> list[str]:
    """The columns a tag may read here: every feature of the offline snapshots and the model outputs last scored."""
    cols = []
    for _, path in feature_store.snapshot_files(ws).items():
        cols += [c for c in pq.read_schema(path).names if c not in ("persona_id", "event_timestamp",
                                                                      "created_timestamp")]
    date = history.latest_date(ws)
    if date is not None:
        cols += history.read_meta(ws, date).get("outputs", [])
    return cols


def rule_paths(ws: Workspace, cfg: PersonaConfig) -> list[Path]:
    """The default tag set (unless turned off) and the workspace's own rule folders or files that exist."""
    paths = [DEFAULT_DIR] if cfg.tags.defaults else []
    paths += [ws.root / p for p in cfg.tags.paths if (ws.root / p).exists()]
    return paths


def load_rules(ws: Workspace, cfg: PersonaConfig, columns: Iterable[str]) -> TagSet:
    """The workspace's TagSet, validated against the columns the scoring frame will have."""
    return load_tagset(rule_paths(ws, cfg), columns={c: "number" for c in columns if c != defs.JOIN_KEY})


def tagset(ws: Workspace) -> TagSet:
    return load_rules(ws, ws.config(), workspace_columns(ws))


def listing(ws: Workspace) -> dict:
    """Every tag of the catalog with its category, type and coverage in the latest snapshot (None before one)."""
    tags = tagset(ws)
    date = history.latest_date(ws)
    coverage = history.read_meta(ws, date).get("coverage", {}) if date else {}
    rows = []
    for t in tags.catalog():
        rows.append({**t, "category_zh": t.get("category_zh") or CATEGORY_ZH.get(t["category"], ""),
                     "coverage": coverage.get(t["id"])})
    return {"date": date, "tags": rows, "unavailable": dict(tags.unavailable)}


def show(ws: Workspace, tag_id: str) -> dict:
    """One tag: its definition, coverage and value distribution in the latest snapshot, and its last change."""
    tags = tagset(ws)
    found = {t["id"]: t for t in tags.catalog()}
    if tag_id not in found:
        import difflib

        close = difflib.get_close_matches(tag_id, sorted(found), n=1)
        why = tags.unavailable.get(tag_id)
        raise KeyError(f"no tag {tag_id!r}" + (f": unavailable in this workspace ({why})" if why else "")
                       + (f" (did you mean {close[0]!r}?)" if close and not why else ""))
    out = {"tag": found[tag_id], "date": None, "coverage": None, "distribution": [], "last_change": None}
    dates = history.list_dates(ws)
    if not dates:
        return out
    frame = history.read(ws, dates[-1], columns=["persona_id", tag_id]) if _has(ws, dates[-1], tag_id) else None
    if frame is None:
        return out
    out.update(date=dates[-1], coverage=history.coverage(frame, [tag_id]).get(tag_id),
               distribution=history.distribution(frame, tag_id))
    if len(dates) >= 2 and found[tag_id]["value_type"] in ("bool", "category", "list") and _has(ws, dates[-2], tag_id):
        change = history.diff(ws, dates[-2], dates[-1], tags=[tag_id]).get("tags", {}).get(tag_id, {})
        out["last_change"] = {"from": dates[-2], "to": dates[-1], "values": change}
    return out


def _has(ws: Workspace, date: str, column: str) -> bool:
    return column in pq.read_schema(history.root(ws) / f"date={date}" / history.PART).names
