"""OneID on Spark: `oneid.resolve`'s rules, step for step, on Spark DataFrames, giving the same personas (the same
persona_ids), the same statuses, audit events and aliases (tests/features/integration/test_spark_oneid.py compares
the two on graphs with merges, splits, shared and blocked values, oversized components and earlier runs).

What makes the ids equal is order, not arithmetic: the embedded resolver numbers identifiers by (type priority,
value) and components by their smallest identifier, gives new personas sequence numbers in component order, and
names the smallest identifier wherever an event needs one. Here identifiers get the same dense numbers (a range
partitioning, a row number within each partition and each partition's offset: only the partitions' counts reach the
driver), components come from `spark_graph` (labelled by their smallest identifier, as scipy's are ordered), and a
component split off an oversized one is labelled (round, smallest identifier), which sorts as the embedded labels do.

Intermediate tables are written to `scratch` (a folder every executor reaches) and read back, which keeps each
plan short. Only counts, the oversized components' summaries and the new aliases (one row per merge or dissolved
persona of this run) reach the driver; the aliases are merged with the earlier ones by `oneid._merge_aliases`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from features.integration import oneid
from features.integration.spark_graph import connected_components
from persona.config import IdentityConfig

ROUND_SHIFT = 40  # a component label is round << 40 | smallest node: node numbers stay below 2**40


@dataclass
class SparkResolution:
    """What one resolution on Spark produced: Spark DataFrames for the per-identifier and per-mention tables."""

    nodes: object  # id_type, value_hash, persona_id (null when not linked), status, node (the identifier's number)
    mention_persona: object  # mention_key, persona_id (resolved mentions only)
    audit: object  # event, persona_id, other_persona_id, reason, id_type, value_hash; `order` sorts it as embedded
    aliases: pd.DataFrame  # as oneid.Resolution.aliases
    next_seq: int
    stats: dict = field(default_factory=dict)


def _kept(frame, path: str):
    frame.write.mode("overwrite").parquet(path)
    return frame.sparkSession.read.parquet(path)


def _ids(col):
    """Sequence numbers -> persona ids ('P0000000042'); null for -1 or null."""
    from pyspark.sql import functions as F

    return F.when(col >= 0, F.concat(F.lit(oneid.ID_PREFIX), F.lpad(col.cast("string"), oneid.ID_WIDTH, "0")))


def dense_numbers(frame, order: list[str], name: str, path: str):
    """`frame` with `name`: 0, 1, 2... in `order` (distinct rows), numbered on the executors: a range partitioning,
    row numbers within each partition, and each partition's offset (the partitions' counts are all the driver
    sees). Written to `path` and read back."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    spark = frame.sparkSession
    # A range per core or so: each partition is numbered by one sort, so few large ones cost less than the 200
    # small ones of Spark's default shuffle partitions (each a task and a file) on a small cluster.
    parts = max(min(int(spark.conf.get("spark.sql.shuffle.partitions")), 4 * spark.sparkContext.defaultParallelism),
                1)
    ranged = _kept(frame.repartitionByRange(parts, *order).withColumn("_part", F.spark_partition_id()),
                   f"{path}-ranged")
    counts = sorted((r["_part"], r["n"]) for r in ranged.groupBy("_part").agg(F.count("*").alias("n")).collect())
    offsets, total = [], 0
    for part, n in counts:
        offsets.append((part, total))
        total += n
    offset = spark.createDataFrame(offsets or [(0, 0)], "_part int, _offset long")
    numbered = (ranged.join(F.broadcast(offset), "_part")
                .withColumn(name, F.col("_offset") + F.row_number().over(Window.partitionBy("_part").orderBy(*order))
                            - 1)
                .drop("_part", "_offset"))
    return _kept(numbered, path)


def _star_edges(pairs):
    """Every node of a mention linked to the mention's smallest node (oneid._star_edges)."""
    from pyspark.sql import functions as F

    first = pairs.groupBy("mention").agg(F.min("node").alias("first"))
    return (pairs.join(first, "mention").where(F.col("node") != F.col("first"))
            .select(F.col("node").alias("src"), F.col("first").alias("dst")))


def resolve(spark, mentions, cfg: IdentityConfig, *, blocked: dict[str, set[str]], previous=None,
            previous_aliases: pd.DataFrame | None = None, next_seq: int = 1, scratch: str) -> SparkResolution:
    """`oneid.resolve(..., on="value_hash")` on Spark: `mentions` (mention_key, id_type, value_hash) and `previous`
    (the last identity map: id_type, value_hash, persona_id) are Spark DataFrames."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    types = cfg.priority
    rank = {t: i for i, t in enumerate(types)}
    ranks = spark.createDataFrame([(t, i) for t, i in rank.items()], "id_type string, type_rank int")
    m = (mentions.select("mention_key", "id_type", F.col("value_hash").alias("value"))
         .join(F.broadcast(ranks), "id_type"))
    nodes = dense_numbers(m.select("type_rank", "value").distinct(), ["type_rank", "value"], "node",
                          f"{scratch}/nodes")
    pairs = _kept(m.join(nodes, ["type_rank", "value"])
                  .select(F.col("mention_key").alias("mention"), "node", "type_rank").distinct(), f"{scratch}/pairs")

    # Guard 1: blocked values and types that do not link (blocked wins, as in the embedded order).
    status = F.lit("linked")
    no_link = [rank[t] for t, s in cfg.identifiers.items() if not s.link]
    if no_link:
        status = F.when(F.col("type_rank").isin(no_link), "no_link").otherwise(status)
    rows = [(rank[t], v) for t, values in blocked.items() if t in rank for v in values]
    flagged = nodes.withColumn("_blocked", F.lit(False))
    if rows:
        listed = spark.createDataFrame(rows, "type_rank int, value string").withColumn("_hit", F.lit(True))
        flagged = (nodes.join(F.broadcast(listed), ["type_rank", "value"], "left")
                   .withColumn("_blocked", F.coalesce("_hit", F.lit(False))).drop("_hit"))
    flagged = flagged.withColumn("status", F.when(F.col("_blocked"), "blocked").otherwise(status)).drop("_blocked")

    # Guard 2: a value seen with more than K distinct accounts of one account type is shared.
    accounts = [rank[t] for t, s in cfg.identifiers.items() if s.account]
    limited = {rank[t]: s.max_accounts for t, s in cfg.identifiers.items() if s.max_accounts}
    shared_counts: dict[str, int] = {}
    if limited and accounts:
        acc = (pairs.where(F.col("type_rank").isin(accounts))
               .select("mention", F.col("node").alias("acc"), F.col("type_rank").alias("acc_type")))
        lim = pairs.where(F.col("type_rank").isin(list(limited)))
        most = (lim.join(acc, "mention").where(F.col("node") != F.col("acc"))
                .select("node", "type_rank", "acc", "acc_type").distinct()
                .groupBy("node", "type_rank", "acc_type").agg(F.count("*").alias("n"))
                .groupBy("node", "type_rank").agg(F.max("n").alias("n")))
        limits = spark.createDataFrame(list(limited.items()), "type_rank int, _limit long")
        shared = (most.join(F.broadcast(limits), "type_rank").where(F.col("n") > F.col("_limit"))
                  .select("node", F.lit(True).alias("_shared")))
        flagged = (flagged.join(shared, "node", "left")
                   .withColumn("status", F.when(F.col("_shared") & (F.col("status") == "linked"), "shared")
                               .otherwise(F.col("status"))).drop("_shared"))
    flagged = _kept(flagged, f"{scratch}/status")
    for r in flagged.where(F.col("status") == "shared").groupBy("type_rank").count().collect():
        shared_counts[types[r["type_rank"]]] = int(r["count"])
    shared_counts = {t: shared_counts[t] for t in types if t in shared_counts}

    # Link and find components; a component is labelled by its smallest node (round 0).
    linked = flagged.where(F.col("status") == "linked").select("node", "type_rank")
    linked_pairs = pairs.join(linked.select("node"), "node")
    edges = _kept(_star_edges(linked_pairs), f"{scratch}/edges")
    found = connected_components(edges, linked.select("node"), scratch=f"{scratch}/cc", src="src", dst="dst")
    comp = _kept(linked.join(found, "node").select("node", "type_rank", F.col("component").alias("label")),
                 f"{scratch}/comp-0")

    # Guard 3: oversized components, reported, then split by dropping the weakest types one at a time.
    limit = cfg.max_component_size
    sizes = comp.groupBy("label").agg(F.count("*").alias("size"))
    big = sizes.where(F.col("size") > limit)
    offenders = []
    top = big.orderBy(F.desc("size"), "label").limit(20).collect()
    if top:
        by_type = {(r["label"], r["type_rank"]): r["n"] for r in
                   comp.join(F.broadcast(spark.createDataFrame([(t["label"],) for t in top], "label long")), "label")
                   .groupBy("label", "type_rank").agg(F.count("*").alias("n")).collect()}
        for t in top:
            offenders.append({"size": int(t["size"]), "by_type": {
                types[r]: int(by_type[(t["label"], r)]) for r in range(len(types)) if (t["label"], r) in by_type}})
    split_nodes = None
    todo = big.select("label")
    for rnd, allowed in enumerate(range(len(types) - 1, 0, -1), start=1):
        if not offenders or todo.limit(1).count() == 0:
            break
        in_big = comp.join(F.broadcast(todo), "label")
        demoted = in_big.where(F.col("type_rank") >= allowed).select("node")
        members = in_big.where(F.col("type_rank") < allowed).select("node", "type_rank")
        sub_edges = _star_edges(pairs.join(members.select("node"), "node"))
        sub = connected_components(sub_edges, members.select("node"), scratch=f"{scratch}/split-{rnd}")
        relabelled = members.join(sub, "node").select(
            "node", "type_rank", (F.lit(rnd << ROUND_SHIFT) + F.col("component")).alias("label"))
        rest = comp.join(F.broadcast(todo), "label", "left_anti")
        comp = _kept(rest.unionByName(relabelled), f"{scratch}/comp-{rnd}")
        gone = demoted.select("node", F.lit(True).alias("_split"))
        split_nodes = gone if split_nodes is None else split_nodes.unionByName(gone)
        todo = (relabelled.groupBy("label").agg(F.count("*").alias("size"))
                .where(F.col("size") > limit).select("label"))
        todo = _kept(todo, f"{scratch}/todo-{rnd}")
    if split_nodes is not None:
        flagged = _kept(flagged.join(split_nodes, "node", "left")
                        .withColumn("status", F.when(F.col("_split"), "split").otherwise(F.col("status")))
                        .drop("_split"), f"{scratch}/status-split")

    # Stable ids: the sequence number each node had (matched per type on the hashed value).
    if previous is not None:
        prev = (previous.where(F.col("persona_id").isNotNull())
                .select("id_type", F.col("value_hash").alias("value"),
                        F.substring("persona_id", len(oneid.ID_PREFIX) + 1, 64).cast("long").alias("prev"))
                .join(F.broadcast(ranks), "id_type").drop("id_type").dropDuplicates(["type_rank", "value"]))
        flagged = flagged.join(prev, ["type_rank", "value"], "left")
    else:
        flagged = flagged.withColumn("prev", F.lit(None).cast("long"))
    flagged = _kept(flagged.withColumn("prev", F.coalesce("prev", F.lit(-1))), f"{scratch}/prev")
    frame = _kept(comp.join(flagged.select("node", "prev"), "node"), f"{scratch}/frame")

    # Each former persona stays with the component holding most of its identifiers (ties: lowest label); a
    # component holding several keeps the oldest; components without one get new numbers in label order.
    counts = _kept(frame.where(F.col("prev") >= 0).groupBy("prev", "label").agg(F.count("*").alias("n")),
                   f"{scratch}/counts")
    keeper = (counts.withColumn("_r", F.row_number().over(Window.partitionBy("prev").orderBy(F.desc("n"), "label")))
              .where(F.col("_r") == 1).drop("_r"))
    winners = (keeper.withColumn("_r", F.row_number().over(Window.partitionBy("label").orderBy("prev")))
               .where(F.col("_r") == 1).select("label", F.col("prev").alias("seq")))
    absorbed = _kept(keeper.join(winners.select(F.col("seq").alias("prev")), "prev", "left_anti")
                     .join(winners.withColumnRenamed("seq", "winner"), "label"), f"{scratch}/absorbed")
    fresh = dense_numbers(frame.select("label").distinct().join(winners, "label", "left_anti"), ["label"], "_i",
                          f"{scratch}/fresh")
    n_fresh = fresh.count()
    comp_seq = _kept(winners.unionByName(fresh.select("label", (F.col("_i") + next_seq).alias("seq"))),
                     f"{scratch}/comp_seq")
    seq = _kept(frame.join(comp_seq, "label").select("node", "label", "seq", "prev"), f"{scratch}/seq")

    # Audit: merges (with the identifier bridging them), splits, identifiers that stopped linking, dissolved ids.
    prev_of = flagged.select("node", "prev")
    both = edges.select(F.col("src").alias("a"), F.col("dst").alias("b")).unionByName(
        edges.select(F.col("dst").alias("a"), F.col("src").alias("b")))
    cross = (both.join(prev_of.withColumnRenamed("node", "a").withColumnRenamed("prev", "pa"), "a")
             .join(prev_of.withColumnRenamed("node", "b").withColumnRenamed("prev", "pb"), "b")
             .where((F.col("pa") >= 0) & (F.col("pa") != F.col("pb")))
             .groupBy(F.col("pa").alias("prev")).agg(F.min("b").alias("via")))
    merges = (absorbed.join(cross, "prev", "left")
              .select(F.lit("merge").alias("event"), _ids(F.col("winner")).alias("persona_id"),
                      _ids(F.col("prev")).alias("other_persona_id"), F.coalesce("via", F.lit(-1)).alias("node"),
                      F.lit(None).cast("string").alias("reason"),
                      F.array(F.lit(0), F.col("prev"), F.lit(0), F.lit(0)).alias("order")))
    first_node = seq.groupBy("label").agg(F.min("node").alias("first"))
    splits = (counts.join(keeper.select("prev", "label"), ["prev", "label"], "left_anti")
              .join(comp_seq, "label").join(first_node, "label")
              .select(F.lit("split").alias("event"), _ids(F.col("prev")).alias("persona_id"),
                      _ids(F.col("seq")).alias("other_persona_id"), F.col("first").alias("node"),
                      F.lit(None).cast("string").alias("reason"),
                      F.array(F.lit(1), F.col("prev"), -F.col("n"), F.col("label")).alias("order")))
    why = F.when(F.col("status") == "linked", None)
    for i, s in enumerate(oneid._UNLINK_ORDER):
        why = why.when(F.col("status") == s, i)
    left = flagged.where((F.col("prev") >= 0) & (F.col("status") != "linked")).withColumn("_why", why)
    unlinks = left.select(F.lit("unlink").alias("event"), _ids(F.col("prev")).alias("persona_id"),
                          F.lit(None).cast("string").alias("other_persona_id"), "node",
                          F.col("status").alias("reason"),
                          F.array(F.lit(2), F.col("node"), F.lit(0), F.lit(0)).alias("order"))
    before = (previous.where(F.col("persona_id").isNotNull())
              .select(F.substring("persona_id", len(oneid.ID_PREFIX) + 1, 64).cast("long").alias("prev")).distinct()
              if previous is not None else spark.createDataFrame([], "prev long"))
    live = seq.select(F.col("seq").alias("prev")).unionByName(absorbed.select("prev"))
    gone = _kept(before.join(live, "prev", "left_anti"), f"{scratch}/gone")
    cause = (left.join(gone, "prev")
             .withColumn("_r", F.row_number().over(Window.partitionBy("prev").orderBy("_why", "node")))
             .where(F.col("_r") == 1).select("prev", "node", "status", "type_rank"))
    gone_cause = gone.join(cause, "prev", "left")
    dissolves = gone_cause.select(
        F.lit("dissolve").alias("event"), _ids(F.col("prev")).alias("persona_id"),
        F.lit(None).cast("string").alias("other_persona_id"), F.coalesce("node", F.lit(-1)).alias("node"),
        F.coalesce("status", F.lit(oneid.GONE)).alias("reason"),
        F.array(F.lit(3), F.col("prev"), F.lit(0), F.lit(0)).alias("order"))
    kinds = spark.createDataFrame([(i, t) for t, i in rank.items()], "type_rank int, _kind string")
    retired = (gone_cause.join(F.broadcast(kinds), "type_rank", "left")
               .select(_ids(F.col("prev")).alias("persona_id"), F.lit(None).cast("string").alias("alias_of"),
                       F.when(F.col("node").isNotNull(),
                              F.concat(F.lit("dissolved: its "), F.col("_kind"), F.lit(" became "), F.col("status")))
                       .otherwise(F.lit("dissolved: " + oneid.GONE)).alias("reason")))
    events = merges.unionByName(splits).unionByName(unlinks).unionByName(dissolves)
    named = flagged.join(F.broadcast(kinds), "type_rank").select("node", F.col("_kind").alias("id_type"),
                                                                  F.col("value").alias("value_hash"))
    audit = _kept(events.join(named, "node", "left").drop("node"), f"{scratch}/audit")

    new_aliases = (absorbed.select(_ids(F.col("prev")).alias("persona_id"), _ids(F.col("winner")).alias("alias_of"),
                                   F.lit("merged").alias("reason"), F.lit(0).alias("_k"), F.col("prev").alias("_o"))
                   .unionByName(retired.select("*", F.lit(1).alias("_k"),
                                               F.substring("persona_id", len(oneid.ID_PREFIX) + 1, 64)
                                               .cast("long").alias("_o")))
                   .toPandas())  # one row per merge or dissolved persona of this run: merges, then retirements
    new_aliases = (new_aliases.sort_values(["_k", "_o"]).drop(columns=["_k", "_o"]).astype("string")
                   .reset_index(drop=True))
    aliases = oneid._merge_aliases(previous_aliases, new_aliases)

    out_nodes = (flagged.join(seq.select("node", "seq"), "node", "left").join(F.broadcast(kinds), "type_rank")
                 .select(F.col("_kind").alias("id_type"), F.col("value").alias("value_hash"),
                         _ids(F.col("seq")).alias("persona_id"),
                         F.when(F.col("seq").isNull() & (F.col("status") == "linked"), "unresolved")
                         .otherwise(F.col("status")).alias("status"), "node"))
    mention_persona = (pairs.join(seq.select("node", "seq"), "node").groupBy("mention")
                       .agg(F.min("seq").alias("seq"))
                       .select(F.col("mention").alias("mention_key"), _ids(F.col("seq")).alias("persona_id")))
    counts_row = {
        "identifiers": nodes.count(), "links": pairs.count(), "edges": edges.count(),
        "personas": seq.select("seq").distinct().count(),
        "blocked_values": flagged.where(F.col("status") == "blocked").count(),
        "merges": absorbed.count(), "splits": splits.count(),
        "unlinked": left.count(), "dissolved": gone.count(),
    }
    stats = {
        "identifiers": counts_row["identifiers"], "links": counts_row["links"], "edges": counts_row["edges"],
        "personas": counts_row["personas"], "shared_values": shared_counts,
        "blocked_values": counts_row["blocked_values"], "oversized_components": offenders,
        "new_personas": int(n_fresh), "merges": counts_row["merges"], "splits": counts_row["splits"],
        "unlinked": counts_row["unlinked"], "dissolved": counts_row["dissolved"],
    }
    return SparkResolution(out_nodes, mention_persona, audit, aliases, next_seq + int(n_fresh),
                           {k: (int(v) if isinstance(v, int) else v) for k, v in stats.items()})
