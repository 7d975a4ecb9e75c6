#!/usr/bin/env python
"""Online store load: `features.store.materialize` with the bulk writer (`features/online_writer.py`), against Feast's
own writer and a raw-write floor, on SQLite (embedded profile) and Redis + PostgreSQL (production profile).

    .venv/bin/python bench/online_load_bench.py                          # 200,000 personas, both stores
    .venv/bin/python bench/online_load_bench.py --personas 20000         # a quick run (~1 min)
    .venv/bin/python bench/online_load_bench.py --stores sqlite          # one store (sqlite, redis)
    .venv/bin/python bench/online_load_bench.py --profile                # + cProfile of each load (slower; see below)
    .venv/bin/python bench/online_load_bench.py --feast-personas 2000 --floor-personas 50000   # smaller side runs

What it does: snapshot Parquet files of the five groups of feature_repo/definitions.GROUPS for N personas (one
snapshot date; 156 features: 33 attributes, 35 transactions, 17 engagement, 66 affinity, 5 realtime; float32 mostly,
a few float64 and int64; ~10% missing: NaN in floats, null in ints) are generated once with numpy and Arrow (not
timed). Then per store, each in a child process of its own (so peak RSS is the store's), in a temporary workspace:
  1. `features.store.apply` of the repository (embedded: SQLite registry and online store; production: a project
     `persona_bench_<random>` in the PostgreSQL registry and Redis, removed at the end: its registry rows, its Redis
     keys and the floor's scratch keys);
  2. the load: `features.store.materialize(store, end, reload=True)` (the bulk writer, as `online_writer.usable`
     says), wall time; `persona-rows/s` = personas x views / s, `personas/s` = personas (all views) / s. Where the
     time went is taken by wrapping the writer's functions (DuckDB read, encoding, store writes); encoding runs in
     the writer's worker thread while the main thread writes, so those phases overlap and add up to more than the
     wall time;
  3. correctness: 200 random personas read back with Feast's `get_online_features` (every feature of every view)
     equal the snapshot values (NaN where missing);
  4. the baseline: Feast's writer, `store.write_to_online_store(view, frame)` for --feast-personas personas (new
     ids) of every view, rows/s; and the bulk writer (`online_writer.write`) on the same rows under other new ids;
  5. the floor: the same number of already-encoded bytes as the load (--floor-personas, default all) written
     without Feast and without encoding. SQLite: `executemany` of prebuilt parameters with the writer's statements
     (a persona's features in one upsert), into a table of Feast's schema (with its entity_key index) in another
     file, one transaction per view, rows ordered by (entity key, feature) with a 1 GB page cache (the table's
     `floor`); also printed: the same bytes as one upsert per value (the writer's statement before). Redis: the
     writer's HSET commands as prebuilt protocol bytes, 20,000 personas per send then their replies read in bulk,
     under a scratch key suffix deleted afterwards. Only the writes are timed.

Goals (printed met/missed): Redis >= 50,000 persona-rows/s, SQLite >= 20,000 persona-rows/s for the load.
--profile runs the load under cProfile and writes the top functions to bench/out/online_load_profile_<store>.txt
(the load's seconds then include the profiler's overhead). Writes bench/out/online_load.json. Exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"

SNAPSHOT = pd.Timestamp("2024-04-01", tz="UTC")
# group -> (features, of which int64, of which float64); the rest float32. 156 in all, like a demo workspace.
WIDTHS = {"attributes": (33, 3, 4), "transactions": (35, 6, 6), "engagement": (17, 4, 2), "affinity": (66, 0, 0),
          "realtime": (5, 1, 1)}
MISSING = 0.10
GOALS = {"redis": 50_000, "sqlite": 20_000}  # persona-rows/s of the load
CHECK_PERSONAS = 200
REDIS_DEFAULT = "127.0.0.1:6379"
REGISTRY_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MINIMAL_CONFIG = {  # the smallest valid persona.yaml (as tests/features/test_store.py); only `store` matters here
    "version": 1,
    "name": "bench",
    "sources": {
        "orders": {
            "channel": "online", "kind": "transactions", "path": "raw/orders.csv", "key": ["order_id"],
            "timestamp": {"column": "order_time", "format": "iso"},
            "identifiers": {"phone": "buyer_phone"},
            "fields": {"order_id": "order_id", "amount": "amount"},
        },
    },
    "identity": {"identifiers": {"phone": {"normalise": "phone"}}},
}


# --- data ---------------------------------------------------------------------------------------------------------
def persona_ids(n: int, prefix: str = "P") -> pa.Array:
    """`P0000000001` ... as persona ids look in a workspace (large_string), made by Arrow."""
    digits = pc.utf8_lpad(pc.cast(pa.array(np.arange(1, n + 1, dtype=np.int64)), pa.string()), 10, "0")
    return pc.binary_join_element_wise(prefix, digits, "").cast(pa.large_string())


def generate(folder: Path, n: int, seed: int) -> dict:
    """`<folder>/<group>.parquet` for every group: n personas, one snapshot date, random values, ~10% missing."""
    from feature_repo import definitions as defs

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ids = persona_ids(n)
    when = pa.array(np.full(n, SNAPSHOT.value // 1000, dtype=np.int64), pa.timestamp("us", tz="UTC"))
    widths = {}
    for group, prefix in defs.GROUPS.items():
        total, ints, doubles = WIDTHS.get(group, (20, 2, 2))
        columns = {defs.JOIN_KEY: ids, defs.TIMESTAMP: when, defs.CREATED: when}
        for j in range(total):  # a loop over columns; each column is one numpy call
            missing = rng.random(n) < MISSING
            if j < ints:
                values = rng.poisson(rng.uniform(1, 50), n).astype(np.int64)
                columns[f"{prefix}count_{j:02d}"] = pa.array(values, mask=missing)
            else:
                kind = np.float64 if j < ints + doubles else np.float32
                values = (rng.lognormal(0.0, 1.5, n) * rng.uniform(0.5, 500)).astype(kind)
                values[missing] = np.nan
                columns[f"{prefix}value_{j:02d}"] = pa.array(values)
        pq.write_table(pa.table(columns), folder / f"{group}.parquet")
        widths[group] = total
    return widths


# --- the store -----------------------------------------------------------------------------------------------------


def open_workspace(root: Path, data: Path, kind: str, args) -> tuple:
    from features import store as fs
    from persona.config import parse_config
    from persona.workspace import Workspace

    offline = root / "features" / "offline"
    offline.mkdir(parents=True, exist_ok=True)
    for path in sorted(data.glob("*.parquet")):
        os.link(path, offline / path.name)
    if kind == "sqlite":
        store_cfg = {"profile": "embedded", "project": "persona_bench"}
    else:
        store_cfg = {"profile": "production", "project": f"persona_bench_{uuid.uuid4().hex[:10]}",
                     "redis": args.redis, "registry_url": args.registry_url}
    cfg = parse_config({**MINIMAL_CONFIG, "store": store_cfg})
    ws = Workspace.open(root)
    return ws, cfg, fs.open_store(ws, cfg)


def drop_project(store) -> dict:
    """Delete the production project's registry rows and Redis keys (as tests/features/test_store_production.py)."""
    import redis
    from sqlalchemy import delete, func, select

    from features import online_reader

    registry, project = store.registry, store.project
    thread = getattr(registry, "registry_refresh_thread", None)
    if thread is not None:
        thread.cancel()
    from feast.infra.registry import sql as sql_registry

    registry.delete_project(project)
    history = sql_registry.feature_view_version_history
    with registry.write_engine.begin() as conn:
        conn.execute(delete(history).where(history.c.project_id == project))
    online = store._get_provider().online_store
    online.delete_entity_values(store.config, ["persona_id"])
    online._get_client(store.config.online_store).delete(online_reader.MARKER_KEY + project)
    with registry.write_engine.connect() as conn:
        left = {t.name: conn.execute(select(func.count()).select_from(t).where(t.c.project_id == project)).scalar()
                for t in sql_registry.metadata.sorted_tables if "project_id" in t.c}
    registry.write_engine.dispose()
    host, _, port = store.config.online_store.connection_string.split(",")[0].rpartition(":")
    keys = sum(1 for _ in redis.Redis(host=host, port=int(port)).scan_iter(b"*" + project.encode(), count=10_000))
    return {"registry_rows_left": sum(left.values()), "redis_keys_left": keys}


# --- measurements (child process) ----------------------------------------------------------------------------------
class Phases:
    """Seconds spent in wrapped functions (summed over calls; nested ones counted in both)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.on = True

    def wrap(self, owner, attr: str, label: str) -> None:
        inner = getattr(owner, attr)

        def timed(*a, **k):
            if not self.on:
                return inner(*a, **k)
            t0 = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                self.seconds[label] += time.perf_counter() - t0
                self.calls[label] += 1

        setattr(owner, attr, timed)

    def report(self) -> dict:
        return {k: {"seconds": round(v, 3), "calls": self.calls[k]} for k, v in self.seconds.items()}


def instrument(phases: Phases) -> None:
    from features import online_writer as ow
    from features import store as fs

    phases.wrap(fs, "_rows_between", "count personas per view (store._rows_between)")
    phases.wrap(ow, "latest_rows", "read latest rows (DuckDB latest_rows)")
    phases.wrap(ow, "write", "online_writer.write (all)")
    phases.wrap(ow, "entity_keys", "  entity keys")
    phases.wrap(ow, "encode_values", "  encode values (encode_values)")
    phases.wrap(ow, "_redis_rows", "  redis: newer-than-held check (_redis_rows)")
    phases.wrap(ow._SqliteSink, "prepare", "  sqlite: parameters (worker thread)")
    phases.wrap(ow._SqliteSink, "send", "  sqlite: executemany")
    phases.wrap(ow._SqliteSink, "__exit__", "  sqlite: commit")
    phases.wrap(ow._RedisSink, "prepare", "  redis: commands (worker thread)")
    phases.wrap(ow._RedisSink, "send", "  redis: send + replies")


def check_online(store, data: Path, n: int, seed: int) -> dict:
    """Feast's get_online_features of random personas equals the snapshot values (NaN where missing)."""
    from feature_repo import definitions as defs

    rng = np.random.default_rng(seed + 1)
    rows = np.sort(rng.choice(n, size=min(CHECK_PERSONAS, n), replace=False))
    views = [v for v in store.list_feature_views() if v.name in defs.GROUPS]
    refs = [f"{v.name}:{f.name}" for v in views for f in v.features]
    ids = persona_ids(n).take(pa.array(rows)).to_pylist()
    got = store.get_online_features(features=refs, entity_rows=[{defs.JOIN_KEY: p} for p in ids]).to_df()
    assert got[defs.JOIN_KEY].tolist() == ids
    bad, compared = [], 0
    for v in views:
        table = pq.read_table(data / f"{v.name}.parquet").take(pa.array(rows))
        for f in v.features:
            want = table[f.name].to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN
            have = pd.to_numeric(got[f.name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            compared += len(want)
            if not np.array_equal(want, have, equal_nan=True):
                bad.append(f"{v.name}:{f.name} ({int((~((want == have) | (np.isnan(want) & np.isnan(have)))).sum())} "
                           "values differ)")
    return {"personas": len(ids), "values": compared, "ok": not bad, "mismatches": bad[:10]}


def sample_frame(data: Path, view: str, k: int, prefix: str) -> pd.DataFrame:
    from feature_repo import definitions as defs

    table = pq.read_table(data / f"{view}.parquet").slice(0, k)
    frame = table.to_pandas()
    frame[defs.JOIN_KEY] = persona_ids(len(frame), prefix).to_pandas()
    return frame


def feast_writer(store, data: Path, k: int, views: list[str]) -> dict:
    """Feast's write_to_online_store, then the bulk writer, each on k new personas of every view."""
    from features import online_writer as ow

    frames = {v: sample_frame(data, v, k, "F") for v in views}
    t0 = time.perf_counter()
    for v in views:
        store.write_to_online_store(v, frames[v])
    feast_s = time.perf_counter() - t0
    frames = {v: sample_frame(data, v, k, "B") for v in views}
    t0 = time.perf_counter()
    for v in views:
        ow.write(store, v, frames[v])
    bulk_s = time.perf_counter() - t0
    rows = k * len(views)
    return {"personas": k, "views": len(views), "rows": rows, "feast_seconds": round(feast_s, 3),
            "feast_rows_per_s": round(rows / feast_s), "bulk_seconds": round(bulk_s, 3),
            "bulk_rows_per_s": round(rows / bulk_s)}


def _encoded_chunks(store, data: Path, view, k: int, *, text: bool):
    """The writer's own encoding of the first k personas of a view, CHUNK_ROWS at a time: (keys, when, created,
    encoded), keys and values as Arrow binary arrays (`text`: with SQLite's value_text)."""
    from feature_repo import definitions as defs
    from features import online_writer as ow

    frame = pq.read_table(data / f"{view.name}.parquet").slice(0, k).to_pandas()
    for start in range(0, len(frame), ow.CHUNK_ROWS):
        part = frame.iloc[start:start + ow.CHUNK_ROWS]
        keys = ow.entity_keys(part[defs.JOIN_KEY].tolist())
        when = ow._micros(part[defs.TIMESTAMP])
        created = ow._micros(part[defs.CREATED])
        yield keys, when, created, {f.name: ow.encode_values(part[f.name], f.dtype, text=text) for f in view.features}


def floor_sqlite(store, data: Path, k: int, folder: Path, *, best: bool) -> dict:
    """Prebuilt parameters upserted into a table of Feast's schema (with its entity_key index) in another file, one
    transaction per view, rows in (entity key, feature) order (the snapshot's ids are in key order already) and a 1 GB
    page cache. `best=True`: the writer's statements (a persona's features in one statement); `best=False`: one
    statement per value (what the writer did before)."""
    from feature_repo import definitions as defs
    from features import online_writer as ow

    path = folder / ("floor_best.db" if best else "floor.db")
    conn = sqlite3.connect(path, timeout=60)
    conn.execute("PRAGMA cache_size = -1000000")
    seconds, rows, values, nbytes = 0.0, 0, 0, 0
    try:
        for view in [v for v in store.list_feature_views() if v.name in defs.GROUPS]:
            table = f"floor_{view.name}"
            conn.execute(f'CREATE TABLE "{table}" (entity_key BLOB, feature_name TEXT, value BLOB, value_text TEXT, '
                         "vector_value BLOB, event_ts timestamp, created_ts timestamp, "
                         "PRIMARY KEY(entity_key, feature_name))")
            conn.execute(f'CREATE INDEX "{table}_ek" ON "{table}" (entity_key)')
            conn.commit()
            sink = ow._SqliteSink(store, view)
            sql = ("INSERT INTO ? (entity_key, feature_name, value, value_text, event_ts, created_ts) VALUES "
                   "(?, ?, ?, ?, ?, ?) ON CONFLICT(entity_key, feature_name) DO UPDATE SET value = excluded.value, "
                   "value_text = excluded.value_text, event_ts = excluded.event_ts, created_ts = excluded.created_ts"
                   ).replace("INTO ?", f'INTO "{table}"')
            t0 = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            seconds += time.perf_counter() - t0
            for keys, when, created, encoded in _encoded_chunks(store, data, view, k, text=True):
                n, names = len(keys), sink.names
                if best:  # the writer's own parameters: a row per persona
                    batches = [(statement.replace(f'"{store.project}_{view.name}"', f'"{table}"'), params)
                               for statement, params in sink.prepare(keys, when, created, encoded)]
                    values += n * len(names)
                else:  # (n, features) matrices of objects, rows by key then feature, flattened
                    event_ts, created_ts = np.array(ow.sqlite_times(when)), np.array(ow.sqlite_times(created))
                    key_list = keys.to_numpy(zero_copy_only=False)
                    cols = [np.repeat(key_list, len(names)), np.tile(np.array(names, dtype=object), n)]
                    cols.append(np.stack([encoded[f][0].to_numpy(zero_copy_only=False) for f in names], axis=1).ravel())
                    cols.append(np.stack([np.array(encoded[f][1], dtype=object) for f in names], axis=1).ravel())
                    cols += [np.repeat(event_ts, len(names)), np.repeat(created_ts, len(names))]
                    batches = [(sql, list(zip(*(c.tolist() for c in cols))))]
                    values += len(batches[0][1])
                nbytes += sum(pc.sum(pc.binary_length(encoded[f][0])).as_py() or 0 for f in names) + \
                    len(names) * (pc.sum(pc.binary_length(keys)).as_py() or 0)
                t0 = time.perf_counter()
                for statement, params in batches:
                    conn.executemany(statement, params)
                seconds += time.perf_counter() - t0
                del batches
            t0 = time.perf_counter()
            conn.commit()
            seconds += time.perf_counter() - t0
            rows += k
    finally:
        conn.close()
        path.unlink(missing_ok=True)
    return {"personas": k, "rows": rows, "values": values, "bytes": nbytes, "seconds": round(seconds, 3),
            "rows_per_s": round(rows / seconds),
            "order": "a persona per statement" if best else "a value per statement"}


def floor_redis(store, data: Path, k: int) -> dict:
    """The writer's HSET commands (prebuilt protocol bytes) under a scratch key suffix, CHUNK_ROWS personas per
    send, their replies read in bulk as the writer reads them (the floor read them one `read_response` at a time
    before, which made it slower than the writer could be)."""
    from feature_repo import definitions as defs
    from features import online_writer as ow
    from features.online_reader import _redis

    client = _redis(store, True)
    suffix = (store.project + "_floor").encode()
    seconds, rows, nbytes = 0.0, 0, 0
    try:
        with ow._connection(client) as conn:
            for view in [v for v in store.list_feature_views() if v.name in defs.GROUPS]:
                for keys, when, _, encoded in _encoded_chunks(store, data, view, k, text=False):
                    redis_keys = ow._bulk(pc.binary_join_element_wise(keys, suffix, b""))
                    parts = [b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * (len(encoded) + 1)), redis_keys,
                             ow._constant(f"_ts:{view.name}".encode()), ow._bulk(ow.timestamps(when))]
                    for name, (values, _) in encoded.items():
                        parts += [ow._constant(ow._field(view.name, name)), ow._bulk(values)]
                    commands = pc.binary_join_element_wise(*parts, b"")
                    nbytes += pc.sum(pc.binary_length(commands)).as_py()
                    t0 = time.perf_counter()
                    ow._send(conn, commands)
                    ow._line_replies(conn, len(keys))
                    seconds += time.perf_counter() - t0
                rows += k
    finally:
        deleted = 0
        batch = []
        for key in client.scan_iter(match=b"*" + suffix, count=10_000):
            batch.append(key)
            if len(batch) >= 10_000:
                deleted += client.unlink(*batch)
                batch = []
        if batch:
            deleted += client.unlink(*batch)
    return {"personas": k, "rows": rows, "bytes": nbytes, "seconds": round(seconds, 3),
            "rows_per_s": round(rows / seconds), "scratch_keys_deleted": deleted}


def child(args) -> int:
    from feature_repo import definitions as defs
    from features import online_writer as ow
    from features import store as fs

    data = Path(args.data)
    folder = Path(args.workdir)
    kind = args.child
    out: dict = {"store": kind}
    ws, cfg, store = open_workspace(folder / "ws", data, kind, args)
    try:
        t0 = time.perf_counter()
        fs.apply(store, ws, cfg)
        out["apply_seconds"] = round(time.perf_counter() - t0, 3)
        out["project"] = store.project
        out["bulk_usable"] = ow.usable(store)
        views = [v.name for v in store.list_feature_views() if v.name in defs.GROUPS]
        out["views"] = len(views)
        out["features"] = sum(len(v.features) for v in store.list_feature_views() if v.name in defs.GROUPS)
        phases = Phases()
        instrument(phases)
        profiler = cProfile.Profile() if args.profile else None
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        if profiler:
            profiler.enable()
        report = fs.materialize(store, SNAPSHOT + timedelta(days=1), reload=True)
        if profiler:
            profiler.disable()
        seconds = time.perf_counter() - t0
        out["load"] = {"seconds": round(seconds, 3), "cpu_seconds": round(time.process_time() - cpu0, 3),
                       "path": report.get("path"), "rows": {v: r["rows"] for v, r in report["views"].items()},
                       "phases": phases.report(), "profiled": bool(profiler)}
        phases.on = False
        if profiler:
            text = io.StringIO()
            stats = pstats.Stats(profiler, stream=text).strip_dirs()
            stats.sort_stats("tottime").print_stats(30)
            stats.sort_stats("cumulative").print_stats(30)
            target = OUT / f"online_load_profile_{kind}.txt"
            target.write_text(text.getvalue(), encoding="utf-8")
            out["load"]["profile_file"] = str(target)
        out["check"] = check_online(store, data, args.personas, args.seed)
        k = min(args.feast_personas, args.personas)
        out["feast_writer"] = feast_writer(store, data, k, views) if k > 0 else None
        k = min(args.floor_personas or args.personas, args.personas)
        if kind == "sqlite":
            out["floor_row_per_value"] = floor_sqlite(store, data, k, folder, best=False)
            out["floor"] = floor_sqlite(store, data, k, folder, best=True)
        else:
            out["floor"] = floor_redis(store, data, k)
    finally:
        if kind == "redis":
            out["cleanup"] = drop_project(store)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    Path(args.child_out).write_text(json.dumps(out, indent=2), encoding="utf-8")
    return 0


# --- report (parent) -----------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--personas", type=int, default=200_000)
    parser.add_argument("--stores", default="sqlite,redis", help="comma separated: sqlite, redis")
    parser.add_argument("--feast-personas", type=int, default=10_000, help="Feast writer sample (0: skip)")
    parser.add_argument("--floor-personas", type=int, default=0, help="floor personas (default: all)")
    parser.add_argument("--redis", default=os.environ.get("PERSONA_REDIS") or REDIS_DEFAULT)
    parser.add_argument("--registry-url", default=os.environ.get("PERSONA_REGISTRY_URL") or REGISTRY_DEFAULT)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", action="store_true", help="cProfile each load (bench/out/online_load_profile_*)")
    parser.add_argument("--child", choices=["sqlite", "redis"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.child:
        return child(args)

    load_before = os.getloadavg()
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="online_load_"))
    results: dict = {"personas": args.personas, "machine": {
        "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "loadavg_before": [round(x, 2) for x in load_before]}}
    try:
        import feast

        results["machine"]["feast"] = feast.__version__
        print(f"generating snapshots of {args.personas:,} personas in {tmp} ...", flush=True)
        t0 = time.perf_counter()
        widths = generate(tmp / "data", args.personas, args.seed)
        results["generate_seconds"] = round(time.perf_counter() - t0, 2)
        results["widths"] = widths
        size = sum(p.stat().st_size for p in (tmp / "data").glob("*.parquet"))
        print(f"  {sum(widths.values())} features over {len(widths)} views {widths}; {size / 2**20:.0f} MB of "
              f"Parquet in {results['generate_seconds']:.1f} s", flush=True)
        stores = [s.strip() for s in args.stores.split(",") if s.strip()]
        results["stores"] = {}
        for kind in stores:
            if kind == "redis":
                from persona.servers import unreachable

                down = unreachable(args.redis, args.registry_url)
                if down:
                    print(f"redis: skipped, {'; '.join(down)}", flush=True)
                    results["stores"][kind] = {"skipped": down}
                    continue
            print(f"{kind}: apply, load, check, Feast's writer, floor ...", flush=True)
            work = tmp / kind
            work.mkdir()
            out = tmp / f"{kind}.json"
            cmd = [sys.executable, __file__, "--child", kind, "--data", str(tmp / "data"), "--workdir", str(work),
                   "--child-out", str(out), "--personas", str(args.personas), "--seed", str(args.seed),
                   "--feast-personas", str(args.feast_personas), "--floor-personas", str(args.floor_personas),
                   "--redis", args.redis, "--registry-url", args.registry_url] + (["--profile"] if args.profile else [])
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT)
            if proc.returncode != 0 or not out.is_file():
                print(f"{kind}: the child failed (exit {proc.returncode})", flush=True)
                results["stores"][kind] = {"failed": proc.returncode}
                continue
            res = json.loads(out.read_text(encoding="utf-8"))
            res["child_seconds"] = round(time.perf_counter() - t0, 1)
            results["stores"][kind] = res
            print(f"  done in {res['child_seconds']:.0f} s (load {res['load']['seconds']:.1f} s)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    results["total_seconds"] = round(time.perf_counter() - t_start, 1)
    report(results)
    target = OUT / "online_load.json"
    target.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"wrote {target}")
    return 0


def report(results: dict) -> None:
    m = results["machine"]
    print(f"\nmachine: {m['cpus']} CPUs, {m['platform']}; Python {m['python']}, feast {m.get('feast')}; load average "
          f"before {m['loadavg_before']}, after {m['loadavg_after']}")
    head = (f"{'store':<7} | {'personas':>9} | {'views':>5} | {'seconds':>7} | {'persona-rows/s':>14} | "
            f"{'personas/s':>10} | {'Feast writer rows/s':>19} | {'floor rows/s':>12} | goal")
    print("\n" + head + "\n" + "-" * len(head))
    for kind, r in results["stores"].items():
        if "load" not in r:
            print(f"{kind:<7} | {'skipped' if 'skipped' in r else 'failed'}")
            continue
        n, views, s = results["personas"], r["views"], r["load"]["seconds"]
        rate = n * views / s
        goal = GOALS[kind]
        fw = r["feast_writer"]["feast_rows_per_s"] if r.get("feast_writer") else float("nan")
        r["load"]["persona_rows_per_s"], r["load"]["personas_per_s"] = round(rate), round(n / s)
        r["goal"] = {"persona_rows_per_s": goal, "met": rate >= goal}
        print(f"{kind:<7} | {n:>9,} | {views:>5} | {s:>7.1f} | {rate:>14,.0f} | {n / s:>10,.0f} | {fw:>19,.0f} | "
              f"{r['floor']['rows_per_s']:>12,.0f} | >= {goal:,}: {'met' if rate >= goal else 'MISSED'}")
    for kind, r in results["stores"].items():
        if "load" not in r:
            continue
        load, fw, fl = r["load"], r.get("feast_writer"), r["floor"]
        print(f"\n{kind} ({r['project']}, {r['features']} features, path {load['path']}"
              f"{', under cProfile' if load['profiled'] else ''}): load {load['seconds']:.1f} s wall, "
              f"{load['cpu_seconds']:.1f} s CPU; apply {r['apply_seconds']:.1f} s; peak RSS {r['peak_rss_mb']:,.0f} MB")
        for label, p in load["phases"].items():
            print(f"  {label:<50} {p['seconds']:8.2f} s  ({p['calls']} calls)")
        c = r["check"]
        print(f"  check: {c['personas']} personas, {c['values']:,} values read back with get_online_features: "
              f"{'equal' if c['ok'] else 'MISMATCH ' + '; '.join(c['mismatches'])}")
        if fw:
            print(f"  Feast's writer: {fw['personas']:,} personas x {fw['views']} views in {fw['feast_seconds']:.1f} s "
                  f"= {fw['feast_rows_per_s']:,} rows/s; the bulk writer on the same rows (in memory, no read): "
                  f"{fw['bulk_seconds']:.2f} s = {fw['bulk_rows_per_s']:,} rows/s")
        print(f"  floor: {fl['personas']:,} personas x {r['views']} views, {fl['bytes'] / 2**20:,.0f} MB encoded, "
              f"written in {fl['seconds']:.1f} s = {fl['rows_per_s']:,} rows/s (load / floor: "
              f"{load['seconds'] * fl['rows'] / (fl['seconds'] * results['personas'] * r['views']):.1f}x)")
        if "floor_row_per_value" in r:
            fo = r["floor_row_per_value"]
            print(f"  floor with one upsert per value (key, feature order; 1 GB page cache): {fo['seconds']:.1f} s = "
                  f"{fo['rows_per_s']:,} rows/s")
        if "cleanup" in r:
            print(f"  cleanup: registry rows left {r['cleanup']['registry_rows_left']}, Redis keys left "
                  f"{r['cleanup']['redis_keys_left']}, floor scratch keys deleted {fl.get('scratch_keys_deleted')}")
    print(f"\ngenerate {results['generate_seconds']:.1f} s; whole run {results['total_seconds']:.0f} s")


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
