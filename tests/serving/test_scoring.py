"""The offline feature frame batch scoring reads, and the scoring core on columns (no server, no models)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import store as feature_store
from persona.workspace import Workspace
from features import offline
from serving import scoring

D1 = pd.Timestamp("2026-01-01", tz="UTC")
D2 = pd.Timestamp("2026-02-01", tz="UTC")


def write_group(ws: Workspace, group: str, rows: list[tuple[str, pd.Timestamp, float]], feature: str,
                dtype=pa.float32()) -> None:
    folder = feature_store.offline_dir(ws)
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table({
        "persona_id": pa.array([p for p, _, _ in rows], pa.string()),
        "event_timestamp": pa.array([t.to_pydatetime() for _, t, _ in rows], pa.timestamp("us", "UTC")),
        "created_timestamp": pa.array([t.to_pydatetime() for _, t, _ in rows], pa.timestamp("us", "UTC")),
        feature: pa.array([v for _, _, v in rows], dtype),
    })
    pq.write_table(table, folder / f"{group}.parquet")


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace.open(tmp_path)


def test_groups_are_aligned_by_persona_at_the_date_whatever_their_coverage_and_order(ws):
    # attributes (the largest) lacks "e", which only transactions holds; engagement is unsorted; realtime is int
    write_group(ws, "attributes", [("a", D1, 1.0), ("b", D1, 2.0), ("c", D1, 3.0), ("d", D1, 4.0),
                                   ("a", D2, 10.0), ("b", D2, 20.0), ("c", D2, 30.0), ("d", D2, 40.0)], "attr_x")
    write_group(ws, "transactions", [("b", D2, 0.5), ("e", D2, 0.25)], "tx_y")
    write_group(ws, "engagement", [("d", D2, 7.0), ("a", D2, 5.0)], "eng_z")
    write_group(ws, "realtime", [("a", D2, 3), ("b", D2, 4), ("c", D2, 5), ("d", D2, 6)], "rt_n", pa.int64())
    got = offline.offline_frame(ws, D2).set_index("persona_id")
    assert got.index.tolist() == ["a", "b", "c", "d", "e"]
    assert got["attr_x"].tolist()[:4] == [10.0, 20.0, 30.0, 40.0] and np.isnan(got.at["e", "attr_x"])
    assert got["tx_y"].fillna(-1).tolist() == [-1, 0.5, -1, -1, 0.25]
    assert got["eng_z"].fillna(-1).tolist() == [5.0, -1, -1, 7.0, -1]
    assert got["rt_n"].fillna(-1).tolist() == [3, 4, 5, 6, -1]
    assert got["attr_x"].dtype == np.float32 and got["rt_n"].dtype == np.float64  # ints gain NaN: float64
    only = offline.offline_frame(ws, D2, columns=["tx_y"])
    assert list(only.columns) == ["persona_id", "tx_y"] and only["persona_id"].tolist() == ["b", "e"]
    earlier = offline.offline_frame(ws, D1).set_index("persona_id")
    assert earlier.index.tolist() == ["a", "b", "c", "d"] and earlier["attr_x"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert earlier["tx_y"].isna().all()


def test_a_group_covering_everyone_in_order_is_taken_in_place(ws):
    rows = [(f"p{i:03d}", D1, float(i)) for i in range(50)]
    write_group(ws, "attributes", rows, "attr_x")
    write_group(ws, "affinity", rows[::-1], "aff_y")  # the same personas, reversed
    got = offline.offline_frame(ws, D1)
    assert got["persona_id"].tolist() == [p for p, _, _ in rows]
    assert got["attr_x"].tolist() == got["aff_y"].tolist() == [float(i) for i in range(50)]


def test_without_snapshots_the_error_says_to_build_features(ws):
    with pytest.raises(FileNotFoundError, match="persona features"):
        offline.offline_frame(ws, D1)


def test_matrix_columns_give_named_views_and_gather_float32_with_nan_for_absent_names():
    matrix = np.array([[1.0, 2.0, np.nan], [4.0, 5.0, 6.0]])
    cols = scoring.MatrixColumns(matrix, ["a", "b", "c"])
    assert list(cols) == ["a", "b", "c"] and "b" in cols and "z" not in cols and len(cols) == 3
    assert cols["b"].tolist() == [2.0, 5.0]
    x = cols.take(["c", "zz", "a"])
    assert x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(x, np.array([[np.nan, np.nan, 1.0], [6.0, np.nan, 4.0]], dtype=np.float32))


# --- what to compute again (Scorer.plan), on a real tag set and no model ----------------------------------------
RULES = """
tags:
  - {id: browsing, name: {zh: 浏览, en: Browsing}, category: behaviour, kind: flag, when: rt_views_1h > 0}
  - {id: big, name: {zh: 大额, en: Big}, category: consumption, kind: flag, when: tx_amount > 100}
  - {id: hot, name: {zh: 热, en: Hot}, category: behaviour, kind: flag, when: browsing and big}
  - {id: calm, name: {zh: 静, en: Calm}, category: behaviour, kind: flag, when: not big}
  - {id: spend, name: {zh: 额, en: Spend}, category: consumption, kind: value, input: tx_amount * 2}
"""


@pytest.fixture
def scorer(tmp_path) -> scoring.Scorer:
    from rules import load_tagset

    (tmp_path / "rules.yaml").write_text(RULES, encoding="utf-8")
    tagset = load_tagset([tmp_path / "rules.yaml"], columns={"rt_views_1h": "number", "tx_amount": "number"})
    return scoring.Scorer(scoring.ModelSet(), tagset, {})


def test_a_plan_holds_the_rules_reading_what_changed_directly_or_through_a_tag(scorer):
    plan = scorer.plan(["rt_views_1h"])
    assert plan.tags == ("browsing", "hot") and not plan.empty and not plan.full
    assert sorted(t.id for t in plan.tagset.tags) == ["big", "browsing", "hot"]  # `big` only to evaluate `hot`
    assert scorer.plan(["tx_amount"]).tags == ("big", "hot", "calm", "spend")
    assert scorer.plan([]).empty and scorer.plan(["unrelated"]).empty
    assert scorer.plan(all_rules=True).tags == ("browsing", "big", "hot", "calm", "spend")
    assert scorer.plan(["rt_views_1h"]) is plan  # worked out once per set of changes


def test_computing_a_plan_again_equals_scoring_everything_on_the_same_features(scorer):
    columns = {"rt_views_1h": np.array([0.0, 3.0, 5.0, np.nan]), "tx_amount": np.array([50.0, 150.0, np.nan, 200.0])}
    everything = scorer.score_columns(columns, 4)
    plan = scorer.plan(["rt_views_1h"])
    again = scorer.recompute(plan, columns, 4, {})
    assert set(again) == {"browsing", "hot"}
    for tag in again:
        assert list(again[tag]) == list(everything[tag]), tag
    assert scorer.recompute(scorer.full_plan(), columns, 4, {}).keys() == everything.keys()


def test_rules_hash_changes_with_a_tag_definition(scorer, tmp_path):
    from rules import load_tagset

    before = scoring.rules_hash(scorer.tagset)
    columns = {"rt_views_1h": "number", "tx_amount": "number"}
    (tmp_path / "rules.yaml").write_text(RULES.replace("tx_amount * 2", "tx_amount * 3"), encoding="utf-8")
    edited = load_tagset([tmp_path / "rules.yaml"], columns=columns)  # the same version, another expression
    (tmp_path / "rules.yaml").write_text(RULES, encoding="utf-8")
    again = load_tagset([tmp_path / "rules.yaml"], columns=columns)
    assert scoring.rules_hash(edited) != before and scoring.rules_hash(again) == before


def test_pack_gives_each_row_its_values_as_the_profile_answers_them():
    columns = {"score": np.array([0.25, np.nan]), "flag": pd.array([True, None], dtype="boolean"),
               "band": pd.Categorical(["high", None], categories=["low", "high"]),
               "top": pd.Series([("a", "b"), None], dtype=object)}
    assert scoring.pack(columns, ["score", "flag", "band", "top"]) == ['[0.25,true,"high",["a","b"]]',
                                                                       "[null,null,null,null]"]
