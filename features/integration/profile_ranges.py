"""Profiles, their lineage and enrichment built one range of personas at a time, on either engine.

What survivorship and enrichment read is sized by personas and identifiers: the survivorship winners, the activity
per persona and channel, and every linked identifier with its raw value and when it was last seen. Held whole, that
is most of `persona integrate`'s memory at millions of customers (17 GB at 3M on one machine; the Spark driver's
share on a cluster). So each engine writes those inputs as Parquet sorted by persona_id (a file, or a folder of
parts from Spark), the personas are cut into ranges of persona_id of PERSONAS_PER_RANGE each (`range_starts_sql`,
which both engines run), and `build_range` turns one range into profile and lineage parts with the same
`survivorship.build_profiles` and `enrich.enrich` as always: the embedded engine one range after the other, Spark
one task per range. `assemble` then writes each published file from its parts in range order, a part at a time.

Every profile attribute and enrichment match is a function of the persona's own rows, so ranges change nothing but
the lineage's row order (range by range, each in the one-pass order); published profiles stay sorted by persona_id.
External sources are read and validated once by the driver (their quarantine is published), and their accepted rows
written once for the ranges to read.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from features.integration import aggregates
from features.integration import enrich as enrich_mod
from features.integration.survivorship import CANDIDATE_COLUMNS, build_profiles
from persona.config import PersonaConfig
from persona.workspace import write_parquet_parts

PERSONAS_PER_RANGE = 100_000  # ~0.5 GB for one range's frames on generated data; each range costs ~1 s more
IDENTIFIER_COLUMNS = ["persona_id", "id_type", "value_hash", "value", "reachable", "last_seen"]
ACTIVITY_COLUMNS = ["persona_id", "channel", "first_ts", "last_ts", "n"]
_TIMES = {"identifiers": ["last_seen"], "activity": ["first_ts", "last_ts"], "winners": ["ts"]}
RESULT_SCHEMA = "range long, personas long, enrichment string"  # what a range reports (Spark DDL)


def identifiers_sql(identity_map: str, node_seen: str) -> str:
    """Every linked identifier of the identity map (id_type, value, value_hash, persona_id, status, reachable) with
    when it was last seen (`aggregates.node_seen_sql`), sorted by persona_id: SQL both engines run."""
    return f"""SELECT i.persona_id, i.id_type, i.value_hash, i.value, i.reachable, s.last_seen
               FROM {identity_map} i LEFT JOIN {node_seen} s ON s.id_type = i.id_type AND s.value_hash = i.value_hash
               WHERE i.persona_id IS NOT NULL ORDER BY i.persona_id, i.id_type, i.value_hash"""


def range_starts_sql(identifiers: str, per_range: int) -> str:
    """The first persona_id of each range of `per_range` personas, in order (none when no persona is linked)."""
    return f"""SELECT persona_id FROM (
                   SELECT persona_id, row_number() OVER (ORDER BY persona_id) AS i
                   FROM (SELECT DISTINCT persona_id FROM {identifiers}) d) r
               WHERE (i - 1) % {int(per_range)} = 0 ORDER BY persona_id"""


def ranges(starts: list[str]) -> list[tuple[int, str | None, str | None]]:
    """(index, lowest persona_id, first persona_id of the next range) for each range; one open range when none."""
    if not starts:
        return [(0, None, None)]
    bounds = [None, *starts[1:], None]
    return [(i, bounds[i], bounds[i + 1]) for i in range(len(starts))]


@dataclass(frozen=True)
class External:
    """An enrichment source validated once by the driver: its accepted rows in `rows` (a Parquet file), its
    counts for the report."""

    rows: str
    read: int
    accepted: int
    quarantined: int


def write_externals(root: Path, cfg: PersonaConfig, folder: Path) -> tuple[dict[str, External], list[pd.DataFrame]]:
    """Read and validate every enrichment source (`enrich.read_external`); returns the sources with their accepted
    rows written under `folder`, and each one's quarantined rows (source, file_id, row, reason) to publish."""
    folder.mkdir(parents=True, exist_ok=True)
    externals, quarantined = {}, []
    for name, spec in cfg.enrichment.items():
        table = enrich_mod.read_external(root / spec.path, spec, timezone=cfg.timezone)
        path = folder / f"{uuid.uuid4().hex[:8]}.parquet"
        table.rows.to_parquet(path, index=False)
        externals[name] = External(str(path), table.read, len(table.rows), len(table.quarantined))
        quarantined.append(table.quarantined.assign(source=f"enrichment:{name}", file_id=spec.path))
    return externals, quarantined


def read_range(path: str | None, lo: str | None, hi: str | None, columns: list[str] | None = None) -> pa.Table | None:
    """The rows of a Parquet file or folder of parts with lo <= persona_id < hi (bounds None: open). Sorted by
    persona_id, other ranges' row groups are skipped by their statistics."""
    if path is None:
        return None
    where = None
    if lo is not None:
        where = pc.field("persona_id") >= lo
    if hi is not None:
        upper = pc.field("persona_id") < hi
        where = upper if where is None else where & upper
    return ds.dataset(path, format="parquet").to_table(columns=columns, filter=where)


def _frame(table: pa.Table, times: list[str]) -> pd.DataFrame:
    """A range's input as both engines hand it over: Arrow-backed strings, timestamps naive UTC nanoseconds
    (Spark writes them as nanosecond longs)."""
    frame = aggregates.compact(table)
    for col in times:
        if col in frame.columns and pd.api.types.is_integer_dtype(frame[col]):
            frame[col] = pd.to_datetime(frame[col], unit="ns")
    return frame


def build_range(item: tuple[int, str | None, str | None], inputs: Mapping[str, str | None], cfg: PersonaConfig,
                externals: Mapping[str, External], out: str) -> pd.DataFrame:
    """One range's profiles and lineage (`survivorship.build_profiles`, then each `enrich.enrich` in persona.yaml's
    order, enrichment lineage last and kept over an internal one for the same attribute), written as
    out/profiles/<index>.parquet and out/lineage/<index>.parquet; returns one row of RESULT_SCHEMA with the
    personas built and, per enrichment source, the personas matched and withheld for want of consent."""
    index, lo, hi = item
    identifiers = _frame(read_range(inputs["identifiers"], lo, hi, IDENTIFIER_COLUMNS), _TIMES["identifiers"])
    winners = read_range(inputs.get("winners"), lo, hi, CANDIDATE_COLUMNS)
    winners = pd.DataFrame(columns=CANDIDATE_COLUMNS) if winners is None or not winners.num_rows else \
        _frame(winners, _TIMES["winners"])
    # The one-pass order of the lineage (winners in rule order, then persona): the SQL sorted them by persona.
    position = {a: i for i, a in enumerate(cfg.profile.attributes)}
    winners = (winners.assign(_p=winners["attribute"].map(position)).sort_values(["_p", "persona_id"], kind="stable")
               .drop(columns="_p").reset_index(drop=True))
    activity = read_range(inputs.get("activity"), lo, hi, ACTIVITY_COLUMNS)
    activity = pd.DataFrame(columns=ACTIVITY_COLUMNS) if activity is None else _frame(activity, _TIMES["activity"])
    identifiers["normalise"] = identifiers["id_type"].map({t: s.normalise for t, s in cfg.identity.identifiers.items()})
    profiles, lineage = build_profiles(identifiers["persona_id"].drop_duplicates(), winners, activity, identifiers,
                                       cfg)
    del winners, activity
    lineage_parts = [aggregates.compact_strings(lineage)]
    report = {}
    for name, spec in cfg.enrichment.items():
        source = externals[name]
        table = enrich_mod.ExternalTable(pd.read_parquet(source.rows), pd.DataFrame(columns=["row", "reason"]),
                                         source.read)
        profiles, lin, rep = enrich_mod.enrich(name, spec, table, profiles, identifiers)
        lineage_parts.append(aggregates.compact_strings(lin))
        report[name] = {"matched": rep["matched"], "withheld_no_consent": rep["withheld_no_consent"]}
    lineage = pd.concat(lineage_parts, ignore_index=True).drop_duplicates(["persona_id", "attribute"], keep="last")
    for kind, frame in (("profiles", profiles), ("lineage", lineage)):
        (Path(out) / kind).mkdir(parents=True, exist_ok=True)
        frame.to_parquet(Path(out) / kind / f"{index:06d}.parquet", index=False)
    return pd.DataFrame({"range": [index], "personas": [len(profiles)], "enrichment": [json.dumps(report)]})


def enrichment_report(cfg: PersonaConfig, externals: Mapping[str, External], results: list[Mapping]) -> dict:
    """Each enrichment source's report over every range (what `enrich.enrich` reports for all personas at once)."""
    personas = sum(int(r["personas"]) for r in results)
    out = {}
    for name, spec in cfg.enrichment.items():
        parts = [json.loads(r["enrichment"])[name] for r in results]
        matched = sum(p["matched"] for p in parts)
        source = externals[name]
        out[name] = {"provider": spec.provider, "read": source.read, "accepted": source.accepted,
                     "quarantined": source.quarantined, "matched": matched,
                     "withheld_no_consent": sum(p["withheld_no_consent"] for p in parts),
                     "match_rate": round(matched / personas, 4) if personas else 0.0}
    return out


def assemble(parts: list[Path], target: Path) -> int:
    """One Parquet file `target` from `parts` (written by `build_range`, in range order), a batch at a time; returns
    its rows. A column that is all null in a range (an enrichment field nobody there matched, birth dates nobody
    there gave) has whatever type pandas guessed for it there: it takes its type, and its pandas dtype, from the
    first range where it has values (`_schema`)."""
    return write_parquet_parts(parts, target, _schema(parts))


def _schema(parts: list[Path]) -> pa.Schema:
    """The parts' columns (the first part's order), each with the Arrow type and pandas metadata of the first part
    where it holds a value (null counts from the footers), nullable."""
    files = [pq.ParquetFile(p) for p in parts]
    names = files[0].schema_arrow.names
    chosen: dict[str, tuple[pa.Field, dict | None, bool]] = {}
    for f in files:
        arrow, meta = f.schema_arrow, f.metadata
        pandas = json.loads(arrow.metadata[b"pandas"]) if arrow.metadata and b"pandas" in arrow.metadata else None
        for i, name in enumerate(names):
            nulls = [meta.row_group(g).column(i).statistics for g in range(meta.num_row_groups)]
            empty = pa.types.is_null(arrow.field(name).type) or all(
                s is not None and s.has_null_count and s.null_count == meta.row_group(g).num_rows
                for g, s in enumerate(nulls))
            if name not in chosen or (chosen[name][2] and not empty):
                entry = next((c for c in pandas["columns"] if c["name"] == name), None) if pandas else None
                chosen[name] = (arrow.field(name), entry, empty)
    schema = pa.schema([chosen[n][0].with_nullable(True) for n in names])
    first = files[0].schema_arrow.metadata
    if not first or b"pandas" not in first:
        return schema
    pandas = json.loads(first[b"pandas"])
    pandas["columns"] = [chosen[c["name"]][1] or c if c["name"] in chosen else c for c in pandas["columns"]]
    return schema.with_metadata({b"pandas": json.dumps(pandas).encode()})
