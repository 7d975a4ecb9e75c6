"""Shared by bench/scale_bench.py and scale_projection.py: the settings, and running one command with its wall
time, CPU time and the peak memory of its whole process tree (see scale_bench.py's docstring)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
PYTHON = sys.executable
PERSONA = str(Path(PYTHON).parent / "persona")
DEFAULT_SIZES = "100000,300000,1000000,3000000"
QUICK_SIZE = 20_000
MODELS_CUSTOMERS = 20_000
GEN_MARKER = ".scale_bench_generated"
MODELS_MARKER = ".scale_bench_models"
POLL_SECONDS = 0.2
STAGES = ("integrate", "features", "rescore")
SPARK_CORES = 2  # local[2]
DEFAULT_SPARK_CONF = {"spark.driver.memory": "6g", "spark.ui.enabled": "false",
                      "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}
GOALS = {"integrate_1m_duckdb_gb": 7.0, "sqlite": 20_000, "redis": 50_000}
# projection assumptions
EXEC_CORES = 4
EXEC_MEM_MAX_GB = 64
EXEC_MEM_MIN_GB = 4
PARALLEL_EFFICIENCY = 0.7
TARGET_PARALLEL_SECONDS = 1800
SPARK_MEMORY_FRACTION = 0.6


def say(text: str = "") -> None:
    print(text, flush=True)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- running one command, measured ---------------------------------------------------------------------------------
def _tree(proc) -> list:
    import psutil

    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return [proc]


def run_measured(cmd: list[str], log: Path, *, timeout: float, env: dict | None = None, cwd: Path = ROOT) -> dict:
    """Run `cmd` as a child process (own session), polling the RSS of its whole process tree every POLL_SECONDS.
    stdout/stderr go to `<log>.out` / `<log>.err`. Returns wall, cpu, peaks, rc, the JSON the command printed (its last
    line starting with '{'), the last stderr line, whether a JVM was in the tree, and the load average around it."""
    import psutil

    log.parent.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log.with_suffix(".out"), log.with_suffix(".err")
    before = load()
    peak_total = peak_java = peak_python = peak_procs = 0
    java_pids: set[int] = set()
    seen: dict[int, psutil.Process] = {}
    cpu_seen: dict[int, float] = {}  # pid -> its own user+system seconds at the last poll
    timed_out = False
    with open(out_path, "wb") as out_f, open(err_path, "wb") as err_f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, cwd=cwd, env=env, start_new_session=True)
        root = psutil.Process(proc.pid)
        while True:
            pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > timeout:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the command's own session: what it started
                pid, status, rusage = os.wait4(proc.pid, 0)
                break
            total = java = python_rss = 0
            tree = _tree(root)
            for p in tree:
                try:
                    rss = p.memory_info().rss
                    name = p.name()
                    t = p.cpu_times()
                except psutil.Error:
                    continue
                cpu_seen[p.pid] = t.user + t.system
                seen.setdefault(p.pid, p)
                total += rss
                if name == "java":
                    java += rss
                    java_pids.add(p.pid)
                elif p.pid == proc.pid:
                    python_rss = rss
            peak_total, peak_java, peak_python = max(peak_total, total), max(peak_java, java), max(peak_python, python_rss)
            peak_procs = max(peak_procs, len(tree))
            time.sleep(POLL_SECONDS)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    leftover = []
    alive = [p for p in seen.values() if p.pid != proc.pid and p.is_running()]
    if alive:  # descendants still running when the command exited: 5 s to end on their own, then ended here
        _, alive = psutil.wait_procs(alive, timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            if p.status() != psutil.STATUS_ZOMBIE:
                leftover.append(f"{p.pid} {p.name()}")
                p.kill()
    # CPU: wait4's rusage counts the command and the descendants it reaped; a JVM that outlives its Python parent
    # (reaped by init) is not in it. The per-process sum of the polls misses each process's last < 0.2 s. Take the
    # larger of the two.
    cpu_rusage = rusage.ru_utime + rusage.ru_stime
    cpu_polled = sum(cpu_seen.values())
    stdout = out_path.read_text(encoding="utf-8", errors="replace")
    stderr = err_path.read_text(encoding="utf-8", errors="replace")
    report = None
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                report = json.loads(line)
            break
    last_err = next((ln.strip() for ln in reversed(stderr.splitlines()) if ln.strip()), "")
    return {"cmd": " ".join(cmd), "rc": None if timed_out else proc.returncode, "timed_out": timed_out,
            "wall_s": round(wall, 2), "cpu_s": round(max(cpu_rusage, cpu_polled), 2),
            "cpu_rusage_s": round(cpu_rusage, 2), "cpu_polled_s": round(cpu_polled, 2),
            "peak_rss_mb": round(peak_total / 2**20, 1), "peak_jvm_rss_mb": round(peak_java / 2**20, 1),
            "peak_cli_rss_mb": round(peak_python / 2**20, 1), "max_processes": peak_procs,
            "maxrss_single_mb": round(rusage.ru_maxrss / 1024, 1),  # largest single process (wait4), a cross-check
            "jvm": bool(java_pids), "leftover_pids": leftover, "load_before": before, "load_after": load(),
            "report": report, "last_stderr": last_err[-300:], "log": str(log)}


CODE_DIRS = ("persona", "features", "serving", "rules", "training", "feature_repo")


def code_hash() -> str:
    """A hash of the project's Python sources as they are on disk (the working tree, edits included): the code a
    command starting now runs. The run warns when it changes between commands (someone edited the code meanwhile)."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    for folder in CODE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            h.update(str(path.relative_to(ROOT)).encode())
            with contextlib.suppress(OSError):
                h.update(path.read_bytes())
    return h.hexdigest()


def ok(r: dict | None) -> bool:
    return bool(r) and r.get("rc") == 0
