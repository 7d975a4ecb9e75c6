"""Rebuilding the online store after a loss: `persona features --reload-online`, and the service by itself.

The online store is a cache of what the workspace already holds: the offline snapshots (features), the latest tag
snapshot (tags) and the event log (real-time state since the snapshot). When Redis restarts empty, or an older
copy comes back, everything is loaded again from those, and a new marker says the store is whole again. Until then
the service answers 503 naming the store (see `serving.online.OnlineEngine`).
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator

import pandas as pd

from features import build, offline
from features import store as feature_store
from persona.config import PersonaConfig
from persona.workspace import Workspace
from rules import history
from serving import batch

LOCK = "online-rebuild.lock"


@contextlib.contextmanager
def rebuild_lock(ws: Workspace) -> Iterator[None]:
    """One rebuild at a time per workspace, across processes (the workers of a service, a CLI run)."""
    ws.state.mkdir(parents=True, exist_ok=True)
    with open(ws.state / LOCK, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def rebuild_online(ws: Workspace, cfg: PersonaConfig | None = None, *, force: bool = True,
                   store=None) -> dict:
    """Load the online store again from the workspace: features in full, the real-time state of logged events,
    the latest tags. Without `force`, does nothing when the store already holds the last load (another process
    rebuilt it while this one waited for the lock). Returns what was done."""
    cfg = cfg or ws.config()
    t0 = time.perf_counter()
    with rebuild_lock(ws):
        store = store or feature_store.open_store(ws, cfg)
        if not force:
            state = feature_store.online_state(store, ws)
            if state["state"] == "ok":
                return {"rebuilt": False, "state": "ok", "seconds": round(time.perf_counter() - t0, 2)}
        manifest = offline.read_manifest(ws)
        end = pd.Timestamp(manifest["data_end"]) + pd.Timedelta(days=1)
        first = pd.Timestamp(manifest["dates"][-1])
        report = build.load_online(ws, cfg, store, end=end, first_start=first, force=True)
        tags = push_latest_tags(ws, cfg)
        return {"rebuilt": True, "state_before": report["state_before"], "features": report, "tags": tags,
                "replayed_events": report.get("replayed_events", 0), "marker": report["marker"],
                "seconds": round(time.perf_counter() - t0, 2)}


def push_latest_tags(ws: Workspace, cfg: PersonaConfig | None = None) -> dict | None:
    """Push the latest tag snapshot to the online `tags` view again (None when there is none yet)."""
    date = history.latest_date(ws)
    if date is None:
        return None
    return batch.push_tags(ws, cfg or ws.config(), history.read(ws, date), pd.Timestamp(date, tz="UTC"),
                           history.read_meta(ws, date))
