"""Enrichment: join external data (third-party vendor, partner, public open data) onto profiles.

Each source is matched by its key (an unsalted SHA-256 of a phone or email, the convention vendors match on, or
the profile's city); every value carries its provenance (source and as-of date) into the lineage table. Internal
data wins a conflict unless the source says `prefer: external`. A persona who opted out of enrichment receives
nothing from a source that requires consent (third-party and partner sources by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.integration import standardise as std
from features.integration.ingest import SourceFileError
from persona.config import EnrichmentSpec


@dataclass
class ExternalTable:
    rows: pd.DataFrame  # key, as_of, fields...
    quarantined: pd.DataFrame  # row, reason
    read: int


def read_external(path: Path, spec: EnrichmentSpec, *, timezone: str) -> ExternalTable:
    """Read and validate an external source; rows without a usable key, or repeating a key, are quarantined."""
    if not path.is_file():
        raise SourceFileError(f"{path}: enrichment file not found")
    try:
        if spec.file_format == "parquet":
            frame = pq.read_table(path).to_pandas()
        else:
            frame = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True)).to_pandas()
    except Exception as exc:
        raise SourceFileError(f"{path}: cannot be read as {spec.file_format} ({exc})") from None
    needed = [spec.key.column, *spec.fields.values()] + ([spec.as_of.column] if spec.as_of.column else [])
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise SourceFileError(f"{path}: missing column(s) {missing} named in persona.yaml (found {list(frame.columns)})")

    key_raw = frame[spec.key.column]
    if spec.key.type == "city":
        key = key_raw.astype("string").str.strip().str.casefold()
        valid = key.notna() & (key != "")
    else:
        key = key_raw.astype("string").str.strip().str.lower()
        valid = key.str.fullmatch(r"[0-9a-f]{64}").fillna(False)
    if spec.as_of.column:
        as_of = std.parse_timestamps(frame[spec.as_of.column], "date", timezone)
    else:
        as_of = pd.Series(pd.Timestamp(spec.as_of.date, tz=timezone).tz_convert("UTC"), index=frame.index)
    reason = np.where(~valid.to_numpy(), f"bad_key: {spec.key.column} is not a {spec.key.type} value", None)
    reason = np.where(pd.isna(reason) & as_of.isna().to_numpy(), "bad_as_of: unparseable as-of date", reason)
    out = pd.DataFrame({"key": key, "as_of": as_of})
    for name, column in spec.fields.items():
        out[name] = frame[column]
    ok = pd.isna(reason)
    # The same key twice: the most recent as-of wins, the rest are duplicates.
    order = out[ok].sort_values(["key", "as_of"], ascending=[True, False], kind="mergesort")
    dup_idx = order.index[order["key"].duplicated()]
    reason[dup_idx] = "duplicate: key seen with a more recent as-of date"
    ok = pd.isna(reason)
    quarantined = pd.DataFrame({"row": np.flatnonzero(~ok) + 1, "reason": reason[~ok]})
    return ExternalTable(out[ok].reset_index(drop=True), quarantined, len(frame))


def match_keys(spec: EnrichmentSpec, profiles: pd.DataFrame, identifiers: pd.DataFrame) -> pd.DataFrame:
    """Candidate (persona_id, key) pairs for a source: hashed phones / emails of each persona, or its city."""
    if spec.key.type == "city":
        return profiles[["persona_id", "city"]].dropna().rename(columns={"city": "key"})
    id_kind = "phone" if spec.key.type == "phone_sha256" else "email"
    ids = identifiers[identifiers["normalise"] == id_kind]
    return pd.DataFrame({"persona_id": ids["persona_id"].to_numpy(),
                         "key": std.sha256_hex(ids["value"].reset_index(drop=True)).to_numpy()})


def enrich(name: str, spec: EnrichmentSpec, table: ExternalTable, profiles: pd.DataFrame,
           identifiers: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Join one source onto profiles; returns (profiles with its fields, lineage rows, report)."""
    pairs = match_keys(spec, profiles, identifiers)
    matched = pairs.merge(table.rows, on="key", how="inner")
    # A persona matching several rows (two phones) takes the most recent one.
    matched = matched.sort_values(["persona_id", "as_of", "key"], ascending=[True, False, True])
    matched = matched.drop_duplicates("persona_id")
    before_consent = len(matched)
    if spec.needs_consent:
        consented = profiles.loc[profiles["consent_enrichment"], "persona_id"]
        matched = matched[matched["persona_id"].isin(consented)]
    out = profiles.copy()
    lineage = []
    for field in spec.fields:
        external = out["persona_id"].map(matched.set_index("persona_id")[field])
        if field in out.columns:
            internal = out[field]
            use_external = external.notna() & (internal.isna() if spec.prefer == "internal" else True)
        else:
            internal = pd.Series(pd.NA, index=out.index, dtype=object)
            use_external = external.notna()
        out[field] = internal.where(~use_external, external)
        taken = out.loc[use_external, ["persona_id"]]
        lineage.append(taken.assign(attribute=field, source=f"enrichment:{name}", record=None,
                                    as_of=pd.to_datetime(taken["persona_id"].map(
                                        matched.set_index("persona_id")["as_of"]), utc=True)))
    report = {
        "provider": spec.provider,
        "read": table.read,
        "accepted": int(len(table.rows)),
        "quarantined": int(len(table.quarantined)),
        "matched": int(len(matched)),
        "withheld_no_consent": int(before_consent - len(matched)),
        "match_rate": round(len(matched) / len(profiles), 4) if len(profiles) else 0.0,
    }
    return out, pd.concat(lineage, ignore_index=True), report
