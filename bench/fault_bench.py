"""Faults under load on the PRODUCTION profile: what the online service answers while its Redis and PostgreSQL fail.

    .venv/bin/python bench/fault_bench.py                                  # builds a 2,000-customer workspace (minutes)
    .venv/bin/python bench/fault_bench.py --workspace /tmp/fws             # build it there (kept afterwards)
    .venv/bin/python bench/fault_bench.py --workspace /tmp/fws --reuse     # reuse that build (skips it when it exists)
    .venv/bin/python bench/fault_bench.py --clients 8 --quiet 10 --fault-seconds 5 --faults flush,restart,freeze,pg

The benchmark OWNS the servers it breaks: other processes use the shared Redis (6379) and PostgreSQL (5432), which
are never touched. It starts a private `redis-server` on a free port (no persistence) and a private PostgreSQL 15
cluster (initdb; as user postgres when run as root) holding the Feast registry, the MLflow tracking store and the
event log, and stops both at the end whatever happens. With --workspace the cluster's data lives in
`<workspace>/pg` (so --reuse finds the registry and models again); Redis always starts empty and is loaded with
`persona features --reload-online`.

Load: a separate process with --clients threads (half on POST /v1/profile of random known personas, half on
POST /v1/events, one `cart_add` each for one of 50 fixed personas; httpx, timeout 10 s, keep-alive) and one more
thread polling GET /readyz every 0.1 s. Every request is recorded (time sent, latency, status). Each event carries
a unique timestamp (the microseconds encode a sequence number), so each 200 can be looked up in the event log.

Faults, in sequence, each under load, with a quiet interval after it:
  flush    FLUSHALL on the running Redis (it loses every key)
  restart  Redis killed (SIGKILL), down --fault-seconds, started again empty on the same port
  freeze   Redis frozen: SIGSTOP for --fault-seconds, then SIGCONT
  pg       PostgreSQL stopped (`pg_ctl stop -m fast`) for --fault-seconds, then started again
Per fault: requests by status per endpoint; the longest request and how many took over 2 s; 200 profiles that
differ from that persona's profile captured (twice, through /v1/score) before any fault: made-up data (personas that
receive events are compared only on the scores of the models that read no real-time feature; nothing that varied
between the two captures is compared); events accepted (200) vs kept (rows the event log gained in the fault's
window, and each accepted event looked up by its timestamp); the time from the fault's end to the first 200 of
/readyz, of /v1/profile and of a profile equal to its capture; at the end of the window, how many personas
/v1/score serves with their pre-fault data (a rebuild that misses some shows here), and Redis's key count; whether
the server's processes are the ones it started with (no restart). Also checked after each fault: the real-time
features the service answers for the 50 event personas against the state the event log saved for them.

Goals (printed beside the figures, MISSED when not met; the exit code is 0 either way: a benchmark reports):
no 200 with made-up data, no request over 2 s, no accepted event lost, recovery without a restart.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import multiprocessing as mp
import os
import pickle
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
OUT = ROOT / "bench" / "out"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PROJECT = "faultbench"
MARK = ".faultbench.json"  # written in a workspace this benchmark built (what --reuse looks for)
BUILDING = ".faultbench.building"  # a build under way (or interrupted): the folder may be wiped
HANG_GOAL_S = 2.0
CLIENT_TIMEOUT_S = 10.0
EVENT_PERSONAS = 50
# Variables that would point the workspace at other servers than the private ones: never inherited.
SCRUB_VARS = ("PERSONA_REDIS", "PERSONA_REGISTRY_URL", "PERSONA_TRACKING_URI", "PERSONA_EVENT_LOG_URL",
              "PERSONA_API_KEY", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
FAULTS = {"flush": "Redis emptied (FLUSHALL)", "restart": "Redis restarted empty", "freeze": "Redis frozen (SIGSTOP)",
          "pg": "PostgreSQL stopped"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the private servers ------------------------------------------------------------------------------------------
class PrivateRedis:
    """A redis-server of our own on a free port, no persistence; started, killed, frozen only by this benchmark."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.frozen = False

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(self.folder), "--daemonize", "no"]
        out = open(self.folder / "redis.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        deadline = time.monotonic() + 20
        while not self.ping():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited ({self.proc.returncode}); see {self.folder / 'redis.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError("redis-server did not answer PING within 20 s")
            time.sleep(0.05)

    def client(self, timeout: float = 2.0):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout)

    def ping(self) -> bool:
        try:
            return bool(self.client(0.5).ping())
        except Exception:
            return False

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            if self.frozen:
                self.cont()
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            if self.frozen:
                self.cont()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.frozen = True

    def cont(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)
        self.frozen = False


class PrivatePostgres:
    """A PostgreSQL 15 cluster of our own (initdb, trust auth) on a free port; run as user postgres when we are root."""

    def __init__(self, data: Path, sockets: Path) -> None:
        self.data, self.sockets = data, sockets
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        self.running = False

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(PG_BIN / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stdout[-800:]} {done.stderr[-800:]}")
        return done

    @property
    def log(self) -> Path:
        path = OUT / "fault_pg.log"
        path.touch()
        if self.as_root:
            shutil.chown(path, "postgres", "postgres")
        return path

    def _own(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            shutil.chown(path, "postgres", "postgres")

    def init(self) -> bool:
        """initdb unless the data folder holds a cluster already; returns True when it was created now."""
        self._own(self.sockets)
        if (self.data / "PG_VERSION").exists():
            return False
        self._own(self.data)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        return True

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-o", f"-p {self.port} -k {self.sockets}",
                  "-l", str(self.log), "-w", "-t", "60", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)
        self.running = False

    def url(self, db: str, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://postgres@127.0.0.1:{self.port}/{db}"

    def connect(self, db: str = "persona", timeout: int = 2):
        import psycopg

        return psycopg.connect(self.url(db, "postgresql"), connect_timeout=timeout, autocommit=True)

    def create_databases(self, *names: str) -> None:
        with self.connect("postgres", 10) as conn:
            have = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
            for name in names:
                if name not in have:
                    conn.execute(f'CREATE DATABASE "{name}"')


# --- the workspace ------------------------------------------------------------------------------------------------
def cli(ws: Path, *args: str, env: dict) -> dict | None:
    """`persona <args> -w ws --json` as a subprocess; its JSON answer (None when it printed none)."""
    cmd = [str(ROOT / ".venv" / "bin" / "persona"), *args, "-w", str(ws), "--json"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"persona {' '.join(args)} failed ({done.returncode}) after {took:.0f} s:\n"
                           f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    log(f"persona {' '.join(args)}: {took:.0f} s")
    with contextlib.suppress(ValueError):
        return json.loads(done.stdout)
    return None


def configure(ws: Path, redis: PrivateRedis, pg: PrivatePostgres, workers: int) -> None:
    import yaml

    path = ws / "persona.yaml"
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    cfg["store"] = {**(cfg.get("store") or {}), "profile": "production", "project": PROJECT,
                    "redis": f"127.0.0.1:{redis.port}", "registry_url": pg.url("persona")}
    cfg["tracking"] = {**(cfg.get("tracking") or {}), "uri": pg.url("mlflow", "postgresql")}  # SQLAlchemy 2.1: psycopg
    cfg["training"] = {**(cfg.get("training") or {}), "min_positives": 20, "min_negatives": 20, "cutoffs": 3}
    cfg["serving"] = {**(cfg.get("serving") or {}), "reload_seconds": 1, "workers": workers}
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")


def promote_challengers(ws: Path) -> list[str]:
    """Set `champion` on each model's `challenger` where no champion exists (the gate may refuse on small data)."""
    from persona.workspace import Workspace
    from training import tracking

    w = Workspace.open(ws)
    client = tracking.connect(w, w.config())
    done = []
    for rm in client.search_registered_models(f"name LIKE '{tracking.MODEL_PREFIX}%'"):
        if tracking.alias_version(client, rm.name, tracking.CHAMPION) is not None:
            continue
        version = tracking.alias_version(client, rm.name, tracking.CHALLENGER)
        if version is not None:
            client.set_registered_model_alias(rm.name, tracking.CHAMPION, version)
            done.append(f"{rm.name} v{version}")
    return done


def build(ws: Path, customers: int, redis: PrivateRedis, pg: PrivatePostgres, workers: int, env: dict) -> dict:
    t0 = time.perf_counter()
    log(f"building a {customers:,}-customer production-profile workspace in {ws} (several minutes)")
    cli(ws, "generate", "--customers", str(customers), env=env)
    configure(ws, redis, pg, workers)
    cli(ws, "integrate", env=env)
    cli(ws, "features", env=env)
    cli(ws, "train", "--promote", env=env)
    forced = promote_challengers(ws)
    if forced:
        log("the promotion gate left no champion for " + ", ".join(forced)
            + ": set alias `champion` on their `challenger` with MlflowClient (as tests/conftest.py does)")
    cli(ws, "rescore", env=env)
    info = {"customers": customers, "built": time.strftime("%Y-%m-%d %H:%M:%S"),
            "build_seconds": round(time.perf_counter() - t0), "champions_forced": forced}
    (ws / MARK).write_text(json.dumps(info, indent=1))
    return info


RELOAD_WORKAROUND = """
import json, sys
import pandas as pd
from feature_repo import definitions as defs
from features import store as fs
from persona.workspace import Workspace, read_json
ws = Workspace.open(sys.argv[1])
store = fs.open_store(ws, ws.config())
manifest = read_json(ws.root / "features" / "manifest.json", None)
end = pd.Timestamp(manifest["data_end"]) + pd.Timedelta(days=1)
views = [v.name for v in store.list_feature_views() if v.name in defs.GROUPS]
store.materialize(start_date=pd.Timestamp(manifest["dates"][-1]).to_pydatetime(), end_date=end.to_pydatetime(),
                  feature_views=views)
print(json.dumps(views))
"""


def reload_online(ws: Path, env: dict) -> None:
    """Fill the (empty) private Redis of a reused workspace: `persona features --reload-online`; when that loads no
    feature rows (its materialisation says every view is up to date), Feast's materialize is called directly first
    and the reload run again for the real-time state, the marker and the tags."""
    report = cli(ws, "features", "--reload-online", env=env) or {}
    views = (report.get("materialized") or {}).get("views") or {}
    log("persona features --reload-online: " + ", ".join(f"{v} {d.get('mode')} ({d.get('rows')} rows)"
                                                         for v, d in views.items()))
    if views and all(d.get("mode") == "up_to_date" for d in views.values()):
        log("WARNING: --reload-online loaded no feature rows into the empty Redis (every view 'up_to_date', from the "
            "materialisation intervals kept in the PostgreSQL registry); materialising with Feast directly so that "
            "the benchmark can run")
        done = subprocess.run([sys.executable, "-c", RELOAD_WORKAROUND, str(ws)], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"materialising failed: {done.stderr[-2000:]}")
        cli(ws, "features", "--reload-online", env=env)


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
    """Score outputs of the model tags whose feature service has no real-time group (features.store)."""
    from features.store import FEATURE_SERVICES

    tags = [t for t in (profile.get("models") or {}) if "realtime" not in FEATURE_SERVICES.get(t, ("realtime",))]
    return sorted(k for k in (profile.get("scores") or {}) if any(k == t or k.startswith(f"{t}_") for t in tags))


# --- the load (a separate process) -----------------------------------------------------------------------------
def _load(url: str, profile_ids: list[str], event_ids: list[str], categories: list[str],
          baseline: dict[str, tuple[list[str] | None, str]], clients: int, stop, pause_events, inflight,
          out_path: str) -> None:
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


def code_state() -> str:
    """The commit measured, and the files of the service that differ from it (others edit this checkout)."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "serving", "features", "persona").splitlines()]
    return f"commit {git('rev-parse', '--short', 'HEAD')}" + (f", uncommitted: {', '.join(dirty)}" if dirty else
                                                              ", service code as committed")


# --- the analysis ------------------------------------------------------------------------------------------------
def summarise(phase: dict, records: list[tuple]) -> dict:
    import numpy as np

    lo, hi, end = phase["window"][0], phase["window"][1], phase["fault_end"]
    mine = [r for r in records if lo <= r[1] < hi]
    by: dict = {}
    for ep, _, _, status, _, _ in mine:
        by.setdefault(ep, {}).setdefault(status, 0)
        by[ep][status] += 1
    lat = {ep: np.array([r[2] for r in mine if r[0] == ep] or [0.0]) for ep in ("profile", "events", "readyz")}
    longest = {ep: float(v.max()) for ep, v in lat.items()}
    p99 = {ep: float(np.percentile(v, 99)) for ep, v in lat.items()}
    over = {ep: int((v > HANG_GOAL_S).sum()) for ep, v in lat.items()}
    slow = sorted((r for r in mine if r[2] > HANG_GOAL_S), key=lambda r: -r[2])
    compared = [r for r in mine if r[0] == "profile" and r[3] == 200 and r[5] is not None]
    made_up = sum(1 for r in compared if r[5] is False)
    accepted = {(r[4], r[5]) for r in mine if r[0] == "events" and r[3] == 200}
    refused = {(r[4], r[5]) for r in mine if r[0] == "events" and r[3] != 200}
    kept = phase.get("kept_keys", set())
    rec = {}
    for name, ep, ok in (("readyz", "readyz", None), ("profile", "profile", None), ("correct", "profile", True)):
        after = sorted((r for r in records if r[0] == ep and r[1] >= end and r[3] == 200
                        and (ok is None or r[5] is ok)), key=lambda r: r[1])
        rec[name] = (after[0][1] + after[0][2] - end) if after else None
    errors_after = [r[1] + r[2] for r in mine if r[3] != 200 and r[1] + r[2] >= end]
    wrong_after = [r[1] + r[2] for r in mine if r[0] == "profile" and r[5] is False and r[1] + r[2] >= end]
    return {"statuses": by, "longest": longest, "p99": p99, "over_goal": over,
            "slowest": [{"endpoint": r[0], "sent_after_fault_start_s": round(r[1] - phase["fault_start"], 2),
                         "latency_s": round(r[2], 2), "status": r[3]} for r in slow[:5]],
            "made_up": made_up, "compared": len(compared),
            "made_up_event_personas": sum(1 for r in compared if r[5] is False and r[4] in phase["event_ids"]),
            "accepted": len(accepted), "refused": len(refused), "kept_rows": phase.get("rows_added"),
            "lost": len(accepted - kept), "kept_though_refused": len(refused & kept),
            "recovery": rec, "last_error": (max(errors_after) - end) if errors_after else 0.0,
            "last_made_up": (max(wrong_after) - end) if wrong_after else None, "requests": len(mine)}


def fmt_status(by: dict) -> str:
    names = {0: "timeout", -1: "conn"}
    return " ".join(f"{names.get(s, s)}:{n}" for s, n in sorted(by.items(), key=lambda kv: (kv[0] != 200, kv[0])))


def fmt_s(v: float | None) -> str:
    return "never" if v is None else f"{v:.2f} s"


# --- the run -----------------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--workspace", type=Path, help="build (or with --reuse, reuse) the workspace here; default: a "
                                                   "temporary folder, removed at the end")
    ap.add_argument("--reuse", action="store_true", help="reuse --workspace when this benchmark built it before")
    ap.add_argument("--clients", type=int, default=8, help="load threads: half /v1/profile, half /v1/events")
    ap.add_argument("--workers", type=int, default=2, help="serving.workers")
    ap.add_argument("--quiet", type=float, default=10.0, help="seconds of load before the first fault and after "
                                                              "each recovery")
    ap.add_argument("--fault-seconds", type=float, default=5.0, help="how long Redis is down/frozen, PG stopped")
    ap.add_argument("--max-recovery", type=float, default=60.0, help="stop waiting for a recovery after this")
    ap.add_argument("--faults", default="flush,restart,freeze,pg")
    args = ap.parse_args()
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        ap.error(f"unknown fault(s) {unknown}; known: {', '.join(FAULTS)}")
    if args.reuse and not args.workspace:
        ap.error("--reuse needs --workspace")

    for var in SCRUB_VARS:
        os.environ.pop(var, None)
    os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")
    env = dict(os.environ)
    OUT.mkdir(parents=True, exist_ok=True)

    def interrupted(signum, _frame):  # SIGTERM: unwind through the finally (the private servers are stopped)
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)

    tmp = Path(tempfile.mkdtemp(prefix="faultbench-"))
    os.chmod(tmp, 0o755)  # the postgres user writes its socket under it
    ws = (args.workspace or tmp / "ws").resolve()
    reusing = bool(args.reuse and (ws / MARK).exists())
    if args.workspace and not reusing and ws.exists() and any(ws.iterdir()):
        if (ws / MARK).exists() or (ws / BUILDING).exists():
            shutil.rmtree(ws)  # this benchmark's own earlier (or interrupted) build
        else:
            ap.error(f"{ws} is not empty and was not built by this benchmark: give another folder")
    ws.mkdir(parents=True, exist_ok=True)
    redis = PrivateRedis(tmp / "redis")
    pg = PrivatePostgres(ws / "pg", tmp / "pgsock")
    load_proc = None
    info: dict = {"cores": os.cpu_count(), "load_average_start": os.getloadavg(), "code": code_state()}
    phases: list[dict] = []
    results_path = tmp / "load.pkl"
    loaded: dict | None = None
    pids_start: list[int] = []
    pids_end: list[int] = []
    try:
        if not reusing:
            (ws / BUILDING).write_text(time.strftime("%Y-%m-%d %H:%M:%S"))
        redis.start()
        pg.init()
        pg.start()
        pg.create_databases("persona", "mlflow")
        log(f"private Redis on 127.0.0.1:{redis.port}, private PostgreSQL on 127.0.0.1:{pg.port} "
            f"(data {pg.data}); the shared 6379/5432 are not touched")
        if reusing:
            built = json.loads((ws / MARK).read_text())
            log(f"reusing {ws} (built {built['built']}, {built['customers']:,} customers)")
            configure(ws, redis, pg, args.workers)  # the ports are new each run
            reload_online(ws, env)  # Redis starts empty
        else:
            built = build(ws, args.customers, redis, pg, args.workers, env)
            (ws / BUILDING).unlink(missing_ok=True)
        info["workspace"] = {**built, "path": str(ws), "reused": reusing}

        import warnings

        import pandas as pd

        with warnings.catch_warnings(), open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")  # BentoML's and pathspec's deprecation warnings, on import
            from serving.service import running_server

        # profiles.parquet lists every persona; some have no features (no snapshot row) and the service answers 404
        # for them: only the personas it serves before any fault are used
        profiles_file = ws / "integrated" / "current" / "profiles.parquet"
        listed = pd.read_parquet(profiles_file, columns=["persona_id"])["persona_id"].astype(str).tolist()
        with running_server(ws, workers=args.workers, timeout=600, log=OUT / "fault_server.log") as url:
            port = int(url.rsplit(":", 1)[1])
            pids_start = server_pids(port)
            log(f"server {url}: {args.workers} worker(s), processes {pids_start}")
            first = {p: prof for p, prof in score_all(url, listed).items() if prof is not None}
            known = sorted(first)
            event_ids = sorted(random.Random(0).sample(known, EVENT_PERSONAS))
            rt_free = realtime_free_scores(first[known[0]])
            second = score_all(url, known)
            baseline: dict[str, tuple[list[str] | None, str]] = {}
            for pid in known:
                keys = rt_free if pid in event_ids else None
                one = comparable(first[pid], keys)
                if second.get(pid) is not None and comparable(second[pid], keys) == one:
                    baseline[pid] = (keys, one)
            info.update(personas=len(known), listed=len(listed), rt_free_scores=rt_free,
                        baseline={"stable": len(baseline), "unstable": len(known) - len(baseline)})
            categories = sorted(k.removeprefix("interest_") for k in first[known[0]]["scores"]
                                if k.startswith("interest_"))
            keys0 = redis.client().dbsize()
            info["redis_keys_before"] = keys0
            log(f"baseline: {len(baseline):,} of {len(known):,} served personas identical in two captures "
                f"({len(listed) - len(known)} of profiles.parquet have no features: 404); event personas compared "
                f"on {rt_free}; Redis holds {keys0:,} keys")

            ctx = mp.get_context("spawn")
            stop, pause_events, inflight = ctx.Event(), ctx.Event(), ctx.Value("i", 0)
            load_proc = ctx.Process(target=_load, args=(url, known, event_ids, categories, baseline, args.clients,
                                                        stop, pause_events, inflight, str(results_path)))
            load_proc.start()
            time.sleep(3)  # warm-up: not part of any window
            wait_drained(pause_events, inflight)
            rows = count_rows(pg)
            probe = next(p for p in known if p not in event_ids and p in baseline)

            def window(name: str, do_fault) -> None:
                nonlocal rows
                pause_events.clear()
                t_lo = time.time()
                load_avg = os.getloadavg()
                if do_fault is None:
                    time.sleep(args.quiet)
                    t_start = t_end = time.time()
                    recovered = 0.0
                else:
                    t_start, t_end = do_fault()
                    recovered = wait_recovered(url, probe, baseline[probe][1], t_end, args.max_recovery)
                    log(f"{name}: fault {t_end - t_start:.1f} s; /readyz 200 and a correct profile "
                        f"{fmt_s(recovered)} after its end")
                    time.sleep(args.quiet)
                wait_drained(pause_events, inflight)
                t_hi = time.time()
                after = count_rows(pg)
                phase = {"name": name, "window": (t_lo, t_hi), "fault_start": t_start, "fault_end": t_end,
                         "rows_added": after - rows, "kept_keys": kept_keys(pg, t_lo), "recovered": recovered,
                         "load_average": load_avg, "realtime": realtime_check(url, pg, event_ids),
                         "check": full_check(url, baseline), "redis_keys": redis.client().dbsize(),
                         "server_pids": server_pids(port), "event_ids": set(event_ids)}
                rows = after
                phases.append(phase)

            def flush():
                t = time.time()
                redis.client().flushall()
                return t, time.time()

            def restart():
                t = time.time()
                redis.kill()
                time.sleep(args.fault_seconds)
                redis.start()
                return t, time.time()

            def freeze():
                t = time.time()
                redis.freeze()
                time.sleep(args.fault_seconds)
                redis.cont()
                return t, time.time()

            def pg_down():
                t = time.time()
                pg.stop("fast")
                time.sleep(args.fault_seconds)
                pg.start()
                return t, time.time()

            actions = {"flush": flush, "restart": restart, "freeze": freeze, "pg": pg_down}
            log(f"load: {args.clients} client threads (+1 /readyz poller); {args.quiet:.0f} s without a fault first")
            window("(no fault)", None)
            for f in faults:
                log(f"fault: {FAULTS[f]}")
                window(FAULTS[f], actions[f])
            stop.set()
            load_proc.join(60)
            pids_end = server_pids(port)
        info["load_average_end"] = os.getloadavg()
        with open(results_path, "rb") as fh:
            loaded = pickle.load(fh)
    finally:
        if load_proc is not None and load_proc.is_alive():
            load_proc.terminate()
            load_proc.join(10)
        redis.stop()
        if pg.running or (pg.data / "postmaster.pid").exists():
            pg.stop("fast")
        log("private Redis and PostgreSQL stopped")
        shutil.rmtree(tmp, ignore_errors=True)  # the workspace too unless --workspace put it elsewhere
    return report(args, info, phases, loaded, pids_start, pids_end)


def report(args, info: dict, phases: list[dict], loaded: dict, pids_start: list[int], pids_end: list[int]) -> int:
    records = loaded["records"]
    rows = [(ph, summarise(ph, records)) for ph in phases]

    print("\n=== fault benchmark: online service, production profile (private Redis + PostgreSQL) ===")
    ws = info["workspace"]
    print(f"workspace: {ws['customers']:,} customers generated; {info['personas']:,} personas served "
          f"({info['listed']:,} in profiles.parquet, the others have no features); "
          f"{'reused' if ws['reused'] else 'built'} (build {ws.get('build_seconds', '?')} s); champion set from "
          f"challenger: {', '.join(ws.get('champions_forced') or []) or 'none (the gate promoted every model)'}")
    print(f"load: {args.clients} client threads ({args.clients // 2 + args.clients % 2} on /v1/profile of random "
          f"served personas, {args.clients // 2} on /v1/events for {EVENT_PERSONAS} personas) + /readyz every 0.1 s; "
          f"client timeout {CLIENT_TIMEOUT_S:.0f} s; {args.workers} server workers; faults last "
          f"{args.fault_seconds:g} s; {args.quiet:g} s of load after each recovery")
    print(f"compared with the pre-fault capture: {info['baseline']['stable']:,} personas "
          f"({info['baseline']['unstable']} left out: they differed between two captures); the "
          f"{EVENT_PERSONAS} event personas on {', '.join(info['rt_free_scores']) or 'nothing'} only; "
          f"Redis held {info['redis_keys_before']:,} keys before the faults\n")

    head = (f"{'fault':<26} | {'req':>5} | {'longest':>7} | {'>2s':>4} | {'made-up':>7} | "
            f"{'events 200/kept/lost':>20} | {'ready in':>8} | {'profile in':>10} | {'correct in':>10} | "
            f"{'served after':>12} | {'load':>4}")
    print(head)
    print("-" * len(head))
    for ph, s in rows:
        base = ph["name"] == "(no fault)"
        rec = s["recovery"]
        chk = ph["check"]
        print(f"{ph['name']:<26} | {s['requests']:>5} | {max(s['longest'].values()):>6.2f}s | "
              f"{sum(s['over_goal'].values()):>4} | {s['made_up']:>7} | "
              f"{s['accepted']:>6}/{s['kept_rows']:>5}/{s['lost']:>5}     | "
              f"{'-' if base else fmt_s(rec['readyz']):>8} | {'-' if base else fmt_s(rec['profile']):>10} | "
              f"{'-' if base else fmt_s(rec['correct']):>10} | {chk['same']:>5}/{chk['personas']:<6} | "
              f"{ph['load_average'][0]:>4.1f}")
    print("\nreq: requests sent in the window (fault start to the end of the load after recovery); longest: the "
          "longest request, any endpoint (a client timeout counts 10 s); >2s: requests over 2 s; made-up: 200 profiles "
          "that differ from the persona's pre-fault capture; events 200/kept/lost: /v1/events answered 200, rows the "
          "event log gained, 200s whose event is not in the log; ready in / profile in / correct in: from the end of "
          "the fault to the first 200 of /readyz, the first 200 of /v1/profile, the first 200 profile equal to its "
          "capture; served after: personas /v1/score answers with their pre-fault data at the end of the window; "
          "load: 1-minute load average when the fault began")

    print("\nper fault:")
    for ph, s in rows:
        chk, rt = ph["check"], ph["realtime"]
        print(f"  {ph['name']}: window {ph['window'][1] - ph['window'][0]:.1f} s, fault "
              f"{ph['fault_end'] - ph['fault_start']:.1f} s")
        for ep in ("profile", "events", "readyz"):
            print(f"    {ep:<8} {fmt_status(s['statuses'].get(ep, {})):<44} p99 {s['p99'][ep]:5.2f} s, "
                  f"longest {s['longest'][ep]:5.2f} s, {s['over_goal'][ep]} over {HANG_GOAL_S:g} s")
        if s["slowest"]:
            print("    slowest: " + "; ".join(f"{x['endpoint']} {x['status']} {x['latency_s']} s sent at "
                                           f"{x['sent_after_fault_start_s']:+.2f} s" for x in s["slowest"][:3])
                  + " (relative to the fault's start)")
        print(f"    profiles: {s['compared']} 200s compared, {s['made_up']} differ from the capture "
              f"({s['made_up_event_personas']} of them event personas)"
              + (f", the last ending {s['last_made_up']:.1f} s after the fault's end" if s["last_made_up"] else ""))
        print(f"    events: {s['accepted']} accepted (200), {s['kept_rows']} rows added to the log, {s['lost']} "
              f"accepted but not in the log, {s['kept_though_refused']} refused but kept anyway")
        if ph["name"] != "(no fault)":
            print(f"    recovery: /readyz {fmt_s(s['recovery']['readyz'])}, first profile 200 "
                  f"{fmt_s(s['recovery']['profile'])}, first correct one {fmt_s(s['recovery']['correct'])}, last "
                  f"error answer {s['last_error']:.2f} s after the fault's end")
        print(f"    at the window's end: {chk['served']}/{chk['personas']} personas served, {chk['same']} with their "
              f"pre-fault data, {chk['not_served']} not served (404/503), {chk['different']} different; Redis "
              f"{ph['redis_keys']:,} keys (before the faults {info['redis_keys_before']:,})")
        print(f"    real-time features served vs the event log's saved state ({rt.get('checked', 0)} event personas): "
              f"{rt.get('mismatched', 0)} differ" + (f", e.g. {rt['examples'][0]}" if rt.get("examples") else ""))
        if ph["server_pids"] != pids_start:
            print(f"    server processes changed: {pids_start} -> {ph['server_pids']}")

    print("\ngoals, per fault:")
    for ph, s in rows:
        if ph["name"] == "(no fault)":
            continue
        longest = max(s["longest"].values())
        same = ph["server_pids"] == pids_start
        chk = ph["check"]
        recovered = ph["recovered"] is not None and chk["same"] == chk["personas"]
        rt_bad = ph["realtime"].get("mismatched", 0)
        goals = [("no 200 with made-up data", s["made_up"] == 0, f"{s['made_up']} of {s['compared']} 200 profiles"),
                 (f"no hang over {HANG_GOAL_S:g} s", longest <= HANG_GOAL_S,
                  f"longest {longest:.2f} s, {sum(s['over_goal'].values())} requests over"),
                 ("no accepted event lost", s["lost"] == 0, f"{s['lost']} of {s['accepted']} lost"),
                 ("recovery without a restart", recovered and same,
                  f"readyz {fmt_s(s['recovery']['readyz'])}, correct profile {fmt_s(ph['recovered'])}, "
                  f"{chk['same']}/{chk['personas']} personas served with their data at the end, server processes "
                  f"{'unchanged' if same else 'CHANGED'}"),
                 ("(extra) real-time features online = event log", rt_bad == 0,
                  f"{rt_bad} of {ph['realtime'].get('checked', 0)} event personas differ")]
        print(f"  {ph['name']}")
        for name, ok, detail in goals:
            print(f"    {name:<48} {'met   ' if ok else 'MISSED'}  ({detail})")
    if loaded["made_up"]:
        ex = loaded["made_up"][0]
        diff = {k: {"served": ex["got"].get(k), "before": ex["expected"].get(k)} for k in ex["expected"]
                if ex["got"].get(k) != ex["expected"].get(k)}
        print(f"\nfirst made-up 200: persona {ex['persona_id']}{' (event persona)' if ex['event_persona'] else ''} "
              f"at +{ex['t'] - phases[0]['window'][0]:.1f} s: {json.dumps(diff)[:1200]}")

    la0, la1 = info["load_average_start"], info.get("load_average_end", (float("nan"),) * 3)
    print(f"\nmachine: {info['cores']} cores; load average {la0[0]:.2f} / {la0[1]:.2f} / {la0[2]:.2f} at the start, "
          f"{la1[0]:.2f} / {la1[1]:.2f} / {la1[2]:.2f} at the end (other jobs share the machine); server processes "
          f"{pids_start} at the start, {pids_end} at the end; {len(records):,} requests recorded; {info['code']}")
    out = {"info": info, "args": {**vars(args), "workspace": str(args.workspace)},
           "faults": [{"name": ph["name"], "fault_seconds": ph["fault_end"] - ph["fault_start"],
                       "load_average": ph["load_average"], "realtime": ph["realtime"], "check": ph["check"],
                       "redis_keys": ph["redis_keys"], "recovered": ph["recovered"],
                       **{k: v for k, v in s.items() if k != "statuses"},
                       "statuses": {ep: {str(k): n for k, n in by.items()} for ep, by in s["statuses"].items()}}
                      for ph, s in rows],
           "made_up_examples": loaded["made_up"][:5]}
    (OUT / "fault.json").write_text(json.dumps(out, indent=1, default=str))
    t0 = phases[0]["window"][0] if phases else 0.0
    marks = [{"name": ph["name"], "fault_start_s": round(ph["fault_start"] - t0, 3),
              "fault_end_s": round(ph["fault_end"] - t0, 3)} for ph in phases]
    raw = [[r[0], round(r[1] - t0, 4), round(r[2], 4), r[3], r[4]] for r in records]
    (OUT / "fault_records.json").write_text(json.dumps({"faults": marks, "columns": ["endpoint", "sent_s",
                                                         "latency_s", "status", "persona"], "records": raw}))
    print(f"wrote {OUT / 'fault.json'}, every request in {OUT / 'fault_records.json'}; server log "
          f"{OUT / 'fault_server.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
