"""Hostile requests against a real server: status, latency and the worker's memory per case, beside a plain request.

    .venv/bin/python bench/hostile_bench.py --workspace /path/to/trained_ws     # each case 5 times
    .venv/bin/python bench/hostile_bench.py --quick                             # each case twice, 300 junk paths
    .venv/bin/python bench/hostile_bench.py --repeat 20 --paths 3000            # other settings

The workspace (trained, with a champion) is copied to a temporary folder and rescored there if it has no tag
snapshot, as bench/serving_bench.py does; without --workspace its 1,500-customer one is built once in
bench/out/serving_ws. The cost of the old 100k-character persona_id grew with the number of personas (a copy of the
id index at the key's width: 10,000 personas made 4 GiB), so a larger workspace shows more: build one with
`persona generate --customers 10000`, then `persona integrate`, `persona features`, `persona train --promote`.

A real server (`serving.process.running_server`, one worker so that its memory is the one measured, an API key set)
receives each case `--repeat` times from this process over plain sockets: a request's body is written by a thread
while the answer is read, because the server answers 413 before it has read a large body and closes the connection.
The floor is POST /v1/noop (BentoML's own no-op endpoint) measured the same way; a normal /v1/profile comes next.
Per case: the statuses seen, median and max latency, the worker's RSS before and after the case and its peak
(VmHWM, since the worker started). The goal: every hostile case a 4xx within 100 ms, the RSS flat; /metrics no
larger after the junk paths than after the first few.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
OUT = ROOT / "bench" / "out"
KEY = "hostile-bench-key"
GOAL_MS = 100.0
MIB = 1 << 20


# --- one request over a plain socket ----------------------------------------------------------------------------
def request(url: str, method: str, path: str, body: bytes | Iterable[bytes] = b"", *, key: str | None = KEY,
            chunked: bool = False, timeout: float = 60.0) -> tuple[int, float, bytes]:
    """(status, seconds until the whole answer was read, answer body) of one request on a new connection.

    The body is written by a thread while the answer is read: a server may answer (413) and close before it has read
    everything, and a writer that waited for its last byte to go out would see a reset instead of the answer.
    """
    host, port = url.removeprefix("http://").split(":")
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json", "Connection: close"]
    if key:
        head.append(f"X-API-Key: {key}")
    if chunked:
        head.append("Transfer-Encoding: chunked")
    else:
        body = body if isinstance(body, bytes) else b"".join(body)
        head.append(f"Content-Length: {len(body)}")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    t0 = time.perf_counter()

    def write() -> None:
        try:
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
            if chunked:
                for chunk in body:
                    sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sock.sendall(b"0\r\n\r\n")
            elif body:
                sock.sendall(body)
        except OSError:  # the server answered and closed before the body was all sent
            pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        answer = _read_answer(sock)
        elapsed = time.perf_counter() - t0
    finally:
        sock.close()
        writer.join(timeout)
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    return status, elapsed, answer.partition(b"\r\n\r\n")[2]


def _read_answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), None)
    while length is None or len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head + b"\r\n\r\n" + rest


# --- the worker's memory ------------------------------------------------------------------------------------------
def memory(pid: int) -> tuple[float, float]:
    """(RSS, peak RSS since start) of a process in MiB, from /proc (psutil for the RSS where /proc is missing)."""
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    import psutil

    rss = psutil.Process(pid).memory_info().rss / MIB
    return rss, float("nan")


# --- the cases ---------------------------------------------------------------------------------------------------
def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def _event(**fields: object) -> bytes:
    return _json({"events": [{"persona_id": "P1", "event_type": "cart_add", **fields}]})


def _ago(**delta: float) -> str:
    import datetime as dt

    return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(**delta)).isoformat()


def _chunks(total: int, size: int = 65536) -> Iterable[bytes]:
    yield b'{"persona_id": "'
    for _ in range(total // size):
        yield b"P" * size
    yield b'"}'


def cases(pid: str) -> list[tuple[str, Callable[[str], tuple[int, float, bytes]]]]:
    """(name, send) of every case; `pid` is a known persona (the normal request)."""
    big, huge = "P" * 100_000, "P" * 10_000_000

    def post(path: str, body: bytes) -> Callable[[str], tuple[int, float, bytes]]:
        return lambda url: request(url, "POST", path, body)

    return [
        ("floor: POST /v1/noop", post("/v1/noop", b"{}")),
        ("normal: POST /v1/profile", post("/v1/profile", _json({"persona_id": pid}))),
        ("persona_id of 100,000 characters", post("/v1/profile", _json({"persona_id": big}))),
        ("identifier value of 100,000 characters",
         post("/v1/profile", _json({"identifier": {"type": "email", "value": big + "@x.cn"}}))),
        ("persona_id of 10 MB (Content-Length)", post("/v1/profile", _json({"persona_id": huge}))),
        ("10 MB body, chunked", lambda url: request(url, "POST", "/v1/profile", _chunks(10 * MIB), chunked=True)),
        ("/v1/score with 20,000 customers", post("/v1/score", _json({"customers": [{"persona_id": pid}] * 20_000}))),
        ("3,000 unknown keys", post("/v1/profile", _json({"persona_id": pid, **{f"k{i}": 1 for i in range(3000)}}))),
        ("JSON nested 100,000 deep", post("/v1/profile", b"[" * 100_000 + b"]" * 100_000)),
        ("event timestamp year 1", post("/v1/events", _event(timestamp="0001-01-01T00:00:00"))),
        ("event timestamp year 1 at +08:00", post("/v1/events", _event(timestamp="0001-01-01T00:00:00+08:00"))),
        ("event timestamp year 9999", post("/v1/events", _event(timestamp="9999-12-31T23:59:59Z"))),
        ("event timestamp garbage", post("/v1/events", _event(timestamp="yesterday"))),
        ("event 8 days old", lambda url: request(url, "POST", "/v1/events", _event(timestamp=_ago(days=8)))),
        ("event 10 minutes ahead", lambda url: request(url, "POST", "/v1/events", _event(timestamp=_ago(minutes=-10)))),
        ("event category malformed", post("/v1/events", _event(category="Beauty Products!"))),
        ("event category unknown", post("/v1/events", _event(category="no_such_category"))),
        ("unknown path", lambda url: request(url, "GET", f"/{uuid.uuid4().hex}")),
        ("unknown path without the key", lambda url: request(url, "GET", f"/{uuid.uuid4().hex}", key=None)),
        ("/v1/docs without the key", lambda url: request(url, "GET", "/v1/docs", key=None)),
    ]


def run_case(url: str, send: Callable[[str], tuple[int, float, bytes]], repeat: int, worker: int) -> dict:
    before, _ = memory(worker)
    statuses, times, sample = [], [], b""
    for _ in range(repeat):
        status, seconds, body = send(url)
        statuses.append(status)
        times.append(seconds * 1000)
        sample = body
    after, peak = memory(worker)
    return {"statuses": sorted(set(statuses)), "p50_ms": statistics.median(times), "max_ms": max(times),
            "rss_before_mib": before, "rss_after_mib": after, "peak_mib": peak,
            "answer": sample[:160].decode(errors="replace")}


def junk_paths(url: str, n: int, key: str | None) -> dict:
    """n random unknown paths; /metrics size (bytes, series) after the first 30 and after all of them."""
    def metrics() -> tuple[int, int]:
        _, _, text = request(url, "GET", "/metrics", key=None)
        lines = [ln for ln in text.decode(errors="replace").splitlines() if ln and not ln.startswith("#")]
        return len(text), len(lines)

    times, statuses, first = [], set(), None
    for i in range(n):
        status, seconds, _ = request(url, "POST" if i % 2 else "GET", f"/v1/{uuid.uuid4().hex}/{i}", key=key)
        statuses.add(status)
        times.append(seconds * 1000)
        if i == 29:
            first = metrics()
    return {"statuses": sorted(statuses), "p50_ms": statistics.median(times), "max_ms": max(times),
            "metrics_after_30": first, "metrics_after_all": metrics()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, help="a trained workspace (copied); default: built in bench/out")
    ap.add_argument("--repeat", type=int, default=5, help="requests per case")
    ap.add_argument("--paths", type=int, default=3000, help="random unknown paths, with and without the key")
    ap.add_argument("--quick", action="store_true", help="each case twice, 300 unknown paths")
    args = ap.parse_args()
    repeat, paths = (2, 300) if args.quick else (args.repeat, args.paths)

    from serving_bench import build_workspace, machine, prepare

    from persona.workspace import Workspace
    from rules import history
    from serving.process import running_server

    source = args.workspace or build_workspace(OUT / "serving_ws")
    OUT.mkdir(parents=True, exist_ok=True)
    info = machine()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="hostile-bench-") as tmp:
        root = prepare(source, Path(tmp))
        pids = history.read(Workspace.open(root), columns=["persona_id"])["persona_id"].astype(str).tolist()
        pid = random.Random(0).choice(pids)
        with running_server(root, workers=1, env={"PERSONA_API_KEY": KEY},
                            log=OUT / "hostile_server.log") as url:
            _, _, status = request(url, "GET", "/v1/status")
            worker = json.loads(status)["pid"]
            rss, peak = memory(worker)
            print(f"server {url}: 1 worker (pid {worker}, RSS {rss:.0f} MiB, peak {peak:.0f} MiB); {len(pids)} "
                  f"personas; {repeat} request(s) per case", flush=True)
            for name, send in cases(pid):
                send(url)  # warm-up: imports, first-call caches
                results[name] = r = run_case(url, send, repeat, worker)
                print(f"  {name:40s} {r['statuses']} p50 {r['p50_ms']:8.1f} ms  max {r['max_ms']:8.1f} ms  RSS "
                      f"{r['rss_before_mib']:6.0f} -> {r['rss_after_mib']:6.0f} MiB (peak {r['peak_mib']:.0f})",
                      flush=True)
            for label, key in (("with the key", KEY), ("without the key", None)):
                before, _ = memory(worker)
                junk = junk_paths(url, paths, key)
                after, peak = memory(worker)
                results[f"{paths} unknown paths {label}"] = {**junk, "rss_before_mib": before,
                                                             "rss_after_mib": after, "peak_mib": peak}
                print(f"  {paths} unknown paths {label}: {junk['statuses']} p50 {junk['p50_ms']:.1f} ms; /metrics "
                      f"{junk['metrics_after_30']} -> {junk['metrics_after_all']} (bytes, series); RSS {before:.0f} "
                      f"-> {after:.0f} MiB", flush=True)
    info["load_average_after"] = os.getloadavg()

    floor = results["floor: POST /v1/noop"]
    print(f"\nmachine: {info['cores']} cores, {info['cpu']}, {info['memory']}; Python {info['python']}, "
          f"BentoML {info['bentoml']}; load average {info['load_average'][0]:.2f} before, "
          f"{info['load_average_after'][0]:.2f} after; commit {info['commit']}; {len(pids)} personas")
    print(f"\n{'case':42s} {'status':>10} {'p50 ms':>8} {'max ms':>8} {'x floor':>8} {'RSS before':>10} "
          f"{'after':>6} {'peak':>6}")
    failed = []
    for name, r in results.items():
        ratio = r["p50_ms"] / floor["p50_ms"] if floor["p50_ms"] else float("nan")
        print(f"{name:42s} {','.join(map(str, r['statuses'])):>10} {r['p50_ms']:8.1f} {r['max_ms']:8.1f} "
              f"{ratio:7.1f}x {r['rss_before_mib']:10.0f} {r['rss_after_mib']:6.0f} {r['peak_mib']:6.0f}")
        hostile = not name.startswith(("floor", "normal"))
        if hostile and (any(not 400 <= s < 500 for s in r["statuses"]) or r["max_ms"] > GOAL_MS
                        or r["rss_after_mib"] - r["rss_before_mib"] > 20):
            failed.append(name)
    grew = [n for n, r in results.items() if "metrics_after_all" in r
            and r["metrics_after_all"][1] != r["metrics_after_30"][1]]
    print(f"\ngoal: every hostile case a 4xx within {GOAL_MS:.0f} ms with the worker's RSS within 20 MiB: "
          + ("met" if not failed else f"NOT met by {failed}")
          + f"; /metrics series unchanged by junk paths: {'met' if not grew else f'NOT met ({grew})'}")
    (OUT / "hostile.json").write_text(json.dumps({"machine": info, "repeat": repeat, "paths": paths,
                                                  "results": results, "failed": failed, "metrics_grew": grew},
                                                 indent=1))
    print(f"wrote {OUT / 'hostile.json'}")
    return 0 if not failed and not grew else 1


if __name__ == "__main__":
    sys.exit(main())
