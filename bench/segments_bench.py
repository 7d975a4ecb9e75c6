#!/usr/bin/env python
"""Segment counting benchmark: `persona segment count` over 1M personas, against reading the same columns.

Builds (not timed) a synthetic workspace holding only what counting reads: a 1M-persona tag snapshot shaped like
`persona rescore` writes (categorical tags as dictionary strings, flags, scores; `rules.history.write`) and a
profiles table with marketing consent. Then, each best of 3 in this process:
  - count: `rules.segments.Audience.open` + `count` for a declared segment (union of two expression segments) and
    for command-line expressions: read the columns named, evaluate, exclude opt-outs;
  - floor: pyarrow reading the same snapshot columns and nothing else.
Goal: counting a segment over 1M personas in under a second.

    .venv/bin/python bench/segments_bench.py [--personas 1000000]
Writes bench/out/segments.json; exits 1 when a count takes a second or more.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out" / "segments.json"

SEGMENTS = """
segments:
  - id: vip_at_risk
    when: "high_value_customer and churn_risk_band == 'high'"
  - id: big_spenders_sleeping
    when: "spend_level in ['high', 'top'] and lifecycle_stage == 'sleeping'"
  - id: win_back
    union: [vip_at_risk, big_spenders_sleeping]
"""
EXPRESSIONS = [
    "churn_risk >= 0.6 and rfm_segment in ['important_value', 'important_keep']",
    "not discount_lover and (lifecycle_stage == 'active' or churn_risk < 0.2)",
]


def build(root: Path, n: int) -> None:
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from persona.workspace import Workspace
    from rules import history

    rng = np.random.default_rng(7)
    ids = pd.Series([f"P{i:010d}" for i in range(1, n + 1)])

    def cat(values, p):
        return pd.Categorical(rng.choice(values, size=n, p=p), categories=values)

    frame = pd.DataFrame({
        "persona_id": ids,
        "churn_risk": rng.beta(2, 3, n),
        "high_value": rng.gamma(1.2, 500, n),
        "churn_risk_band": cat(["high", "medium", "low"], [0.2, 0.3, 0.5]),
        "rfm_segment": cat(["important_value", "important_develop", "important_keep", "important_retain",
                            "general_value", "general_develop", "general_keep", "general_retain"], [1 / 8] * 8),
        "spend_level": cat(["low", "mid", "high", "top"], [0.3, 0.4, 0.2, 0.1]),
        "lifecycle_stage": cat(["prospect", "new", "active", "sleeping", "lost"], [0.05, 0.1, 0.4, 0.25, 0.2]),
        "high_value_customer": pd.array(rng.random(n) < 0.2, dtype="boolean"),
        "discount_lover": pd.array(rng.random(n) < 0.3, dtype="boolean"),
    })
    ws = Workspace.open(root)
    meta = {"date": "2026-10-01", "tags": [{"id": c, "value_type": "category"} for c in frame.columns[3:7]]}
    history.write(ws, "2026-10-01", history.to_arrow(frame), meta)
    integrated = root / "integrated" / "runs" / "r1"
    integrated.mkdir(parents=True)
    consent = pa.array(rng.random(n) > 0.05)
    pq.write_table(pa.table({"persona_id": pa.array(ids), "consent_marketing": consent}),
                   integrated / "profiles.parquet")
    (root / "integrated" / "current").symlink_to(integrated)
    (root / "rules").mkdir()
    (root / "rules" / "segments.yaml").write_text(SEGMENTS)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--personas", type=int, default=1_000_000)
    args = ap.parse_args()

    import pyarrow.parquet as pq

    from persona.workspace import Workspace
    from rules import history
    from rules.segments import Audience, count, load_segments

    with tempfile.TemporaryDirectory(prefix="persona-seg-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        build(root, args.personas)
        print(f"built a {args.personas:,}-persona snapshot in {time.perf_counter() - t0:.1f} s (not timed)")
        ws = Workspace.open(root)
        segments = load_segments([root / "rules"])
        part = history.root(ws) / "date=2026-10-01" / history.PART
        rows = []
        for target, columns in [
            ("win_back", ["high_value_customer", "churn_risk_band", "spend_level", "lifecycle_stage"]),
            (EXPRESSIONS[0], ["churn_risk", "rfm_segment"]),
            (EXPRESSIONS[1], ["discount_lover", "lifecycle_stage", "churn_risk"]),
        ]:
            best, floor, result = float("inf"), float("inf"), None
            for _ in range(3):
                t = time.perf_counter()
                result = count(Audience.open(ws, segments), target)
                best = min(best, time.perf_counter() - t)
                t = time.perf_counter()
                pq.read_table(part, columns=["persona_id", *columns])
                floor = min(floor, time.perf_counter() - t)
            rows.append({"target": target, "count": result["count"], "seconds": round(best, 3),
                         "floor_read_columns": round(floor, 3)})
            print(f"{best:7.3f} s  (floor: read its columns {floor:.3f} s)  count {result['count']:>9,}  {target}")
    print(f"{args.personas:,} personas; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"personas": args.personas, "rows": rows, "load": os.getloadavg()}, indent=1))
    return 0 if all(r["seconds"] < 1.0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
