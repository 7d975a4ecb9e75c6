"""Online service latency and throughput: /v1/profile against a no-op endpoint of the same server (the floor).

    .venv/bin/python bench/serving_bench.py --workspace /path/to/trained_ws     # 1 and 16 clients, 10 s each
    .venv/bin/python bench/serving_bench.py --quick                             # 3 s per level
    .venv/bin/python bench/serving_bench.py --clients 1,4,16,64 --repeat 2      # other settings
    .venv/bin/python bench/serving_bench.py --profile                           # also: where a request's CPU goes

The workspace (trained, with a champion) is copied to a temporary folder, never modified: the copy is rescored when it
has no tag snapshot or one of other rules or champions than it serves now, and its latest tags are pushed online again
when the online rows are not those of its last rescore; without --workspace a 1,500-customer one is built once in
bench/out/serving_ws. A real server (`serving.process.running_server`, BentoML subprocess) serves the
copy; the load comes from a separate process: closed-loop clients on keep-alive connections, each sending its next
request when the previous answer arrived. /v1/profile answers from the tags batch rescoring precomputed (see
`serving.online`), so a profile request is mostly a read.

The issue's goals, each printed as met or missed with its figures (the exit status is 0 only when all are met):
- 1 client: p99 of /v1/profile at most 3x the no-op's p99;
- 16 clients: p99 at most 2x the no-op's p99, and at least 1,500 requests/s (2 cores, load generator included).
Also printed: where one engine call spends its time (resolve, online read, merge, assembly; and a persona whose
real-time features an event moved, computed again) at several batch sizes, in this process; the server's own batch
sizes from /metrics; with --profile, a cProfile of /v1/profile and /v1/noop requests through the real ASGI app in
this process (the top functions and the share of each package).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # as the server sets it, so the in-process breakdown compares
OUT = ROOT / "bench" / "out"
STAGGER_S = 0.01  # between the load generator's connections (see _load)
GOALS = {  # clients -> (max p99 / floor p99, min requests/s or None)
    1: (3.0, None),
    16: (2.0, 1500.0),
}


# --- load generator (runs in its own process) ------------------------------------------------------------------
async def _client(host: str, port: int, path: str, bodies: list[bytes], key: str | None, record_from: float,
                  stop_at: float, lat: list[float], codes: dict[int, int], delay: float = 0.0) -> None:
    """One closed-loop client on one keep-alive HTTP/1.1 connection, opened after `delay` seconds.

    Hand-written HTTP rather than httpx: on 2 cores the load generator competes with the server, and httpx costs
    several times more CPU per request than writing the request bytes and reading Content-Length bytes back.
    """
    await asyncio.sleep(delay)
    reader, writer = await asyncio.open_connection(host, port)
    extra = f"X-API-Key: {key}\r\n" if key else ""
    i = random.randrange(len(bodies))
    try:
        while time.perf_counter() < stop_at:
            body = bodies[i % len(bodies)]
            i += 1
            head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra}"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            t0 = time.perf_counter()
            writer.write(head + body)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            if t0 >= record_from:  # the warm-up's answers are not recorded (same connections, no reconnect)
                lat.append(time.perf_counter() - t0)
                code = int(status_line.split()[1]) if status_line else 0
                codes[code] = codes.get(code, 0) + 1
    finally:
        writer.close()


def _load(url: str, path: str, bodies: list[bytes], clients: int, seconds: float, warmup: float,
          key: str | None, queue: mp.Queue) -> None:
    host, port = url.removeprefix("http://").split(":")

    async def run() -> tuple[list[float], dict[int, int]]:
        # warm-up first on the same connections: the server's caches and batch sizes settle; not recorded
        lat: list[float] = []
        codes: dict[int, int] = {}
        # Connections open STAGGER_S apart. BentoML's workers share one listening socket and asyncio accepts every
        # pending connection at once, so connections opened in one burst all land on whichever worker woke first
        # (measured: 16 clients on 1 of 2 workers); opened over time they spread, as behind a load balancer.
        await asyncio.gather(*(_client(host, int(port), path, bodies, key, record_from, stop_at, lat, codes,
                                       delay=i * STAGGER_S) for i in range(clients)))
        return lat, codes

    record_from = time.perf_counter() + warmup
    stop_at = record_from + seconds
    lat, codes = asyncio.run(run())
    wall = time.perf_counter() - record_from
    cpu = os.times()
    queue.put({"lat": lat, "codes": codes, "wall": wall, "cpu": (cpu.user + cpu.system) / (warmup + wall)})


def server_processes(port: int) -> list:
    """The server's processes: `python -m serving.service ... --port N` and everything it started (its workers)."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "serving.service" in cmd and "--port" in cmd and cmd[cmd.index("--port") + 1] == str(port):
            return [proc, *proc.children(recursive=True)]
    return []


def _cpu_seconds(procs: list) -> float:
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except Exception:  # a process that ended
            pass
    return total


def _busy_seconds() -> float:
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)


def measure(url: str, path: str, bodies: list[bytes], clients: int, seconds: float, warmup: float,
            key: str | None = None, server: list | None = None) -> dict:
    """Latency percentiles (ms) and requests/s of `clients` closed-loop clients, from a separate process.

    Also the CPU (in cores) the server and the load generator used over the level, and what everything else on the
    machine used meanwhile (other jobs on a shared machine: the figures are only comparable when that is ~0).
    """
    queue: mp.Queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_load, args=(url, path, bodies, clients, seconds, warmup, key,
                                                               queue))
    busy0, server0, t0 = _busy_seconds(), _cpu_seconds(server or []), time.perf_counter()
    each0 = [_cpu_seconds([p]) for p in server or []]
    proc.start()
    got = queue.get(timeout=seconds + warmup + 120)
    proc.join()
    wall = time.perf_counter() - t0
    busy, server_cpu = _busy_seconds() - busy0, _cpu_seconds(server or []) - server0
    each = [round((_cpu_seconds([p]) - c) / wall, 2) for p, c in zip(server or [], each0)]
    loadgen = got["cpu"] * (warmup + got["wall"])
    lat = np.array(got["lat"]) * 1000
    ok = got["codes"].get(200, 0)
    return {"clients": clients, "requests": int(len(lat)), "ok": ok, "codes": got["codes"],
            "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
            "p99_ms": float(np.percentile(lat, 99)), "max_ms": float(lat.max()),
            "rps": len(lat) / got["wall"], "loadgen_cpu_share": got["cpu"],
            "server_cores": server_cpu / wall, "server_cores_per_process": each,
            "other_cores": max(0.0, busy - server_cpu - loadgen) / wall}


# --- workspace ---------------------------------------------------------------------------------------------------
def build_workspace(root: Path) -> Path:
    """A trained 1,500-customer workspace (the test suite's size), built once and reused."""
    import yaml

    from features.build import build_features
    from features.generate import generate
    from features.integration.run import integrate
    from persona.workspace import Workspace
    from training.train import train

    if (root / "mlflow.db").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    print(f"building a 1,500-customer workspace in {root} (once, about 2 minutes)", flush=True)
    generate(root, 1500, seed=3)
    path = root / "persona.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["training"] = {"min_positives": 20, "min_negatives": 20, "cutoffs": 3}
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False))
    ws = Workspace.open(root)
    integrate(ws)
    build_features(ws)
    train(ws, promote=True)
    return root


def prepare(source: Path, into: Path) -> Path:
    """Copy the workspace (never touched in place) and bring the copy to what a production user serves: rescored when
    it has no tag snapshot or one of other rules or models than it would serve now, its latest tags pushed online
    again when the online rows are not those of its last rescore."""
    from features import online_reader
    from features import store as feature_store
    from persona.workspace import Workspace
    from rules import catalog, history
    from serving import recovery, scoring
    from serving.batch import rescore
    from training import tracking

    target = into / "ws"
    shutil.copytree(source, target, symlinks=True)
    ws = Workspace.open(target)
    meta = history.read_meta(ws) if history.latest_date(ws) is not None else None
    champions = scoring.ChampionLoader(tracking.connect(ws, ws.config())).champion_versions()
    if meta is None or meta.get("rules_hash") != scoring.rules_hash(catalog.tagset(ws)) or \
            {t: str(v) for t, v in meta.get("models", {}).items()} != champions:
        print("rescoring the copy (no tag snapshot, or one of other rules or models)", flush=True)
        rescore(ws)
        return target
    pid = str(history.read(ws, columns=["persona_id"])["persona_id"].iloc[0])
    reader = online_reader.OnlineReader(feature_store.open_store(ws, ws.config()))
    row = reader.fetch([pid], [], tags=[scoring.SCORED_AT, scoring.PACKED]).tags
    if row[scoring.PACKED][0] is None or row[scoring.SCORED_AT][0] != meta.get("created"):
        print("pushing the latest tags online again (the online rows are not those of the last rescore)", flush=True)
        recovery.push_latest_tags(ws)
    return target


# --- where one engine call spends its time -----------------------------------------------------------------------
def engine_breakdown(root: Path, sizes: list[int], repeats: int = 30) -> list[dict]:
    """Median ms per engine stage for batches of `sizes` personas, in this process (no HTTP): resolve, the online read
    (tags, real-time features, row times, marker: one round trip), the merge (`scoring.serve`: what batch computed,
    and what moved since computed again), the assembly of the profiles; then the same for personas an event has just
    moved (their models and rules on real-time features computed again)."""
    from persona.workspace import Workspace
    from rules import history
    from serving import scoring
    from serving.online import Customer, OnlineEngine

    engine = OnlineEngine(Workspace.open(root))
    pids = history.read(engine.ws, columns=["persona_id"])["persona_id"].astype(str).tolist()
    moved = pids[-max(sizes):]  # an event for each: their real-time row is newer than the batch
    engine.ingest_events([{"persona_id": p, "event_type": "cart_add"} for p in moved])
    rows = []
    for label, pool in (("precomputed", pids[:-max(sizes)]), ("after an event", moved)):
        for n in sizes:
            t: dict[str, list[float]] = {k: [] for k in ("resolve", "online_read", "merge", "assemble", "total")}
            for r in range(repeats):
                batch = [Customer(persona_id=p) for p in (pool[(r * n) % len(pool):] + pool)[:n]]
                live = engine._live
                views = [(v.name, names) for v, names, _ in live.reader.views]
                t0 = time.perf_counter()
                ids = [p for p in engine.resolve(batch) if p]
                t1 = time.perf_counter()
                got = engine._fetch(live.reader, ids, ("realtime",), tags=(scoring.SCORED_AT, scoring.PACKED))
                t2 = time.perf_counter()
                scoring.serve(live.scorer, live.batch, live.catalog, views, got,
                              lambda js: engine.features(live.reader, [ids[j] for j in js])[0])
                t3 = time.perf_counter()
                engine.profiles(batch)
                t4 = time.perf_counter()
                whole = t4 - t3
                t["resolve"].append(t1 - t0)
                t["online_read"].append(t2 - t1)
                t["merge"].append(t3 - t2)
                t["assemble"].append(max(0.0, whole - (t3 - t0)))
                t["total"].append(whole)
            rows.append({"path": label, "batch": n, **{k: float(np.median(v) * 1000) for k, v in t.items()}})
    return rows


def profile_app(root: Path, requests: int = 2000, clients: int = 16, top: int = 25) -> None:
    """cProfile of /v1/profile and /v1/noop requests through the service's real ASGI app in this process (no HTTP
    server: uvicorn's share is not in it), printed as the top functions by own time and the share of each package."""
    import cProfile
    import pstats

    os.environ["PERSONA_WORKSPACE"] = str(root)
    os.environ["BENTOML_CONFIG_OPTIONS"] = (os.environ.get("BENTOML_CONFIG_OPTIONS", "") +
                                            " services.persona.tracing.excluded_urls=.").strip()  # as `serve` sets it
    from persona.workspace import Workspace
    from rules import history
    from serving import service

    app = service.PersonaService.to_asgi()
    pids = history.read(Workspace.open(root), columns=["persona_id"])["persona_id"].astype(str).tolist()

    async def call(path: str, body: bytes) -> int:
        sent: list[dict] = []
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        await app({"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                   "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                   "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                   "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}, receive, send)
        return sent[0]["status"]

    async def run() -> None:
        events: asyncio.Queue = asyncio.Queue()
        await events.put({"type": "lifespan.startup"})
        started: asyncio.Queue = asyncio.Queue()
        lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, events.get, started.put))
        await started.get()
        while await call("/v1/profile", json.dumps({"persona_id": pids[0]}).encode()) != 200:
            await asyncio.sleep(0.1)  # the engine loads in the service's constructor; readiness follows
        for path, bodies in (("/v1/profile", [json.dumps({"persona_id": p}).encode() for p in pids[:500]]),
                             ("/v1/noop", [b"{}"])):
            async def client(k: int) -> None:
                for i in range(requests // clients):
                    await call(path, bodies[(k * 31 + i) % len(bodies)])

            await asyncio.gather(*(client(k) for k in range(clients)))  # warm-up
            prof = cProfile.Profile()
            c0 = time.process_time()
            prof.enable()
            await asyncio.gather(*(client(k) for k in range(clients)))
            prof.disable()
            cpu = (time.process_time() - c0) / requests * 1000
            stats = pstats.Stats(prof)
            packages: dict[str, float] = {}
            for (file, _, _), (_, _, own, _, _) in stats.stats.items():
                name = file.split("site-packages/")[1].split("/")[0] if "site-packages/" in file else (
                    file.split(str(ROOT) + "/")[1] if str(ROOT) in file else "(python)")
                packages[name] = packages.get(name, 0.0) + own
            total = sum(packages.values()) or 1.0
            print(f"\n{path}: {requests} requests from {clients} tasks, {cpu:.2f} ms CPU per request under cProfile; "
                  "own time by package:")
            for name, own in sorted(packages.items(), key=lambda kv: -kv[1])[:12]:
                print(f"  {own / total * 100:5.1f}%  {name}")
            stats.sort_stats("tottime").print_stats(top)
        await events.put({"type": "lifespan.shutdown"})
        await lifespan

    asyncio.run(run())


def server_batches(url: str) -> tuple[float, float]:
    """(customers, engine calls) so far, from the server's Prometheus histogram of coalesced batch sizes."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = sum(float(m) for m in re.findall(r'^persona_engine_batch_customers_sum\S* (\S+)$', text, re.M))
    count = sum(float(m) for m in re.findall(r'^persona_engine_batch_customers_count\S* (\S+)$', text, re.M))
    return total, count


# --- machine -------------------------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as fh:
        mem = f"{int(fh.readline().split()[1]) / 2**20:.1f} GiB"
    import bentoml

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    return {"cores": os.cpu_count(), "cpu": cpu, "memory": mem, "python": platform.python_version(),
            "bentoml": bentoml.__version__, "load_average": os.getloadavg(), "commit": commit.strip(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def goals(results: list[dict]) -> list[dict]:
    """Each goal of GOALS with its figures and whether it is met (a level not measured counts as missed)."""
    out = []
    for clients, (ratio, rps) in GOALS.items():
        r = next((r for r in results if r["clients"] == clients), None)
        p99 = r and r["profile"]["p99_ms"]
        floor = r and r["floor"]["p99_ms"]
        out.append({"goal": f"{clients} client{'s' if clients > 1 else ''}: profile p99 <= {ratio:g}x floor p99",
                    "met": bool(r and r["ratio_p99"] <= ratio),
                    "figures": f"{p99:.2f} ms vs floor {floor:.2f} ms = {r['ratio_p99']:.2f}x" if r else "not measured"})
        if rps is not None:
            got = r and r["profile"]["rps"]
            out.append({"goal": f"{clients} clients: >= {rps:,.0f} requests/s", "met": bool(r and got >= rps),
                        "figures": f"{got:,.0f} requests/s (floor {r['floor']['rps']:,.0f})" if r else "not measured"})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, help="a trained workspace (copied); default: built in bench/out")
    ap.add_argument("--clients", default="1,16")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--workers", type=int, default=2, help="server worker processes")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure each level N times and report the try other processes disturbed least")
    ap.add_argument("--quick", action="store_true", help="3 s per level")
    ap.add_argument("--no-breakdown", action="store_true", help="skip the in-process engine stage timings")
    ap.add_argument("--profile", action="store_true", help="also cProfile requests through the ASGI app in process")
    args = ap.parse_args()
    seconds = 3.0 if args.quick else args.seconds
    levels = [int(c) for c in args.clients.split(",")]

    from rules import history
    from persona.workspace import Workspace
    from serving.process import running_server

    source = args.workspace or build_workspace(OUT / "serving_ws")
    OUT.mkdir(parents=True, exist_ok=True)
    info = machine()
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        root = prepare(source, Path(tmp))
        pids = history.read(Workspace.open(root), columns=["persona_id"])["persona_id"].astype(str).tolist()
        random.Random(0).shuffle(pids)
        bodies = [json.dumps({"persona_id": p}).encode() for p in pids[:500]]
        noop = [b"{}"]
        results = []
        with running_server(root, workers=args.workers, log=OUT / "serving_server.log") as url:
            print(f"server {url}: {args.workers} worker(s); {len(bodies)} personas; {seconds:.0f} s per level",
                  flush=True)
            server = server_processes(int(url.rsplit(":", 1)[1]))
            for clients in levels:
                tries = []
                for _ in range(args.repeat):  # on a shared machine: keep the try other jobs disturbed least
                    floor = measure(url, "/v1/noop", noop, clients, seconds, args.warmup, server=server)
                    before = server_batches(url)
                    prof = measure(url, "/v1/profile", bodies, clients, seconds, args.warmup, server=server)
                    after = server_batches(url)
                    calls = after[1] - before[1]  # warm-up included: the mean batch of the whole level
                    tries.append({"clients": clients, "profile": prof, "floor": floor,
                                  "mean_batch": (after[0] - before[0]) / calls if calls else None,
                                  "ratio_p99": prof["p99_ms"] / floor["p99_ms"],
                                  "ratio_p50": prof["p50_ms"] / floor["p50_ms"],
                                  "other_cores": max(prof["other_cores"], floor["other_cores"])})
                    print(f"  {clients:>3} clients: profile p50 {prof['p50_ms']:.1f} ms p99 {prof['p99_ms']:.1f} ms "
                          f"{prof['rps']:.0f}/s | floor p50 {floor['p50_ms']:.2f} ms p99 {floor['p99_ms']:.2f} ms "
                          f"{floor['rps']:.0f}/s | other jobs {prof['other_cores']:.2f} / "
                          f"{floor['other_cores']:.2f} cores; server processes {prof['server_cores_per_process']}",
                          flush=True)
                best = min(tries, key=lambda t: t["other_cores"])
                results.append({**best, "tries": tries if len(tries) > 1 else None})
        breakdown = [] if args.no_breakdown else engine_breakdown(root, [1, 8, 32])
        if args.profile:
            profile_app(root)
    info["load_average_after"] = os.getloadavg()

    print(f"\nmachine: {info['cores']} cores, {info['cpu']}, {info['memory']}; Python {info['python']}, "
          f"BentoML {info['bentoml']}; load average {info['load_average'][0]:.2f} before, "
          f"{info['load_average_after'][0]:.2f} after; commit {info['commit']}; {args.workers} server worker(s)")
    print(f"\n{'clients':>7} | {'profile p50':>11} {'p99':>8} {'req/s':>7} | {'floor p50':>9} {'p99':>7} "
          f"{'req/s':>7} | {'p99 ratio':>9} | {'batch':>5} | {'errors':>6} | cores: server loadgen other")
    for r in results:
        p, f = r["profile"], r["floor"]
        batch = r["mean_batch"] or float("nan")
        print(f"{r['clients']:>7} | {p['p50_ms']:>8.2f} ms {p['p99_ms']:>5.2f} ms {p['rps']:>7.0f} | "
              f"{f['p50_ms']:>6.2f} ms {f['p99_ms']:>4.2f} ms {f['rps']:>7.0f} | {r['ratio_p99']:>8.2f}x | "
              f"{batch:>5.1f} | {p['requests'] - p['ok']:>6} | {p['server_cores']:.2f} "
              f"{p['loadgen_cpu_share']:.2f} {p['other_cores']:.2f}")
    busy = max((max(r["profile"]["other_cores"], r["floor"]["other_cores"]) for r in results), default=0.0)
    if busy > 0.2:
        print(f"warning: other processes used up to {busy:.2f} of the {info['cores']} cores during the run; the "
              "latencies and rates above are pessimistic (re-run on an idle machine to judge the goals)")
    if breakdown:
        print("\nengine call, in process (median ms):\n  path           | batch | resolve | online read | merge | "
              "assemble | total")
        for b in breakdown:
            print(f"  {b['path']:<14} | {b['batch']:>5} | {b['resolve']:7.2f} | {b['online_read']:11.2f} | "
                  f"{b['merge']:5.2f} | {b['assemble']:8.2f} | {b['total']:6.2f}  ({b['total'] / b['batch']:.2f} ms/persona)")

    verdict = goals(results)
    print()
    for g in verdict:
        print(f"goal {'met   ' if g['met'] else 'MISSED'} {g['goal']}: {g['figures']}")
    (OUT / "serving.json").write_text(json.dumps({"machine": info, "workers": args.workers, "seconds": seconds,
                                                  "results": results, "engine_breakdown": breakdown,
                                                  "goals": verdict}, indent=1))
    print(f"wrote {OUT / 'serving.json'}")
    return 0 if all(g["met"] for g in verdict) else 1


if __name__ == "__main__":
    sys.exit(main())
