"""What the fault benchmark (bench/fault_bench.py) stands up before it breaks anything: a private Redis and a private
PostgreSQL 15 cluster that only this benchmark starts, kills, freezes and stops (the shared 6379/5432 are never
touched), and the production-profile workspace built on them through persona's CLI.

Apart from the runner so that the servers' lifecycle, which the faults depend on, reads on its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PROJECT = "faultbench"
MARK = ".faultbench.json"  # written in a workspace this benchmark built (what --reuse looks for)


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
