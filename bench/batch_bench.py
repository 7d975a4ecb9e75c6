#!/usr/bin/env python
"""Batch rescoring benchmark: `persona rescore` end to end against raw LightGBM prediction of the same models.

For a workspace with features and champion models (`persona features --no-online`, `persona train --promote`):
  1. floor: the champion models' LightGBM boosters predicting the same rows (every output of every model), on
     float32 matrices prepared beforehand (not timed): the irreducible model cost, in customers per second;
  2. end to end: `serving.batch.rescore(ws, push=False)`: read the features at the scoring date, every model, every
     rule tag (fit + evaluate), write the dated snapshot; customers per second (reported per phase);
  3. the goal: end-to-end throughput at least 50% of the floor's.
Optionally (`--push`) the online push of the tags is timed too (Feast's online write; not part of the goal).

    .venv/bin/python bench/batch_bench.py /work/bench_ws/ws1m
Writes bench/out/batch.json; exits 1 when the goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out" / "batch.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workspace", type=Path)
    ap.add_argument("--push", action="store_true", help="also push the tags to the online store (timed apart)")
    args = ap.parse_args()


    from persona.workspace import Workspace
    from features import offline
    from serving import scoring
    from serving.batch import rescore
    from training import tracking
    from training.models import matrix

    ws = Workspace.open(args.workspace)
    cfg = ws.config()
    models = scoring.ChampionLoader(tracking.connect(ws, cfg)).load()
    date = offline.snapshot_date(ws)
    frame = offline.offline_frame(ws, date)
    n = len(frame)
    print(f"workspace {ws.root}: {n:,} personas at {date.date()}, models {models.versions()}, "
          f"outputs {len(models.outputs())}")

    # floor: raw boosters on prepared matrices, best of 2
    matrices = {t: matrix(m.model.model_frame(frame.reindex(columns=m.features))) for t, m in models.models.items()}
    floor = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        for t, m in models.models.items():
            for est in m.model.estimators.values():
                est.model.booster_.predict(matrices[t])
        floor = min(floor, time.perf_counter() - t0)
    del matrices, frame

    t0 = time.perf_counter()
    result = rescore(ws, push=args.push)
    wall = time.perf_counter() - t0
    s = result["seconds"]
    e2e = s["read_features"] + s["models"] + s["rules"] + s["write"]
    rows = {
        "personas": n, "outputs": len(models.outputs()), "tags": result["tags"],
        "floor_seconds": round(floor, 2), "floor_per_s": round(n / floor),
        "rescore_seconds": round(e2e, 2), "rescore_per_s": round(n / e2e), "ratio": round(floor / e2e, 3),
        "phases": s, "wall_with_startup": round(wall, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "machine": {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "load": os.getloadavg()},
    }
    print(f"{'':28}{'seconds':>10}{'customers/s':>14}")
    print(f"{'raw LightGBM (floor)':28}{floor:>10.2f}{n / floor:>14,.0f}")
    print(f"{'rescore end to end':28}{e2e:>10.2f}{n / e2e:>14,.0f}   ({rows['ratio']:.0%} of the floor's throughput)")
    for k in ("read_features", "models", "rules", "write", "push_online"):
        if k in s:
            print(f"  {k:26}{s[k]:>10.2f}")
    print(f"peak RSS {rows['peak_rss_gb']} GB; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(rows, indent=1, default=str))
    ok = rows["ratio"] >= 0.5
    print("goal (>= 50% of raw LightGBM throughput):", "met" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
