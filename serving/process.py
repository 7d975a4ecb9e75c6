"""Running the online service: `serve` (what `persona serve` and `python -m serving.service` run) and
`running_server`, which starts one in a subprocess for the tests, the demo and the benchmarks.

This module does not import the service: BentoML loads it by its import string (`SERVICE`, as bentofile.yaml names
it), in the arbiter and in each worker, so that tests and benchmarks which only start a server import neither
FastAPI's app nor the service class here.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import bentoml

from persona.workspace import Workspace

WORKSPACE_VAR = "PERSONA_WORKSPACE"  # the workspace a server serves: set by `serve`, read by each worker
SERVICE_NAME = "persona"  # the BentoML service's name (its key in BentoML's config, the Bento's name)
SERVICE = "serving.service:PersonaService"  # its import string (the `service` of bentofile.yaml)
ROOT = Path(__file__).resolve().parents[1]  # the folder holding the packages, where `running_server` starts one


def serve(workspace: Path, port: int, *, host: str = "127.0.0.1", workers: int | None = None) -> None:
    """Serve the workspace until interrupted (`persona serve`); `workers` processes (default: `serving.workers`)
    share the port."""
    root = Path(workspace).resolve()
    Workspace.open(root).config()  # a broken persona.yaml stops here with its message, not inside a worker
    os.environ[WORKSPACE_VAR] = str(root)
    # One OpenMP thread per worker: online batches are a few rows, and LightGBM's two threads (n_jobs=2 at training)
    # spin-wait against each other and the other worker on 2 cores, measured 2.5-4x slower per call under load.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = Workspace.open(root).config().serving
    _config_option(f"services.{SERVICE_NAME}.workers={int(workers or cfg.workers)}")
    _config_option(f"services.{SERVICE_NAME}.logging.access.enabled={str(cfg.access_log).lower()}")
    if not os.environ.get("BENTOML_CONFIG") and "tracing" not in os.environ.get("BENTOML_CONFIG_OPTIONS", ""):
        # No BentoML configuration names a trace exporter, so spans go nowhere; OpenTelemetry's ASGI middleware would
        # still build five per request (measured: 30% of a /v1/profile's CPU). Every path is excluded from it (a
        # regular expression matching any URL); a BentoML config with `tracing` keeps BentoML's default.
        _config_option(f"services.{SERVICE_NAME}.tracing.excluded_urls=.")
    # The workers start in the caller's folder, as BentoML starts those of a service object it was handed.
    bentoml.serve(SERVICE, host=host, port=port, blocking=True, working_dir=os.getcwd())


def _config_option(option: str) -> None:
    # BentoML applies $BENTOML_CONFIG_OPTIONS over the service's own config when it starts the server.
    current = os.environ.get("BENTOML_CONFIG_OPTIONS", "")
    os.environ["BENTOML_CONFIG_OPTIONS"] = f"{current} {option}".strip()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(workspace: Path, port: int | None = None, *, workers: int | None = None,
                   env: dict[str, str] | None = None, timeout: float = 180.0, wait_for: str = "/readyz",
                   log: Path | None = None) -> Iterator[str]:
    """Start the service on `workspace` in a subprocess, wait until /readyz answers 200, yield its base URL, stop it.

    `env` adds or overrides environment variables of the server (an API key, a tracking URI); `wait_for="/healthz"`
    yields as soon as it answers at all (to test a server that cannot become ready). The server's output goes to
    `log` (default: a temporary file, whose end is in the error when the server does not start).
    """
    import httpx

    host = "127.0.0.1"
    port = port or free_port(host)
    base = f"http://{host}:{port}"
    out = open(log, "wb") if log else tempfile.NamedTemporaryFile(prefix="persona-serve-", suffix=".log", delete=False)
    failed = True
    cmd = [sys.executable, "-m", "serving.service", str(Path(workspace).resolve()), "--port", str(port),
           "--host", host, *(["--workers", str(workers)] if workers else [])]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=base, timeout=5) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the server exited with code {proc.returncode} before it was ready:\n"
                                       f"{_tail(out.name)}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(wait_for).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the server at {base} was not ready within {timeout:.0f} s:\n{_tail(out.name)}")
                time.sleep(0.25)
        yield base
        failed = False
    finally:
        _stop(proc)
        out.close()
        if not log and not failed:  # a temporary log is kept only to read why a server failed
            Path(out.name).unlink(missing_ok=True)


def _stop(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the server's process group (BentoML's arbiter stops its workers), SIGKILL it after `grace` s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _tail(path: str, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    return "(no server log)"


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m serving.service WORKSPACE [--port N] [--host H] [--workers N]` (what running_server starts)."""
    parser = argparse.ArgumentParser(prog="python -m serving.service", description=main.__doc__)
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--port", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--workers", type=int)
    args = parser.parse_args(argv)
    port = args.port or Workspace.open(args.workspace).config().serving.port
    serve(args.workspace, port, host=args.host, workers=args.workers)
