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
import json
import multiprocessing as mp
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# The parts, each in its own module under bench/: the private servers and the workspace (fault_setup), the load and
# the checks against the service and the event log (fault_load), the analysis and the report (fault_report).
from fault_load import (EVENT_PERSONAS, comparable, count_rows, full_check, kept_keys, realtime_check,  # noqa: E402
                        realtime_free_scores, run_load, score_all, server_pids, wait_drained, wait_recovered)
from fault_report import fmt_s, report  # noqa: E402
from fault_setup import MARK, OUT, PrivatePostgres, PrivateRedis, build, configure, log, reload_online  # noqa: E402

BUILDING = ".faultbench.building"  # a build under way (or interrupted): the folder may be wiped
# Variables that would point the workspace at other servers than the private ones: never inherited.
SCRUB_VARS = ("PERSONA_REDIS", "PERSONA_REGISTRY_URL", "PERSONA_TRACKING_URI", "PERSONA_EVENT_LOG_URL",
              "PERSONA_API_KEY", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
FAULTS = {"flush": "Redis emptied (FLUSHALL)", "restart": "Redis restarted empty", "freeze": "Redis frozen (SIGSTOP)",
          "pg": "PostgreSQL stopped"}


def code_state() -> str:
    """The commit measured, and the files of the service that differ from it (others edit this checkout)."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "serving", "features", "persona").splitlines()]
    return f"commit {git('rev-parse', '--short', 'HEAD')}" + (f", uncommitted: {', '.join(dirty)}" if dirty else
                                                              ", service code as committed")



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
            from serving.process import running_server

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
            load_proc = ctx.Process(target=run_load, args=(url, known, event_ids, categories, baseline, args.clients,
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



if __name__ == "__main__":
    sys.exit(main())
