"""Identifier lookup for serving: any known identifier (raw or salted-hashed) or persona_id to the current persona.

Built from the integrated stage's `identity_hashed.parquet` (id_type, value_hash, persona_id of every identifier that
links) and `aliases.parquet` (retired persona ids and the persona that absorbed them). Raw values never reach this
index: a raw phone or e-mail in a request is normalised and salted-hashed exactly as integration did, then looked up.
Lookups are vectorised binary searches over sorted 64-bit keys, so 5M identifiers cost ~100 MB, not a dict of strings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from features.integration import standardise as std
from persona.config import PersonaConfig
from persona.workspace import Workspace

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# Longer raw values are invalid without being normalised or hashed: no e-mail address (RFC 5321: 254), phone number
# (phonenumbers reads at most 250 characters) or account id is this long, and the cost of a lookup must not grow with
# what a client sends. The online service refuses far shorter values first (`serving.max_id_length`).
MAX_VALUE_CHARS = 1024


class UnknownIdentifierType(ValueError):
    """The request names an identifier type the workspace does not declare."""


def _keys(ordinal: np.ndarray, value_hash: pd.Series) -> np.ndarray:
    """A 64-bit key per (type, hash): the hash's first 15 hex digits, the type's ordinal in the top 4 bits."""
    text = np.asarray(value_hash.astype(str).str.slice(0, 15).to_numpy(), dtype="S15")
    chars = text.view(np.uint8).reshape(len(text), 15).astype(np.uint64)
    nibbles = np.where(chars >= ord("a"), chars - ord("a") + 10, chars - ord("0"))
    head = (nibbles << (np.uint64(4) * np.arange(14, -1, -1, dtype=np.uint64))).sum(axis=1, dtype=np.uint64)
    return head | (np.asarray(ordinal, dtype=np.uint64) << np.uint64(60))


@dataclass
class IdentityIndex:
    types: list[str]
    normalisers: dict[str, str]
    keys: np.ndarray  # sorted uint64
    hashes: np.ndarray  # full hex hashes, same order (collision check)
    personas: np.ndarray  # persona_id, same order
    personas_known: np.ndarray  # sorted persona ids that exist
    alias_from: np.ndarray  # sorted retired ids
    alias_to: np.ndarray
    salt: str
    region: str
    retired_ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))  # sorted; dissolved
    retired_reasons: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))  # same order
    longest_id: int = field(init=False, default=0)  # no persona id or retired id is longer

    def __post_init__(self) -> None:
        # np.searchsorted on a fixed-width text array first casts the array to the width of the key: one key of
        # 100,000 characters against 10,000 ids of 11 made a 4 GB copy and took 25 s. A key longer than every id
        # cannot be one of them, so resolve_persona answers None before searching.
        self.longest_id = max(_longest(self.personas_known), _longest(self.alias_from), _longest(self.retired_ids))

    @classmethod
    def load(cls, ws: Workspace, cfg: PersonaConfig) -> IdentityIndex:
        current = ws.require_current("integrated", "run `persona integrate`")
        table = pq.read_table(current / "identity_hashed.parquet").to_pandas()
        types = sorted(cfg.identity.identifiers)
        ordinal = table["id_type"].astype(str).map({t: i for i, t in enumerate(types)})
        table = table[ordinal.notna()]
        keys = _keys(ordinal[ordinal.notna()].to_numpy(dtype=np.int64), table["value_hash"])
        order = np.argsort(keys, kind="stable")
        aliases = pq.read_table(current / "aliases.parquet").to_pandas() if (current / "aliases.parquet").exists() \
            else pd.DataFrame({"persona_id": [], "alias_of": []})
        # a retired id (its persona dissolved: alias_of empty) resolves to nothing, not to a persona named "None";
        # its retirement record says why (`retirement`)
        gone = aliases[aliases["alias_of"].isna()]
        aliases = aliases[aliases["alias_of"].notna()]
        a_order = np.argsort(aliases["persona_id"].astype(str).to_numpy())
        r_ids = gone["persona_id"].astype(str).to_numpy()
        reasons = gone["reason"].astype(str).to_numpy() if "reason" in gone.columns else np.full(len(gone), "retired")
        r_order = np.argsort(r_ids)
        profiles = pq.read_table(current / "profiles.parquet", columns=["persona_id"]).column(0).to_numpy()
        return cls(
            types=types, normalisers={t: s.normalise for t, s in cfg.identity.identifiers.items()},
            keys=keys[order], hashes=table["value_hash"].astype(str).to_numpy()[order],
            personas=table["persona_id"].astype(str).to_numpy()[order],
            personas_known=np.sort(np.asarray(profiles, dtype=object).astype(str)),
            alias_from=aliases["persona_id"].astype(str).to_numpy()[a_order],
            alias_to=aliases["alias_of"].astype(str).to_numpy()[a_order],
            salt=ws.salt(), region=cfg.phone_region,
            retired_ids=r_ids[r_order].astype(object), retired_reasons=reasons[r_order].astype(object),
        )

    def hash_values(self, id_type: str, values: Sequence[str], hashed: Sequence[bool] | None = None) -> list[str | None]:
        """Normalise and salt-hash raw values of a type (values already hashed pass as they are); None if invalid."""
        if id_type not in self.normalisers:
            raise UnknownIdentifierType(f"unknown identifier type {id_type!r} (known: {', '.join(self.types)})")
        hashed = list(hashed) if hashed is not None else [False] * len(values)
        long = [v is not None and len(str(v)) > MAX_VALUE_CHARS for v in values]
        raw = pd.Series([None if h or x else v for v, h, x in zip(values, hashed, long)], dtype="string")
        how = self.normalisers[id_type]
        norm = (std.normalise_phones(raw, self.region) if how == "phone" else
                std.normalise_emails(raw) if how == "email" else std.normalise_ids(raw))
        digests = std.salted_hash(norm, self.salt)
        out = []
        for v, h, x, d in zip(values, hashed, long, digests):
            if x:
                out.append(None)
            elif h:
                text = str(v).strip().lower()
                out.append(text if _HEX64.match(text) else None)
            else:
                out.append(None if pd.isna(d) else str(d))
        return out

    def lookup(self, id_type: str, value_hashes: Sequence[str | None]) -> list[str | None]:
        """The current persona of each (type, hash), None where unknown."""
        t = self.types.index(id_type)
        present = [i for i, h in enumerate(value_hashes) if h]
        out: list[str | None] = [None] * len(value_hashes)
        if not present:
            return out
        hs = pd.Series([value_hashes[i] for i in present])
        keys = _keys(np.full(len(present), t), hs)
        pos = np.searchsorted(self.keys, keys)
        for j, (i, p) in enumerate(zip(present, pos)):
            while p < len(self.keys) and self.keys[p] == keys[j]:
                if self.hashes[p] == hs.iloc[j]:
                    out[i] = self.resolve_persona(self.personas[p])
                    break
                p += 1
        return out

    def _follow(self, persona_id: str) -> str:
        """The end of a persona id's alias chain (the id itself when it is no alias)."""
        pid = str(persona_id)
        for _ in range(8):  # alias chains are short; the bound guards against a cycle in a hand-edited file
            i = np.searchsorted(self.alias_from, pid)
            if not (i < len(self.alias_from) and self.alias_from[i] == pid):
                break
            pid = str(self.alias_to[i])
        return pid

    def resolve_persona(self, persona_id: str) -> str | None:
        """The persona itself, or the persona that absorbed a retired id; None if never known.

        Costs the same whatever the length of `persona_id` (see __post_init__)."""
        if len(str(persona_id)) > self.longest_id:
            return None
        pid = self._follow(persona_id)
        i = np.searchsorted(self.personas_known, pid)
        return pid if i < len(self.personas_known) and self.personas_known[i] == pid else None

    def retirement(self, persona_id: str) -> str | None:
        """Why a persona id that resolves to nothing was retired (its persona dissolved, directly or after absorbing
        it); None for an id that was never known or is live."""
        if len(str(persona_id)) > self.longest_id:
            return None
        pid = self._follow(persona_id)  # a retired id is never an alias: a chain ends at it
        i = np.searchsorted(self.personas_known, pid)
        if i < len(self.personas_known) and self.personas_known[i] == pid:
            return None
        i = np.searchsorted(self.retired_ids, pid)
        return str(self.retired_reasons[i]) if i < len(self.retired_ids) and self.retired_ids[i] == pid else None


def _longest(ids: np.ndarray) -> int:
    """Characters of the longest id in an array of text (fixed-width unicode or Python strings)."""
    if not len(ids):
        return 0
    if ids.dtype.kind == "U":
        return int(np.char.str_len(ids).max())
    return max(len(str(x)) for x in ids)
