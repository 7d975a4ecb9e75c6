"""The integrate stage: stage new source files, resolve identities, build and enrich profiles, publish.

Incremental: a file already staged (same size and modification time) is not read again, so new files append and a
re-run on the same data changes nothing. Resolution and profiles are recomputed over everything staged, keeping
persona_ids stable. Outputs are published together (see `persona.workspace.publishing`).

Raw identifiers: staging keeps only salted hashes, and resolution runs on them. The normalised values the published
identity map holds come from the previous identity map plus the files staged in this run, kept in memory from
staging to publishing on the embedded engine (on Spark, in one file per staged file in the run's scratch folder,
joined to the identifiers by the executors: no raw value passes through the driver). A file staged but not yet published is marked so in state/ingested.json and staged again
from its source by the next run (staging is deterministic per file), so a crash between the two loses no value.
After a publish, the identity maps of the older run folders lose their raw values. Rows carrying an identifier
erased with `persona forget` (state/forgotten.parquet) are dropped at staging and only counted (`erased`).

Profiles, lineage and enrichment are built one range of personas at a time (`profile_ranges`) from Parquet inputs
each engine writes sorted by persona_id: memory is bounded by a range, not by the personas.

Published (integrated/current/):
- identity_map.parquet      id_type, value (normalised; restricted: the only copy), value_hash, persona_id, status,
                            reachable (phones: False for a number that could exist but is in no assigned range, so
                            it links but must not be called or messaged; <NA> for other types)
- identity_hashed.parquet   id_type, value_hash, persona_id: what later stages and serving look identifiers up in
- aliases.parquet           persona_id no longer live -> alias_of (the persona holding most of its identifiers), or
                            alias_of <NA> when it was retired (dissolved: left with no linked identifier), and reason
- profiles.parquet          one row per persona, survivorship + enrichment, hashed identifiers only
- lineage.parquet           persona_id, attribute, source, record, as_of
- transactions/events/interactions.parquet   attributed activity with persona_id, no raw identifiers
- audit_log.parquet         merges, splits, identifiers that stopped linking (unlink) and dissolved personas, across
                            runs, each with its reason
- quarantine.parquet        every rejected row with its source, file, row number and reason
- report.json               counts, resolution quality, enrichment match rates
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.integration import aggregates
from features.integration import profile_ranges
from features.integration import spark_run
from features.integration import standardise as std
from features.integration.ingest import ARROW_STR, ARROW_STRINGS
from features.integration.oneid import pairwise_scores, resolve
from features.integration.staging import (FORGOTTEN, IDENTIFIER_COLUMNS, MANIFEST, PUBLISHED, Progress,
                                          source_counts, staged_files, drop_forgotten, read_forgotten, stage_sources)
from features.integration.survivorship import survive_order, survive_sql
from persona import engine
from persona.config import PersonaConfig
from persona.workspace import (SecretError, Workspace, publishing, read_json, write_json_atomic, write_parquet_atomic,
                               write_parquet_parts)

__all__ = ["FORGOTTEN", "MANIFEST", "STAGE", "integrate", "check_salt", "retire_raw_values"]
STAGE = "integrated"
# DuckDB's share of the run's memory: above it, joins and sorts (publishing's ORDER BY of every event) spill to
# SPILL in the workspace instead of holding everything at once. Well under half of the 7 GB integrate targets at
# 1M customers, since pandas holds the resolver's identifiers and one range of profiles beside it.
DUCKDB_MEMORY = "2GB"
SPILL = ".tmp/integrate"  # under the workspace root: removed at the end, and at the start after a killed run


def blocked_values(cfg: PersonaConfig) -> dict[str, set[str]]:
    """Blocked values normalised the way their identifier type is, so '138-0000-0000' blocks '+8613800000000'."""
    out = {}
    for t, spec in cfg.identity.identifiers.items():
        if not spec.blocked:
            continue
        norm = std.normalise_identifiers(pd.Series(spec.blocked, dtype="string"), spec.normalise, cfg.phone_region)
        out[t] = set(norm.dropna().tolist()) | set(spec.blocked)
    return out


def blocked_hashes(cfg: PersonaConfig, salt: str) -> dict[str, set[str]]:
    """`blocked_values` as salted hashes: what resolution compares, since staging keeps no raw value."""
    return {t: set(std.salted_hash(pd.Series(sorted(v), dtype="string"), salt).tolist())
            for t, v in blocked_values(cfg).items()}


def check_salt(identity_map: pd.DataFrame | None, salt: str) -> None:
    """Refuse a salt other than the one an identity map was hashed with: staged mentions and state/forgotten.parquet
    hold hashes made with that salt, which a new one would silently stop matching."""
    if identity_map is None or "value" not in identity_map.columns:
        return
    sample = identity_map.dropna(subset=["value"]).head(50)
    expected = std.salted_hash(sample["value"], salt).astype(str).to_numpy()
    if len(sample) and (expected != sample["value_hash"].astype(str).to_numpy()).any():
        raise SecretError(
            "the hashing salt ($PERSONA_SALT or secrets.env) is not the one this workspace was integrated with: the "
            "hashes in integrated/current/identity_map.parquet, staging/ and state/forgotten.parquet were made with "
            "the earlier salt; restore it (rotating the salt needs every staged file and erasure re-hashed)")


IDENTITY_MAP_COLUMNS = ["id_type", "value", "value_hash", "persona_id", "status", "reachable"]


def known_values(previous: pd.DataFrame | None, staged: pd.DataFrame) -> pd.DataFrame:
    """Normalised raw values by (id_type, value_hash): the previous identity map's and this run's staged files'."""
    parts = [staged[IDENTIFIER_COLUMNS].astype(ARROW_STR)]
    if previous is not None and "value" in previous.columns:
        parts.append(previous.dropna(subset=["value"])[IDENTIFIER_COLUMNS].astype(ARROW_STR))
    return pd.concat(parts, ignore_index=True).drop_duplicates(["id_type", "value_hash"])


def with_values(nodes: pd.DataFrame, known: pd.DataFrame) -> pd.DataFrame:
    """`nodes` (id_type, value_hash, ...) with the raw `value` of each from `known` (<NA> where unknown), in the
    nodes' order. Joined in Arrow on Arrow strings: a pandas merge would turn millions of keys into Python strings
    and hash them (the run's peak at a million customers)."""
    keys = pa.table({"id_type": aggregates.arrow_strings(nodes["id_type"]),
                     "value_hash": aggregates.arrow_strings(nodes["value_hash"]),
                     "_row": pa.array(np.arange(len(nodes), dtype=np.int64))})
    values = pa.Table.from_pandas(known[IDENTIFIER_COLUMNS].astype(ARROW_STR), preserve_index=False)  # no copy
    values = values.cast(pa.schema([(c, pa.string()) for c in IDENTIFIER_COLUMNS]))  # large_string where pandas made it
    joined = keys.join(values, keys=["id_type", "value_hash"], join_type="left outer", use_threads=False)
    del keys, values
    value = joined["value"].take(pc.sort_indices(joined["_row"]))
    del joined
    out = nodes.copy(deep=False)
    out["value_hash"] = out["value_hash"].astype(object)  # as the identity map has always been published
    out["value"] = value.to_pandas(types_mapper=ARROW_STRINGS.get)
    return out


def identity_map_schema() -> pa.Schema:
    """The published identity map's Arrow schema and pandas metadata, as the embedded engine writes it (the
    resolver's node dtypes through `with_values` and `phone_reachability`): what the Spark engine writes too."""
    nodes = pd.DataFrame({"id_type": ["t"], "value_hash": ["h"], "persona_id": ["p"], "status": ["s"]}).astype(
        {"id_type": "string", "value_hash": ARROW_STR, "persona_id": ARROW_STR, "status": "string"})
    known = pd.DataFrame({"id_type": ["t"], "value": ["v"], "value_hash": ["h"]})
    like = with_values(nodes, known)
    like["reachable"] = pd.array([pd.NA], dtype="boolean")
    return pa.Table.from_pandas(like[IDENTITY_MAP_COLUMNS], preserve_index=False).schema


def quarantine_schema() -> pa.Schema:
    """The published quarantine's Arrow schema and pandas dtypes: source, file_id, row and reason of every rejected
    row, without its raw values (those stay in the staged quarantine/SOURCE/FILE_ID.parquet, restricted data)."""
    like = pd.DataFrame({"source": ["s"], "file_id": ["f"], "row": [0], "reason": ["r"]}).astype(
        {"source": "string", "file_id": "string", "row": "int64", "reason": "string"})
    return pa.Table.from_pandas(like, preserve_index=False).schema


def _map_sample(current: Path | None) -> pd.DataFrame | None:
    """The first rows of the published identity map (enough for `check_salt`), without reading all of it."""
    if current is None or not (current / "identity_map.parquet").exists():
        return None
    f = pq.ParquetFile(current / "identity_map.parquet")
    batch = next(f.iter_batches(batch_size=50), None)
    return f.schema_arrow.empty_table().to_pandas() if batch is None else pa.Table.from_batches([batch]).to_pandas()


def phone_reachability(nodes: pd.DataFrame, cfg: PersonaConfig) -> pd.Series:
    """Per identity-map row (id_type, value): whether a phone can be reached (`std.phone_reachable`); <NA> for other
    identifier types and for a value not known in this run."""
    phones = [t for t, spec in cfg.identity.identifiers.items() if spec.normalise == "phone"]
    out = pd.Series(pd.NA, index=nodes.index, dtype="boolean")
    mask = (nodes["id_type"].isin(phones) & nodes["value"].notna()).to_numpy(dtype=bool)
    if mask.any():
        out[mask] = std.phone_reachable(nodes.loc[mask, "value"], cfg.phone_region).to_numpy()
    return out


def integrate(ws: Workspace, *, now: pd.Timestamp | None = None, progress: Progress | None = None,
              memory_limit: str = DUCKDB_MEMORY, per_range: int = profile_ranges.PERSONAS_PER_RANGE) -> dict:
    """Run the whole stage and publish its outputs; returns the report.

    `memory_limit`: DuckDB's (it spills to the workspace's SPILL folder beyond it); pandas frames come on top.
    `per_range`: personas per range of `profile_ranges` (profiles and enrichment are built a range at a time)."""
    t0 = time.perf_counter()
    now = now or pd.Timestamp.now(tz="UTC")
    cfg = ws.config()
    salt = ws.salt()
    timings: dict[str, float] = {}
    current = ws.current(STAGE)
    previous = None  # the earlier identity map: on the embedded engine only (Spark reads it on the executors)
    if current and cfg.engine != "spark":
        previous = pd.read_parquet(current / "identity_map.parquet")
    check_salt(previous if previous is not None else _map_sample(current), salt)
    forgotten = read_forgotten(ws)
    spark = engine.spark_session(cfg) if cfg.engine == "spark" else None
    with spark_run.scratch_folder(ws, spark is not None) as scratch:
        staging = stage_sources(ws, cfg, now=now, salt=salt, forgotten=forgotten, progress=progress, spark=spark,
                                values=scratch / "values" if scratch is not None else None)
        manifest = staging.manifest
        _release()  # staging's freed buffers (GBs at 1M customers) back to the system before resolution allocates
        timings["stage"] = time.perf_counter() - t0

        if progress:
            progress("resolving identities", 0.6)
        t = time.perf_counter()
        with _duckdb(ws, memory_limit) as con:
            mention_files = staged_files(ws, cfg, manifest, "mentions")
            prev_aliases = pd.read_parquet(current / "aliases.parquet") if current else None
            prev_report = read_json(current / "report.json", {}) if current else {}
            if spark is not None:
                resolution = spark_run.resolve(
                    spark, ws, cfg, mention_files, forgotten=forgotten, blocked=blocked_hashes(cfg, salt),
                    previous_map=current / "identity_map.parquet" if current else None, previous_aliases=prev_aliases,
                    next_seq=int(prev_report.get("next_seq", 1)), scratch=scratch)
            else:
                with _connect(ws.root / SPILL / "scan", memory_limit) as scan:
                    mentions = _mentions_read(scan, mention_files, forgotten)
                resolution = resolve(mentions, cfg.identity, blocked=blocked_hashes(cfg, salt), previous=previous,
                                     previous_aliases=prev_aliases, next_seq=int(prev_report.get("next_seq", 1)),
                                     on="value_hash")
            timings["resolve"] = time.perf_counter() - t

            if progress:
                progress("building profiles", 0.75)
            t = time.perf_counter()
            con.register("mp", resolution.mention_persona)
            rows_files = staged_files(ws, cfg, manifest, "rows")
            channel_of = pd.DataFrame({"source": list(cfg.sources), "channel": [s.channel for s in cfg.sources.values()],
                                       "kind": [s.kind for s in cfg.sources.values()]})
            con.register("src", channel_of)
            # Survivorship's and enrichment's inputs, sized by personas and identifiers, go to Parquet sorted by
            # persona_id (never whole into pandas), for `profile_ranges` to build one range of personas at a time.
            work = scratch / "profiles" if spark is not None else ws.root / SPILL / "profiles"
            work.mkdir(parents=True, exist_ok=True)
            if spark is not None:  # the scans of every row, on the executors
                inputs = spark_run.aggregates(spark, ws, cfg, rows_files, channel_of, scratch)
                inputs["identifiers"] = str(scratch / "profiles" / "identifiers")
                timings["profiles_scan"] = time.perf_counter() - t  # of "profiles": the executors' part
            else:
                inputs = {"node_seen": str(work / "node_seen.parquet"), "activity": str(work / "activity.parquet")}
                with _connect(ws.root / SPILL / "scan", memory_limit) as scan:
                    scan.register("mp", resolution.mention_persona)
                    scan.register("src", channel_of)
                    rows = f"read_parquet({rows_files!r}, union_by_name=true)"
                    _copy(scan, f"{aggregates.activity_sql(rows)} ORDER BY persona_id", inputs["activity"])
                    # When each identifier was last seen, in DuckDB: the mentions go there and are dropped here.
                    scan.register("mentions", pa.Table.from_pandas(mentions, preserve_index=False))
                    del mentions
                    _copy(scan, aggregates.node_seen_sql("mentions", rows), inputs["node_seen"])
                    scan.unregister("mentions")
                    inputs["winners"] = _survivors(scan, cfg, rows_files, work / "winners.parquet")
            identity_map = work / "identity_map.parquet"  # moved into the published folder as it is
            if spark is not None:  # joined to their raw values, checked and written by the executors
                t_identity = time.perf_counter()
                if len(staging.identifiers):  # migrated from an earlier layout, by the driver
                    write_parquet_atomic(staging.values / "migrated.parquet", staging.identifiers)
                resolution.stats["values_unknown"] = spark_run.identity_map(
                    spark, scratch, staging.values, current / "identity_map.parquet" if current else None,
                    partial(phone_reachability, cfg=cfg), identity_map_schema(), identity_map,
                    then=partial(write_hashed, target=work / "identity_hashed.parquet"))
                del staging, prev_aliases
            else:
                # The raw values, for the identity map (and enrichment's vendor keys), once the mentions are gone.
                known = known_values(previous, staging.identifiers)
                del staging, previous, prev_aliases  # the raw values now live in `known`, then in `nodes` only
                nodes = with_values(resolution.nodes, known)
                del known
                resolution.nodes = None
                _release()
                resolution.stats["values_unknown"] = int(nodes["value"].isna().sum())
                nodes["reachable"] = phone_reachability(nodes, cfg)
                write_parquet_atomic(identity_map, nodes[IDENTITY_MAP_COLUMNS])
                del nodes
                _release()
            if spark is not None:
                starts = spark_run.profile_identifiers(spark, identity_map, inputs, per_range)
                timings["profiles_identity"] = time.perf_counter() - t_identity  # of "profiles": the executors' part
            else:
                sql = profile_ranges.identifiers_sql(f"read_parquet('{identity_map}')",
                                                     f"read_parquet('{inputs['node_seen']}')")
                inputs["identifiers"] = str(work / "identifiers.parquet")
                with _connect(ws.root / SPILL / "scan", memory_limit) as scan:
                    _copy(scan, sql, inputs["identifiers"])
                    starts = [r[0] for r in scan.execute(profile_ranges.range_starts_sql(
                        f"read_parquet('{inputs['identifiers']}')", per_range)).fetchall()]
            externals, ext_quarantine = profile_ranges.write_externals(ws.root, cfg, work / "external")
            build = partial(profile_ranges.build_range, inputs=inputs, cfg=cfg, externals=externals, out=str(work))
            t_ranges = time.perf_counter()
            if spark is not None:  # one task per range
                results = [r.asDict() for r in engine.task_per_item(spark, profile_ranges.ranges(starts), build,
                                                                    profile_ranges.RESULT_SCHEMA)]
                timings["profiles_ranges"] = time.perf_counter() - t_ranges  # of "profiles": the executors' part
            else:
                results = []
                for item in profile_ranges.ranges(starts):
                    results.append(build(item).iloc[0].to_dict())
                    _release()
            enrichment_report = profile_ranges.enrichment_report(cfg, externals, results)
            personas = sum(int(r["personas"]) for r in results)
            _release()
            timings["profiles"] = time.perf_counter() - t

            quality = None
            truth = _truth_pairs(ws, cfg, manifest) if cfg.truth else []
            if truth and spark is not None:
                t_truth = time.perf_counter()
                quality = spark_run.evaluate(spark, truth, scratch)
                timings["evaluate"] = time.perf_counter() - t_truth  # the executors
            elif truth:
                with _connect(ws.root / SPILL / "scan", memory_limit) as scan:
                    scan.register("mp", resolution.mention_persona)
                    quality = _evaluate(truth, scan)
            if quality is not None:
                quality = {**quality, "precision": round(quality["precision"], 5), "recall": round(quality["recall"], 5)}

            if progress:
                progress("publishing", 0.92)
            t = time.perf_counter()
            # A sequence number first, so run folders sort in run order even when two runs share a clock second.
            run_seq = int(prev_report.get("run_seq", 0)) + 1
            run_id = f"{run_seq:06d}-{now:%Y%m%dT%H%M%SZ}"
            audit = resolution.audit.assign(run_id=run_id, at=now)
            audit = audit[[c for c in audit.columns if c != "value_hash"] + ["value_hash"]]
            audit = audit.astype({c: "string" for c in audit.columns if c != "at"})  # as `_same_columns` on later runs
            if current and (current / "audit_log.parquet").exists():
                earlier = pd.read_parquet(current / "audit_log.parquet")
                if len(earlier):  # concatenating an empty frame is deprecated (its all-NA columns would decide dtypes)
                    audit = pd.concat(_same_columns(earlier, audit), ignore_index=True) if len(audit) else earlier
            sources = source_counts(manifest, cfg)
            if spark is not None:
                unattributed = spark_run.unattributed(spark, rows_files, scratch)
            else:
                found = con.execute(
                    f"""SELECT r.source, count(*) AS n FROM read_parquet({rows_files!r}, union_by_name=true) r
                        ANTI JOIN mp m USING (mention_key) GROUP BY r.source""").fetchall()
                unattributed = {name: int(n) for name, n in found}
            for name, n in unattributed.items():
                sources[name]["unattributed"] = n

            with publishing(ws, STAGE, run_id) as out:
                identity_map.replace(out / "identity_map.parquet")
                if spark is not None:  # written by the executors beside the identity map
                    (work / "identity_hashed.parquet").replace(out / "identity_hashed.parquet")
                else:
                    write_hashed(out / "identity_map.parquet", out / "identity_hashed.parquet")
                write_parquet_atomic(out / "aliases.parquet", resolution.aliases)
                write_parquet_atomic(out / "audit_log.parquet", audit)
                _release()
                # The quarantine is published without the raw values (they may hold phones and emails); those stay
                # in the staged quarantine/SOURCE/FILE_ID.parquet, next to the other restricted data.
                rejected = [str(ws.quarantine / n / f"{e['file_id']}.parquet")
                            for n in cfg.sources for e in manifest.get(n, {}).values()]
                if ext_quarantine:
                    rejected.append(str(work / "external_quarantine.parquet"))
                    write_parquet_atomic(Path(rejected[-1]), pd.concat(ext_quarantine, ignore_index=True))
                # Each file from its parts in order, a batch at a time; on Spark by the executors (no profile or
                # rejected row reaches the driver).
                parts = {kind: partial(profile_ranges.assemble, sorted((work / kind).glob("*.parquet")),
                                       out / f"{kind}.parquet") for kind in ("profiles", "lineage")}
                parts["quarantine"] = partial(write_parquet_parts, rejected, out / "quarantine.parquet",
                                              quarantine_schema())
                if spark is not None:
                    engine.task_per_item(spark, list(parts), lambda kind: pd.DataFrame({"rows": [parts[kind]()]}),
                                         "rows long")
                else:
                    for write in parts.values():
                        write()
                kinds = {}
                for kind in ("transactions", "events", "interactions"):
                    names = [n for n, s in cfg.sources.items() if s.kind == kind]
                    files = [p for p in rows_files if Path(p).parent.name in names]
                    if files:
                        kinds[kind] = files
                if spark is not None:  # joined, sorted and written by the executors, in the columns DuckDB would write
                    schemas = {k: con.sql(f"{_activity_sql(f)} LIMIT 0").to_arrow_table().schema for k, f in kinds.items()}
                    t_activity = time.perf_counter()
                    spark_run.publish_activity(spark, kinds, schemas, channel_of, scratch, out)
                    timings["publish_activity"] = time.perf_counter() - t_activity  # of "publish": the executors' part
                for kind, files in kinds.items() if spark is None else ():
                    con.execute(f"""COPY ({_activity_sql(files)} ORDER BY {", ".join(f'"{c}"' for c in spark_run.ORDER)})
                                    TO '{out / f"{kind}.parquet"}' (FORMAT parquet, COMPRESSION zstd)""")
                timings["publish"] = time.perf_counter() - t
                timings["total"] = time.perf_counter() - t0
                report = {
                    "run_id": run_id,
                    "engine": cfg.engine,
                    "sources": sources,
                    "personas": personas,
                    "identity": resolution.stats,
                    "enrichment": enrichment_report,
                    "run_seq": run_seq,
                    "next_seq": resolution.next_seq,
                    "seconds": {k: round(v, 2) for k, v in timings.items()},
                }
                if quality is not None:
                    report["resolution"] = quality
                write_json_atomic(out / "report.json", report)
    retire_raw_values(ws)
    for files in manifest.values():
        for entry in files.values():
            entry.pop(PUBLISHED, None)
    write_json_atomic(ws.state / MANIFEST, manifest)
    return report


def _activity_sql(files: list[str]) -> str:
    """The published activity of staged rows `files`: every attributed row with its persona and channel."""
    return f"""SELECT m.persona_id, s.channel, r.* EXCLUDE (mention_key, row_key)
               FROM read_parquet({files!r}, union_by_name=true) r JOIN mp m USING (mention_key)
               JOIN src s ON s.source = r.source"""


def _mentions_read(con: duckdb.DuckDBPyConnection, files: list[str],
                   forgotten: Mapping[str, set[str]]) -> pd.DataFrame:
    """The distinct staged mentions (mention_key, id_type, value_hash), without any that carries a forgotten
    identifier. Arrow-backed strings straight from DuckDB: resolution factorises them without a Python-object
    detour."""
    mentions = con.sql(
        f"SELECT DISTINCT mention_key, id_type, value_hash FROM read_parquet({files!r}, union_by_name=true)"
    ).to_arrow_table().to_pandas(types_mapper=ARROW_STRINGS.get)
    return drop_forgotten(mentions, forgotten) if forgotten else mentions


@contextmanager
def _duckdb(ws: Workspace, memory_limit: str) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection held to `memory_limit`, spilling to the workspace's SPILL folder; the folder goes when
    the connection does (and, left by a killed run, when the next one starts)."""
    spill = ws.root / SPILL
    shutil.rmtree(spill, ignore_errors=True)
    try:
        with _connect(spill / "main", memory_limit) as con:
            yield con
    finally:
        shutil.rmtree(spill, ignore_errors=True)
        try:
            spill.parent.rmdir()  # the workspace's .tmp, unless something else keeps files there
        except OSError:
            pass


@contextmanager
def _connect(spill: Path, memory_limit: str) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB database of its own, spilling to `spill`. The scans of every staged row run in one that is closed
    when they are done: DuckDB keeps the memory a query used (a GB at a million customers) until its database
    closes, and the run goes on with millions of identifiers in pandas."""
    spill.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": str(spill),
                                 "preserve_insertion_order": False})
    try:
        con.execute("SET TimeZone = 'UTC'")  # timestamps come back as UTC whatever the machine's zone
        yield con
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)
        _release()


def _release() -> None:
    """Hand freed memory back: Python's cycles, what Arrow's allocator keeps for reuse, and what glibc's heap keeps
    (numpy and pandas allocate there; Arrow's allocator does not reuse it, nor the other way round)."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None  # glibc only
    except OSError:
        return None


_LIBC = _libc()


def _same_columns(earlier: pd.DataFrame, new: pd.DataFrame) -> list[pd.DataFrame]:
    """Two audit logs with the same columns and dtypes (text as "string"): an older log lacks `reason`, and an
    all-NA column (a reason only unlink/dissolve events have, ids blanked by `persona forget`) must not decide the
    concatenated dtype."""
    columns = list(dict.fromkeys([*earlier.columns, *new.columns]))
    text = {c: "string" for c in columns if c != "at"}
    return [f.reindex(columns=columns).astype(text) for f in (earlier, new)]


def retire_raw_values(ws: Workspace) -> list[Path]:
    """Keep raw identifiers in the published run only: drop the `value` column of the identity map of every other
    run folder; returns the files rewritten. (What a killed run left half-built, `publishing` removes.)"""
    runs = ws.stage_dir(STAGE) / "runs"
    current = ws.current(STAGE)
    touched = []
    for folder in sorted(runs.iterdir()) if runs.is_dir() else []:
        if not folder.is_dir() or folder == current or folder.name.startswith("."):
            continue
        path = folder / "identity_map.parquet"
        if path.exists() and "value" in pq.read_schema(path).names:
            write_parquet_atomic(path, pq.read_table(path).drop_columns(["value"]))
            touched.append(path)
    return touched


def _survivors(con: duckdb.DuckDBPyConnection, cfg: PersonaConfig, rows_files: list[str], target: Path) -> str | None:
    """The survivorship winners (one value per persona and attribute, with its record) computed in DuckDB and
    written to `target` sorted by persona_id (None when no source maps a profile attribute): neither they nor the
    candidate values of every record (tens of millions at a million customers) pass through pandas."""
    def rows_of(name: str) -> str | None:
        files = [p for p in rows_files if Path(p).parent.name == name]
        return f"read_parquet({files!r}, union_by_name=true)" if files else None

    sql = aggregates.candidates_sql(cfg, rows_of)
    order = survive_order(cfg.profile.attributes, list(cfg.sources))
    if sql is None or order.empty:
        return None
    con.register("trust", order)
    try:
        _copy(con, f"SELECT * FROM ({survive_sql(sql, 'trust')}) ORDER BY persona_id", str(target))
    finally:
        con.unregister("trust")
    return str(target)


def _copy(con: duckdb.DuckDBPyConnection, sql: str, target: str) -> None:
    """The result of `sql` as the Parquet file `target` (DuckDB writes it; nothing passes through pandas)."""
    con.execute("SET preserve_insertion_order = true")  # an ORDER BY in `sql` holds in the file
    try:
        con.execute(f"COPY ({sql}) TO '{target}' (FORMAT parquet, COMPRESSION zstd)")
    finally:
        con.execute("SET preserve_insertion_order = false")


def write_hashed(identity_map: Path, target: Path) -> None:
    """identity_hashed.parquet (`target`) from an identity map file: its linked rows, in its order, without the raw
    values, with the pandas dtypes the map's columns have; a batch at a time, written aside and renamed in."""
    columns = ["id_type", "value_hash", "persona_id"]
    source = pq.read_schema(identity_map)
    like = pa.Table.from_pandas(source.empty_table().select(columns).to_pandas(), preserve_index=False)
    schema = pa.schema([source.field(c) for c in columns], metadata=like.schema.metadata)
    write_parquet_parts([identity_map], target, schema, keep=lambda t: t.filter(pc.is_valid(t["persona_id"])))


def _truth_pairs(ws: Workspace, cfg: PersonaConfig, manifest: dict) -> list[tuple[str, str, str, str]]:
    """(staged rows file, its truth file, source, file_id) of every staged file the generator wrote a truth for."""
    truth_root = ws.root / cfg.truth.path / "records"
    pairs = []
    for name in cfg.sources:
        for rel, entry in manifest.get(name, {}).items():
            truth = truth_root / f"{rel}.parquet"
            if truth.exists():
                pairs.append((str(ws.staging / name / f"{entry['file_id']}.rows.parquet"), str(truth), name,
                              entry["file_id"]))
    return pairs


def _evaluate(pairs: list[tuple[str, str, str, str]], con: duckdb.DuckDBPyConnection) -> dict:
    """Pairwise precision / recall against the generator's ground truth, over distinct identifier mentions.

    A unit is one (source, identifier combination, true person): 40 page views from one logged-in device are one
    mention, so the score weighs what the resolver decides rather than how chatty a channel is.
    """
    selects = " UNION ALL ".join(
        f"SELECT DISTINCT r.mention_key, t.person_id FROM read_parquet('{rows}') r "
        f"JOIN read_parquet('{truth}') t ON t.row = r.row" for rows, truth, _, _ in pairs)
    units = con.execute(
        f"SELECT u.person_id, m.persona_id FROM (SELECT DISTINCT * FROM ({selects})) u LEFT JOIN mp m USING (mention_key)"
    ).df()
    return pairwise_scores(units["person_id"], units["persona_id"])
