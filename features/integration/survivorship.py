"""The unified profile (360° view): one row per persona, each attribute chosen by a survivorship rule.

Every chosen value keeps its lineage (which source and record it came from, and when), in a long table beside
the profile. Identifiers appear only as salted hashes.
"""

from __future__ import annotations

import pandas as pd

from persona.config import PROFILE_ATTRIBUTES, AttributeRule, PersonaConfig

LINEAGE_COLUMNS = ["persona_id", "attribute", "source", "record", "as_of"]
# Candidate values, one per (record, attribute): the input of survivorship.
CANDIDATE_COLUMNS = ["persona_id", "attribute", "value", "source", "record", "ts"]


def survive(candidates: pd.DataFrame, rules: dict[str, AttributeRule], source_order: list[str]) -> pd.DataFrame:
    """Pick one value per (persona, attribute) by its rule; returns the winners with their lineage."""
    picked = []
    for attribute, rule in rules.items():
        c = candidates[candidates["attribute"] == attribute]
        if c.empty:
            continue
        trust_order = rule.sources + [s for s in source_order if s not in rule.sources]
        trust = c["source"].map({s: i for i, s in enumerate(trust_order)}).fillna(len(trust_order))
        c = c.assign(_trust=trust.to_numpy(), _ts=c["ts"].fillna(pd.Timestamp.min.tz_localize("UTC")))
        if rule.rule == "most_recent":
            keys, asc = ["_ts", "_trust"], [False, True]
        elif rule.rule == "most_trusted":
            keys, asc = ["_trust", "_ts"], [True, False]
        else:
            freq = c.groupby(["persona_id", "value"])["value"].transform("size")
            c = c.assign(_freq=freq.to_numpy())
            keys, asc = ["_freq", "_ts", "_trust"], [False, False, True]
        c = c.sort_values(["persona_id", *keys, "record"], ascending=[True, *asc, True], kind="mergesort")
        picked.append(c.drop_duplicates("persona_id")[CANDIDATE_COLUMNS])
    if not picked:
        return pd.DataFrame(columns=CANDIDATE_COLUMNS)
    return pd.concat(picked, ignore_index=True)


def survive_order(rules: dict[str, AttributeRule], source_order: list[str]) -> pd.DataFrame:
    """`survive`'s rules as a table for `survive_sql`: one row per (attribute, source) with the source's trust rank
    (0 = most trusted), the attribute's place in `rules`, its rule, and the rank of a source not listed."""
    parts = []
    for position, (attribute, rule) in enumerate(rules.items()):
        trust_order = rule.sources + [s for s in source_order if s not in rule.sources]
        parts.append(pd.DataFrame({"attribute": attribute, "source": trust_order,
                                   "trust": range(len(trust_order)), "position": position, "rule": rule.rule,
                                   "fallback": len(trust_order)}))
    columns = ["attribute", "source", "trust", "position", "rule", "fallback"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def survive_sql(candidates: str, order: str) -> str:
    """The SQL form of `survive`, for candidates too many for pandas: `candidates` is a query giving
    CANDIDATE_COLUMNS, `order` the name of a `survive_order` table. Same winners, in the same order (attributes
    in rule order, then by persona_id); a change to the ordering rule belongs in both. SQL that DuckDB and Spark
    both run (no QUALIFY), so the Spark engine picks the same winners."""
    # One window for all three rules: _freq is 0 unless most_frequent, the first trust term 0 unless most_trusted.
    return f"""
        WITH c AS ({candidates}),
        a AS (SELECT DISTINCT attribute, position AS _position, rule AS _rule, fallback AS _fallback FROM {order}),
        r AS (
            SELECT c.*, a._position, a._rule, coalesce(t.trust, a._fallback) AS _trust,
                   CASE WHEN a._rule = 'most_frequent'
                        THEN count(*) OVER (PARTITION BY c.persona_id, c.attribute, c.value) ELSE 0 END AS _freq
            FROM c JOIN a ON a.attribute = c.attribute
            LEFT JOIN {order} t ON t.attribute = c.attribute AND t.source = c.source)
        SELECT {", ".join(CANDIDATE_COLUMNS)} FROM (
            SELECT r.*, row_number() OVER (
                PARTITION BY persona_id, attribute
                ORDER BY _freq DESC, CASE WHEN _rule = 'most_trusted' THEN _trust ELSE 0 END, ts DESC NULLS LAST,
                         _trust, record) AS _rank
            FROM r) ranked
        WHERE _rank = 1
        ORDER BY _position, persona_id"""


def build_profiles(personas: pd.Series, winners: pd.DataFrame, activity: pd.DataFrame, identifiers: pd.DataFrame,
                   cfg: PersonaConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Assemble the profile table and its lineage.

    `activity`: persona_id, channel, first_ts, last_ts, n (records) per persona and channel; `identifiers`: persona_id, id_type, value_hash,
    last_seen and optionally reachable for every linked identifier (the latest one per type not flagged unreachable
    becomes the profile's contact hash; phone types also get `<type>_reachable`).
    """
    profile = pd.DataFrame({"persona_id": pd.Series(personas, dtype="string").sort_values(ignore_index=True)})
    wide = winners.pivot(index="persona_id", columns="attribute", values="value") if len(winners) else \
        pd.DataFrame(index=pd.Index([], name="persona_id"))
    for attribute in PROFILE_ATTRIBUTES:
        column = wide[attribute] if attribute in wide.columns else pd.Series(dtype=object)
        profile[attribute] = profile["persona_id"].map(column)
    profile["birth_date"] = pd.to_datetime(profile["birth_date"], errors="coerce").dt.date
    for flag in ("opt_out_enrichment", "opt_out_marketing"):
        profile[flag] = profile[flag].astype("string").str.lower().map({"true": True, "false": False}).astype("boolean")
    default = cfg.consent.missing == "granted"
    profile["consent_enrichment"] = (~profile["opt_out_enrichment"]).fillna(default).astype(bool)
    profile["consent_marketing"] = (~profile["opt_out_marketing"]).fillna(default).astype(bool)
    profile = profile.drop(columns=["opt_out_enrichment", "opt_out_marketing"])
    for col in ("gender", "city"):
        profile[col] = profile[col].astype("string")

    if len(activity):
        span = activity.groupby("persona_id").agg(first_seen=("first_ts", "min"), last_seen=("last_ts", "max"),
                                                  records=("n", "sum"))
        for col in ("first_seen", "last_seen"):
            profile[col] = pd.to_datetime(profile["persona_id"].map(span[col]), utc=True)
        profile["records"] = profile["persona_id"].map(span["records"]).fillna(0).astype("int64")
        channels = (activity[["persona_id", "channel"]].drop_duplicates().sort_values(["persona_id", "channel"])
                    .groupby("persona_id")["channel"].agg("|".join))
        profile["channels"] = profile["persona_id"].map(channels).astype("string")
    # A phone flagged not reachable (possible but in no assigned range) links, but is never the contact: the
    # `<type>_hash` columns are what segments export for activation.
    reachable = (identifiers["reachable"].astype("boolean") if "reachable" in identifiers.columns
                 else pd.Series(pd.NA, index=identifiers.index, dtype="boolean"))
    contact = identifiers[~reachable.eq(False).fillna(False).to_numpy(dtype=bool)]
    latest = contact.sort_values(["persona_id", "id_type", "last_seen", "value_hash"],
                                 ascending=[True, True, False, True], na_position="last")
    latest = latest.drop_duplicates(["persona_id", "id_type"])
    counts = identifiers.groupby(["persona_id", "id_type"]).size().unstack(fill_value=0)
    phones = {t for t, spec in cfg.identity.identifiers.items() if spec.normalise == "phone"}
    for id_type in cfg.identity.identifiers:
        pick = latest[latest["id_type"] == id_type].set_index("persona_id")["value_hash"]
        profile[f"{id_type}_hash"] = profile["persona_id"].map(pick).astype("string")
        n = counts[id_type] if id_type in counts.columns else pd.Series(dtype="int64")
        profile[f"n_{id_type}"] = profile["persona_id"].map(n).fillna(0).astype("int64")
        if id_type in phones:
            # True: a reachable phone of this type; False: phones, none reachable; <NA>: no phone (or unknown).
            mine = (identifiers["id_type"] == id_type).to_numpy(dtype=bool)
            best = reachable[mine].astype("Float64").groupby(identifiers.loc[mine, "persona_id"].to_numpy()).max()
            profile[f"{id_type}_reachable"] = profile["persona_id"].map(best).astype("Float64").astype("boolean")

    lineage = winners.rename(columns={"ts": "as_of"})[LINEAGE_COLUMNS]
    lineage["as_of"] = pd.to_datetime(lineage["as_of"], utc=True)
    return profile, lineage.reset_index(drop=True)

