"""The right to erasure (PIPL art. 47, GDPR art. 17): remove one person from everything persona keeps, and keep them
out of every later run although the raw source files still hold them.

`forget(ws, identifier=("phone", "138 0013 8001"))` or `forget(ws, persona_id="P0000000042")`. A raw identifier is
normalised and salted-hashed as integration does, then looked up in the published identity map; a retired persona id
follows its alias. The person is every persona id that is theirs (the live one and the retired ones aliasing it)
and every identifier linked to them.

Removed (each step idempotent, so an interrupted erasure is completed by running it again; the identity maps, where
the person is looked up, go last):
- staging: their mentions, and the accepted rows of those mentions, in every staged file; quarantined rows whose raw
  values hold one of their identifiers (in any field and any spelling, or their phone or e-mail inside a text);
  state/ingested.json counts the removed rows as `erased` (read = accepted + quarantined + erased);
- every run folder under integrated/runs: transactions, events, interactions, profiles, lineage, identity_hashed,
  their rows of quarantine.parquet, aliases and identity_map; run folders a crash left half-built are deleted;
- feature snapshots (features/offline/*.parquet), every dated tag snapshot (through `rules.history`), the online
  store (`features.online_reader.delete_personas`) and the event log (`features.eventlog.forget`).

Kept, and why:
- state/forgotten.parquet (id_type, value_hash, erasure_id): the salted hashes of their identifiers. Staging drops
  every source row carrying one (counted as `erased`), which is what keeps them out of later runs; the file holds no
  raw value and no persona id.
- state/erasures.jsonl: one line when an erasure starts and one when it is done (erasure id, time, the identifier
  type it was asked by, counts of what was removed): no persona id, hash or value, since each is an identifier.
- audit logs: an entry only about the person (a merge of two of their ids) is dropped; an entry that also names
  another persona (a split) stays, with the person's id and identifier hash blanked, so that persona's history reads.
- raw/ and external/ source files: the owner's inputs, outside persona's reach; their rows never come back in.
- run reports (report.json, the snapshots' metadata): counts only, stale by one person until the next run.
- MLflow: models trained on data that included the person stay (they hold no identifier; retraining is a policy
  decision). Their input examples are five unlabelled feature rows without persona ids (training/report.py).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.integration import run as integration
from features.integration import standardise as std
from features import eventlog, online_reader
from features import store as feature_store
from features.integration.ingest import carries
from persona import workspace
from persona.config import PersonaConfig
from persona.workspace import Workspace, read_json, write_json_atomic, write_parquet_atomic, write_text_atomic
from rules import history

ERASURES = "erasures.jsonl"  # state/: the erasure log, without personal data
ACTIVITY = ("transactions", "events", "interactions")


@dataclass(frozen=True)
class Person:
    """Whom an erasure removes: their persona ids (live one first) and identifiers, hashed and raw."""

    persona_ids: list[str]
    hashes: dict[str, set[str]]  # id_type -> salted hashes
    values: list[str]  # normalised values of the identity map, and the spelling the erasure was asked with

    @property
    def found(self) -> bool:
        return bool(self.persona_ids)


def find_person(ws: Workspace, cfg: PersonaConfig, salt: str, *, identifier: tuple[str, str] | None = None,
                persona_id: str | None = None) -> Person:
    """Resolve an erasure request to a person in the published identity map (see the module docstring).

    When the current map no longer holds them (an erasure interrupted, then an integrate run), the older run
    folders are searched, newest first: their maps go last in an erasure, so what is left of the person is found.
    An identifier no persona holds still makes a person (no persona id, that one hash): its rows are removed from
    staging and quarantine and kept out of later runs.
    """
    if (identifier is None) == (persona_id is None):
        raise ValueError("forget needs exactly one of identifier=(TYPE, VALUE) or persona_id=ID")
    current = ws.require_current(integration.STAGE, "run `persona integrate` first")
    integration.check_salt(pd.read_parquet(current / "identity_map.parquet"), salt)
    asked: tuple[str, str] | None = None
    values: list[str] = []
    raw = ""
    if identifier is not None:
        id_type, raw = identifier
        spec = cfg.identity.identifiers.get(id_type)
        if spec is None:
            raise ValueError(f"unknown identifier type {id_type!r} (persona.yaml identity.identifiers: "
                             f"{', '.join(cfg.identity.identifiers)})")
        norm = std.normalise_identifiers(pd.Series([raw], dtype="string"), spec.normalise, cfg.phone_region)
        if pd.isna(norm.iloc[0]):
            raise ValueError(f"{id_type} {raw!r} is not a valid {spec.normalise} value (nothing to look up)")
        asked = (id_type, std.salted_hash(norm, salt).iloc[0])
        values += [raw, norm.iloc[0]]
    for folder in reversed(_run_folders(ws)):  # the current run first
        if not (folder / "identity_map.parquet").exists():
            continue
        ids = pd.read_parquet(folder / "identity_map.parquet")
        aliases = pd.read_parquet(folder / "aliases.parquet") if (folder / "aliases.parquet").exists() else \
            pd.DataFrame({"persona_id": pd.Series(dtype="string"), "alias_of": pd.Series(dtype="string")})
        if asked is not None:
            row = ids[(ids["id_type"] == asked[0]) & (ids["value_hash"] == asked[1])]
            if row.empty:
                continue
            if pd.isna(row["persona_id"].iloc[0]):
                raise ValueError(f"{asked[0]} {raw!r} belongs to no single persona (status "
                                 f"{row['status'].iloc[0]}: shared, blocked or not linking); erase by persona id")
            live = str(row["persona_id"].iloc[0])
        else:
            target = dict(zip(aliases["persona_id"].astype(str), aliases["alias_of"].astype(str)))
            live = target.get(str(persona_id), str(persona_id))
            if not (ids["persona_id"] == live).any():
                continue
        retired = aliases.loc[aliases["alias_of"] == live, "persona_id"].astype(str).tolist()
        mine = ids[ids["persona_id"] == live]
        hashes: dict[str, set[str]] = {}
        for t, h in [*zip(mine["id_type"].astype(str), mine["value_hash"].astype(str)), *([asked] if asked else [])]:
            hashes.setdefault(t, set()).add(h)
        if "value" in mine.columns:
            values += mine["value"].dropna().astype(str).tolist()
        return Person([live, *sorted(set(retired) - {live})], hashes, list(dict.fromkeys(values)))
    if asked is None:
        raise LookupError(f"no persona {persona_id!r} (nor a retired id) in the identity maps of "
                          f"{ws.stage_dir(integration.STAGE) / 'runs'}")
    return Person([], {asked[0]: {asked[1]}}, values)


def forget(ws: Workspace, *, identifier: tuple[str, str] | None = None, persona_id: str | None = None,
           now: pd.Timestamp | None = None) -> dict:
    """Erase one person from the workspace and keep them out of later runs; returns what was removed (counts only).

    Exactly one of `identifier` (TYPE, VALUE), e.g. ("phone", "138 0013 8001"), or `persona_id`.
    """
    cfg = ws.config()
    salt = ws.salt()
    person = find_person(ws, cfg, salt, identifier=identifier, persona_id=persona_id)
    now = now or pd.Timestamp.now(tz="UTC")
    erasure_id = uuid.uuid4().hex[:16]
    record = {"erasure_id": erasure_id, "by": identifier[0] if identifier else "persona_id",
              "personas": len(person.persona_ids), "identifiers": sum(len(h) for h in person.hashes.values())}
    _log(ws, {**record, "at": now.isoformat(), "status": "started"})
    _remember(ws, person, erasure_id)

    removed: dict = {}
    removed["staging"], quarantined = _forget_staged(ws, cfg, salt, person)
    removed["integrated"] = _forget_published(ws, person, quarantined)
    removed["features"] = _forget_features(ws, person)
    removed["tags"] = _forget_tags(ws, person)

    removed["online_store"] = removed["event_log"] = 0
    if person.found and (cfg.store.profile != "embedded" or feature_store.store_dir(ws).is_dir()):
        removed["online_store"] = int(online_reader.delete_personas(feature_store.open_store(ws, cfg),
                                                                    person.persona_ids))
    if person.found:
        removed["event_log"] = int(eventlog.forget(ws, cfg, person.persona_ids))

    removed["identity"] = _forget_identity(ws, person)  # last: until here a re-run finds the person again
    done = {**record, "found": person.found, "removed": removed}
    _log(ws, {**done, "at": pd.Timestamp.now(tz="UTC").isoformat(), "status": "done"})
    return done


# --- the suppression list and the log ---------------------------------------------------------------------------
def _remember(ws: Workspace, person: Person, erasure_id: str) -> None:
    """Add the person's identifier hashes to state/forgotten.parquet (staging drops every row carrying one)."""
    path = ws.state / integration.FORGOTTEN
    new = pd.DataFrame([(t, h, erasure_id) for t, hs in sorted(person.hashes.items()) for h in sorted(hs)],
                       columns=["id_type", "value_hash", "erasure_id"])
    table = pd.concat([pd.read_parquet(path), new], ignore_index=True) if path.exists() else new
    write_parquet_atomic(path, table.drop_duplicates(["id_type", "value_hash"]).astype("string")
                         .reset_index(drop=True))


def _log(ws: Workspace, entry: Mapping) -> None:
    path = ws.state / ERASURES
    before = path.read_text(encoding="utf-8") if path.exists() else ""
    write_text_atomic(path, before + json.dumps(entry, ensure_ascii=False, default=str) + "\n")


# --- staging ----------------------------------------------------------------------------------------------------
def _forget_staged(ws: Workspace, cfg: PersonaConfig, salt: str,
                   person: Person) -> tuple[dict, set[tuple[str, str, int]]]:
    """Their mentions and rows in every staged file, their quarantined rows; the manifest's counts follow.

    Returns the counts and the (source, file_id, row) of the quarantined rows removed (for quarantine.parquet).
    """
    counts = {"rows": 0, "mentions": 0, "quarantined": 0}
    for mentions_path in sorted(ws.staging.glob("*/*.mentions.parquet")) if ws.staging.is_dir() else []:
        table = pq.read_table(mentions_path)
        if "value_hash" not in table.column_names:  # staged by an earlier version, migrated by the next integrate
            hashed = std.salted_hash(table.column("value").to_pandas(), salt)
            table = table.append_column("value_hash", pa.array(hashed.astype(object), type=pa.string()))
        hit = _pairs_mask(table, person.hashes)
        if not hit.any():
            continue
        keys = pa.array(np.unique(table.column("mention_key").to_numpy()[hit]))
        rows_path = mentions_path.with_name(mentions_path.name.replace(".mentions.", ".rows."))
        if rows_path.exists():
            counts["rows"] += _drop_rows(rows_path, ["mention_key"], lambda t: _in(t, "mention_key", keys))
        counts["mentions"] += _drop_rows(mentions_path, ["mention_key"], lambda t: _in(t, "mention_key", keys))

    removed: set[tuple[str, str, int]] = set()
    needles = _needles(person.values)
    for q_path in sorted(ws.quarantine.glob("*/*.parquet")) if ws.quarantine.is_dir() else []:
        spec = cfg.sources.get(q_path.parent.name)
        q = pq.read_table(q_path).to_pandas()
        if q.empty:
            continue
        hit = carries(q["raw"], cfg, salt, person.hashes, delimiter=spec.csv.delimiter if spec else ",")
        text = q["raw"].astype("string").str.casefold()
        for needle in needles:
            hit |= text.str.contains(needle, regex=False).to_numpy(dtype=bool, na_value=False)
        if hit.any():
            removed |= set(zip(q.loc[hit, "source"].astype(str), q.loc[hit, "file_id"].astype(str),
                               q.loc[hit, "row"].astype(int)))
            write_parquet_atomic(q_path, pa.Table.from_pandas(q.loc[~hit].reset_index(drop=True),
                                                              schema=pq.read_schema(q_path)))
            counts["quarantined"] += int(hit.sum())
    _recount(ws)
    return counts, removed


def _needles(values: list[str]) -> list[str]:
    """Texts that name the person wherever they sit in a raw value: e-mails, and phones in E.164 and national form
    (an id such as 'M1' is left to the field-by-field match: as a substring it would hit 'M10')."""
    out = set()
    for v in values:
        if "@" in v:
            out.add(v.strip().casefold())
        elif v.startswith("+"):
            out.add(v)
            try:
                out.add(str(phonenumbers.parse(v).national_number))
            except phonenumbers.NumberParseException:
                pass
    return sorted(n for n in out if len(n) >= 6)


def _recount(ws: Workspace) -> None:
    """Counts of state/ingested.json from the staged files themselves: erased = read - accepted - quarantined.

    Derived rather than decremented, so an erasure interrupted between a file and the manifest is healed by the next.
    """
    path = ws.state / integration.MANIFEST
    manifest: dict = read_json(path, {}) or {}  # type: ignore[assignment]
    changed = False
    for name, files in manifest.items():
        for entry in files.values():
            rows = ws.staging / name / f"{entry['file_id']}.rows.parquet"
            quarantine = ws.quarantine / name / f"{entry['file_id']}.parquet"
            if not rows.exists() or not quarantine.exists():
                continue
            accepted = pq.ParquetFile(rows).metadata.num_rows
            quarantined = pq.ParquetFile(quarantine).metadata.num_rows
            if (accepted, quarantined) == (entry["accepted"], entry["quarantined"]):
                continue
            if quarantined != entry["quarantined"]:
                reasons = pq.read_table(quarantine, columns=["reason"]).column(0).to_pandas()
                entry["reasons"] = {k: int(v) for k, v in reasons.str.split(":").str[0].value_counts().items()}
            entry.update(accepted=accepted, quarantined=quarantined, erased=entry["read"] - accepted - quarantined)
            changed = True
    if changed:
        write_json_atomic(path, manifest)


# --- published runs, features, tags -----------------------------------------------------------------------------
def _run_folders(ws: Workspace) -> list[Path]:
    """Every published run folder, the current one last."""
    runs = ws.stage_dir(integration.STAGE) / "runs"
    current = ws.current(integration.STAGE)
    older = [f for f in sorted(runs.iterdir()) if f.is_dir() and not f.name.startswith(".") and f != current] \
        if runs.is_dir() else []
    return older + ([current] if current else [])


def _remove_half_built(ws: Workspace) -> None:
    """Delete what killed integrate runs left (half-built or never linked run folders): they may hold anyone."""
    clean_stage = getattr(workspace, "clean_stage", None)  # being added to persona.workspace beside this module
    if clean_stage is not None:
        clean_stage(ws, integration.STAGE)
        return
    runs = ws.stage_dir(integration.STAGE) / "runs"
    for folder in runs.iterdir() if runs.is_dir() else []:
        if folder.is_dir() and folder.name.startswith("."):
            shutil.rmtree(folder, ignore_errors=True)


def _forget_published(ws: Workspace, person: Person, quarantined: set[tuple[str, str, int]]) -> dict:
    """Activity, profiles, lineage, identity_hashed, quarantine and audit rows of every run folder."""
    ids = pa.array(person.persona_ids, type=pa.string())
    counts: dict[str, int] = {}

    def add(name: str, n: int) -> None:
        counts[name] = counts.get(name, 0) + n

    q_keys = pa.array(sorted(f"{s}/{f}#{r}" for s, f, r in quarantined), type=pa.string())
    _remove_half_built(ws)
    for folder in _run_folders(ws):
        for name in (*ACTIVITY, "profiles", "lineage"):
            path = folder / f"{name}.parquet"
            if path.exists():
                add(name, _drop_rows(path, ["persona_id"], lambda t: _in(t, "persona_id", ids)))
        path = folder / "identity_hashed.parquet"
        if path.exists():
            add("identity_hashed", _drop_rows(path, ["id_type", "value_hash", "persona_id"],
                                              lambda t: _in(t, "persona_id", ids) | _pairs_mask(t, person.hashes)))
        path = folder / "quarantine.parquet"
        if path.exists() and len(q_keys):
            add("quarantine", _drop_rows(path, ["source", "file_id", "row"], lambda t: _in_quarantined(t, q_keys)))
        path = folder / "audit_log.parquet"
        if path.exists():
            add("audit_log", _scrub_audit(path, person))
    return counts


def _scrub_audit(path: Path, person: Person) -> int:
    """Blank the person's ids and identifier hashes; drop entries left naming nobody. Returns entries touched."""
    audit = pd.read_parquet(path)
    if audit.empty:
        return 0
    ids = set(person.persona_ids)
    mine_hash = _pairs_mask(pa.Table.from_pandas(audit[["id_type", "value_hash"]], preserve_index=False),
                            person.hashes)
    mine_a = audit["persona_id"].isin(ids).to_numpy(dtype=bool)
    mine_b = audit["other_persona_id"].isin(ids).to_numpy(dtype=bool)
    touched = mine_hash | mine_a | mine_b
    if not touched.any():
        return 0
    audit = audit.copy()
    audit.loc[mine_a, "persona_id"] = pd.NA
    audit.loc[mine_b, "other_persona_id"] = pd.NA
    audit.loc[mine_hash, "value_hash"] = pd.NA
    keep = ~(audit["persona_id"].isna() & audit["other_persona_id"].isna()).to_numpy(dtype=bool)
    write_parquet_atomic(path, pa.Table.from_pandas(audit[keep].reset_index(drop=True),
                                                    schema=pq.read_schema(path), preserve_index=False))
    return int(touched.sum())


def _forget_features(ws: Workspace, person: Person) -> int:
    """Their rows of every offline feature snapshot file."""
    ids = pa.array(person.persona_ids, type=pa.string())
    folder = feature_store.offline_dir(ws)
    if not person.found or not folder.is_dir():
        return 0
    return sum(_drop_rows(p, ["persona_id"], lambda t: _in(t, "persona_id", ids))
               for p in sorted(folder.glob("*.parquet")))


def _forget_tags(ws: Workspace, person: Person) -> int:
    """Their rows of every dated tag snapshot, each rewritten through `rules.history`; then any other copy (a
    replaced version the version store keeps until the next write) filtered in place."""
    if not person.found:
        return 0
    ids = set(person.persona_ids)
    removed = 0
    for date in history.list_dates(ws):
        if not history.read(ws, date, columns=["persona_id"])["persona_id"].isin(ids).any():
            continue
        frame = history.read(ws, date)
        mine = frame["persona_id"].isin(ids).to_numpy(dtype=bool)
        kept = frame[~mine].reset_index(drop=True)
        meta = dict(history.read_meta(ws, date))
        if "personas" in meta:
            meta["personas"] = int(len(kept))
        if isinstance(meta.get("coverage"), dict):
            meta["coverage"] = history.coverage(kept, list(meta["coverage"]))
        history.write(ws, date, history.to_arrow(kept), meta)
        removed += int(mine.sum())
    arrow_ids = pa.array(sorted(ids), type=pa.string())
    # `history.versions`: the version store of the layout with `date=` links; absent from the plain-folder layout
    roots = [history.root(ws)] + ([history.versions(ws)] if hasattr(history, "versions") else [])
    for base in roots:
        for folder, _, files in os.walk(base):  # symlinks not followed: each real file once
            for name in files:
                if name.endswith(".parquet"):
                    removed += _drop_rows(Path(folder) / name, ["persona_id"],
                                          lambda t: _in(t, "persona_id", arrow_ids))
    return removed


def _forget_identity(ws: Workspace, person: Person) -> dict:
    """Aliases and identity maps of every run folder, the current identity map last."""
    ids = pa.array(person.persona_ids, type=pa.string())
    counts = {"aliases": 0, "identity_map": 0}
    for folder in _run_folders(ws):
        path = folder / "aliases.parquet"
        if path.exists():
            counts["aliases"] += _drop_rows(path, ["persona_id", "alias_of"],
                                            lambda t: _in(t, "persona_id", ids) | _in(t, "alias_of", ids))
    for folder in _run_folders(ws):
        path = folder / "identity_map.parquet"
        if path.exists():  # by hash, not by value: an older map has no values, and a value is only one type's
            counts["identity_map"] += _drop_rows(path, ["id_type", "value_hash", "persona_id"],
                                                 lambda t: _in(t, "persona_id", ids) | _pairs_mask(t, person.hashes))
    return counts


# --- row removal ------------------------------------------------------------------------------------------------
def _drop_rows(path: Path, columns: list[str], drop: Callable[[pa.Table], np.ndarray]) -> int:
    """Remove the rows `drop` marks (it sees `columns` only); returns how many. Nothing is written when none is.

    Written like `write_parquet_atomic` (a temporary file renamed over the target) but streamed one row group at a
    time, with the file's own schema: feature snapshots and activity run to gigabytes, and keep their row groups.
    """
    source = pq.ParquetFile(path)
    if not set(columns) <= set(source.schema_arrow.names):
        return 0
    mask = np.asarray(drop(source.read(columns=columns)), dtype=bool)
    n = int(mask.sum())
    if not n:
        return 0
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with pq.ParquetWriter(tmp, source.schema_arrow, compression="zstd") as writer:
            start = 0
            for i in range(source.num_row_groups):
                group = source.read_row_group(i)
                keep = ~mask[start:start + group.num_rows]
                start += group.num_rows
                if keep.any():
                    writer.write_table(group.filter(pa.array(keep)))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def _column(table: pa.Table, name: str) -> pa.ChunkedArray:
    col = table.column(name)
    return col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col


def _in(table: pa.Table, name: str, values: pa.Array) -> np.ndarray:
    col = _column(table, name)
    return pc.is_in(col.cast(values.type), value_set=values).to_numpy(zero_copy_only=False).astype(bool)


def _pairs_mask(table: pa.Table, hashes: Mapping[str, set[str]]) -> np.ndarray:
    """Rows whose (id_type, value_hash) is one of `hashes`: a hash is matched within its type only."""
    hit = np.zeros(table.num_rows, dtype=bool)
    id_type = _column(table, "id_type").cast(pa.string())
    value_hash = _column(table, "value_hash").cast(pa.string())
    for t, hs in hashes.items():
        same = pc.and_(pc.equal(id_type, t), pc.is_in(value_hash, value_set=pa.array(sorted(hs), type=pa.string())))
        hit |= pc.fill_null(same, False).to_numpy(zero_copy_only=False).astype(bool)
    return hit


def _in_quarantined(table: pa.Table, keys: pa.Array) -> np.ndarray:
    key = pc.binary_join_element_wise(_column(table, "source").cast(pa.string()), pa.scalar("/"),
                                      _column(table, "file_id").cast(pa.string()), pa.scalar("#"),
                                      _column(table, "row").cast(pa.string()), "")
    return pc.is_in(key, value_set=keys).to_numpy(zero_copy_only=False).astype(bool)
