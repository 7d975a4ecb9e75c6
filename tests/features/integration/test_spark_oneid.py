"""OneID on Spark (features/integration/spark_oneid.py) resolves exactly as the embedded resolver
(features/integration/oneid.py): the same persona_ids, statuses, mention assignments, audit events (in the same
order), aliases, next sequence number and statistics, on random identity graphs written here with shared and blocked
values, a type that does not link and oversized components, then on a second run over changed mentions (merges,
splits, identifiers that stop linking, personas that dissolve). Spark runs on local[2]."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.integration.oneid import resolve
from features.integration.spark_oneid import resolve as resolve_on_spark
from persona.config import IdentityConfig

pytestmark = pytest.mark.slow
CONFIG = IdentityConfig(identifiers={
    "member_id": {"normalise": "id", "account": True},
    "account_id": {"normalise": "id", "account": True},
    "phone": {"normalise": "phone", "max_accounts": 2},
    "email": {"normalise": "email", "max_accounts": 3},
    "device_id": {"normalise": "id", "link": False},
}, max_component_size=8)


def _mentions(rng: np.random.Generator, n: int, *, first_key: int = 0) -> pd.DataFrame:
    """n mentions, each carrying 1-3 identifiers drawn from pools small enough to chain people together."""
    pools = {"member_id": 900, "account_id": 700, "phone": 500, "email": 600, "device_id": 50}
    rows = []
    types = list(pools)
    for k in range(n):
        for t in rng.choice(types, size=rng.integers(1, 4), replace=False):
            rows.append((first_key + k, t, f"{t[:2]}{rng.integers(pools[t]):05d}"))
    return pd.DataFrame(rows, columns=["mention_key", "id_type", "value_hash"]).astype(
        {"mention_key": "int64", "id_type": "string", "value_hash": "string"})


def _both(spark, tmp_path, mentions: pd.DataFrame, blocked, previous=None, previous_aliases=None, next_seq=1,
          name="run"):
    embedded = resolve(mentions, CONFIG, blocked=blocked, previous=previous, previous_aliases=previous_aliases,
                       next_seq=next_seq, on="value_hash")
    prev_df = None if previous is None else spark.createDataFrame(previous.astype(object).where(previous.notna(), None))
    on_spark = resolve_on_spark(spark, spark.createDataFrame(mentions.astype({"id_type": object, "value_hash": object})),
                                CONFIG, blocked=blocked, previous=prev_df, previous_aliases=previous_aliases,
                                next_seq=next_seq, scratch=str(tmp_path / name))
    return embedded, on_spark


def _text(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype(object).where(frame.notna(), None).reset_index(drop=True)


def _assert_same(embedded, on_spark) -> pd.DataFrame:
    nodes = on_spark.nodes.toPandas().drop(columns="node").sort_values(["id_type", "value_hash"])
    want = embedded.nodes[["id_type", "value_hash", "persona_id", "status"]].sort_values(["id_type", "value_hash"])
    pd.testing.assert_frame_equal(_text(nodes), _text(want), obj="nodes")
    got = on_spark.mention_persona.toPandas().sort_values("mention_key")
    want = embedded.mention_persona.sort_values("mention_key")
    assert got["mention_key"].tolist() == want["mention_key"].tolist()
    assert got["persona_id"].tolist() == want["persona_id"].astype(object).tolist()
    audit = on_spark.audit.toPandas()
    audit = audit.iloc[sorted(range(len(audit)), key=lambda i: list(audit["order"].iloc[i]))].drop(columns="order")
    want = embedded.audit[["event", "persona_id", "other_persona_id", "reason", "id_type", "value_hash"]]
    pd.testing.assert_frame_equal(_text(audit[want.columns]), _text(want), obj="audit")
    pd.testing.assert_frame_equal(_text(on_spark.aliases), _text(embedded.aliases), obj="aliases")
    assert on_spark.next_seq == embedded.next_seq
    stats = {k: v for k, v in embedded.stats.items() if k != "seconds"}
    assert on_spark.stats == stats
    return embedded.nodes


def test_first_and_second_run_resolve_as_the_embedded_resolver(spark, tmp_path):
    rng = np.random.default_rng(7)
    first = _mentions(rng, 1500)
    blocked = {"phone": {"ph00001", "ph00002"}, "email": {"em00003"}}
    embedded, on_spark = _both(spark, tmp_path, first, blocked, name="one")
    # the graph exercises every guard
    assert embedded.stats["shared_values"] and embedded.stats["blocked_values"]
    assert embedded.stats["oversized_components"]
    assert set(embedded.nodes["status"]) >= {"linked", "shared", "blocked", "no_link", "split"}
    nodes = _assert_same(embedded, on_spark)

    # Day two: a third of the mentions gone (splits, dissolved personas), new ones (merges), a value now blocked.
    keep = first[first["mention_key"] % 3 != 0]
    second = pd.concat([keep, _mentions(rng, 400, first_key=10_000)], ignore_index=True)
    linked_phone = nodes.loc[(nodes["id_type"] == "phone") & (nodes["status"] == "linked"), "value_hash"].iloc[0]
    blocked = {**blocked, "phone": blocked["phone"] | {linked_phone}}
    previous = embedded.nodes[["id_type", "value_hash", "persona_id"]]
    embedded2, on_spark2 = _both(spark, tmp_path, second, blocked, previous=previous,
                                 previous_aliases=embedded.aliases, next_seq=embedded.next_seq, name="two")
    events = set(embedded2.audit["event"])
    assert {"merge", "split", "unlink"} <= events
    _assert_same(embedded2, on_spark2)


def test_a_graph_without_a_guard_tripped(spark, tmp_path):
    mentions = pd.DataFrame({"mention_key": [1, 1, 2, 2, 3], "id_type": ["member_id", "phone", "phone", "email",
                                                                          "account_id"],
                             "value_hash": ["m1", "p1", "p1", "e1", "a1"]}).astype(
        {"mention_key": "int64", "id_type": "string", "value_hash": "string"})
    embedded, on_spark = _both(spark, tmp_path, mentions, {})
    _assert_same(embedded, on_spark)
    assert embedded.stats["personas"] == 2
