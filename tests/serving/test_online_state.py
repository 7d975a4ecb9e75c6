"""Online state that is rebuildable and never lies: the event log, atomic counters, the materialisation marker,
the rebuild after a loss, and events reaching the offline data.

Counters are checked as invariants (the final count equals the number of events accepted), whatever the order in
which the writers ran: no test here depends on timing or scheduling.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from features import eventlog
from features import store as feature_store
from features import online_reader
from persona.workspace import Workspace
from serving.online import OnlineEngine, Unavailable


# --- the event log alone ---------------------------------------------------------------------------------------------
WRITER = """
import sys
from datetime import datetime, timezone
from pathlib import Path
from features import eventlog

url, table, counter, n = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
log = eventlog.PostgresLog(url, table) if url.startswith("postgresql") else eventlog.SqliteLog(Path(url), table)

def apply(pids, states):
    value = int(counter.read_text()) if counter.exists() else 0  # read-modify-write, safe only under the lock
    counter.write_text(str(value + 1))
    return {p: eventlog.State({"n": value + 1}, datetime.now(timezone.utc)) for p in pids}

for _ in range(n):
    log.record([{"persona_id": "P1", "ts": datetime.now(timezone.utc), "event_type": "cart_add"}], apply)
log.close()
"""


def _run_writers(url: str, table: str, counter: Path, procs: int = 4, each: int = 40) -> None:
    """`procs` processes, each making `each` calls that add one to a counter kept OUTSIDE the log (as the online
    store is), read and written inside the log's transaction."""
    root = Path(__file__).resolve().parents[2]
    workers = [subprocess.Popen([sys.executable, "-c", WRITER, url, table, str(counter), str(each)], cwd=root)
               for _ in range(procs)]
    for w in workers:
        assert w.wait(300) == 0


def test_sqlite_log_serialises_writers_across_processes(tmp_path):
    db, counter = tmp_path / "events.db", tmp_path / "counter"
    _run_writers(str(db), "persona_t", counter)
    log = eventlog.SqliteLog(db, "persona_t")
    assert int(counter.read_text()) == 160  # no lost update among 4 processes x 40 read-modify-writes
    assert log.count() == 160
    ((pid, state),) = log.states_since(None)
    assert pid == "P1" and state.values == {"n": 160}


@pytest.mark.production
def test_postgres_log_serialises_writers_across_processes(tmp_path, production_servers):
    url = production_servers["registry_url"]
    table = f"persona_t{uuid.uuid4().hex[:8]}"
    log = eventlog.PostgresLog(url, table)
    try:
        counter = tmp_path / "counter"
        _run_writers(url, table, counter)
        assert int(counter.read_text()) == 160
        assert log.count() == 160
        assert dict(log.states_since(None))["P1"].values == {"n": 160}
        assert log.forget(["P1"]) == 160
        assert log.count() == 0 and log.states_since(None) == []
    finally:
        log.drop()
        log.close()


def test_failed_apply_logs_nothing(tmp_path):
    log = eventlog.SqliteLog(tmp_path / "events.db", "persona_t")

    def boom(pids, states):
        raise RuntimeError("online store down")

    with pytest.raises(RuntimeError):
        log.record([{"persona_id": "P1", "ts": datetime.now(timezone.utc), "event_type": "cart_add"}], boom)
    assert log.count() == 0 and log.states_since(None) == []


def test_postgres_log_down_is_unavailable_naming_no_credentials():
    log = eventlog.PostgresLog("postgresql+psycopg://secretuser:pw@127.0.0.1:1/secretdb", "persona_t")
    with pytest.raises(eventlog.EventLogUnavailable) as err:
        log.record([{"persona_id": "P1", "ts": datetime.now(timezone.utc), "event_type": "cart_add"}],
                   lambda p, s: {})
    text = str(err.value)
    assert "event log (postgresql)" in text
    assert not any(s in text for s in ("secretuser", "pw", "127.0.0.1", ":1", "secretdb"))


# --- the engine on an embedded workspace -----------------------------------------------------------------------------
def _empty_sqlite_online(ws: Workspace) -> None:
    """What losing the online store looks like: every table of online.db emptied, the marker included."""
    with sqlite3.connect(ws.root / "feature_store" / "online.db") as conn:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            conn.execute(f'DELETE FROM "{name}"')


@pytest.fixture(scope="module")
def engine(workspace) -> OnlineEngine:
    return OnlineEngine(workspace)


def _persona(engine: OnlineEngine, k: int = 0) -> str:
    return str(engine.identity.personas_known[k])


def _rt(engine: OnlineEngine, pid: str) -> dict:
    (profile,) = engine.profiles([engine_customer(pid)])
    return profile["realtime"]


def engine_customer(pid: str):
    from serving.online import Customer

    return Customer(persona_id=pid)


def test_events_are_logged_before_they_are_acknowledged(engine, workspace):
    pid = _persona(engine, 1)
    log = eventlog.open_log(workspace, workspace.config())
    before = log.count()
    out = engine.ingest_events([{"persona_id": pid, "event_type": "cart_add"}] * 3)
    assert out["accepted"] == 3
    assert log.count() == before + 3
    states = dict(log.states_since(None))
    assert states[pid].values == out["realtime"][pid]
    assert _rt(engine, pid)["rt_cart_adds_1h"] == out["realtime"][pid]["rt_cart_adds_1h"]


def test_lost_online_store_answers_503_then_is_rebuilt_with_the_logged_events(engine, workspace):
    pid = _persona(engine, 2)
    engine.ingest_events([{"persona_id": pid, "event_type": "cart_add"}] * 2)
    expected = _rt(engine, pid)
    _empty_sqlite_online(workspace)

    with pytest.raises(Unavailable, match=r"online store \(sqlite\) is empty"):
        engine.profiles([engine_customer(pid)])
    with pytest.raises(Unavailable, match="empty"):
        engine.probe()  # /readyz answers 503 from this
    with pytest.raises(Unavailable, match="empty"):  # no event is accepted onto an empty store
        engine.ingest_events([{"persona_id": pid, "event_type": "cart_add"}])

    engine.refresh()  # what the service's refresh thread does: it rebuilds the store
    engine.probe()
    assert _rt(engine, pid) == expected  # the accepted events survived the loss


def test_an_older_store_is_stale(engine, workspace):
    state = feature_store.read_json(workspace.state / feature_store.ONLINE_STATE, None)
    store = feature_store.open_store(workspace, workspace.config())
    online_reader.write_marker(store, {**state, "generation": state["generation"] - 1})
    with pytest.raises(Unavailable, match="stale"):
        engine.probe()
    engine.refresh()
    engine.probe()


def test_logged_events_reach_the_next_snapshot(workspace, tmp_path):
    """An event the service logged before the scoring date is counted by the next `persona features`."""
    import shutil

    from features.build import build_features

    root = tmp_path / "ws"
    shutil.copytree(workspace.root, root, symlinks=True)
    ws = Workspace.open(root)
    cfg = ws.config()
    manifest = feature_store.read_json(root / "features" / "manifest.json", {})
    scoring = pd.Timestamp(manifest["dates"][-1])
    frame = pd.read_parquet(root / "features" / "offline" / "realtime.parquet")
    at = frame[frame["event_timestamp"] == scoring]
    pid = str(at["persona_id"].iloc[0])
    before = float(at["rt_cart_adds_24h"].iloc[0] or 0)
    log = eventlog.open_log(ws, cfg)
    when = (scoring - timedelta(minutes=30)).to_pydatetime()
    log.record([{"persona_id": pid, "ts": when, "event_type": "cart_add", "category": "beauty"}] * 4,
               lambda pids, states: {p: eventlog.State({}, when) for p in pids})
    log.close()
    build_features(ws, full=True, online=False)
    frame = pd.read_parquet(root / "features" / "offline" / "realtime.parquet")
    row = frame[(frame["event_timestamp"] == scoring) & (frame["persona_id"] == pid)]
    assert float(row["rt_cart_adds_24h"].iloc[0]) == before + 4


# --- many writers through the real service ---------------------------------------------------------------------------
@pytest.mark.slow
def test_concurrent_events_on_one_persona_over_two_workers_lose_no_update(workspace, engine):
    """16 clients x 50 `cart_add` events for one persona, on a 2-worker server: the counter rises by exactly the
    number of events accepted (read-modify-write across workers is serialised by the event log)."""
    import concurrent.futures

    import httpx

    from serving.process import running_server

    pid = _persona(engine, 5)
    body = {"events": [{"persona_id": pid, "event_type": "cart_add"}]}
    with running_server(workspace.root, workers=2) as base:
        with httpx.Client(base_url=base, timeout=30) as client:
            first = client.post("/v1/events", json=body)
            assert first.status_code == 200, first.text
            start = first.json()["realtime"][pid]["rt_cart_adds_24h"]

        def post_many(_: int) -> list[int]:
            with httpx.Client(base_url=base, timeout=30) as c:
                return [c.post("/v1/events", json=body).status_code for _ in range(50)]

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            codes = [code for codes in pool.map(post_many, range(16)) for code in codes]
        accepted = codes.count(200)
        assert accepted > 0 and set(codes) <= {200, 503}, sorted(set(codes))
        with httpx.Client(base_url=base, timeout=30) as client:
            profile = client.post("/v1/profile", json={"persona_id": pid})
            assert profile.status_code == 200, profile.text
            assert profile.json()["realtime"]["rt_cart_adds_24h"] == start + accepted
