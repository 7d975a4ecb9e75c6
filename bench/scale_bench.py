#!/usr/bin/env python
"""Scale benchmark (issue 13): `persona integrate`, `features` and `rescore` on generated workspaces of 100k to 3M
customers, on DuckDB (`engine: duckdb`) and on Spark `local[2]` (`engine: spark`) in the same run, with the online
load rate on both stores, a floor per size, and a projection for 10M and 100M customers on a cluster.

    .venv/bin/python bench/scale_bench.py                              # 100k, 300k, 1M, 3M (hours on 2 cores)
    .venv/bin/python bench/scale_bench.py --quick                      # 20k: end-to-end smoke run (~15 min)
    .venv/bin/python bench/scale_bench.py --sizes 100000,1000000       # any sizes, comma separated
    .venv/bin/python bench/scale_bench.py --engines duckdb --no-online # one engine, no online load
    .venv/bin/python bench/scale_bench.py --spark-conf spark.driver.memory=8g --spark-conf spark.sql.shuffle.partitions=8
    .venv/bin/python bench/scale_bench.py --report bench/out/scale_bench.json   # print a saved run again

Per size N (one thing at a time; every command is a child process with --timeout, its failure is reported in the
table with its exit code and last stderr line, and the benchmark goes on):
  1. `persona generate --customers N --seed S` into <root>/gen_<N> once (not timed); reused next time when its
     marker file `.scale_bench_generated` says the same N and seed.
  2. per engine, a fresh workspace <root>/ws_<N>_<engine>: the generated sources hard-linked (`cp -al`: they are only
     read; their sizes and mtimes are checked unchanged after each engine), persona.yaml copied with `engine:` set
     (Spark: `spark: {master: local[2], conf: ...}`) and `tracking.uri` pointing at the shared models store (3.).
     Both engines start from the same generated state, nothing else.
  3. models: `persona rescore` needs champions. They are trained ONCE (not timed) in <root>/models, a 20,000-customer
     generated workspace (integrate, features --no-online, train --promote with the small-data training settings of
     tests/test_spark_loop.py; a tag the promotion gate left without a champion gets its challenger promoted, as an
     operator would), and every size's workspace points `tracking.uri` at <root>/models/mlflow.db. Marker
     `.scale_bench_models`: reused next time.
  4. timed, in order: `persona integrate --json`, `persona features --no-online --json`, `persona rescore --no-push
     --json` (the online store is measured separately, 6.). Wall time from start to exit of the command (Python
     start-up and imports included); peak memory = the highest SUM of RSS over the command's whole process tree (the
     CLI process, Spark's JVM, pyspark's Python workers), polled with psutil every 0.2 s (a peak shorter than 0.2 s
     can be missed; shared pages are counted once per process). Also printed: the JVM's own peak RSS, CPU seconds of
     the tree (os.wait4 rusage: the command and every descendant it waited for), and the machine's load average
     before and after each command.
  5. floors, in the same run, on the DuckDB workspace (each in a child process, DuckDB with its default threads = the
     cores): integrate: every source file (sources and enrichment files of persona.yaml) read once by DuckDB
     `read_csv` / `read_parquet` with count(*) and min() of every column (so every value is decoded); features: every
     Parquet file of the published integration read once the same way; rescore: the latest feature snapshot (the rows
     of that date of every feature group) read the same way.
  6. online load: bench/online_load_bench.py run as a child process with `--personas N` (its synthetic snapshots of
     five views, 156 features; the bulk writer through `features.store.materialize`) on SQLite (embedded profile)
     and Redis + PostgreSQL (production profile), its JSON read back: persona-rows/s and seconds per store (goals:
     SQLite >= 20,000, Redis >= 50,000 persona-rows/s).
Which engine ran is checked, not taken on trust: the table says whether a JVM appeared in the command's process
tree ("JVM") or not ("no JVM"), next to what the command's JSON reported about its engine, if anything.

A fixed-cost probe (--probe, default 2,000 customers: the same commands, no floors, no online load) runs first, so
that the projection for 10M and 100M customers on a cluster can separate each command's fixed cost from its per-row
cost; the projection is printed with its assumptions. Results: bench/out/scale_bench.json (and the commands'
stdout/stderr under <root>/logs). Exits 1 when 1M was run and `persona integrate` on DuckDB peaked above 7 GB
(issue 13's single-machine goal), else 0 (failed commands are in the table).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_projection import projection, report  # noqa: E402
from scale_tools import (DEFAULT_SIZES, DEFAULT_SPARK_CONF, GEN_MARKER, GOALS, MODELS_CUSTOMERS,  # noqa: E402
                         MODELS_MARKER, OUT, PERSONA, POLL_SECONDS, PYTHON, QUICK_SIZE, ROOT, SPARK_CORES, STAGES,
                         code_hash, load, ok, run_measured, say)

# --- workspaces ----------------------------------------------------------------------------------------------------
def rows_per_source(summary: dict | None) -> int | None:
    if not summary or "rows" not in summary:
        return None
    return int(sum(summary["rows"].values()))


def generate(root: Path, n: int, seed: int, timeout: float) -> dict:
    """<root>/gen_<n>, generated once; reused when the marker says the same n and seed."""
    gen = root / f"gen_{n}"
    marker = gen / GEN_MARKER
    if marker.is_file():
        info = json.loads(marker.read_text(encoding="utf-8"))
        if info.get("customers") == n and info.get("seed") == seed:
            say(f"  generated workspace reused: {gen} ({info.get('source_rows'):,} source rows)")
            return {**info, "reused": True}
    shutil.rmtree(gen, ignore_errors=True)
    say(f"  generating {n:,} customers into {gen} (not timed) ...")
    r = run_measured([PERSONA, "generate", "--customers", str(n), "--seed", str(seed), "-w", str(gen), "--json"],
                     root / "logs" / f"generate_{n}", timeout=timeout)
    if not ok(r):
        raise RuntimeError(f"persona generate --customers {n} failed (rc {r['rc']}): {r['last_stderr']}")
    summary = r["report"] or {}
    info = {"customers": n, "seed": seed, "source_rows": rows_per_source(summary), "rows": summary.get("rows"),
            "seconds": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"],
            "bytes": sum(p.stat().st_size for p in gen.rglob("*") if p.is_file())}
    marker.write_text(json.dumps(info, indent=2), encoding="utf-8")
    say(f"  generated in {r['wall_s']:.0f} s: {info['source_rows']:,} source rows, {info['bytes'] / 2**20:,.0f} MB")
    return {**info, "reused": False}


def source_state(gen: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(gen)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in gen.rglob("*") if p.is_file() and p.name != GEN_MARKER}


def edit_yaml(path: Path, **top) -> None:
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")


def make_workspace(gen: Path, ws: Path, *, engine: str, spark_conf: dict, tracking_db: Path | None) -> None:
    """A fresh workspace: generated folders hard-linked (cp -al), files copied, persona.yaml edited."""
    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True)
    for entry in sorted(gen.iterdir()):
        if entry.name == GEN_MARKER:
            continue
        if entry.is_dir():
            subprocess.run(["cp", "-al", str(entry), str(ws / entry.name)], check=True)
        else:
            shutil.copy2(entry, ws / entry.name)
    edits: dict = {"engine": engine}
    if engine == "spark":
        edits["spark"] = {"master": f"local[{SPARK_CORES}]", "app_name": f"persona-scale-{ws.name}",
                          "conf": dict(spark_conf)}
    if tracking_db is not None:
        edits["tracking"] = {"uri": f"sqlite:///{tracking_db}"}
    edit_yaml(ws / "persona.yaml", **edits)


def spark_env() -> dict:
    # pyspark starts its Python workers with $PYSPARK_PYTHON (default: `python3` on PATH, which lacks persona's
    # packages unless the venv is active): the venv's interpreter, as the tests set it.
    return {**os.environ, "PYSPARK_PYTHON": PYTHON, "PYSPARK_DRIVER_PYTHON": PYTHON}


def prepare_models(root: Path, seed: int, timeout: float) -> dict:
    """<root>/models: a 20k generated workspace trained once (not timed); its mlflow.db serves every size."""
    models = root / "models"
    marker = models / MODELS_MARKER
    if marker.is_file():
        info = json.loads(marker.read_text(encoding="utf-8"))
        say(f"models: reused {models}/mlflow.db (champions {info.get('champions')})")
        return {**info, "reused": True}
    say(f"models: training champions once in {models} ({MODELS_CUSTOMERS:,} generated customers; not timed) ...")
    generate(root, MODELS_CUSTOMERS, seed, timeout)
    make_workspace(root / f"gen_{MODELS_CUSTOMERS}", models, engine="duckdb", spark_conf={}, tracking_db=None)
    edit_yaml(models / "persona.yaml", training={"min_positives": 20, "min_negatives": 20, "cutoffs": 2})
    logs = root / "logs"
    steps = [("integrate", [PERSONA, "integrate", "-w", str(models), "--json"]),
             ("features", [PERSONA, "features", "-w", str(models), "--no-online", "--json"]),
             ("train", [PERSONA, "train", "--promote", "-w", str(models), "--json"])]
    seconds = {}
    for name, cmd in steps:
        r = run_measured(cmd, logs / f"models_{name}", timeout=timeout)
        seconds[name] = r["wall_s"]
        if not ok(r):
            raise RuntimeError(f"models: persona {name} failed (rc {r['rc']}): {r['last_stderr']} (log {r['log']})")
    code = ("import json, sys\n"
            "from persona.workspace import Workspace\n"
            "from training import tracking\n"
            "ws = Workspace.open(sys.argv[1]); client = tracking.connect(ws, ws.config()); out = {}\n"
            "for rm in client.search_registered_models(f\"name LIKE '{tracking.MODEL_PREFIX}%'\"):\n"
            "    champ = tracking.alias_version(client, rm.name, tracking.CHAMPION)\n"
            "    chall = tracking.alias_version(client, rm.name, tracking.CHALLENGER)\n"
            "    promoted = False\n"
            "    if champ is None and chall is not None:\n"
            "        client.set_registered_model_alias(rm.name, tracking.CHAMPION, chall); champ = chall; promoted = True\n"
            "    out[rm.name] = {'champion': champ, 'promoted_by_bench': promoted}\n"
            "print(json.dumps(out))\n")
    r = run_measured([PYTHON, "-c", code, str(models)], logs / "models_promote", timeout=600)
    if not ok(r) or not r["report"]:
        raise RuntimeError(f"models: promoting challengers failed: {r['last_stderr']}")
    info = {"customers": MODELS_CUSTOMERS, "seed": seed, "champions": r["report"], "seconds": seconds,
            "tracking_db": str(models / "mlflow.db")}
    marker.write_text(json.dumps(info, indent=2), encoding="utf-8")
    forced = [k for k, v in r["report"].items() if v["promoted_by_bench"]]
    names = ", ".join(f"{k} v{v['champion']}" for k, v in r["report"].items())
    say(f"  champions: {names}"
        + (f" (challenger promoted by the bench: {', '.join(forced)})" if forced else ""))
    return {**info, "reused": False}


# --- floors (child process) ----------------------------------------------------------------------------------------
def _touch_all(con, relation: str) -> tuple[int, int]:
    """count(*) and min() of every column of a DuckDB relation expression: every value decoded once."""
    cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()]
    exprs = ", ".join(["count(*)"] + [f'min("{c}")' for c in cols])
    row = con.execute(f"SELECT {exprs} FROM {relation}").fetchone()
    return int(row[0]), len(cols)


def _sql_list(paths: list[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def floor_child(kind: str, ws_path: str) -> dict:
    import duckdb

    sys.path.insert(0, str(ROOT))
    from persona.workspace import Workspace

    ws = Workspace.open(ws_path)
    con = duckdb.connect()
    groups: list[tuple[str, str]] = []
    if kind == "sources":
        cfg = ws.config()
        specs = {**{k: s.path for k, s in cfg.sources.items()}, **{k: e.path for k, e in cfg.enrichment.items()}}
        for name, pattern in specs.items():
            files = sorted(ws.root.glob(pattern))
            if not files:
                continue
            if files[0].suffix == ".parquet":
                groups.append((name, f"read_parquet({_sql_list(files)}, union_by_name=true)"))
            else:
                groups.append((name, f"read_csv({_sql_list(files)}, all_varchar=true, header=true, "
                                     "ignore_errors=true, null_padding=true, union_by_name=true)"))
    elif kind == "integrated":
        current = ws.require_current("integrated", "run persona integrate")
        for f in sorted(current.rglob("*.parquet")):
            groups.append((str(f.relative_to(current)), f"read_parquet({_sql_list([f])})"))
    elif kind == "snapshot":
        from feature_repo import definitions as defs
        from features import offline
        from features import store as feature_store

        date = offline.feature_dates(ws)[-1]
        folder = feature_store.offline_dir(ws)
        for f in sorted(folder.glob("*.parquet")):
            groups.append((f.name, f"(SELECT * FROM read_parquet({_sql_list([f])}) WHERE \"{defs.TIMESTAMP}\" = "
                                   f"TIMESTAMPTZ '{date.isoformat()}')"))
    else:
        raise ValueError(kind)
    t0 = time.perf_counter()
    rows = cols = 0
    per = {}
    for name, rel in groups:
        n, c = _touch_all(con, rel)
        rows, cols = rows + n, cols + c
        per[name] = n
    seconds = time.perf_counter() - t0
    return {"kind": kind, "seconds": round(seconds, 3), "rows": rows, "columns": cols, "parts": len(groups),
            "threads": con.execute("SELECT current_setting('threads')").fetchone()[0]}


def measure_floor(kind: str, ws: Path, log: Path, timeout: float) -> dict:
    r = run_measured([PYTHON, __file__, "--floor-child", kind, "--floor-ws", str(ws)], log, timeout=timeout)
    if ok(r) and r["report"]:
        return {**r["report"], "peak_rss_mb": r["peak_rss_mb"], "wall_s": r["wall_s"], "rc": 0,
                "load_before": r["load_before"], "load_after": r["load_after"]}
    return {"rc": r["rc"], "last_stderr": r["last_stderr"], "seconds": None}


# --- online load ---------------------------------------------------------------------------------------------------
def online_load(n: int, root: Path, stores: str, timeout: float) -> dict:
    """bench/online_load_bench.py --personas n as a child process; its JSON (written to a scratch folder, so the
    benchmark's own bench/out/online_load.json is left alone) read back."""
    scratch = root / "logs" / f"online_{n}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    floor = min(n, 200_000)
    argv = ["online_load_bench.py", "--personas", str(n), "--stores", stores, "--feast-personas", "2000",
            "--floor-personas", str(floor)]
    code = ("import sys; from pathlib import Path\n"
            f"sys.path.insert(0, {str(ROOT / 'bench')!r}); sys.argv = {argv!r}\n"
            "import online_load_bench as m\n"
            f"m.OUT = Path({str(scratch)!r})\n"
            "sys.exit(m.main())\n")
    r = run_measured([PYTHON, "-c", code], root / "logs" / f"online_load_{n}", timeout=timeout)
    result = {"rc": r["rc"], "wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"], "load_before": r["load_before"],
              "load_after": r["load_after"], "log": r["log"], "stores": {}}
    target = scratch / "online_load.json"
    if not ok(r) or not target.is_file():
        result["last_stderr"] = r["last_stderr"]
        return result
    data = json.loads(target.read_text(encoding="utf-8"))
    for kind, s in data.get("stores", {}).items():
        if "load" not in s:
            result["stores"][kind] = {"skipped": s.get("skipped"), "failed": s.get("failed")}
            continue
        rate = s["load"].get("persona_rows_per_s") or round(n * s["views"] / s["load"]["seconds"])
        result["stores"][kind] = {
            "seconds": s["load"]["seconds"], "views": s["views"], "persona_rows_per_s": rate,
            "personas_per_s": round(n / s["load"]["seconds"]), "peak_rss_mb": s.get("peak_rss_mb"),
            "check_ok": s.get("check", {}).get("ok"), "floor_rows_per_s": s.get("floor", {}).get("rows_per_s"),
            "goal": GOALS[kind], "met": rate >= GOALS[kind]}
    return result


# --- one size ------------------------------------------------------------------------------------------------------
def spark_conf_for(source_rows: int | None, extra: dict) -> dict:
    # ~4M source rows per shuffle partition (even, >= 4); AQE coalesces what is too small
    parts = max(4, 2 * math.ceil((source_rows or 0) / 8_000_000))
    return {**DEFAULT_SPARK_CONF, "spark.sql.shuffle.partitions": str(parts), **extra}


def stage_cmd(stage: str, ws: Path) -> list[str]:
    if stage == "integrate":
        return [PERSONA, "integrate", "-w", str(ws), "--json"]
    if stage == "features":
        return [PERSONA, "features", "-w", str(ws), "--no-online", "--json"]
    return [PERSONA, "rescore", "-w", str(ws), "--no-push", "--json"]


def summarize_report(stage: str, rep: dict | None) -> dict:
    """What the command itself reported (its --json), the few fields worth keeping."""
    if not rep:
        return {}
    keep: dict = {"engine": rep.get("engine")}
    if stage == "integrate":
        keep.update(personas=rep.get("personas"), seconds=rep.get("seconds"),
                    quarantined=sum(s.get("quarantined", 0) for s in rep.get("sources", {}).values()),
                    read=sum(s.get("read", 0) for s in rep.get("sources", {}).values()))
    elif stage == "features":
        keep.update(rows=rep.get("rows"), seconds=rep.get("seconds"), dates=len(rep.get("dates") or []))
    else:
        keep.update(personas=rep.get("personas"), seconds=rep.get("seconds"), tags=rep.get("tags"),
                    date=rep.get("date"), models=rep.get("models"))
    return keep


def run_size(n: int, args, spark_extra: dict, models: dict | None, results: dict, *, probe: bool = False) -> dict:
    root = Path(args.root)
    say(f"\n=== {n:,} customers{' (fixed-cost probe: no floors, no online load)' if probe else ''} ===  "
        f"(load average {load()})")
    gen_info = generate(root, n, args.seed, args.timeout)
    gen = root / f"gen_{n}"
    before_sources = source_state(gen)
    size: dict = {"customers": n, "generate": gen_info, "source_rows": gen_info.get("source_rows"), "runs": {},
                  "floors": {}, "probe": probe}
    tracking_db = Path(models["tracking_db"]) if models else None
    for engine in args.engines:
        ws = root / f"ws_{n}_{engine}"
        conf = spark_conf_for(size["source_rows"], spark_extra) if engine == "spark" else {}
        make_workspace(gen, ws, engine=engine, spark_conf=conf, tracking_db=tracking_db)
        env = spark_env() if engine == "spark" else None
        say(f"  {engine}: workspace {ws}" + (f" (spark conf {conf})" if conf else ""))
        runs = size["runs"][engine] = {"spark_conf": conf or None}
        for stage in STAGES:
            prev = STAGES[:STAGES.index(stage)]
            if any(not ok(runs.get(p)) for p in prev):
                runs[stage] = {"rc": None, "skipped": f"skipped: {', '.join(p for p in prev if not ok(runs.get(p)))} failed"}
                say(f"    {stage:<9} {runs[stage]['skipped']}")
                continue
            if stage == "rescore" and not models:
                runs[stage] = {"rc": None, "skipped": "skipped: no models (--no-rescore)"}
                continue
            code = code_hash()
            r = run_measured(stage_cmd(stage, ws), root / "logs" / f"{n}_{engine}_{stage}", timeout=args.timeout,
                             env=env)
            r["code"] = code
            if code_hash() != code:
                r["code_changed_during"] = True
                say(f"      WARNING: the project's Python sources changed while {stage} ran (edited by someone)")
            r["reported"] = summarize_report(stage, r.pop("report"))
            runs[stage] = r
            status = "ok" if ok(r) else ("TIMEOUT" if r["timed_out"] else f"FAILED rc {r['rc']}: {r['last_stderr']}")
            say(f"    {stage:<9} {r['wall_s']:>8.1f} s  peak {r['peak_rss_mb'] / 1024:6.2f} GB (JVM "
                f"{r['peak_jvm_rss_mb'] / 1024:5.2f} GB)  cpu {r['cpu_s']:8.1f} s  {'JVM' if r['jvm'] else 'no JVM'}  "
                f"load {r['load_before'][0]:.2f} -> {r['load_after'][0]:.2f}  {status}")
            if r["leftover_pids"]:
                say(f"      note: still running 5 s after the command exited, ended by the bench: {r['leftover_pids']}")
        if not probe and (engine == "duckdb" or "duckdb" not in args.engines):
            floors = size["floors"]
            for stage, kind in (("integrate", "sources"), ("features", "integrated"), ("rescore", "snapshot")):
                needs = {"sources": None, "integrated": "integrate", "snapshot": "features"}[kind]
                if stage in floors or (needs and not ok(runs.get(needs))):
                    continue
                f = measure_floor(kind, ws, root / "logs" / f"{n}_floor_{kind}", args.timeout)
                floors[stage] = f
                if f.get("seconds") is not None:
                    say(f"    floor {stage:<9} {f['seconds']:>6.1f} s  ({kind}: {f['rows']:,} rows x {f['columns']} "
                        f"columns in {f['parts']} reads, DuckDB threads {f['threads']}; peak {f['peak_rss_mb']:,.0f} MB)")
                else:
                    say(f"    floor {stage}: FAILED rc {f['rc']}: {f.get('last_stderr')}")
        after_sources = source_state(gen)
        if after_sources != before_sources:
            changed = sorted(k for k in set(before_sources) | set(after_sources)
                             if before_sources.get(k) != after_sources.get(k))
            say(f"  WARNING: generated sources changed during the {engine} run: {changed[:5]}; regenerate (delete "
                f"{gen}/{GEN_MARKER})")
            size.setdefault("warnings", []).append(f"sources changed in the {engine} run: {changed[:20]}")
            (gen / GEN_MARKER).unlink(missing_ok=True)
        if not args.keep:
            shutil.rmtree(ws, ignore_errors=True)
    if args.online and not probe:
        say(f"  online load: bench/online_load_bench.py --personas {n:,} --stores {args.online_stores} ...")
        size["online"] = online_load(n, root, args.online_stores, args.timeout)
        o = size["online"]
        for kind, s in o["stores"].items():
            if "seconds" in s:
                say(f"    {kind:<7} {s['seconds']:>7.1f} s  {s['persona_rows_per_s']:>9,} persona-rows/s "
                    f"(goal >= {s['goal']:,}: {'met' if s['met'] else 'MISSED'}; read back {'equal' if s['check_ok'] else 'MISMATCH'})")
            else:
                say(f"    {kind:<7} skipped/failed: {s}")
        if o["rc"] != 0:
            say(f"    online_load_bench FAILED rc {o['rc']}: {o.get('last_stderr')}")
    results["probe" if probe else "sizes"][str(n)] = size
    write_json(results, args)
    return size


def write_json(results: dict, args) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    target = Path(args.json) if args.json else OUT / "scale_bench.json"
    target.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    return target


def machine() -> dict:
    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "load_start": load()}
    try:
        import psutil

        info["ram_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        info["ram_gb"] = None
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info["cpu"] = cpu
    for mod in ("duckdb", "pyspark"):
        with contextlib.suppress(ImportError):
            info[mod] = __import__(mod).__version__
    with contextlib.suppress(Exception):
        sys.path.insert(0, str(ROOT))
        from persona.engine import java_version

        info["java"] = java_version()
    with contextlib.suppress(Exception):
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True).stdout.strip()
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="customers, comma separated")
    parser.add_argument("--quick", action="store_true", help=f"one size of {QUICK_SIZE:,} customers")
    parser.add_argument("--root", default="/tmp/persona_scale", help="generated data, workspaces, models and logs")
    parser.add_argument("--engines", default="duckdb,spark", help="comma separated: duckdb, spark")
    parser.add_argument("--timeout", type=float, default=3 * 3600, help="seconds per command (default 3 hours)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                        help=f"extra Spark settings (default {DEFAULT_SPARK_CONF} and shuffle partitions by size)")
    parser.add_argument("--online", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the online load with bench/online_load_bench.py")
    parser.add_argument("--online-stores", default="sqlite,redis")
    parser.add_argument("--probe", type=int, default=2000,
                        help="customers of the fixed-cost probe: the same commands on a tiny workspace, so the "
                             "projection separates fixed from per-row costs (0: none)")
    parser.add_argument("--no-rescore", action="store_true", help="no models, no rescore")
    parser.add_argument("--keep", action="store_true", help="keep the per-engine workspaces (default: removed)")
    parser.add_argument("--json", help="result file (default bench/out/scale_bench.json)")
    parser.add_argument("--report", metavar="JSON", help="print the report of a saved result file again (the "
                        "projection recomputed) and exit")
    parser.add_argument("--floor-child", choices=["sources", "integrated", "snapshot"], help=argparse.SUPPRESS)
    parser.add_argument("--floor-ws", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_child:
        print(json.dumps(floor_child(args.floor_child, args.floor_ws)), flush=True)
        return 0
    if args.report:
        saved = json.loads(Path(args.report).read_text(encoding="utf-8"))
        saved.setdefault("probe", {})
        saved["projection"] = projection(saved)
        report(saved)
        return 0
    sizes = [QUICK_SIZE] if args.quick else [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if any(e not in ("duckdb", "spark") for e in args.engines):
        parser.error("--engines: duckdb, spark")
    spark_extra = dict(kv.split("=", 1) for kv in args.spark_conf)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)

    results: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
                     "sizes_requested": sizes, "engines": args.engines, "root": str(root),
                     "method": {"peak": f"sum of RSS over the process tree, psutil every {POLL_SECONDS} s",
                                "cpu": "max(os.wait4 rusage of the command and the descendants it reaped, sum of the per-process CPU "
                                       "times polled)",
                                "features": "persona features --no-online", "rescore": "persona rescore --no-push"},
                     "probe": {}, "sizes": {}}
    m = results["machine"]
    say(f"scale benchmark: sizes {sizes}, engines {args.engines}, root {root}; {m['cpus']} CPUs, load average "
        f"{m['load_start']}")
    t0 = time.perf_counter()
    models = None
    if not args.no_rescore:
        try:
            models = prepare_models(root, args.seed, args.timeout)
        except Exception as exc:  # the bench goes on without rescore
            say(f"models: FAILED ({exc}); rescore is skipped")
            results["models_error"] = str(exc)
    results["models"] = models
    if args.probe and "spark" in args.engines:
        try:
            run_size(args.probe, args, spark_extra, models, results, probe=True)
        except Exception as exc:
            say(f"  probe {args.probe:,} FAILED: {exc}")
    for n in sizes:
        try:
            run_size(n, args, spark_extra, models, results)
        except Exception as exc:
            say(f"  size {n:,} FAILED: {exc}")
            results["sizes"].setdefault(str(n), {"customers": n, "error": str(exc), "source_rows": None})
    results["machine"]["load_end"] = load()
    results["total_seconds"] = round(time.perf_counter() - t0, 1)
    results["projection"] = projection(results)
    report(results)
    target = write_json(results, args)
    say(f"\nwhole run {results['total_seconds'] / 60:.1f} min; wrote {target}; logs in {root / 'logs'}")
    goal = results.get("goal_integrate_1m")
    return 1 if goal is not None and not goal["met"] else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
