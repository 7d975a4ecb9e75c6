"""Staging, the first step of `persona integrate`: every new or changed source file read, validated, standardised
and written to staging/<source>/<file_id>.{rows,mentions}.parquet (rejected rows to quarantine/), with one manifest
entry per file in state/ingested.json (size, modification time, counts, reasons).

A file already staged (same size and modification time) and published is not read again. Files are staged in the
order of the sources in persona.yaml and of their paths, and a row already accepted (same row key) in an earlier file
of its source is a duplicate: that order decides which copy is kept, on either engine. With `engine: spark` every
file is staged in its own Spark task by the same code (`spark_stage`); the driver then publishes them in that order.
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from features.integration import spark_stage
from features.integration import standardise as std
from features.integration.ingest import (ARROW_STR, MENTION_COLUMNS, SeenKeys, SourceFileError, mention_keys,
                                         stage_file)
from persona.config import PersonaConfig
from persona.faults import kill_point
from persona.workspace import Workspace, read_json, write_json_atomic, write_parquet_atomic

Progress = Callable[[str, float], None]
MANIFEST = "ingested.json"
FORGOTTEN = "forgotten.parquet"  # state/: (id_type, value_hash) of erased persons, kept out of every later run
PUBLISHED = "published"  # a manifest entry's flag: False from staging until the run that staged it has published
IDENTIFIER_COLUMNS = ["id_type", "value", "value_hash"]


@dataclass
class Staging:
    """What staging leaves for the rest of the run: the manifest, and the raw identifiers it read (memory only)."""

    manifest: dict
    identifiers: pd.DataFrame  # id_type, value, value_hash of the files staged (or migrated) in this run
    # With `values` (the Spark engine): the files staged on the executors left theirs there, one Parquet file each,
    # and `identifiers` holds only the migrated ones: raw values do not pass through the driver.
    values: Path | None = None


def _file_id(relpath: str) -> str:
    return hashlib.sha1(relpath.encode("utf-8")).hexdigest()[:16]


def source_files(ws: Workspace, pattern: str) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(ws.root / pattern), recursive=True) if Path(p).is_file())


def read_forgotten(ws: Workspace) -> dict[str, set[str]]:
    """The salted hashes of erased persons' identifiers, per identifier type (empty when nobody was erased)."""
    path = ws.state / FORGOTTEN
    if not path.exists():
        return {}
    table = pd.read_parquet(path, columns=["id_type", "value_hash"])
    return {str(t): set(g["value_hash"].astype(str)) for t, g in table.groupby("id_type")}


def stage_sources(ws: Workspace, cfg: PersonaConfig, *, now: pd.Timestamp, salt: str,
                  forgotten: Mapping[str, set[str]] | None = None, progress: Progress | None = None,
                  spark=None, values: Path | None = None) -> Staging:
    """Stage every new or changed source file, and any file staged but never published; returns the manifest (per
    source, per file counts) and the raw identifiers of the files staged here. With a Spark session, the files are
    staged on its executors (`spark_stage.stage_files`): the same outputs, manifest entries and kill points, and
    their raw identifiers left in the folder `values` (required with Spark; removed by the caller)."""
    manifest: dict = read_json(ws.state / MANIFEST, {}) or {}
    identifiers = [_arrow_identifiers(migrate_staging(ws, cfg, manifest, salt))]
    todo = []
    for name, spec in cfg.sources.items():
        files = source_files(ws, spec.path)
        if not files:
            raise SourceFileError(f"{ws.root / spec.path}: no file matches the path of source '{name}' in persona.yaml")
        done = manifest.setdefault(name, {})
        for f in files:
            rel = f.relative_to(ws.root).as_posix()
            st = f.stat()
            entry = done.get(rel)
            if (entry and entry["size"] == st.st_size and entry["mtime_ns"] == st.st_mtime_ns
                    and entry.get(PUBLISHED, True)):
                continue
            todo.append((name, spec, f, rel, st))
    if spark is not None and todo:
        if progress:
            progress(f"staging {len(todo)} files on Spark", 0.0)
        spark_stage.stage_files(spark, ws, cfg, [(*t, _file_id(t[3])) for t in todo], manifest, now=now, salt=salt,
                                forgotten=forgotten, published_flag=PUBLISHED, manifest_path=ws.state / MANIFEST,
                                values=values)
        todo = []
    seen: dict[str, SeenKeys] = {}
    for i, (name, spec, f, rel, st) in enumerate(todo):
        if progress:
            progress(f"staging {rel}", i / max(len(todo), 1))
        file_id = _file_id(rel)
        src_dir = ws.staging / name
        if name not in seen:  # a source's staged keys are read once per run, then kept up to date in memory
            seen[name] = SeenKeys()
            for p in (src_dir.glob("*.rows.parquet") if src_dir.exists() else []):
                seen[name].add(p.name.split(".")[0], pq.read_table(p, columns=["row_key"])["row_key"].to_numpy())
        # Read and standardised in chunks of a million rows, the three outputs written as they come.
        staged = stage_file(f, spec, cfg, source=name, file_id=file_id, now=now, seen_row_keys=seen[name], salt=salt,
                            forgotten=forgotten, out_rows=src_dir / f"{file_id}.rows.parquet",
                            out_mentions=src_dir / f"{file_id}.mentions.parquet",
                            out_quarantine=ws.quarantine / name / f"{file_id}.parquet")
        seen[name].add(file_id, staged.row_keys)
        identifiers.append(_arrow_identifiers(staged.identifiers))
        if sum(map(len, identifiers)) > 2 * len(identifiers[0]) + 1_000_000:  # the distinct ones only, as files come
            identifiers = [pd.concat(identifiers, ignore_index=True).drop_duplicates(["id_type", "value_hash"])]
        # Its raw values live only in this process until the run publishes: a crash before that re-stages it.
        manifest[name][rel] = {"file_id": file_id, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                               **staged.counts(), PUBLISHED: False}
        # After each file, so a crash resumes where it stopped; staged files are deterministic per file.
        write_json_atomic(ws.state / MANIFEST, manifest)
        del staged
        kill_point("integrate.staged")
    found = pd.concat(identifiers, ignore_index=True)
    del identifiers
    return Staging(manifest, found.drop_duplicates(["id_type", "value_hash"]).reset_index(drop=True),
                   values if spark is not None else None)


def _arrow_identifiers(frame: pd.DataFrame) -> pd.DataFrame:
    """A file's distinct (id_type, value, value_hash) as Arrow strings: a few bytes a value instead of a Python
    object each, since every file's identifiers are kept until the run publishes."""
    return (frame[IDENTIFIER_COLUMNS].astype(ARROW_STR).drop_duplicates(["id_type", "value_hash"])
            .reset_index(drop=True))


def migrate_staging(ws: Workspace, cfg: PersonaConfig, manifest: dict, salt: str) -> pd.DataFrame:
    """Bring files staged by an earlier version (mentions holding raw values, mention keys not keyed with the salt)
    to the current layout, in place; returns their raw identifiers (id_type, value, value_hash) for this run.

    Per file, the rows are re-keyed before the mentions are rewritten, and re-keying leaves a key it does not know
    (one already re-keyed) alone: a crash between the two writes is completed by the next run. Migrated files are
    marked unpublished, like freshly staged ones, since their raw values are now only in memory.
    """
    found = [pd.DataFrame({c: pd.Series(dtype="string") for c in IDENTIFIER_COLUMNS})]
    changed = False
    for name, files in manifest.items():
        spec = cfg.sources.get(name)
        for entry in files.values():
            mentions_path = ws.staging / name / f"{entry['file_id']}.mentions.parquet"
            if not mentions_path.exists() or "value" not in pq.read_schema(mentions_path).names:
                continue
            old = pd.read_parquet(mentions_path).dropna(subset=["value"])
            wide = old.drop_duplicates(["mention_key", "id_type"]).pivot(index="mention_key", columns="id_type",
                                                                         values="value")
            order = [t for t in (spec.identifiers if spec else []) if t in wide.columns]
            wide = wide.reindex(columns=order + sorted(set(wide.columns) - set(order))).astype(object)
            wide = wide.where(wide.notna(), None)
            old_keys = wide.index.to_numpy(dtype=np.uint64)
            new_keys = mention_keys(wide.reset_index(drop=True), name, salt)
            rows_path = ws.staging / name / f"{entry['file_id']}.rows.parquet"
            if rows_path.exists():
                rows = pd.read_parquet(rows_path)
                rows["mention_key"] = _rekey(rows["mention_key"].to_numpy(dtype=np.uint64), old_keys, new_keys)
                write_parquet_atomic(rows_path, rows)
            old["value_hash"] = std.salted_hash(old["value"], salt)
            old["mention_key"] = _rekey(old["mention_key"].to_numpy(dtype=np.uint64), old_keys, new_keys)
            mentions = old.astype({"id_type": "string", "value": "string", "value_hash": "string"})
            write_parquet_atomic(mentions_path, mentions.drop_duplicates(MENTION_COLUMNS)[MENTION_COLUMNS]
                                 .reset_index(drop=True))
            found.append(mentions[IDENTIFIER_COLUMNS])
            entry.setdefault("erased", 0)
            entry[PUBLISHED] = False
            changed = True
    if changed:
        write_json_atomic(ws.state / MANIFEST, manifest)
    return pd.concat(found, ignore_index=True).drop_duplicates(["id_type", "value_hash"]).reset_index(drop=True)


def _rekey(keys: np.ndarray, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """`keys` with each of `old` replaced by its `new` counterpart; other keys unchanged."""
    order = np.argsort(old)
    pos = np.minimum(np.searchsorted(old[order], keys), max(len(old) - 1, 0))
    hit = old[order][pos] == keys if len(old) else np.zeros(len(keys), dtype=bool)
    out = keys.copy()
    out[hit] = new[order][pos[hit]]
    return out


def source_counts(manifest: dict, cfg: PersonaConfig) -> dict:
    out = {}
    for name in cfg.sources:
        files = manifest.get(name, {})
        agg: dict = {"read": 0, "accepted": 0, "quarantined": 0, "erased": 0, "files": len(files), "reasons": {},
                     "invalid_identifiers": {}, "unmapped_codes": {}, "unreachable_identifiers": {}}
        for entry in files.values():
            for k in ("read", "accepted", "quarantined", "erased"):
                agg[k] += entry.get(k, 0)
            for group in ("reasons", "invalid_identifiers", "unmapped_codes", "unreachable_identifiers"):
                for k, v in entry.get(group, {}).items():  # files staged before a group existed have none
                    agg[group][k] = agg[group].get(k, 0) + v
        out[name] = agg
    return out


def staged_files(ws: Workspace, cfg: PersonaConfig, manifest: dict, suffix: str) -> list[str]:
    paths = []
    for name in cfg.sources:
        for entry in manifest.get(name, {}).values():
            paths.append(str(ws.staging / name / f"{entry['file_id']}.{suffix}.parquet"))
    return paths


def drop_forgotten(mentions: pd.DataFrame, forgotten: Mapping[str, set[str]]) -> pd.DataFrame:
    """Mentions without any that carries a forgotten identifier: staging and `persona forget` already leave none;
    this keeps an erased person out even if an erasure was interrupted before it rewrote every staged file."""
    hit = np.zeros(len(mentions), dtype=bool)
    for id_type, hashes in forgotten.items():
        hit |= ((mentions["id_type"] == id_type) & mentions["value_hash"].isin(list(hashes))).to_numpy(
            dtype=bool, na_value=False)
    if not hit.any():
        return mentions
    return mentions[~mentions["mention_key"].isin(mentions["mention_key"][hit].unique())].reset_index(drop=True)

