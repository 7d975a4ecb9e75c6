"""OneID: deterministic identity resolution into one stable persona_id per real person.

Records are reduced to *mentions*: the distinct combinations of normalised identifiers a source carried. Every
identifier value is a node; each mention links its linkable nodes together; connected components are persons.
Values are only ever compared for equality, so resolution runs as well on their salted hashes (what integration
stages) as on the values themselves: the components are the same.
Guards against over-merging:
- blocked values (test numbers, placeholder emails) never link;
- a value seen with more than `max_accounts` distinct accounts of one type (a shared device, a family phone) is
  treated as shared and links nothing;
- a component larger than `max_component_size` identifiers is reported, then split by re-linking it without its
  lowest-priority identifier types, one type at a time.
IDs are stable: each new component keeps the persona_id its identifiers had before; when a re-run joins several
former personas the oldest survives and the others are logged as absorbed (with the identifier that bridged them);
when one splits, its largest part keeps the id.
No former id vanishes without a trace. An identifier that stops linking (now shared, blocked, split off or set not
to link) is logged as `unlink` against the persona it belonged to. A former persona left holding no linked identifier
(its only device turned out to be shared) is logged as `dissolve` and retired: its alias record has no `alias_of`
and a `reason`; an absorbed one's alias record points at the persona that holds most of its identifiers. Retired
and absorbed ids are never given out again (sequence numbers only grow).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from features.integration.aggregates import arrow_strings
from features.integration.ingest import ARROW_STR
from persona.config import IdentityConfig

ID_PREFIX = "P"
ID_WIDTH = 10


def format_persona_ids(seq: np.ndarray) -> np.ndarray:
    """Sequence numbers -> persona ids ('P0000000042'); zero-padded so text order is creation order."""
    return _id_strings(np.asarray(seq, dtype=np.int64)).to_numpy(dtype=object)


def _id_strings(seq: np.ndarray) -> pd.Series:
    """Vectorised formatting of sequence numbers (-1 -> <NA>) as Arrow strings."""
    seq = np.asarray(seq, dtype=np.int64)
    text = np.empty((len(seq), ID_WIDTH + 1), dtype=np.uint8)
    text[:, 0] = ord(ID_PREFIX)
    rest = np.maximum(seq, 0)
    for i in range(ID_WIDTH, 0, -1):  # digit by digit from the last: no (rows x width) int64 temporaries
        text[:, i] = rest % 10 + ord("0")
        rest //= 10
    binary = pa.FixedSizeBinaryArray.from_buffers(pa.binary(ID_WIDTH + 1), len(seq),
                                                  [pa.py_buffer(np.packbits(seq >= 0, bitorder="little")),
                                                   pa.py_buffer(text.tobytes())])
    return pd.Series(pd.arrays.ArrowStringArray(binary.cast(pa.string())))


def parse_persona_ids(ids: pd.Series) -> np.ndarray:
    """persona ids -> sequence numbers (the inverse of format_persona_ids)."""
    arr = pa.array(ids.astype(ARROW_STR).array)
    return pc.cast(pc.utf8_slice_codeunits(arr, len(ID_PREFIX)), pa.int64()).to_numpy(zero_copy_only=False)


@dataclass
class Resolution:
    """What one resolution run produced."""

    nodes: pd.DataFrame  # id_type, <on>, persona_id (<NA> when not linked), status
    mention_persona: pd.DataFrame  # mention_key, persona_id (only resolved mentions)
    audit: pd.DataFrame  # event, persona_id, other_persona_id, reason, id_type, <on>
    aliases: pd.DataFrame  # persona_id (no longer live), alias_of (the live persona; <NA> when retired), reason
    next_seq: int
    stats: dict = field(default_factory=dict)


def _components(src: np.ndarray, dst: np.ndarray, n: int) -> np.ndarray:
    graph = coo_matrix((np.ones(len(src), dtype=np.int8), (src, dst)), shape=(n, n)).tocsr()
    return connected_components(graph, directed=False)[1]


class _Clock:
    """Seconds per phase, reported with the resolution's stats."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._t, 3)
        self._t = now


def _code_nodes(type_rank: np.ndarray, values: pd.Series, n_types: int) -> tuple[np.ndarray, np.ndarray, pd.Series]:
    """Integer node codes for (type, value), ordered by type priority then value, so they are deterministic.

    Factorised per type on the Arrow strings where they lie (no combined copy of every value: one type's values at a
    time are gathered and hashed), and only the distinct values are sorted.
    """
    arr = pa.array(values.astype(ARROW_STR).array)
    arr = arr if arr.type == pa.string() else arr.cast(pa.string())
    node = np.empty(len(values), dtype=np.int64)
    node_type, node_values, offset = [], [], 0
    for t in range(n_types):
        idx = np.flatnonzero(type_rank == t)
        if not len(idx):
            continue
        encoded = pc.dictionary_encode(arr.take(pa.array(idx)))
        chunks = encoded.chunks if isinstance(encoded, pa.ChunkedArray) else [encoded]
        uniques = chunks[-1].dictionary  # the chunks of an encoded chunked array share the encoder's final dictionary
        order = pc.array_sort_indices(uniques).to_numpy()
        position = np.empty(len(order), dtype=np.int64)
        position[order] = np.arange(len(order))
        node[idx] = offset + position[np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in chunks])]
        node_values.append(uniques.take(pa.array(order)))
        node_type.append(np.full(len(order), t, dtype=np.int64))
        offset += len(order)
        del encoded, chunks, idx
    values_out = pd.Series(pd.arrays.ArrowStringArray(pa.chunked_array(node_values, type=pa.string()))
                           if node_values else pd.array([], dtype=ARROW_STR))
    return node, (np.concatenate(node_type) if node_type else np.zeros(0, dtype=np.int64)), values_out


def _star_edges(mention: np.ndarray, node: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Link every node of a mention to the mention's first node: enough edges for connectivity, no quadratic blow-up."""
    if not len(node):
        return node, node
    order = np.lexsort((node, mention))
    m, n = mention[order], node[order]
    del order
    starts = np.r_[True, m[1:] != m[:-1]]
    first = n[starts][np.cumsum(starts) - 1]
    keep = n != first
    return n[keep], first[keep]


def resolve(mentions: pd.DataFrame, cfg: IdentityConfig, *, blocked: dict[str, set[str]],
            previous: pd.DataFrame | None = None, previous_aliases: pd.DataFrame | None = None,
            next_seq: int = 1, on: str = "value") -> Resolution:
    """Resolve mentions (mention_key, id_type, <on>) into personas, keeping previous persona_ids stable.

    `on` names the identifier column: normalised values, or their salted hashes (integration resolves on
    `value_hash`, so no raw identifier is needed). `blocked` holds the blocked values per identifier type, spelled
    like that column; `previous` is the last run's node table (id_type, <on>, persona_id).
    """
    clock = _Clock()
    types = cfg.priority
    rank = {t: i for i, t in enumerate(types)}
    type_codes, type_names = pd.factorize(mentions["id_type"])  # Arrow's hashing: no Python string per row
    if (type_codes < 0).any():
        raise ValueError("a mention without an id_type")
    type_rank = np.array([rank[t] for t in type_names], dtype=np.int64)[type_codes]
    del type_codes
    node, node_type, node_values = _code_nodes(type_rank, mentions[on], len(types))
    del type_rank
    pa.default_memory_pool().release_unused()  # the hash tables' memory, to the system (numpy does not reuse it)
    # One link per (mention, node), first kept: integer de-duplication is cheap, string de-duplication is not.
    mention = mentions["mention_key"].to_numpy()
    keep = ~pd.DataFrame({"mention": mention, "node": node}, copy=False).duplicated().to_numpy()
    mention, node = mention[keep], node[keep]
    del keep
    n_nodes = len(node_type)
    nodes = pd.DataFrame({"id_type": pd.array(np.asarray(types, dtype=object)[node_type], dtype="string"),
                          on: node_values})
    status = np.full(n_nodes, "linked", dtype=object)

    clock.lap("code_nodes")

    # Guard 1: blocked values and non-linking types.
    for t, spec in cfg.identifiers.items():
        in_type = node_type == rank[t]
        if not spec.link:
            status[in_type] = "no_link"
        values = blocked.get(t)
        if values:
            status[in_type & nodes[on].isin(values).to_numpy()] = "blocked"

    # Guard 2: shared values, seen with more than K distinct accounts of one account type.
    account_ranks = [rank[t] for t, s in cfg.identifiers.items() if s.account]
    limited = {rank[t]: s.max_accounts for t, s in cfg.identifiers.items() if s.max_accounts}
    shared_counts: dict[str, int] = {}
    if limited and account_ranks:
        shared = _shared(mention, node, node_type, account_ranks, limited)
        shared = shared[status[shared] == "linked"]
        status[shared] = "shared"
        for t in types:
            c = int((node_type[shared] == rank[t]).sum())
            if c:
                shared_counts[t] = c

    clock.lap("guards")

    # Link and find components.
    linkable = status[node] == "linked"
    src, dst = _star_edges(mention[linkable], node[linkable])
    comp = _components(src, dst, n_nodes)
    comp = np.where(status == "linked", comp, -1)

    # Guard 3: oversized components are reported, then split by dropping the weakest identifier types.
    offenders: list[dict] = []
    sizes = np.bincount(comp[comp >= 0], minlength=n_nodes) if n_nodes else np.zeros(0, dtype=np.int64)
    big = np.flatnonzero(sizes > cfg.max_component_size)
    if len(big):
        for c in big[np.argsort(-sizes[big], kind="stable")][:20]:  # ties: lowest label first
            members = node_type[comp == c]
            offenders.append({"size": int(sizes[c]),
                              "by_type": {types[r]: int((members == r).sum()) for r in np.unique(members)}})
        comp, status = _split_oversized(mention, node, node_type, comp, status, big, cfg.max_component_size,
                                        len(types))

    clock.lap("components")

    # Stable persona ids, as integer sequence numbers until the output is written.
    prev_seq = _previous_seq(nodes, previous, on)
    clock.lap("previous_ids")
    seq, audit, new_aliases, next_seq, id_stats = _assign_ids(comp, prev_seq, src, dst, next_seq)
    unlinked, retired = _dissolved(previous, prev_seq, seq, status, new_aliases, nodes["id_type"])
    audit = pd.concat([a for a in (audit, unlinked) if len(a)] or [audit], ignore_index=True)
    new_aliases = pd.concat([a for a in (new_aliases, retired) if len(a)] or [new_aliases], ignore_index=True)
    id_stats["unlinked"] = int((unlinked["event"] == "unlink").sum())
    id_stats["dissolved"] = int(len(retired))
    clock.lap("assign_ids")
    nodes["persona_id"] = _id_strings(seq)
    nodes["status"] = pd.array(np.where((seq < 0) & (status == "linked"), "unresolved", status), dtype="string")
    via = audit.pop("node").to_numpy(dtype=np.int64)
    found = via >= 0
    for col in ("id_type", on):
        values = np.full(len(via), None, dtype=object)
        values[found] = nodes[col].to_numpy(dtype=object)[via[found]]
        audit[col] = pd.array(values, dtype="string")
    aliases = _merge_aliases(previous_aliases, new_aliases)

    # Each mention takes the persona of its (linked) nodes.
    mention_seq = seq[node]
    ok = mention_seq >= 0
    keys, first = np.unique(mention[ok], return_index=True)
    mention_pid = pd.DataFrame({"mention_key": keys, "persona_id": _id_strings(mention_seq[ok][first])})
    stats = {
        "identifiers": int(n_nodes),
        "links": int(len(mention)),
        "edges": int(len(src)),
        "personas": int(len(np.unique(seq[seq >= 0]))),
        "shared_values": shared_counts,
        "blocked_values": int((status == "blocked").sum()),
        "oversized_components": offenders,
        **id_stats,
    }
    clock.lap("outputs")
    stats["seconds"] = clock.laps
    return Resolution(nodes, mention_pid, audit, aliases, next_seq, stats)


def _shared(mention: np.ndarray, node: np.ndarray, node_type: np.ndarray, account_ranks: list[int],
            limited: dict[int, int]) -> np.ndarray:
    """The nodes of a limited type seen (in one mention) with more than its limit of distinct accounts of one account
    type. Its own function so that its frames go when it returns; node codes as int32, types as int8."""
    type_rank, code = node_type[node].astype(np.int8), np.int32 if len(node_type) < 2**31 else np.int64
    is_acc = np.isin(type_rank, account_ranks)
    acc = pd.DataFrame({"mention": mention[is_acc], "acc": node[is_acc].astype(code), "acc_type": type_rank[is_acc]})
    is_lim = np.isin(type_rank, list(limited))
    lim = pd.DataFrame({"mention": mention[is_lim], "node": node[is_lim].astype(code), "type": type_rank[is_lim]})
    del type_rank, is_acc, is_lim
    seen_with = lim.merge(acc, on="mention")
    del lim, acc
    seen_with = seen_with[(seen_with["node"] != seen_with["acc"]).to_numpy()]
    per_type = seen_with.drop_duplicates(["node", "acc"]).groupby(["node", "acc_type"]).size()
    del seen_with
    most = per_type.groupby(level="node").max()
    limit = pd.Series(node_type[most.index.to_numpy()]).map(limited).to_numpy()
    return most.index.to_numpy().astype(np.int64)[most.to_numpy() > limit]


def _split_oversized(mention: np.ndarray, node: np.ndarray, node_type: np.ndarray, comp: np.ndarray,
                     status: np.ndarray, big: np.ndarray, limit: int, n_types: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-link oversized components without their weakest identifier types until each fits (or one type is left)."""
    comp = comp.copy()
    status = status.copy()
    next_label = int(comp.max()) + 1
    todo = set(big.tolist())
    for allowed in range(n_types - 1, 0, -1):
        if not todo:
            break
        in_big = np.isin(comp, list(todo))
        demote = in_big & (node_type >= allowed)
        status[demote] = "split"
        comp[demote] = -1
        keep = in_big[node] & (node_type[node] < allowed)
        src, dst = _star_edges(mention[keep], node[keep])
        members = np.flatnonzero(in_big & ~demote)
        local = np.full(len(comp), -1, dtype=np.int64)
        local[members] = np.arange(len(members))
        sub = _components(local[src], local[dst], len(members))
        n_sub = int(sub.max()) + 1 if len(sub) else 0
        comp[members] = sub + next_label
        todo = set((np.flatnonzero(np.bincount(sub, minlength=n_sub) > limit) + next_label).tolist())
        next_label += n_sub
    return comp, status


def _previous_seq(nodes: pd.DataFrame, previous: pd.DataFrame | None, on: str) -> np.ndarray:
    """The persona sequence number each node had in the previous run (-1 for new nodes), matched per type."""
    out = np.full(len(nodes), -1, dtype=np.int64)
    if previous is None or previous.empty:
        return out
    prev = previous.dropna(subset=["persona_id"])
    prev_types = prev["id_type"].to_numpy(dtype=object)
    node_types = nodes["id_type"].to_numpy(dtype=object)
    prev_seq = parse_persona_ids(prev["persona_id"])
    current = arrow_strings(nodes[on])
    before = arrow_strings(prev[on])
    for t in pd.unique(node_types):
        here = np.flatnonzero(node_types == t)
        there = np.flatnonzero(prev_types == t)
        if not len(here) or not len(there):
            continue
        hit = pc.index_in(current.take(pa.array(here)), value_set=before.take(pa.array(there)))
        hit = hit.to_numpy(zero_copy_only=False)
        found = ~np.isnan(hit) if hit.dtype.kind == "f" else np.ones(len(hit), dtype=bool)
        out[here[found]] = prev_seq[there[hit[found].astype(np.int64)]]
    return out


def _assign_ids(comp: np.ndarray, prev: np.ndarray, src: np.ndarray, dst: np.ndarray,
                next_seq: int) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame, int, dict]:
    """Give every component a persona sequence number: the oldest former one it holds, else a new one."""
    linked = np.flatnonzero(comp >= 0)
    frame = pd.DataFrame({"node": linked, "comp": comp[linked], "prev": prev[linked]})
    known = frame[frame["prev"] >= 0]
    # Each former persona stays with the component holding most of its identifiers (ties: lowest label).
    counts = known.groupby(["prev", "comp"]).size().rename("n").reset_index()
    counts = counts.sort_values(["prev", "n", "comp"], ascending=[True, False, True])
    keeper = counts.drop_duplicates("prev")
    # A component holding several former personas keeps the oldest (sequence numbers grow with creation).
    winners = keeper.sort_values(["comp", "prev"]).drop_duplicates("comp")
    comp_seq = np.full(int(comp.max()) + 1 if len(comp) else 0, -1, dtype=np.int64)
    comp_seq[winners["comp"].to_numpy()] = winners["prev"].to_numpy()
    absorbed = keeper[~keeper["prev"].isin(winners["prev"])].merge(
        winners[["comp", "prev"]].rename(columns={"prev": "winner"}), on="comp")
    # Components without a former persona get new numbers, in label order (deterministic).
    present = np.unique(frame["comp"].to_numpy())
    fresh = present[comp_seq[present] < 0]
    comp_seq[fresh] = np.arange(next_seq, next_seq + len(fresh))
    next_seq += len(fresh)
    seq = np.full(len(comp), -1, dtype=np.int64)
    seq[linked] = comp_seq[comp[linked]]

    events = []
    if len(absorbed):
        via = _bridges(absorbed, prev, src, dst)
        events.append(pd.DataFrame({"event": "merge", "persona_id": _id_strings(absorbed["winner"].to_numpy()),
                                    "other_persona_id": _id_strings(absorbed["prev"].to_numpy()), "node": via}))
    kept = pd.MultiIndex.from_frame(keeper[["prev", "comp"]])
    split = counts[~pd.MultiIndex.from_frame(counts[["prev", "comp"]]).isin(kept)]
    if len(split):
        first_node = frame.groupby("comp")["node"].min()
        events.append(pd.DataFrame({"event": "split", "persona_id": _id_strings(split["prev"].to_numpy()),
                                    "other_persona_id": _id_strings(comp_seq[split["comp"].to_numpy()]),
                                    "node": split["comp"].map(first_node).to_numpy()}))
    audit = pd.concat(events, ignore_index=True) if events else _no_events()
    audit["reason"] = pd.array([None] * len(audit), dtype="string")
    aliases = pd.DataFrame({"persona_id": _id_strings(absorbed["prev"].to_numpy()),
                            "alias_of": _id_strings(absorbed["winner"].to_numpy()),
                            "reason": pd.array(["merged"] * len(absorbed), dtype="string")})
    stats = {"new_personas": int(len(fresh)), "merges": int(len(absorbed)), "splits": int(len(split))}
    return seq, audit, aliases, next_seq, stats


def _no_events() -> pd.DataFrame:
    return pd.DataFrame({"event": pd.Series(dtype="string"), "persona_id": pd.Series(dtype="string"),
                         "other_persona_id": pd.Series(dtype="string"), "node": pd.Series(dtype="int64"),
                         "reason": pd.Series(dtype="string")})


# Why an identifier stopped linking, strongest first: the status named in a dissolved persona's retirement.
_UNLINK_ORDER = ("shared", "blocked", "split", "no_link")
GONE = "identifiers no longer seen"


def _dissolved(previous: pd.DataFrame | None, prev_seq: np.ndarray, seq: np.ndarray, status: np.ndarray,
               absorbed: pd.DataFrame, node_types: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Audit events for identifiers that stopped linking (`unlink`) and for former personas left with no linked
    identifier (`dissolve`), and the retirement records (alias_of <NA>, reason) of the latter."""
    rank = pd.Series(np.arange(len(_UNLINK_ORDER)), index=list(_UNLINK_ORDER))
    why = pd.Series(status).map(rank).to_numpy(dtype=np.float64)  # NaN: still linked
    left = np.flatnonzero((prev_seq >= 0) & ~np.isnan(why))
    unlink = pd.DataFrame({"event": "unlink", "persona_id": _id_strings(prev_seq[left]),
                           "other_persona_id": _id_strings(np.full(len(left), -1)), "node": left,
                           "reason": pd.array(status[left].astype(object), dtype="string")})
    before = (np.unique(parse_persona_ids(previous["persona_id"].dropna()))
              if previous is not None and len(previous) else np.zeros(0, dtype=np.int64))
    gone = np.setdiff1d(before, np.concatenate([seq[seq >= 0], parse_persona_ids(absorbed["persona_id"])]))
    if not len(gone):
        empty = pd.DataFrame({c: pd.Series(dtype="string") for c in ("persona_id", "alias_of", "reason")})
        return unlink, empty
    # The identifier named for each dissolved persona: its strongest reason, then its first node.
    cause = pd.DataFrame({"prev": prev_seq[left], "rank": why[left], "node": left})
    cause = cause[np.isin(cause["prev"].to_numpy(), gone)].sort_values(["prev", "rank", "node"])
    cause = cause.drop_duplicates("prev").set_index("prev")
    node = pd.Series(gone).map(cause["node"]).fillna(-1).to_numpy(dtype=np.int64)
    found = node >= 0
    reason = np.full(len(gone), GONE, dtype=object)
    reason[found] = status[node[found]]
    dissolve = pd.DataFrame({"event": "dissolve", "persona_id": _id_strings(gone),
                             "other_persona_id": _id_strings(np.full(len(gone), -1)), "node": node,
                             "reason": pd.array(reason, dtype="string")})
    text = np.full(len(gone), "dissolved: " + GONE, dtype=object)
    kinds = node_types.to_numpy(dtype=object)
    text[found] = "dissolved: its " + kinds[node[found]] + " became " + status[node[found]].astype(object)
    retired = pd.DataFrame({"persona_id": _id_strings(gone), "alias_of": _id_strings(np.full(len(gone), -1)),
                            "reason": pd.array(text, dtype="string")})
    return pd.concat([unlink, dissolve], ignore_index=True), retired


def _bridges(absorbed: pd.DataFrame, prev: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """For each absorbed persona, an identifier on an edge joining it to the rest of its new component."""
    a = np.concatenate([src, dst])
    b = np.concatenate([dst, src])
    pa_, pb = prev[a], prev[b]
    cross = (pa_ >= 0) & (pa_ != pb)
    e = pd.DataFrame({"prev": pa_[cross], "b": b[cross]})
    via = absorbed[["prev"]].merge(e, on="prev", how="left")
    via = via.sort_values(["prev", "b"]).drop_duplicates("prev").set_index("prev")["b"]
    return absorbed["prev"].map(via).fillna(-1).astype(np.int64).to_numpy()


def _merge_aliases(previous: pd.DataFrame | None, new: pd.DataFrame) -> pd.DataFrame:
    """Cumulative alias table, chains collapsed so every old id points at a live one or is retired (alias_of <NA>):
    an id absorbed into a persona that later dissolved is retired with that persona's reason."""
    frames = [f.astype("string") for f in (previous, new) if f is not None and len(f)]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="string") for c in ("persona_id", "alias_of", "reason")})
    table = pd.concat(frames, ignore_index=True)
    if "reason" not in table.columns:  # written before retirements existed: every record was a merge
        table["reason"] = pd.NA
    table["reason"] = table["reason"].fillna("merged")
    table = table.drop_duplicates("persona_id", keep="last").reset_index(drop=True)
    target = table.set_index("persona_id")
    for _ in range(64):  # chains are short; the bound only guards against a cycle
        step = table["alias_of"].notna() & table["alias_of"].isin(target.index)
        if not step.any():
            break
        via = target.loc[table.loc[step, "alias_of"]]
        table.loc[step, "alias_of"] = via["alias_of"].to_numpy()
        retired = step.copy()
        retired[step] = via["alias_of"].isna().to_numpy()
        table.loc[retired, "reason"] = via.loc[via["alias_of"].isna(), "reason"].to_numpy()
        target = table.set_index("persona_id")
    return table[["persona_id", "alias_of", "reason"]].astype("string").reset_index(drop=True)


def pairwise_scores(truth: pd.Series, predicted: pd.Series) -> dict[str, float]:
    """Pairwise precision and recall of a clustering against the truth, one row per unit.

    Units without a prediction (<NA>) count as singletons.
    """
    pred = predicted.astype("object").where(predicted.notna(), None)
    pred_codes = pd.factorize(pred, use_na_sentinel=True)[0].astype(np.int64)
    singles = pred_codes < 0
    pred_codes[singles] = pred_codes.max(initial=-1) + 1 + np.arange(int(singles.sum()))
    true_codes = pd.factorize(truth)[0].astype(np.int64)

    def pairs(counts: np.ndarray) -> float:
        c = counts.astype(np.float64)
        return float((c * (c - 1) / 2).sum())

    joint = pd.DataFrame({"t": true_codes, "p": pred_codes}).value_counts().to_numpy()
    tp = pairs(joint)
    pred_pairs = pairs(np.bincount(pred_codes))
    true_pairs = pairs(np.bincount(true_codes))
    return {
        "precision": tp / pred_pairs if pred_pairs else 1.0,
        "recall": tp / true_pairs if true_pairs else 1.0,
        "units": int(len(truth)),
    }
