#!/usr/bin/env python
"""Training benchmark: `persona train` (every model tag) on a workspace, against the learners alone.

For a workspace with features (`persona generate --customers 100000`, `persona integrate`, `persona features`):
  1. end to end: `training.train.train(ws)`: labels, point-in-time reads through Feast, LightGBM with early stopping
     and calibration per output, the baselines (logistic/ridge, RFM, BG/NBD, Gamma-Gamma), metrics, MLflow logging
     and registration; wall seconds;
  2. floor, in the same run: the LightGBM fits alone: one fit per model output (as many as step 1 trained), each
     on a training-sized matrix of the workspace's real features (`MAX_TRAIN_ROWS` rows) with the same parameters
     and a fixed 100 trees (about what early stopping keeps), with a label the features can learn;
  3. the goal: every tag on 100k customers in under 3 minutes.

    .venv/bin/python bench/train_bench.py /work/bench_ws/ws100k
Writes bench/out/train.json; exits 1 when the end-to-end time exceeds 180 s.
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
OUT = ROOT / "bench" / "out" / "train.json"
BUDGET_S = 180.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workspace", type=Path)
    args = ap.parse_args()

    import warnings

    warnings.filterwarnings("ignore")
    import lightgbm as lgb
    import numpy as np
    import pandas as pd

    from persona.workspace import Workspace
    from features import offline
    from training import models as mdl
    from training.split import MAX_TRAIN_ROWS
    from training.train import train

    ws = Workspace.open(args.workspace)
    personas = len(pd.read_parquet(ws.require_current("integrated", "integrate first") / "profiles.parquet",
                                   columns=["persona_id"]))
    t0 = time.perf_counter()
    result = train(ws)
    e2e = time.perf_counter() - t0
    outputs = len(result["models"])

    frame = offline.offline_frame(ws, offline.snapshot_date(ws))
    x = frame.drop(columns=["persona_id"]).select_dtypes("number")
    reps = -(-MAX_TRAIN_ROWS // len(x))
    x = pd.concat([x] * reps, ignore_index=True).iloc[:MAX_TRAIN_ROWS]
    rng = np.random.default_rng(0)
    y = ((x["tx_recency_days"].fillna(999) > 90).to_numpy() ^ (rng.random(len(x)) < 0.2)).astype(int)
    matrix = mdl.matrix(x)
    common = mdl.lgbm_common(mdl.LearnerParams())
    common["n_estimators"] = 100
    t1 = time.perf_counter()
    lgb.LGBMClassifier(**common).fit(matrix, y)
    one_fit = time.perf_counter() - t1
    floor = one_fit * outputs

    row = {"personas": personas, "outputs": outputs, "train_seconds": round(e2e, 1),
           "train_reported": result["seconds"], "floor_one_fit": round(one_fit, 2), "floor_seconds": round(floor, 1),
           "ratio": round(e2e / floor, 2), "rows": {m["tag"]: m["rows"] for m in result["models"]},
           "metrics": {m["tag"]: [m["metric"], m["learner"], m["value"],
                                  max(m["baselines"].items(), key=lambda kv: kv[1])] for m in result["models"]},
           "all_beat_baselines": all(m["beats_baselines"] for m in result["models"]),
           "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
           "machine": {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                       "load": os.getloadavg()}}
    print(f"{personas:,} personas: trained {outputs} outputs in {e2e:.1f} s (goal < {BUDGET_S:.0f} s); "
          f"floor (LightGBM fits alone, {outputs} x {one_fit:.2f} s on {len(x):,} x {x.shape[1]}) {floor:.1f} s; "
          f"ratio {row['ratio']}x")
    for m in result["models"]:
        best = max(m["baselines"].items(), key=lambda kv: kv[1])
        print(f"  {m['tag']:<22} {m['metric']:<9} {m['learner']:<20} {m['value']:.4f}   best other: {best[0]} "
              f"{best[1]:.4f}")
    print(f"every model ahead of every baseline: {row['all_beat_baselines']}; peak RSS {row['peak_rss_gb']} GB; "
          f"load {os.getloadavg()[0]:.1f}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(row, indent=1, default=str))
    return 0 if e2e <= BUDGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
