"""Campaigns: an audience with a stable random holdout, and whether contacting it paid off (效果追踪 / ROI).

    persona campaign create spring_vip --segment vip_at_risk --holdout 0.1 --start 2026-10-08 --end 2026-10-21 \\
        --cost-per-contact 2.5
    ... the campaign runs; its window's orders arrive with the next `persona integrate` ...
    persona campaign report spring_vip

`create` takes the members of the segment at a tag snapshot (customers who opted out of marketing are left out, as
every export does) and splits them by a keyed hash of the persona id: a member is held out when
siphash-2-4(persona_id, key) / 2^64 < holdout, the key drawn from the campaign's name. The split is reproducible
(same campaign, same members, same groups, on any machine) and independent between campaigns. Everything is recorded
under `campaigns/NAME/` (campaign.json, assignment.parquet with each member's group and scalar tag values at the
snapshot) and the treatment list is written through the segment export (hashed identifiers only).

`report` measures the window [start, end] (whole days in the workspace's time zone) on the integrated transactions:
a member converted when they bought at least once in the window (returns are not purchases); revenue is their net
spend in it (features/transactions.py's one definition of a return and of net amount). Treatment against holdout:
conversion rate difference with the Agresti-Caffo 95% interval, revenue per customer difference with Welch's
interval (normal approximation: it needs some 30 buyers per group, and the report notes when there are fewer;
tests/rules/test_campaigns.py checks both intervals' coverage by simulation), both scaled to the
treatment group as incremental conversions and revenue, and ROI = (incremental value - cost) / cost with its
interval (cost is fixed: the interval is the value's, scaled). The same by tag value shows who responded. Personas
merged into another since the campaign started are followed through `aliases.parquet` to the persona now holding
their purchases.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from features.transactions import net_amount_expr, return_expr
from persona.faults import kill_point
from persona.workspace import Workspace, read_json, write_json_atomic, write_parquet_atomic
from rules import history
from rules.segments import (
    OPT_OUT_COLUMN, Audience, SegmentDef, category_columns, hashed_identifiers, write_members,
)

DIRNAME = "campaigns"
DEFINITION = "campaign.json"
ASSIGNMENT = "assignment.parquet"
TREATMENT = "treatment.csv"
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval
MIN_HOLDOUT_PER_VALUE = 30  # a tag value with fewer holdout members gets no interval: too few to say anything
MIN_BUYERS = 30  # below this many buyers in a group, Welch's normal interval on skewed spend under-covers


class CampaignError(ValueError):
    """A campaign that cannot be created or reported, with what to do about it."""


class CampaignDef(BaseModel):
    """What `campaigns/NAME/campaign.json` records: the settings, and what the split gave."""

    model_config = ConfigDict(extra="forbid")

    name: str
    segment: str
    snapshot_date: str
    holdout: float = Field(gt=0, lt=1)
    start: dt.date
    end: dt.date
    cost_per_contact: float | None = Field(None, ge=0)
    value_per_conversion: float | None = Field(None, ge=0)
    key: str  # the siphash key (16 characters) the split was drawn with
    created_at: str
    audience: int
    treatment: int
    held_out: int
    assignment: str = "holdout when siphash-2-4(persona_id, key) / 2^64 < holdout"

    @model_validator(mode="after")
    def _window(self) -> CampaignDef:
        if self.end < self.start:
            raise ValueError(f"the window ends ({self.end}) before it starts ({self.start})")
        if not NAME.match(self.name):
            raise ValueError(f"name {self.name!r}: lower-case letters, digits, '_' and '-', at most 64")
        return self

    def settings(self) -> dict:
        """What a re-run of `create` must match to be the same campaign."""
        return self.model_dump(mode="json", include={"segment", "snapshot_date", "holdout", "start", "end",
                                                     "cost_per_contact", "value_per_conversion"})


# --- where campaigns live -------------------------------------------------------------------------------------------
def folder(ws: Workspace, name: str) -> Path:
    if not NAME.match(name or ""):
        raise CampaignError(f"campaign name {name!r}: use lower-case letters, digits, '_' and '-' (at most 64, "
                            "starting with a letter or digit)")
    return ws.root / DIRNAME / name


def load(ws: Workspace, name: str) -> CampaignDef:
    path = folder(ws, name) / DEFINITION
    if not path.exists():
        known = [c["name"] for c in list_campaigns(ws)]
        raise CampaignError(f"no campaign {name!r} in {ws.root / DIRNAME}"
                            + (f" (there are: {', '.join(known[:10])})" if known else
                               ": create one with `persona campaign create`"))
    try:
        return CampaignDef.model_validate(read_json(path))
    except ValidationError as exc:
        raise CampaignError(f"{path}: not a campaign record: {exc.errors()[0]['msg']}") from None


def list_campaigns(ws: Workspace) -> list[dict]:
    """Every recorded campaign's settings and sizes, newest first."""
    root = ws.root / DIRNAME
    found = []
    for path in sorted(root.glob(f"*/{DEFINITION}")) if root.exists() else []:
        try:
            found.append(CampaignDef.model_validate(read_json(path)).model_dump(mode="json"))
        except (ValidationError, ValueError):
            continue  # a half-written or foreign folder is not a campaign
    return sorted(found, key=lambda c: c["created_at"], reverse=True)


# --- the split ------------------------------------------------------------------------------------------------------
def key_of(name: str) -> str:
    """The 16-character siphash key of a campaign, from its name: re-creating it draws the same split."""
    return hashlib.blake2b(f"persona-campaign:{name}".encode(), digest_size=8).hexdigest()


def held_out(persona_ids: Sequence[str] | np.ndarray, key: str, fraction: float) -> np.ndarray:
    """True for the members held out: siphash-2-4 of each id under `key`, as a uniform draw in [0, 1)."""
    ids = np.asarray(persona_ids, dtype=object)
    h = pd.util.hash_array(ids, hash_key=key, categorize=False)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53) < fraction


# --- create ---------------------------------------------------------------------------------------------------------
def create(ws: Workspace, segments: Mapping[str, SegmentDef], name: str, segment: str, *, holdout: float,
           start: dt.date, end: dt.date, cost_per_contact: float | None = None,
           value_per_conversion: float | None = None, date: str | None = None, out: Path | None = None,
           replace: bool = False) -> dict:
    """Record a campaign over the members of `segment` (an id or an expression) and write its treatment list.

    Re-running it with the same settings changes nothing and says so; other settings under the same name are refused
    unless `replace`. The folder appears whole or not at all (written aside, then renamed in).
    """
    target = folder(ws, name)
    recover(ws, name)
    aud = Audience.open(ws, segments, date)
    try:
        spec = CampaignDef(name=name, segment=segment, snapshot_date=aud.date, holdout=holdout, start=start, end=end,
                           cost_per_contact=cost_per_contact, value_per_conversion=value_per_conversion,
                           key=key_of(name), created_at="-", audience=0, treatment=0, held_out=0)
    except ValidationError as exc:
        e = exc.errors()[0]
        raise CampaignError(f"campaign {name}: {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}") from None
    if (target / DEFINITION).exists():
        existing = load(ws, name)
        if existing.settings() == spec.settings() and (target / ASSIGNMENT).exists():
            return {**summary(ws, existing), "unchanged": True}
        if not replace:
            raise CampaignError(
                f"campaign {name!r} exists with other settings ({_differences(existing.settings(), spec.settings())});"
                " choose another name, or pass --replace to draw it again")
    t0 = time.perf_counter()
    mask = aud.select(segment)
    members = aud.persona_ids[mask].astype(str).reset_index(drop=True)
    if members.empty:
        raise CampaignError(f"campaign {name}: segment {segment!r} selects no one at the snapshot {aud.date}")
    out_group = held_out(members.to_numpy(), spec.key, holdout)
    if out_group.all() or not out_group.any():
        raise CampaignError(f"campaign {name}: a holdout of {holdout:g} over {len(members):,} members leaves "
                            f"{'no one to contact' if out_group.all() else 'no one held out'}; "
                            "use a larger segment or another holdout")
    spec = spec.model_copy(update={
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "audience": int(len(members)),
        "treatment": int((~out_group).sum()), "held_out": int(out_group.sum())})
    assignment = _assignment(aud, members, out_group, mask)
    root = ws.root / DIRNAME
    tmp = root / f".tmp-{name}-{os.getpid()}"
    tmp.mkdir(parents=True)
    write_parquet_atomic(tmp / ASSIGNMENT, assignment)
    identifiers = hashed_identifiers(ws)  # read once for the treatment list and the copy --out asks for
    exported = write_members(aud, members[~out_group], f"campaign:{name}", tmp / TREATMENT, identifiers=identifiers)
    write_json_atomic(tmp / DEFINITION, spec.model_dump(mode="json"))
    kill_point("campaign.built")
    if target.exists():  # --replace: the old record goes aside first, so a crash leaves one of the two whole
        old = root / f".old-{name}-{os.getpid()}"
        target.replace(old)
        kill_point("campaign.set_aside")
        tmp.replace(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.replace(target)
    result = summary(ws, spec)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    if out is not None:
        exported = write_members(aud, members[~out_group], f"campaign:{name}", out, identifiers=identifiers)
    result["treatment_list"] = exported["path"] if out is not None else str(target / TREATMENT)
    return result


def recover(ws: Workspace, name: str) -> list[str]:
    """What a create killed halfway left: a record set aside by --replace whose successor never arrived is put
    back; half-built folders are removed. Returns what was done."""
    root, target, done = ws.root / DIRNAME, folder(ws, name), []
    for old in sorted(root.glob(f".old-{name}-*")) if root.exists() else []:
        if not target.exists():
            old.replace(target)
            done.append(f"restored {target.name} from {old.name}")
        else:
            shutil.rmtree(old, ignore_errors=True)
            done.append(f"removed {old.name}")
    for tmp in sorted(root.glob(f".tmp-{name}-*")) if root.exists() else []:
        shutil.rmtree(tmp, ignore_errors=True)
        done.append(f"removed {tmp.name}")
    return done


def _differences(a: dict, b: dict) -> str:
    return ", ".join(f"{k}: {a.get(k)} -> {b.get(k)}" for k in b if a.get(k) != b.get(k))


def _assignment(aud: Audience, members: pd.Series, out_group: np.ndarray, mask: np.ndarray) -> pd.DataFrame:
    """persona_id, group, and the members' scalar tag values at the snapshot (for the report by tag value)."""
    frame = pd.DataFrame({"persona_id": members.to_numpy(),
                          "group": np.where(out_group, "holdout", "treatment")})
    snap_cols = [c for c in aud.snapshot_columns if c != OPT_OUT_COLUMN]
    snap = history.read_table(aud.ws, aud.date, columns=snap_cols).filter(pa.array(np.asarray(mask, dtype=bool)))
    for field in snap.schema:  # list-valued tags are told by their Arrow type, not by looking at every row
        col = snap.column(field.name)
        if pa.types.is_list(field.type) or pa.types.is_large_list(field.type):
            as_text = pc.cast(col, pa.list_(pa.string()))
            frame[field.name] = pc.if_else(pc.is_null(as_text), pa.scalar([], pa.list_(pa.string())),
                                           as_text).to_pylist()
            continue
        series = col.to_pandas()
        if category_columns(pd.DataFrame({field.name: series})):
            frame[field.name] = series.astype("string").reset_index(drop=True)
    return frame


def summary(ws: Workspace, spec: CampaignDef) -> dict:
    return {"campaign": spec.name, "segment": spec.segment, "snapshot_date": spec.snapshot_date,
            "window": {"start": spec.start.isoformat(), "end": spec.end.isoformat()}, "holdout": spec.holdout,
            "audience": spec.audience, "treatment": spec.treatment, "held_out": spec.held_out,
            "folder": str(folder(ws, spec.name))}


# --- outcomes -------------------------------------------------------------------------------------------------------
def window_utc(start: dt.date, end: dt.date, tz: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """[start 00:00, end + 1 day 00:00) in the workspace's time zone, as UTC instants."""
    lo = pd.Timestamp(start).tz_localize(tz).tz_convert("UTC")
    hi = (pd.Timestamp(end) + pd.Timedelta(days=1)).tz_localize(tz).tz_convert("UTC")
    return lo, hi


def current_ids(ws: Workspace, persona_ids: np.ndarray) -> np.ndarray:
    """Each persona id as it is now: a persona merged into another since (aliases.parquet) becomes that one; a
    retired one (no alias_of) stays as it was and has no purchases."""
    current = ws.require_current("integrated", "run `persona integrate`")
    path = current / "aliases.parquet"
    ids = pd.Series(persona_ids, dtype=object)
    if not path.exists():
        return ids.to_numpy()
    aliases = pd.read_parquet(path, columns=["persona_id", "alias_of"]).dropna()
    step = pd.Series(aliases["alias_of"].to_numpy(dtype=object), index=aliases["persona_id"].to_numpy(dtype=object))
    for _ in range(8):  # chains are resolved at integration; a few hops bound any that were not
        moved = ids.map(step)
        if moved.isna().all():
            break
        ids = moved.fillna(ids)
    return ids.to_numpy()


def outcomes(ws: Workspace, persona_ids: np.ndarray, start: dt.date, end: dt.date) -> tuple[pd.DataFrame, dict]:
    """Per persona (in the order given): converted (bought at least once in the window) and net revenue in it."""
    current = ws.require_current("integrated", "run `persona integrate`")
    tx = current / "transactions.parquet"
    lo, hi = window_utc(start, end, ws.config().timezone)
    ids = current_ids(ws, persona_ids)
    con = duckdb.connect()
    try:
        cols = set(pq.read_schema(tx).names)
        per = con.execute(f"""
            SELECT persona_id, bool_or(NOT ({return_expr(cols)})) AS converted, sum({net_amount_expr(cols)}) AS revenue
            FROM read_parquet(?) WHERE ts::TIMESTAMPTZ >= ? AND ts::TIMESTAMPTZ < ? AND persona_id IS NOT NULL
            GROUP BY persona_id""",
                          [str(tx), lo.to_pydatetime(), hi.to_pydatetime()]).df()
        through = con.execute("SELECT max(ts) FROM read_parquet(?)", [str(tx)]).fetchone()[0]
    finally:
        con.close()
    per = per.set_index("persona_id")
    got = per.reindex(ids)
    frame = pd.DataFrame({"converted": got["converted"].astype("boolean").fillna(False).to_numpy(dtype=bool),
                          "revenue": got["revenue"].fillna(0.0).to_numpy(dtype=np.float64)})
    through = pd.Timestamp(through).tz_convert("UTC") if through is not None else None
    info = {"window_utc": [lo.isoformat(), hi.isoformat()],
            "data_through": through.isoformat() if through is not None else None,
            # The data covers the window when its latest purchase falls on the window's last day or later: nothing
            # says more about whether every till has delivered that day.
            "complete": bool(through is not None and through >= hi - pd.Timedelta(days=1)),
            "merged_since": int((ids != np.asarray(persona_ids, dtype=object)).sum())}
    return frame, info


# --- statistics (vectorised: one call for the whole campaign or for every tag value at once) -----------------------
def rate_difference(x_t, n_t, x_h, n_h) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Treatment minus holdout conversion rate, with the Agresti-Caffo 95% interval (one success and one failure
    added to each group for the interval only: good coverage down to small groups and rates near 0 or 1)."""
    x_t, n_t, x_h, n_h = (np.asarray(v, dtype=np.float64) for v in (x_t, n_t, x_h, n_h))
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = x_t / n_t - x_h / n_h
        pt, ph = (x_t + 1) / (n_t + 2), (x_h + 1) / (n_h + 2)
        se = np.sqrt(pt * (1 - pt) / (n_t + 2) + ph * (1 - ph) / (n_h + 2))
        centre = pt - ph
    return diff, centre - Z95 * se, centre + Z95 * se


def mean_difference(s_t, ss_t, n_t, s_h, ss_h, n_h) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Treatment minus holdout mean from sums and sums of squares, with Welch's 95% interval (normal)."""
    s_t, ss_t, n_t, s_h, ss_h, n_h = (np.asarray(v, dtype=np.float64) for v in (s_t, ss_t, n_t, s_h, ss_h, n_h))
    with np.errstate(divide="ignore", invalid="ignore"):
        m_t, m_h = s_t / n_t, s_h / n_h
        v_t = np.maximum(ss_t - n_t * m_t ** 2, 0) / np.maximum(n_t - 1, 1)
        v_h = np.maximum(ss_h - n_h * m_h ** 2, 0) / np.maximum(n_h - 1, 1)
        se = np.sqrt(v_t / n_t + v_h / n_h)
    diff = m_t - m_h
    return diff, diff - Z95 * se, diff + Z95 * se


def _interval(estimate, low, high, scale: float = 1.0, digits: int = 6) -> dict:
    vals = [float(v) * scale for v in (estimate, low, high)]
    return {k: (round(v, digits) if math.isfinite(v) else None) for k, v in zip(("estimate", "low", "high"), vals)}


def _sums(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """n, conversions, revenue and its sum of squares per (by..., group), groups as columns (_t, _h)."""
    g = frame.assign(rev2=frame["revenue"] ** 2).groupby([*by, "group"], observed=True, sort=False).agg(
        n=("converted", "size"), x=("converted", "sum"), s=("revenue", "sum"), ss=("rev2", "sum"))
    wide = g.unstack("group", fill_value=0)
    out = pd.DataFrame(index=wide.index)
    for stat in ("n", "x", "s", "ss"):
        for grp, suffix in (("treatment", "_t"), ("holdout", "_h")):
            out[stat + suffix] = wide[stat][grp] if grp in wide[stat].columns else 0
    return out


# --- report ---------------------------------------------------------------------------------------------------------
def report(ws: Workspace, name: str, *, top_values: int = 8) -> dict:
    """Treatment against holdout over the campaign's window: conversion, revenue, increments with 95% intervals,
    ROI from the costs, and the same per tag value (who responded)."""
    t0 = time.perf_counter()
    spec = load(ws, name)
    path = folder(ws, name) / ASSIGNMENT
    if not path.exists():
        raise CampaignError(f"{path} is missing: the campaign was not created whole; run `persona campaign create "
                            f"{name} ... --replace`")
    assignment = pd.read_parquet(path)
    res, info = outcomes(ws, assignment["persona_id"].to_numpy(dtype=object), spec.start, spec.end)
    frame = pd.concat([assignment.reset_index(drop=True), res], axis=1)
    total = _sums(frame.assign(_all="all"), ["_all"]).iloc[0]
    groups = {}
    for grp, sfx in (("treatment", "_t"), ("holdout", "_h")):
        n = int(total["n" + sfx])
        groups[grp] = {"customers": n, "converted": int(total["x" + sfx]),
                       "conversion_rate": round(total["x" + sfx] / n, 6) if n else None,
                       "revenue": round(float(total["s" + sfx]), 2),
                       "revenue_per_customer": round(total["s" + sfx] / n, 4) if n else None}
    rd = rate_difference(total["x_t"], total["n_t"], total["x_h"], total["n_h"])
    md = mean_difference(total["s_t"], total["ss_t"], total["n_t"], total["s_h"], total["ss_h"], total["n_h"])
    n_t = float(total["n_t"])
    lift = {"conversion_rate": _interval(*rd), "incremental_conversions": _interval(*rd, scale=n_t, digits=2),
            "revenue_per_customer": _interval(*md, digits=4), "incremental_revenue": _interval(*md, scale=n_t,
                                                                                               digits=2)}
    result = {"campaign": spec.name, "segment": spec.segment, "snapshot_date": spec.snapshot_date,
              "window": {"start": spec.start.isoformat(), "end": spec.end.isoformat()}, **info,
              "holdout": spec.holdout, "confidence": 0.95, "groups": groups, "lift": lift,
              "roi": _roi(spec, rd, md, n_t), "by_tag": _by_tag(frame, top_values)}
    result["notes"] = [] if min(total["x_t"], total["x_h"]) >= MIN_BUYERS else [
        f"fewer than {MIN_BUYERS} buyers in a group: the revenue interval (normal approximation) is approximate "
        "and tends to be too narrow for skewed spend"]
    if not info["complete"]:
        result["warning"] = (f"the integrated data's latest purchase is at {info['data_through']}, before the "
                             f"window's last day ({spec.end}): figures are partial until the window's orders are "
                             "integrated")
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result


def _roi(spec: CampaignDef, rd, md, n_t: float) -> dict | None:
    if spec.cost_per_contact is None:
        return None
    cost = spec.cost_per_contact * n_t
    if spec.value_per_conversion is not None:
        basis, value = "incremental conversions x value per conversion", [v * n_t * spec.value_per_conversion
                                                                             for v in rd]
    else:
        basis, value = "incremental revenue", [v * n_t for v in md]
    roi = [(v - cost) / cost if cost > 0 else math.nan for v in value]
    return {"cost": round(cost, 2), "value_basis": basis, "incremental_value": _interval(*value, digits=2),
            "roi": _interval(*roi, digits=4)}


def _by_tag(frame: pd.DataFrame, top_values: int) -> list[dict]:
    rows = []
    for c in [c for c in frame.columns if c not in ("persona_id", "group", "converted", "revenue")]:
        col = frame[c]
        sub = frame[["group", "converted", "revenue"]].assign(value=col)
        if col.dtype == object:  # list-valued tags (top_interests): one row per value held
            sub = sub.explode("value")
        sub = sub.dropna(subset=["value"])
        if sub.empty:
            continue
        sums = _sums(sub, ["value"])
        sums = sums.sort_values("n_t", ascending=False).head(top_values)
        rd = rate_difference(sums["x_t"], sums["n_t"], sums["x_h"], sums["n_h"])
        md = mean_difference(sums["s_t"], sums["ss_t"], sums["n_t"], sums["s_h"], sums["ss_h"], sums["n_h"])
        enough = sums["n_h"].to_numpy() >= MIN_HOLDOUT_PER_VALUE
        for i, (value, r) in enumerate(sums.iterrows()):  # at most top_values rows per tag: output, not a hot path
            rows.append({
                "tag": c, "value": str(value), "treatment": int(r["n_t"]), "holdout": int(r["n_h"]),
                "conversion_treatment": round(r["x_t"] / r["n_t"], 6) if r["n_t"] else None,
                "conversion_holdout": round(r["x_h"] / r["n_h"], 6) if r["n_h"] else None,
                "lift": _interval(rd[0][i], rd[1][i], rd[2][i]) if enough[i] else None,
                "revenue_lift": _interval(md[0][i], md[1][i], md[2][i], digits=4) if enough[i] else None,
                "note": None if enough[i] else f"fewer than {MIN_HOLDOUT_PER_VALUE} held out: no interval"})
    return rows


