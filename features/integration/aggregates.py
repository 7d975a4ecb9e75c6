"""The row-scale steps of building profiles, as SQL that DuckDB and Spark both run: per persona and channel the
first and last activity and the record count, when each identifier was last seen, and the candidate values
survivorship picks from (`survivorship.survive_sql`). Each reads every staged row once; what comes out is sized by
personas and identifiers, not by rows.

The queries name their inputs as tables: `rows` (every staged row: source, mention_key, ts), `rows_of(source)` (a
source's staged rows, all columns), `mp` (mention_key -> persona_id), `mentions` (mention_key, id_type,
value_hash), `src` (source -> channel). The embedded engine passes `read_parquet(...)` expressions, the Spark
engine the names of temporary views over the same files.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import pyarrow as pa

from features.integration.ingest import ARROW_STR, ARROW_STRINGS
from persona.config import PROFILE_ATTRIBUTES, PersonaConfig


def compact(table: pa.Table) -> pd.DataFrame:
    """A query's result as pandas with its text in Arrow-backed strings, as both engines hand them over: one buffer
    per column rather than a Python object per value (winners and activity are tens of millions of values at a
    million customers)."""
    return table.to_pandas(types_mapper=ARROW_STRINGS.get)


def arrow_strings(values: pd.Series) -> pa.Array:
    """A text column as one contiguous Arrow string array (no copy when it is Arrow-backed already)."""
    arr = pa.array(values.astype(ARROW_STR).array)
    return (arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr).cast(pa.string())


def compact_strings(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with its object and string columns as Arrow-backed strings (lineage rows from pandas steps)."""
    text = [c for c in frame.columns if frame[c].dtype == object or isinstance(frame[c].dtype, pd.StringDtype)]
    return frame.astype({c: ARROW_STR for c in text}) if text else frame


def activity_sql(rows: str, mp: str = "mp", src: str = "src") -> str:
    return f"""SELECT m.persona_id, s.channel, min(r.ts) AS first_ts, max(r.ts) AS last_ts, count(*) AS n
               FROM {rows} r JOIN {mp} m ON m.mention_key = r.mention_key JOIN {src} s ON s.source = r.source
               GROUP BY m.persona_id, s.channel"""


def node_seen_sql(mentions: str, rows: str) -> str:
    return f"""SELECT n.id_type, n.value_hash, max(s.last_seen) AS last_seen
               FROM {mentions} n JOIN (SELECT mention_key, max(ts) AS last_seen FROM {rows} GROUP BY mention_key) s
               ON s.mention_key = n.mention_key GROUP BY n.id_type, n.value_hash"""


def candidates_sql(cfg: PersonaConfig, rows_of: Callable[[str], str | None], mp: str = "mp") -> str | None:
    """Profile-attribute values, one per (record, attribute), nulls dropped (survivorship's CANDIDATE_COLUMNS);
    None when no source maps a profile attribute. `rows_of(source)` is None for a source with no staged file."""
    parts = []
    for name, spec in cfg.sources.items():
        attrs = [a for a in spec.fields if a in PROFILE_ATTRIBUTES]
        table = rows_of(name) if attrs else None
        if table is None:
            continue
        cols = ", ".join(f"CAST(r.{a} AS STRING) AS {a}" for a in attrs)
        parts.append(
            f"""SELECT persona_id, attribute, value, source, record, ts FROM (
                    SELECT m.persona_id, r.source,
                           r.source || '/' || r.file_id || '#' || CAST(r.row AS STRING) AS record, r.ts, {cols}
                    FROM {table} r JOIN {mp} m ON m.mention_key = r.mention_key
                ) UNPIVOT (value FOR attribute IN ({", ".join(attrs)}))""")
    return " UNION ALL ".join(parts) if parts else None
