"""Staging on Spark: every new or changed source file read, validated and standardised on the executors, with the
same code, the same quarantine reasons and the same row accounting as the embedded engine.

`ingest.standardise_file` is a pure function of one file and of the row keys already seen, and its duplicate check
is the last of its checks. That makes the embedded, file-after-file staging reproducible in three passes:

1. every file is staged on its own, in one Spark task each, as if nothing had been seen (`seen` empty);
2. Spark joins the row keys those tasks accepted: a key of file i is a duplicate when an earlier file of this run
   (same source, earlier in the staging order) accepted it, or when a file staged by an earlier run holds it and had
   not been staged again before file i (the embedded run's `SeenKeys`: every staged file, each replaced once it is
   staged again, never a file's own earlier version);
3. the files that hold such keys are staged again with exactly those keys as `seen`, which gives each the
   quarantine the embedded run gives it (a duplicate is only ever a row that passed every other check).

The executors write the staged Parquet files to a scratch folder of the workspace; the driver receives one small
row of counts per file and then publishes the files in the embedded engine's order, with the same manifest entries
and kill point after each. Nothing else reaches the driver. The raw normalised identifiers, which the embedded run
only keeps in memory, are written to the scratch folder (a restricted area, like the staged quarantine), one file
per staged file, and moved to the run's own scratch folder for the identity map, which is removed when the run ends.

Exactness: one case differs from the embedded order, and only when a key moves between files that all change at
once: a key accepted by file j in pass 1, found a duplicate there only because an earlier run's copy of another file
F held it, and F staged again between j and i without the key. The embedded run then accepts the key in file i;
pass 2 counts it a duplicate (j had accepted it in pass 1).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from features.integration.ingest import SourceFileError, stage_file
from persona.config import PersonaConfig
from persona.engine import task_per_item
from persona.faults import kill_point
from persona.workspace import Workspace, write_json_atomic

SCRATCH = "_spark"  # under the staging folder: never a source's name (source names are identifiers)
# The staged rows' columns the duplicate pass reads (row_key is a uint64, which Spark reads as a decimal; the
# timestamps, nanoseconds in these files, are left unread: Spark refuses nanosecond Parquet timestamps).
_KEYS = "source string, file_id string, row_key decimal(20,0)"
_RESULT_SCHEMA = ("pos int, error string, read long, accepted long, quarantined long, erased long, reasons string, "
                  "invalid_identifiers string, unmapped_codes string, unreachable_identifiers string")


def scratch_root(ws: Workspace) -> Path:
    return ws.staging / SCRATCH


def stage_files(spark, ws: Workspace, cfg: PersonaConfig, todo: list[tuple], manifest: dict, *, now: pd.Timestamp,
                salt: str, forgotten: Mapping[str, set[str]] | None, published_flag: str,
                manifest_path: Path, values: Path) -> None:
    """Stage `todo` ((source, spec, path, relpath, stat, file_id) in the embedded order) on Spark; publish each
    file's outputs and manifest entry in that order; leave each file's raw identifiers (id_type, value, value_hash)
    as `values`/<file_id>.parquet, for the identity map the executors build (`spark_run.identity_map`).

    A file that cannot be staged at all (SourceFileError) stops the run at its place in the order, after the files
    before it are published, with the error the embedded engine raises."""
    if not todo:
        return
    shutil.rmtree(scratch_root(ws), ignore_errors=True)  # what a killed run left: it is staged again
    scratch = scratch_root(ws) / uuid.uuid4().hex[:12]
    try:
        first = _stage_pass(spark, ws, cfg, todo, scratch / "pass1", now=now, salt=salt, forgotten=forgotten,
                            seen_dir=None)
        failed = first[first["error"].notna()]
        stop = int(failed["pos"].min()) if len(failed) else len(todo)
        dups = scratch / "duplicates"
        holders = _duplicates(spark, ws, todo[:stop], scratch / "pass1", dups)
        results = {int(r.pos): r for r in first.itertuples(index=False)}
        if holders:
            again = [todo[p] for p in holders]
            second = _stage_pass(spark, ws, cfg, again, scratch / "pass2", now=now, salt=salt, forgotten=forgotten,
                                 seen_dir=dups, positions=holders)
            results.update({int(r.pos): r for r in second.itertuples(index=False)})
        for pos in range(stop):
            name, spec, path, rel, st, file_id = todo[pos]
            r = results[pos]
            where = scratch / ("pass2" if pos in holders else "pass1") / str(pos)
            _publish(ws, name, file_id, where)
            manifest.setdefault(name, {})[rel] = {
                "file_id": file_id, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "read": int(r.read), "accepted": int(r.accepted), "quarantined": int(r.quarantined),
                "erased": int(r.erased), "reasons": json.loads(r.reasons),
                "invalid_identifiers": json.loads(r.invalid_identifiers),
                "unmapped_codes": json.loads(r.unmapped_codes),
                "unreachable_identifiers": json.loads(r.unreachable_identifiers),
                published_flag: False,
            }
            write_json_atomic(manifest_path, manifest)
            kill_point("integrate.staged")
            values.mkdir(parents=True, exist_ok=True)
            os.replace(where / "identifiers.parquet", values / f"{file_id}.parquet")
        if stop < len(todo):
            raise SourceFileError(str(results[stop].error))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _stage_pass(spark, ws: Workspace, cfg: PersonaConfig, todo: list[tuple], out: Path, *, now: pd.Timestamp,
                salt: str, forgotten: Mapping[str, set[str]] | None, seen_dir: Path | None,
                positions: list[int] | None = None) -> pd.DataFrame:
    """Stage each file in its own task, writing out/<pos>/{rows,mentions,quarantine,identifiers}.parquet; the
    per-file counts (small) come back to the driver."""
    positions = positions if positions is not None else list(range(len(todo)))
    items = [(pos, t[0], str(t[2]), t[5]) for pos, t in zip(positions, todo)]
    root, forgotten_sets = str(out), {k: set(v) for k, v in (forgotten or {}).items()}
    seen_root = None if seen_dir is None else str(seen_dir)

    def run(item: tuple) -> pd.DataFrame:  # one row of counts per file, not per record
        pos, source, path, file_id = item
        return pd.DataFrame([_stage_one(cfg, source, Path(path), file_id, pos, Path(root), now=now, salt=salt,
                                        forgotten=forgotten_sets, seen_root=seen_root)])

    rows = task_per_item(spark, items, run, _RESULT_SCHEMA)  # a task per file
    columns = [c.split()[0] for c in _RESULT_SCHEMA.split(", ")]
    return pd.DataFrame([r.asDict() for r in rows], columns=columns).sort_values("pos").reset_index(drop=True)


def _stage_one(cfg: PersonaConfig, name: str, path: Path, file_id: str, pos: int, root: Path, *,
               now: pd.Timestamp, salt: str, forgotten: Mapping[str, set[str]], seen_root: str | None) -> dict:
    """On an executor: stage one file with the embedded code; write its outputs; return its counts."""
    spec = cfg.sources[name]
    seen = np.empty(0, dtype=np.uint64)
    if seen_root is not None:
        part = Path(seen_root) / f"pos={pos}"
        if part.exists():
            keys = pq.read_table(part, columns=["row_key"])["row_key"]  # signed longs (`_duplicates`)
            seen = keys.to_numpy().astype(np.int64, copy=False).view(np.uint64)
    where = root / str(pos)
    where.mkdir(parents=True, exist_ok=True)
    try:  # in bounded chunks, as the embedded engine stages a file
        staged = stage_file(path, spec, cfg, source=name, file_id=file_id, now=now, seen_row_keys=seen, salt=salt,
                            forgotten=forgotten, out_rows=where / "rows.parquet",
                            out_mentions=where / "mentions.parquet", out_quarantine=where / "quarantine.parquet")
    except SourceFileError as exc:  # every column of the result schema, the counts left empty
        return {"pos": pos, "error": str(exc), "read": 0, "accepted": 0, "quarantined": 0, "erased": 0,
                **dict.fromkeys(("reasons", "invalid_identifiers", "unmapped_codes", "unreachable_identifiers"),
                                "{}")}
    staged.identifiers.to_parquet(where / "identifiers.parquet", index=False, compression="zstd")
    counts = staged.counts()
    return {"pos": pos, "error": None, **{k: (json.dumps(v) if isinstance(v, dict) else int(v))
                                          for k, v in counts.items()}}


def _duplicates(spark, ws: Workspace, todo: list[tuple], pass1: Path, out: Path) -> list[int]:
    """Write the row keys each file of `todo` must treat as seen (out/pos=N/, as signed longs with the keys' 64
    bits), per the embedded order; return the positions of the files that have any.

    A key of this run is seen by every later file of the same source that holds it: one window over (source, key)
    finds them (pass 1 accepts a key at most once per file). Keys are compared as longs: Spark reads a uint64
    column as decimal(20,0), on which joins and sorts cost several times more."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from features.integration.spark_run import signed

    if not todo:
        return []
    order = spark.createDataFrame(pd.DataFrame({"pos": range(len(todo)), "source": [t[0] for t in todo],
                                                "file_id": [t[5] for t in todo]}))
    files = [str(pass1 / str(p) / "rows.parquet") for p in range(len(todo))]
    new = (spark.read.schema(_KEYS).parquet(*files)
           .join(F.broadcast(order), ["source", "file_id"])
           .select("pos", "source", "file_id", signed(F.col("row_key")).alias("row_key")))
    first = F.min("pos").over(Window.partitionBy("source", "row_key"))
    found = new.withColumn("first", first).where(F.col("pos") > F.col("first")).select("pos", "row_key")
    sources = sorted({t[0] for t in todo})
    old_files = [str(p) for s in sources for p in sorted((ws.staging / s).glob("*.rows.parquet"))]
    if old_files:
        # An earlier run's file counts until this run stages it again (and never for its own new version).
        replaced = order.select("source", "file_id", F.col("pos").alias("replaced_at"))
        old = (spark.read.schema(_KEYS).parquet(*old_files)
               .select("source", "file_id", signed(F.col("row_key")).alias("row_key"))
               .join(F.broadcast(replaced), ["source", "file_id"], "left")
               .fillna({"replaced_at": len(todo)}))
        held = (new.alias("n")
                .join(old.alias("f"), (F.col("n.source") == F.col("f.source"))
                      & (F.col("n.row_key") == F.col("f.row_key")) & (F.col("f.file_id") != F.col("n.file_id"))
                      & (F.col("f.replaced_at") > F.col("n.pos")), "left_semi")
                .select(F.col("n.pos").alias("pos"), F.col("n.row_key").alias("row_key")))
        found = found.unionByName(held)
    found.distinct().write.mode("overwrite").partitionBy("pos").parquet(str(out))
    return sorted(int(p.name.split("=", 1)[1]) for p in out.glob("pos=*")) if out.exists() else []


def _publish(ws: Workspace, name: str, file_id: str, where: Path) -> None:
    """Move one staged file's outputs into place, each by one rename (as write_parquet_atomic leaves them)."""
    targets = {"rows": ws.staging / name / f"{file_id}.rows.parquet",
               "mentions": ws.staging / name / f"{file_id}.mentions.parquet",
               "quarantine": ws.quarantine / name / f"{file_id}.parquet"}
    for part, target in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(where / f"{part}.parquet", target)
