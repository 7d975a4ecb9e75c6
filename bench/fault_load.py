"""The load of the fault benchmark (bench/fault_bench.py) and its checks: what a correct profile is, the client
process that sends profiles, events and readiness probes while the faults happen, and the main process's questions to
the service and to the event log between faults (rows kept, real-time state, recovery, the server's processes).

The load runs in a spawned process, which imports `run_load` from here: the child inherits the runner's sys.path,
bench/ included.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import pickle
import random
import threading
import time

from fault_setup import PROJECT, PrivatePostgres

CLIENT_TIMEOUT_S = 10.0
EVENT_PERSONAS = 50


# --- what a correct profile is ------------------------------------------------------------------------------------
def _rounded(v):
    if isinstance(v, float):
        return round(v, 9)
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_rounded(x) for x in v]
    return v


def comparable(profile: dict, score_keys: list[str] | None = None) -> str:
    """What must not change during the run. A persona that receives no event: everything but the real-time block.
    One that does (`score_keys` given): the scores of the models that read no real-time feature (its other scores
    and its rule tags move with the events)."""
    if score_keys is None:
        keep = {k: profile.get(k) for k in ("persona_id", "scores", "tags", "top_interests", "models", "rules_as_of")}
    else:
        scores = profile.get("scores") or {}
        keep = {"persona_id": profile.get("persona_id"), "scores": {k: scores.get(k) for k in score_keys},
                "models": profile.get("models"), "rules_as_of": profile.get("rules_as_of")}
    return json.dumps(_rounded(keep), sort_keys=True)


def realtime_free_scores(profile: dict) -> list[str]:
    """Score outputs of the model tags whose feature service has no real-time group (features.model_tags)."""
    from features.model_tags import feature_services

    services = feature_services()
    tags = [t for t in (profile.get("models") or {}) if "realtime" not in services.get(t, ("realtime",))]
    return sorted(k for k in (profile.get("scores") or {}) if any(k == t or k.startswith(f"{t}_") for t in tags))


# --- the load (a separate process) -----------------------------------------------------------------------------
def run_load(url: str, profile_ids: list[str], event_ids: list[str], categories: list[str],
             baseline: dict[str, tuple[list[str] | None, str]], clients: int, stop, pause_events, inflight,
             out_path: str) -> None:
    """The load process: `clients` threads on /v1/profile and /v1/events, one on /readyz, until `stop`; every
    request recorded, written to `out_path` (pickle) at the end."""
    import httpx

    records: list[tuple] = []  # (endpoint, t_sent wall, latency s, status, persona, event key µs | data flag)
    made_up: list[dict] = []
    lock = threading.Lock()
    seq = iter(range(10**12))

    def event_ts() -> dt.datetime:
        with lock:
            n = next(seq)
        now = dt.datetime.now(dt.timezone.utc)
        # unique per request: the microseconds within the millisecond are the sequence number modulo 1000
        return now.replace(microsecond=(now.microsecond // 1000) * 1000 + n % 1000)

    def call(client, method: str, path: str, body: dict | None) -> tuple[float, float, int, dict | None]:
        t_wall, t0 = time.time(), time.perf_counter()
        try:
            r = client.request(method, path, json=body) if body is not None else client.request(method, path)
            status, data = r.status_code, (r.json() if r.status_code == 200 and path == "/v1/profile" else None)
        except httpx.TimeoutException:
            status, data = 0, None  # no answer within the client's timeout
        except httpx.HTTPError:
            status, data = -1, None  # connection refused / reset
        return t_wall, time.perf_counter() - t0, status, data

    def profiles(i: int) -> None:
        rnd = random.Random(1000 + i)
        with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
            while not stop.is_set():
                pid = rnd.choice(profile_ids)
                t, lat, status, data = call(client, "POST", "/v1/profile", {"persona_id": pid})
                flag = None
                if status == 200 and pid in baseline:
                    keys, expected = baseline[pid]
                    flag = comparable(data, keys) == expected
                    if not flag and len(made_up) < 20:
                        made_up.append({"t": t, "persona_id": pid, "event_persona": keys is not None,
                                        "got": json.loads(comparable(data, keys)), "expected": json.loads(expected)})
                records.append(("profile", t, lat, status, pid, flag))

    def events(i: int) -> None:
        rnd = random.Random(2000 + i)
        with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
            while not stop.is_set():
                if pause_events.is_set():
                    time.sleep(0.02)
                    continue
                with inflight.get_lock():
                    inflight.value += 1
                try:
                    pid, ts = rnd.choice(event_ids), event_ts()
                    body = {"events": [{"persona_id": pid, "event_type": "cart_add", "category": rnd.choice(categories),
                                        "timestamp": ts.isoformat()}]}
                    t, lat, status, _ = call(client, "POST", "/v1/events", body)
                    key = (ts - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)
                    records.append(("events", t, lat, status, pid, key))
                finally:
                    with inflight.get_lock():
                        inflight.value -= 1

    def readyz() -> None:
        with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
            while not stop.is_set():
                t, lat, status, _ = call(client, "GET", "/readyz", None)
                records.append(("readyz", t, lat, status, None, None))
                time.sleep(0.1)

    threads = [threading.Thread(target=profiles if i % 2 == 0 else events, args=(i,), daemon=True)
               for i in range(clients)]
    threads.append(threading.Thread(target=readyz, daemon=True))
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    with open(out_path, "wb") as fh:
        pickle.dump({"records": records, "made_up": made_up}, fh)


# --- helpers of the main process -------------------------------------------------------------------------------
def events_table() -> str:
    return f"persona_{PROJECT}_events"


def state_table() -> str:
    return f"persona_{PROJECT}_rt_state"


def count_rows(pg: PrivatePostgres) -> int:
    with pg.connect() as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (events_table(),)).fetchone()[0]
        return int(conn.execute(f"SELECT count(*) FROM {events_table()}").fetchone()[0]) if exists else 0


def kept_keys(pg: PrivatePostgres, since: float) -> set[tuple[str, int]]:
    """(persona, timestamp in µs) of every logged event whose timestamp is after `since` - 5 s (wall seconds)."""
    with pg.connect() as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (events_table(),)).fetchone()[0]
        if not exists:
            return set()
        rows = conn.execute(f"SELECT persona_id, (extract(epoch from ts) * 1000000)::bigint FROM {events_table()} "
                            "WHERE ts >= to_timestamp(%s)", (since - 5,)).fetchall()
    return {(p, int(k)) for p, k in rows}


def wait_drained(pause_events, inflight, limit: float = CLIENT_TIMEOUT_S + 5) -> None:
    pause_events.set()
    deadline = time.monotonic() + limit
    while inflight.value > 0 and time.monotonic() < deadline:
        time.sleep(0.05)


def score_all(url: str, pids: list[str]) -> dict[str, dict | None]:
    """Every persona's profile through /v1/score (None: not found, or the call failed)."""
    import httpx

    out: dict[str, dict | None] = {}
    for start in range(0, len(pids), 500):
        asked = pids[start:start + 500]
        try:
            r = httpx.post(f"{url}/v1/score", json={"customers": [{"persona_id": p} for p in asked]}, timeout=120)
        except httpx.HTTPError:
            r = None
        results = r.json()["results"] if r is not None and r.status_code == 200 else [{}] * len(asked)
        for pid, prof in zip(asked, results):
            out[pid] = prof if prof.get("persona_id") == pid else None  # not an absorbing persona's answer
    return out


def full_check(url: str, baseline: dict[str, tuple[list[str] | None, str]]) -> dict:
    """After a fault's window: is every persona served again, with its pre-fault data?"""
    got = score_all(url, list(baseline))
    served = sum(p is not None for p in got.values())
    same = sum(1 for pid, prof in got.items() if prof is not None and comparable(prof, baseline[pid][0])
               == baseline[pid][1])
    return {"personas": len(baseline), "served": served, "same": same, "not_served": len(baseline) - served,
            "different": served - same}


def realtime_check(url: str, pg: PrivatePostgres, event_ids: list[str]) -> dict:
    """The real-time features the service answers for the event personas vs the state the event log saved."""
    with pg.connect() as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (state_table(),)).fetchone()[0]
        rows = conn.execute(f"SELECT persona_id, state FROM {state_table()} WHERE persona_id = ANY(%s)",
                            (event_ids,)).fetchall() if exists else []
    saved = {p: s for p, s in rows}
    got = score_all(url, event_ids)
    diff, checked = [], 0
    for pid in event_ids:
        st, prof = saved.get(pid), got.get(pid)
        if st is None or prof is None:
            continue
        checked += 1
        rt = prof.get("realtime") or {}
        bad = {k: (rt.get(k), v) for k, v in st.items()
               if not (v is None and rt.get(k) is None)
               and (v is None or rt.get(k) is None or abs(float(rt[k]) - float(v)) > 1e-6)}
        if bad:
            diff.append({"persona_id": pid, "served_vs_logged": bad})
    return {"checked": checked, "logged": len(saved), "mismatched": len(diff), "examples": diff[:3]}


def wait_recovered(url: str, pid: str, expected: str, since: float, limit: float) -> float | None:
    """Poll /readyz and one (event-free) persona's profile every 0.25 s until /readyz answers 200 and the profile
    answers 200 with its pre-fault data; seconds after `since`, None if not within `limit`."""
    import httpx

    deadline = time.monotonic() + limit
    with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/readyz").status_code == 200:
                    r = client.post("/v1/profile", json={"persona_id": pid})
                    if r.status_code == 200 and comparable(r.json()) == expected:
                        return time.time() - since
            time.sleep(0.25)
    return None


def server_pids(port: int) -> list[int]:
    from serving_bench import server_processes

    return sorted(p.pid for p in server_processes(port))
