#!/usr/bin/env python
"""Feature snapshot benchmark: every feature group for one date and for a 13-date grid, against a scan floor.

For each integrated workspace given (make them with `persona generate --customers N -w DIR` then
`persona integrate -w DIR`), in fresh child processes so that peak RSS does not leak between runs:
  1. sizes: customers (profiles), personas and rows of transactions / events / interactions;
  2. floor: DuckDB `SELECT persona_id, count(*), sum(amount) ... GROUP BY persona_id` over transactions, and the
     same count over events and interactions: one scan of every record the features read (best of 3);
  3. one snapshot: all groups for the scoring date (the day after the data), seconds per group;
  4. the grid: all groups for 13 dates 30 days apart, streamed one group at a time (`iter_snapshots`), seconds per
     group, output rows, the size of the frames (what `compute_snapshots` would hold at once), peak RSS;
  5. the grid written: `write_snapshots(iter_snapshots(...))` into a temporary folder (compute + Parquet).

    .venv/bin/python bench/features_bench.py /tmp/feat100k /tmp/feat1m     # workspace roots or integrated/current
    .venv/bin/python bench/features_bench.py /tmp/feat100k --dates 13 --no-write

Writes bench/out/features.json. Exits 1 when the 1M-customer grid takes more than 10 minutes or 8 GB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "out" / "features.json"
BUDGET_S, BUDGET_GB, BUDGET_CUSTOMERS = 600.0, 8.0, 1_000_000
GROUP_ORDER = ("attributes", "transactions", "engagement", "affinity", "realtime")


# ---------------------------------------------------------------------------------------------------------------
# child side: one measurement per process
# ---------------------------------------------------------------------------------------------------------------

class Meter:
    """Wall and CPU seconds since the last call, and peak RSS sampled every 50 ms (VmHWM is process-wide)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = False
        threading.Thread(target=self._watch, daemon=True).start()
        self.t, self.c = time.perf_counter(), self._cpu()

    @staticmethod
    def _cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    @staticmethod
    def rss() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) * 1024
        return 0

    def _watch(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.05)

    def lap(self) -> tuple[float, float]:
        t, c = time.perf_counter(), self._cpu()
        out = (t - self.t, c - self.c)
        self.t, self.c = t, c
        return out


def _integrated(path: Path) -> Path:
    return path if (path / "transactions.parquet").exists() else path / "integrated" / "current"


def child_sizes(integrated: Path) -> dict:
    import duckdb
    con = duckdb.connect()
    out = {}
    for name in ("transactions", "events", "interactions", "profiles"):
        f = integrated / f"{name}.parquet"
        if f.exists():
            rows, personas = con.execute(f"SELECT count(*), count(DISTINCT persona_id) FROM read_parquet('{f}')"
                                         ).fetchone()
            out[name] = {"rows": rows, "personas": personas, "bytes": f.stat().st_size}
    return out


def child_floor(integrated: Path) -> dict:
    import duckdb
    con = duckdb.connect(config={"threads": 2, "memory_limit": "3GB"})
    queries = {"transactions": "count(*), sum(amount)", "events": "count(*)", "interactions": "count(*)"}
    best = {}
    for name, aggs in queries.items():
        f = integrated / f"{name}.parquet"
        if not f.exists():
            continue
        times = []
        for _ in range(3):
            t = time.perf_counter()
            con.execute(f"SELECT count(*) FROM (SELECT persona_id, {aggs} FROM read_parquet('{f}') "
                        "GROUP BY persona_id)").fetchone()
            times.append(time.perf_counter() - t)
        best[name] = min(times)
    return {"seconds": best, "total_s": sum(best.values())}


def child_snapshots(integrated: Path, n_dates: int, write: bool) -> dict:
    from features import snapshots
    dates = snapshots.snapshot_grid(snapshots.data_end(integrated), every_days=30, count=n_dates)
    meter = Meter()
    groups: dict[str, dict] = {}
    rows = frame_bytes = 0

    def stream():
        nonlocal rows, frame_bytes
        for group, frame in snapshots.iter_snapshots(integrated, dates):
            wall, cpu = meter.lap()
            groups[group] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "rows": len(frame),
                             "columns": frame.shape[1], "frame_gb": round(frame.memory_usage(deep=True).sum() / 1e9, 3),
                             "rss_gb_after": round(Meter.rss() / 1e9, 2)}
            rows += len(frame)
            frame_bytes += frame.memory_usage(deep=True).sum()
            yield group, frame

    t0, c0 = time.perf_counter(), Meter._cpu()
    if write:
        with tempfile.TemporaryDirectory(prefix="features-bench-") as out:
            snapshots.write_snapshots(stream(), Path(out))
            written = sum(p.stat().st_size for p in Path(out).glob("*.parquet"))
    else:
        for _ in stream():
            pass
        written = 0
    return {"dates": [str(d) for d in dates], "wall_s": round(time.perf_counter() - t0, 2),
            "cpu_s": round(Meter._cpu() - c0, 2), "groups": groups, "rows": rows,
            "frames_gb": round(frame_bytes / 1e9, 2), "peak_rss_gb": round(meter.peak / 1e9, 2),
            "written_gb": round(written / 1e9, 2)}


# ---------------------------------------------------------------------------------------------------------------
# parent side
# ---------------------------------------------------------------------------------------------------------------

def run_child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> dict:
    import duckdb
    import numpy
    import pandas
    import pyarrow
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    mem = next((int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": round(mem / 1e9, 1), "python": platform.python_version(),
            "duckdb": duckdb.__version__, "pandas": pandas.__version__, "numpy": numpy.__version__,
            "pyarrow": pyarrow.__version__, "load_avg_at_start": os.getloadavg()}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        return ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workspaces", nargs="*", type=Path)
    ap.add_argument("--dates", type=int, default=13, help="dates in the grid (30 days apart)")
    ap.add_argument("--no-write", action="store_true", help="skip the grid written to Parquet")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, path, *rest = args.child
        fn = {"sizes": lambda: child_sizes(Path(path)), "floor": lambda: child_floor(Path(path)),
              "snapshots": lambda: child_snapshots(Path(path), int(rest[0]), rest[1] == "write")}[kind]
        print(json.dumps(fn()))
        return 0
    if not args.workspaces:
        ap.error("give workspaces, e.g. `persona generate --customers 100000 -w /tmp/feat100k && "
                 "persona integrate -w /tmp/feat100k`, then pass /tmp/feat100k")

    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['ram_gb']} GB RAM; Python {info['python']}, "
          f"duckdb {info['duckdb']}, pandas {info['pandas']}, numpy {info['numpy']}, pyarrow {info['pyarrow']}; "
          f"load average at start {info['load_avg_at_start'][0]:.1f}")
    results = []
    for ws in args.workspaces:
        integrated = _integrated(ws)
        print(f"\n== {integrated}", flush=True)
        sizes = run_child("sizes", str(integrated))
        customers = sizes.get("profiles", {}).get("rows", 0)
        records = sum(sizes.get(n, {}).get("rows", 0) for n in ("transactions", "events", "interactions"))
        print("   " + ", ".join(f"{n} {v['rows']:,} rows / {v['personas']:,} personas" for n, v in sizes.items()),
              flush=True)
        floor = run_child("floor", str(integrated))
        print(f"   floor (one GROUP BY persona_id scan of each file, best of 3): {floor['total_s']:.2f} s", flush=True)
        one = run_child("snapshots", str(integrated), "1", "nowrite")
        print(f"   one snapshot: {one['wall_s']:.1f} s (cpu {one['cpu_s']:.1f} s), peak {one['peak_rss_gb']} GB",
              flush=True)
        grid = run_child("snapshots", str(integrated), str(args.dates), "nowrite")
        print(f"   grid of {args.dates}: {grid['wall_s']:.1f} s (cpu {grid['cpu_s']:.1f} s), peak "
              f"{grid['peak_rss_gb']} GB", flush=True)
        written = None if args.no_write else run_child("snapshots", str(integrated), str(args.dates), "write")
        if written:
            print(f"   grid written: {written['wall_s']:.1f} s, peak {written['peak_rss_gb']} GB", flush=True)
        results.append({"integrated": str(integrated), "customers": customers, "records": records, "sizes": sizes,
                        "floor": floor, "one": one, "grid": grid, "written": written})

    print("\n| customers | records | floor s | 1 date s | 1 date / floor | grid s | per date s | grid / floor "
          "| records x dates / s | out rows | frames GB | peak RSS GB | grid+write s | peak GB |")
    print("|---:" * 14 + "|")
    for r in results:
        g, o, f, w = r["grid"], r["one"], r["floor"]["total_s"], r["written"]
        n = len(g["dates"])
        print(f"| {r['customers']:,} | {r['records']:,} | {f:.2f} | {o['wall_s']:.1f} | {o['wall_s'] / f:.0f}x "
              f"| {g['wall_s']:.1f} | {g['wall_s'] / n:.1f} | {g['wall_s'] / f:.0f}x "
              f"| {r['records'] * n / g['wall_s'] / 1e6:.1f}M | {g['rows']:,} | {g['frames_gb']} "
              f"| {g['peak_rss_gb']} | {w['wall_s'] if w else '-'} | {w['peak_rss_gb'] if w else '-'} |")
    print("\nper group (grid): wall s / cpu s / rows / frame GB")
    for r in results:
        parts = [f"{k} {v['wall_s']}/{v['cpu_s']}/{v['rows']:,}/{v['frame_gb']}" for k, v in r["grid"]["groups"].items()]
        print(f"  {r['customers']:,}: " + "; ".join(parts))
    for r in results:
        g = r["grid"]
        busy = g["cpu_s"] / g["wall_s"] if g["wall_s"] else 0
        print(f"  {r['customers']:,}: grid used {busy:.2f} cores on average (2 = both cores busy; well below 1.0 "
              "on an idle machine would mean waiting; other processes competing show as wall >> cpu / 2)")

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": info, "date": dt.datetime.now(dt.timezone.utc).isoformat(),
                               "commit": _commit(), "dates": args.dates, "results": results}, indent=2))
    print(f"\nwrote {OUT}")
    failed = [r for r in results if r["customers"] >= BUDGET_CUSTOMERS
              and (r["grid"]["wall_s"] > BUDGET_S or r["grid"]["peak_rss_gb"] > BUDGET_GB)]
    for r in failed:
        print(f"OVER BUDGET: {r['customers']:,} customers grid {r['grid']['wall_s']} s, peak "
              f"{r['grid']['peak_rss_gb']} GB (budget {BUDGET_S:.0f} s, {BUDGET_GB:.0f} GB)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
