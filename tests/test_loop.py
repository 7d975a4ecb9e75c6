"""The day-two loop, as an operator runs it: new source files land, then `persona integrate`, `persona features` and
`persona rescore` (and, once, `persona train --promote`), night after night.

Three nights on a copy of the trained 1,500-customer workspace, each through the real command line (a subprocess
per command), with new files appended between them: rows of existing customers copied from the last month's files
with their timestamps moved past everything seen so far and new row keys (so they are new rows, not duplicates),
and a few brand-new customers. After every command the test checks what the next night relies on: the counts
reconcile, persona ids are kept, the published run resolves, the new scoring date is in every snapshot file while
the earlier dates' rows are untouched, the online store answers for a new customer, a new tag snapshot sits beside
the earlier ones. `persona features` after a rescore used to fail (`ArrowInvalid: No match for
FieldRef.Name(event_timestamp)`, the tag view being materialised): nights two and three run it after the previous
night's rescore, and the test ends with one straight after the last rescore.

The new data's dates follow the clock: integration quarantines timestamps after tomorrow, so each night moves
`night_length` days (up to 30) past the generated data's end, whatever fits before today.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import store as feature_store
from features import online_reader
from persona.workspace import KEEP_RUNS, Workspace
from rules import history

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
NIGHTS = 3
TRAIN_ON = 2  # the night that also retrains (behind the promotion gate)
NEW_CUSTOMERS = 4  # brand-new people per night
COPIED_ROWS = {"online_orders": 40, "store_pos": 40, "app_events": 300}  # existing customers' rows per night
GLOB_SOURCES = ("online_orders", "store_pos", "app_events")  # the sources whose path is a glob: new files append
LOCAL_TZ = "Asia/Shanghai"  # the generated sources' time zone (persona.yaml `timezone`)


# --- the command line -------------------------------------------------------------------------------------------
def persona(root: Path, *args: str, timings: dict | None = None) -> dict:
    """Run `persona ARGS -w ROOT --json` as an operator would (a new process); its JSON report. Fails on exit != 0.

    `timings` adds up the seconds per command (with the ~5-25 s a process spends importing Feast and MLflow)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONA_")}  # the workspace's own settings only
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "persona.cli", *args, "-w", str(root), "--json"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    if timings is not None:
        timings[" ".join(args)] = timings.get(" ".join(args), 0.0) + time.perf_counter() - began
    assert done.returncode == 0, (f"`persona {' '.join(args)}` exited {done.returncode}\n"
                                  f"stderr (end):\n{done.stderr[-6000:]}\nstdout (end):\n{done.stdout[-2000:]}")
    # Libraries may print progress on stdout; the report is the command's last line.
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"`persona {' '.join(args)}` printed no JSON report:\n{done.stdout[-2000:]}"
    return json.loads(lines[-1])


# --- new data for a night ---------------------------------------------------------------------------------------
def last_activity(ws: Workspace) -> pd.Timestamp:
    """The latest integrated activity (UTC): everything appended later comes after it."""
    current = ws.require_current("integrated", "the fixture integrates")
    latest = [pd.read_parquet(current / f"{kind}.parquet", columns=["ts"])["ts"].max()
              for kind in ("transactions", "events") if (current / f"{kind}.parquet").exists()]
    return pd.Timestamp(max(latest)).tz_convert("UTC")


def night_length(end: pd.Timestamp) -> int:
    """Days each night's new data moves forward: as much as fits before today for all nights (integration
    quarantines a timestamp after tomorrow), at most 30."""
    days = min(30, (pd.Timestamp.now(tz="UTC") - end).days // NIGHTS)
    assert days >= 7, f"the generated data ends {end.date()}: too close to today for {NIGHTS} later nights"
    return days


def _last_file(ws: Workspace, pattern: str) -> Path:
    """The generator's last month file of a source (not one this test wrote)."""
    return sorted(p for p in ws.root.glob(pattern) if not p.name.startswith("loop-"))[-1]


def _window(times_utc: pd.Series, end: pd.Timestamp, days: int) -> pd.Series:
    """Rows of the last `days` days up to `end`: moved forward by `days * night`, they land after the previous
    night's data and no later than this night's end."""
    return (times_utc > end - pd.Timedelta(days=days)) & (times_utc <= end)


def append_night(ws: Workspace, night: int, end: pd.Timestamp, days: int, taken: set[str]) -> dict:
    """Write this night's new source files (`loop-<night>.*`, matching the sources' globs); returns what was written:
    {"rows": {source: rows written}, "accounts": [the new customers' account ids]}. `taken`: phone numbers in use."""
    rng = random.Random(night)
    shift = pd.Timedelta(days=days * night)
    lo = end + pd.Timedelta(days=days * (night - 1))  # the previous night's end
    tag = f"N{night}"

    # new customers: an online account with a phone and an e-mail, a store visit, some app browsing
    accounts, phones, emails, devices = [], [], [], []
    for i in range(NEW_CUSTOMERS):
        while True:
            digits = f"199{rng.randrange(10 ** 8):08d}"
            if f"+86{digits}" not in taken:
                break
        taken.add(f"+86{digits}")
        accounts.append(f"ALOOP{night}{i:03d}")
        phones.append(digits)
        emails.append(f"loop.n{night}.c{i}@163.com")
        devices.append(str(uuid.UUID(int=rng.getrandbits(128), version=4)))
    new_times = [(lo + pd.Timedelta(days=1 + i, hours=3)).tz_convert(LOCAL_TZ) for i in range(NEW_CUSTOMERS)]
    assert new_times[-1] < end + shift

    # online orders (ISO times with their offset)
    src = pd.read_csv(_last_file(ws, "raw/online_orders/*.csv"), dtype=str, keep_default_na=False)
    when = pd.to_datetime(src["order_time"], errors="coerce", utc=True)
    rows = src[_window(when, end, days)].sample(n=COPIED_ROWS["online_orders"], random_state=night).copy()
    rows["order_time"] = [(pd.Timestamp(t) + shift).isoformat() for t in rows["order_time"]]
    fresh = pd.DataFrame([{
        "order_id": "", "account_id": a, "buyer_email": e, "buyer_phone": p, "order_time": t.isoformat(),
        "amount": f"{120 + 37 * i:.2f}", "quantity": "1", "category": "skincare", "discount_amount": "0.00",
        "status": "paid", "ship_city": "上海"} for i, (a, e, p, t) in enumerate(zip(accounts, emails, phones, new_times))])
    orders = pd.concat([rows, fresh], ignore_index=True)[src.columns]
    orders["order_id"] = [f"OD{tag}L{j:06d}" for j in range(len(orders))]
    orders.to_csv(ws.root / f"raw/online_orders/loop-{night}.csv", index=False)

    # store POS (local wall-clock times)
    src = pd.read_csv(_last_file(ws, "raw/pos/*.csv"), dtype=str, keep_default_na=False)
    local = pd.to_datetime(src["txn_time"], format="%Y/%m/%d %H:%M", errors="coerce")
    when = local.dt.tz_localize(LOCAL_TZ, nonexistent="NaT", ambiguous="NaT").dt.tz_convert("UTC")
    rows = src[_window(when, end, days)].sample(n=COPIED_ROWS["store_pos"], random_state=night).copy()
    rows["txn_time"] = (local[rows.index] + shift).dt.strftime("%Y/%m/%d %H:%M")
    fresh = pd.DataFrame([{
        "txn_id": "", "store_id": "S01001", "member_card": "", "phone": p,
        "txn_time": t.strftime("%Y/%m/%d %H:%M"), "amount": "88.00", "qty": "1",
        "category": "护肤", "discount": "0.00", "is_return": "0"} for p, t in zip(phones, new_times)])
    pos = pd.concat([rows, fresh], ignore_index=True)[src.columns]
    pos["txn_id"] = [f"T{tag}L{j:06d}" for j in range(len(pos))]
    pos.to_csv(ws.root / f"raw/pos/loop-{night}.csv", index=False)

    # app events (Parquet, epoch milliseconds)
    path = _last_file(ws, "raw/app_events/*.parquet")
    table = pq.read_table(path)
    src = table.to_pandas()
    when = pd.to_datetime(src["event_time"], unit="ms", utc=True)
    rows = src[_window(when, end, days)].sample(n=COPIED_ROWS["app_events"], random_state=night).copy()
    rows["event_time"] = rows["event_time"] + shift // pd.Timedelta(milliseconds=1)
    fresh = pd.DataFrame([{
        "event_id": "", "device_id": d, "user_id": a,
        "event_time": (t + pd.Timedelta(hours=j)).value // 1_000_000, "event_type": kind, "category": "C04",
        "platform": "ios"} for a, d, t in zip(accounts, devices, new_times)
        for j, kind in enumerate(("session_start", "product_view", "product_view", "cart_add"))])
    events = pd.concat([rows, fresh], ignore_index=True)[src.columns]
    events["event_id"] = [f"E{tag}L{j:08d}" for j in range(len(events))]
    pq.write_table(pa.Table.from_pandas(events, schema=table.schema, preserve_index=False),
                   ws.root / f"raw/app_events/loop-{night}.parquet")

    return {"rows": {"online_orders": len(orders), "store_pos": len(pos), "app_events": len(events)},
            "accounts": accounts}


# --- what a night leaves ----------------------------------------------------------------------------------------
def identity(ws: Workspace) -> pd.Series:
    """persona_id per (id_type, value_hash) of the published identity map, linked identifiers only."""
    current = ws.require_current("integrated", "run persona integrate")
    ids = pd.read_parquet(current / "identity_map.parquet", columns=["id_type", "value_hash", "persona_id", "status"])
    ids = ids[ids["persona_id"].notna()]
    return ids.set_index(["id_type", "value_hash"])["persona_id"].astype(str)


def offline(ws: Workspace) -> dict[str, pd.DataFrame]:
    """Every snapshot group file, whole (small at 1,500 customers)."""
    return {p.stem: pd.read_parquet(p) for p in sorted(feature_store.offline_dir(ws).glob("*.parquet"))}


def rows_at(frame: pd.DataFrame, date: pd.Timestamp, *, drop: tuple[str, ...] = ()) -> pd.DataFrame:
    at = frame[frame["event_timestamp"] == date].drop(columns=list(drop))
    return at.sort_values("persona_id").reset_index(drop=True)


def check_integrate(ws: Workspace, report: dict, before: dict, added: dict, night: int) -> set[str]:
    """The checks after integrate; returns the new customers' persona ids."""
    where = f"night {night}, integrate"
    for name, s in report["sources"].items():
        assert s["read"] == s["accepted"] + s["quarantined"] + s.get("erased", 0), (where, name, s)
        old = before["sources"][name]
        if name in GLOB_SOURCES:  # one new file each, every row of it read, none taken for a repeat
            assert (s["files"], s["read"]) == (old["files"] + 1, old["read"] + added["rows"][name]), (where, name)
            assert s["reasons"].get("duplicate", 0) == old["reasons"].get("duplicate", 0), (where, name)
        else:  # single-file sources did not change: not read again
            assert (s["files"], s["read"], s["accepted"]) == (old["files"], old["read"], old["accepted"]), \
                (where, name)

    # Exactly the new customers are new personas, and everybody else kept their id.
    now = identity(ws)
    assert report["personas"] == before["personas"] + NEW_CUSTOMERS, where
    kept = now.reindex(before["identity"].index)
    changed = kept[kept != before["identity"]]
    assert changed.empty, f"{where}: {len(changed)} identifiers changed persona, e.g. {changed.head(5).to_dict()}"
    current = ws.require_current("integrated", "")
    profiles = pd.read_parquet(current / "profiles.parquet", columns=["persona_id"])["persona_id"].astype(str)
    assert len(profiles) == report["personas"] and profiles.is_unique, where
    new = set(profiles) - before["profiles"]
    ids = pd.read_parquet(current / "identity_map.parquet", columns=["id_type", "value", "persona_id"])
    theirs = ids[(ids["id_type"] == "account_id") & ids["value"].isin(added["accounts"])]
    assert sorted(theirs["value"]) == sorted(added["accounts"]), where
    assert set(theirs["persona_id"].astype(str)) == new and len(new) == NEW_CUSTOMERS, where

    # Published, resolvable, pruned, nothing half-built left behind.
    runs = ws.stage_dir("integrated") / "runs"
    assert current == runs / report["run_id"], where
    assert json.loads((current / "report.json").read_text(encoding="utf-8"))["run_id"] == report["run_id"]
    published = [p.name for p in runs.iterdir() if not p.name.startswith(".")]
    assert report["run_id"] in published and len(published) <= KEEP_RUNS, (where, published)
    leftovers = [p.name for p in runs.iterdir() if p.name.endswith(".building")]
    leftovers += [p.name for p in ws.stage_dir("integrated").iterdir() if p.name.startswith(".current.")]
    assert not leftovers, (where, leftovers)
    return new


def check_features(ws: Workspace, report: dict, before: dict, new_personas: set[str], night: int) -> None:
    where = f"night {night}, features"
    scoring = pd.Timestamp(report["dates"][-1])
    assert scoring == (pd.Timestamp(report["data_end"]) + pd.Timedelta(days=1)).normalize(), where
    assert scoring > before["scoring"], (where, scoring, before["scoring"])
    computed = {pd.Timestamp(d) for d in report["computed"]}
    now = offline(ws)
    assert set(now) == set(before["offline"]), where
    for group, frame in now.items():
        dates = set(frame["event_timestamp"].unique())
        assert scoring in dates, f"{where}: {group}.parquet has no rows at the scoring date {scoring}"
        old = before["offline"][group]
        for date in sorted(old["event_timestamp"].unique()):
            assert date in dates, f"{where}: {group}.parquet lost the rows of {date}"
            if date not in computed:  # kept as it was, row for row
                # (values, not dtypes: a later date may widen a column's type in the file)
                pd.testing.assert_frame_equal(rows_at(frame, date), rows_at(old, date), check_dtype=False,
                                              check_exact=True, obj=f"{where}: {group} {date}")
            elif group != "attributes":  # computed again (a grid date that was a scoring date): activity before
                # it did not change, so neither do these features (attributes read today's profile, which can)
                pd.testing.assert_frame_equal(rows_at(frame, date, drop=("created_timestamp",)),
                                              rows_at(old, date, drop=("created_timestamp",)), check_dtype=False,
                                              obj=f"{where}: {group} {date} (recomputed)")
    bought = set(rows_at(now["transactions"], scoring)["persona_id"].astype(str))
    assert new_personas <= bought, (where, new_personas - bought)

    # The online store answers for the new customers.
    store = feature_store.open_store(ws, ws.config())
    reader = online_reader.OnlineReader(store)
    _, found = reader.read(sorted(new_personas))
    assert found.all(), f"{where}: the online store has no features for new personas {sorted(new_personas)}"
    churn = feature_store.online_features(store, "churn_risk_v1", sorted(new_personas))
    assert churn.drop(columns="persona_id").notna().any(axis=1).all(), where


def check_rescore(ws: Workspace, report: dict, before: dict, scoring: pd.Timestamp, night: int) -> None:
    where = f"night {night}, rescore"
    assert report["date"] == str(scoring.date()), where
    dates = history.list_dates(ws)
    assert dates == [*before["tag_dates"], report["date"]], (where, dates)
    for date in dates:  # every snapshot, the earlier ones too, still reads whole
        frame = history.read(ws, date)
        assert len(frame) == history.read_meta(ws, date)["personas"] and frame["persona_id"].is_unique, (where, date)
    # Everyone with features at the scoring date is scored, nobody else.
    with_features = set()
    for group, frame in offline(ws).items():
        with_features |= set(rows_at(frame, scoring)["persona_id"].astype(str))
    scored = set(history.read(ws, report["date"], columns=["persona_id"])["persona_id"].astype(str))
    assert report["personas"] == len(with_features) and scored == with_features, where


def observe(ws: Workspace, sources: dict, scoring: pd.Timestamp) -> dict:
    """What the next night is compared with."""
    current = ws.require_current("integrated", "run persona integrate")
    profiles = pd.read_parquet(current / "profiles.parquet", columns=["persona_id"])["persona_id"].astype(str)
    return {"sources": sources, "personas": len(profiles), "profiles": set(profiles), "identity": identity(ws),
            "offline": offline(ws), "scoring": scoring, "tag_dates": history.list_dates(ws)}


def test_three_nights_with_new_data_each(trained_workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(trained_workspace, root, symlinks=True)
    ws = Workspace.open(root)
    end = last_activity(ws)
    days = night_length(end)
    current = ws.require_current("integrated", "")
    taken = set(pd.read_parquet(current / "identity_map.parquet", columns=["value"])["value"].dropna().astype(str))
    manifest = json.loads((root / "features" / "manifest.json").read_text(encoding="utf-8"))
    state = observe(ws, json.loads((current / "report.json").read_text(encoding="utf-8"))["sources"],
                    pd.Timestamp(manifest["dates"][-1]))
    timings: dict[str, float] = {}
    for night in range(1, NIGHTS + 1):
        added = append_night(ws, night, end, days, taken)

        report = persona(root, "integrate", timings=timings)
        new_personas = check_integrate(ws, report, state, added, night)

        features = persona(root, "features", timings=timings)
        check_features(ws, features, state, new_personas, night)
        scoring = pd.Timestamp(features["dates"][-1])

        if night == TRAIN_ON:
            trained = persona(root, "train", "--promote", timings=timings)
            assert trained["models"], trained.get("skipped")
            listed = {(m["model"], m["version"]): m for m in persona(root, "models", timings=timings)["models"]}
            for m in trained["models"]:
                assert (f"persona_{m['tag']}", str(m["version"])) in listed, (m["tag"], m["version"])

        rescored = persona(root, "rescore", timings=timings)
        check_rescore(ws, rescored, state, scoring, night)
        if night == TRAIN_ON:  # scored with the champions of now: new versions wherever the gate let them through
            assert rescored["models"] == {m["model"].removeprefix("persona_"): m["version"]
                                          for m in listed.values() if "champion" in m["aliases"]}

        state = observe(ws, report["sources"], scoring)

    # The morning after: `persona features` straight after the rescore, nothing new. Only the scoring date is
    # computed again; the online store was loaded and stays usable.
    again = persona(root, "features", timings=timings)
    assert again["dates"] == features["dates"] and again["computed"] == [features["dates"][-1]]
    assert again["materialized"]["state_before"] == "ok"
    now = offline(ws)
    for group, frame in state["offline"].items():
        for date in sorted(set(frame["event_timestamp"].unique()) - {scoring}):
            pd.testing.assert_frame_equal(rows_at(now[group], date), rows_at(frame, date), check_dtype=False,
                                          obj=f"features again: {group} {date}")
    print("seconds per command over the nights:", {k: round(v, 1) for k, v in timings.items()})
