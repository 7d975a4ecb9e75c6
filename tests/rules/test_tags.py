"""Tag files: loading with line-numbered errors, every kind's semantics, dependencies, fit / evaluate, catalog."""

import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rules import RuleError, TagSet, load_tagset

NA = pd.NA
COLS = {"attr_age": "number", "tx_spend_365d": "number", "tx_count_365d": "number", "tx_recency_days": "number",
        "churn_risk": "number", "city": "string", "interest_beauty": "number", "interest_books": "number",
        "interest_food": "number"}


def write(tmp_path: Path, name: str, body: str) -> Path:
    """Write a tag file; a line holding only HEAD becomes the two common fields (name, category)."""
    text = re.sub(r"(?m)^( *)HEAD$", r"\1name: {zh: 标签, en: Tag}\n\1category: basic",
                  textwrap.dedent(body).lstrip("\n"))
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, body: str, columns=COLS, name: str = "tags.yaml") -> TagSet:
    return load_tagset([write(tmp_path, name, body)], columns=columns)


def load_error(tmp_path: Path, body: str, columns=COLS, name: str = "tags.yaml") -> str:
    with pytest.raises(RuleError) as info:
        load(tmp_path, body, columns, name)
    return str(info.value)


HEAD = "HEAD"   # expanded by write()


# --- every kind ---------------------------------------------------------------------------------------------------

def test_flag_is_a_nullable_boolean(tmp_path):
    ts = load(tmp_path, f"""
        tags:
          - id: adult
            {HEAD}
            kind: flag
            when: attr_age >= 18
        """)
    frame = pd.DataFrame({"attr_age": [17.0, 18.0, np.nan]}, index=["a", "b", "c"])
    out = ts.evaluate(frame, ts.fit(frame))
    assert list(out.columns) == ["adult"] and list(out.index) == ["a", "b", "c"]
    assert out["adult"].dtype == "boolean"
    assert out["adult"].tolist() == [False, True, NA]


ENUM = f"""
tags:
  - id: band
    {HEAD}
    kind: enum
    values:
      - {{value: young, name: {{zh: 年轻, en: Young}}, when: attr_age < 30}}
      - {{value: big, when: tx_spend_365d > 1000}}
      - {{value: any_age, when: attr_age >= 0}}
"""


def test_enum_first_match_wins_and_null_conditions_do_not_match(tmp_path):
    ts = load(tmp_path, ENUM)
    frame = pd.DataFrame({"attr_age": [20.0, 40.0, 40.0, np.nan, np.nan, 20.0],
                          "tx_spend_365d": [5000.0, 5000.0, 10.0, 5000.0, np.nan, np.nan]})
    out = ts.evaluate(frame, {})["band"]
    assert isinstance(out.dtype, pd.CategoricalDtype)
    assert list(out.cat.categories) == ["young", "big", "any_age"]
    assert out.tolist()[:3] == ["young", "big", "any_age"]
    assert out.tolist()[3] == "big"                   # age unknown: 'young' is null, does not match; spend matches
    assert pd.isna(out.iloc[4])                       # everything unknown and no else: null
    assert out.tolist()[5] == "young"


def test_enum_else(tmp_path):
    body = ENUM.replace("    kind: enum\n", "    kind: enum\n    else: other\n")
    ts = load(tmp_path, body)
    out = ts.evaluate(pd.DataFrame({"attr_age": [np.nan, np.nan], "tx_spend_365d": [np.nan, 0.0]}), {})["band"]
    assert out.tolist() == ["other", "other"]
    assert list(out.cat.categories) == ["young", "big", "any_age", "other"]
    named = ENUM.replace("    kind: enum\n", "    kind: enum\n    else: {value: other, name: {zh: 其他, en: Other}}\n")
    cat = load(tmp_path, named).catalog()[0]
    assert cat["values"][-1] == {"value": "other", "zh": "其他", "en": "Other"}
    assert cat["values"][0] == {"value": "young", "zh": "年轻", "en": "Young"}
    assert cat["values"][1] == {"value": "big", "zh": "big", "en": "big"}


EXCLUSIVE = f"""
tags:
  - id: age_band
    {HEAD}
    kind: enum
    exclusive: true
    values:
      - {{value: minor, when: attr_age < 18}}
      - {{value: adult, when: attr_age >= 18 and attr_age < 55}}
      - {{value: senior, when: attr_age >= 50}}
"""


def test_exclusive_overlap_is_found_when_the_file_loads(tmp_path):
    message = load_error(tmp_path, EXCLUSIVE)
    assert message == ("{}:10: tag 'age_band': exclusive, but values 'adult' and 'senior' overlap where attr_age is "
                       "in [50, 55)").format(tmp_path / "tags.yaml")
    fixed = EXCLUSIVE.replace("attr_age >= 50", "attr_age >= 55")
    ts = load(tmp_path, fixed)
    out = ts.evaluate(pd.DataFrame({"attr_age": [10.0, 18.0, 54.9, 55.0, np.nan]}), {})["age_band"]
    assert out.tolist()[:4] == ["minor", "adult", "adult", "senior"] and pd.isna(out.iloc[4])


def test_exclusive_overlap_on_two_columns_and_strings(tmp_path):
    body = f"""
        tags:
          - id: seg
            {HEAD}
            kind: enum
            exclusive: true
            values:
              - value: a
                when: city in ['sh', 'bj'] and attr_age > 30
              - value: b
                when: city == 'gz'
              - value: c
                when: city == 'bj' and attr_age between 20 and 40
        """
    message = load_error(tmp_path, body)
    assert ":12: tag 'seg': exclusive, but values 'a' and 'c' overlap where city = 'bj' and attr_age is in (30, 40]" \
        in message


def test_exclusive_data_overlap_is_found_at_evaluation(tmp_path):
    body = f"""
        tags:
          - id: risk
            {HEAD}
            kind: enum
            exclusive: true
            values:
              - {{value: high, when: churn_risk * 2 >= 1}}
              - {{value: low, when: churn_risk * 2 <= 1.2}}
        """
    ts = load(tmp_path, body)                         # not boxes (arithmetic): checked on the data
    ok = pd.DataFrame({"churn_risk": [0.1, 0.9, np.nan]})
    assert ts.evaluate(ok, {})["risk"].tolist()[:2] == ["low", "high"]
    bad = pd.DataFrame({"churn_risk": [0.55, 0.1, 0.58, 0.9]}, index=["p1", "p2", "p3", "p4"])
    with pytest.raises(RuleError) as info:
        ts.evaluate(bad, {})
    assert str(info.value) == (f"{tmp_path / 'tags.yaml'}:2: tag 'risk': exclusive, but 2 row(s) match more than "
                               "one value (row 'p1' matches 'high' and 'low')")


RFM = f"""
tags:
  - id: rfm
    {HEAD}
    kind: rfm
    recency: tx_recency_days
    frequency: tx_count_365d
    monetary: tx_spend_365d
"""


def rfm_frame() -> tuple[pd.DataFrame, list]:
    """Eight buyers, one per segment (R high = 10 days, F high = 10 orders, M high = 1000 CNY), then a non-buyer
    (outside the population) and a buyer with unknown recency (not scored, not in the means)."""
    rows = [  # recency, frequency, monetary, expected
        (10, 10, 1000, "important_value"), (10, 1, 1000, "important_develop"), (100, 10, 1000, "important_keep"),
        (100, 1, 1000, "important_retain"), (10, 10, 100, "general_value"), (10, 1, 100, "general_develop"),
        (100, 10, 100, "general_keep"), (100, 1, 100, "general_retain"),
        (5, 0, 0, None), (np.nan, 50, 99999, None),
    ]
    frame = pd.DataFrame({"tx_recency_days": [r[0] for r in rows], "tx_count_365d": [r[1] for r in rows],
                          "tx_spend_365d": [r[2] for r in rows]}, dtype=np.float32)
    return frame, [r[3] for r in rows]


def test_rfm_eight_segments(tmp_path):
    ts = load(tmp_path, RFM)
    frame, expected = rfm_frame()
    stats = ts.fit(frame)
    assert stats["rfm"] == {"kind": "rfm", "split": "mean", "population": 8, "version": 1,
                            "recency": 55.0, "frequency": 5.5, "monetary": 550.0}
    out = ts.evaluate(frame, json.loads(json.dumps(stats)))["rfm"]
    assert [None if pd.isna(v) else v for v in out] == expected
    assert list(out.cat.categories) == ["important_value", "important_develop", "important_keep", "important_retain",
                                        "general_value", "general_develop", "general_keep", "general_retain"]
    values = ts.catalog()[0]["values"]
    assert values[0] == {"value": "important_value", "zh": "重要价值客户", "en": "Important value customer"}
    assert values[7]["zh"] == "一般挽留客户"


def test_rfm_median_split_and_population(tmp_path):
    body = RFM + "    split: median\n    population: tx_count_365d >= 1 and tx_spend_365d > 50\n"
    ts = load(tmp_path, body)
    frame, expected = rfm_frame()
    stats = ts.fit(frame)
    assert (stats["rfm"]["recency"], stats["rfm"]["frequency"], stats["rfm"]["monetary"]) == (55.0, 5.5, 550.0)
    # one high-value buyer scored alone, online, with the batch statistics
    one = ts.evaluate(frame.iloc[[2]], stats)["rfm"]
    assert one.tolist() == ["important_keep"]
    with pytest.raises(RuleError, match="fitted with split 'mean', but the tag now has 'median': fit again"):
        ts.evaluate(frame, {"rfm": {**stats["rfm"], "split": "mean"}})


def test_fixed_edge_bucket_is_left_closed(tmp_path):
    ts = load(tmp_path, f"""
        tags:
          - id: aov
            {HEAD}
            kind: bucket
            input: tx_spend_365d / tx_count_365d
            edges: [100, 300]
            labels: [low, mid, high]
        """)
    frame = pd.DataFrame({"tx_spend_365d": [99.0, 100.0, 299.0, 300.0, 5.0, 1.0],
                          "tx_count_365d": [1.0, 1.0, 1.0, 1.0, np.nan, 0.0]})
    out = ts.evaluate(frame, {})["aov"]
    assert out.tolist()[:4] == ["low", "mid", "mid", "high"]
    assert out.isna().tolist()[4:] == [True, True]    # null input, division by zero


def test_quantile_bucket_fits_on_one_frame_and_evaluates_another(tmp_path):
    ts = load(tmp_path, f"""
        tags:
          - id: spend_level
            {HEAD}
            kind: bucket
            input: tx_spend_365d
            quantiles: [0.5, 0.9]
            labels: [low, high, top]
            population: tx_count_365d > 0
        """)
    population = pd.DataFrame({"tx_spend_365d": np.arange(101, dtype=float) * 10,
                               "tx_count_365d": np.ones(101)})
    population.loc[100, "tx_count_365d"] = 0          # 1000 CNY but not a buyer: not in the population
    stats = json.loads(json.dumps(ts.fit(population)))
    assert stats["spend_level"]["edges"] == pytest.approx([495.0, 891.0]) and stats["spend_level"]["population"] == 100
    online = pd.DataFrame({"tx_spend_365d": [0.0, 495.0, 900.0, 5000.0, np.nan, 700.0],
                           "tx_count_365d": [1.0, 1.0, 1.0, 3.0, 1.0, 0.0]})
    out = ts.evaluate(online, stats)["spend_level"]
    assert out.tolist()[:4] == ["low", "high", "top", "top"]
    assert out.isna().tolist()[4:] == [True, True]    # null input; outside the population
    with pytest.raises(RuleError, match="'spend_level': needs population statistics: `stats` has no entry"):
        ts.evaluate(online, {})
    with pytest.raises(RuleError, match=r"fitted for quantiles \[0.2\], but the tag now has \[0.5, 0.9\]"):
        ts.evaluate(online, {"spend_level": {"quantiles": [0.2], "edges": [1.0]}})


def test_top_x_percent_as_a_quantile_bucket_and_a_flag(tmp_path):
    ts = load(tmp_path, f"""
        tags:
          - id: value_tier
            {HEAD}
            kind: bucket
            input: tx_spend_365d
            quantiles: [0.8]
            labels: [other, top_20pct]
          - id: vip
            {HEAD}
            kind: flag
            when: value_tier == 'top_20pct'
        """)
    frame = pd.DataFrame({"tx_spend_365d": np.arange(1.0, 11.0)})
    out = ts.evaluate(frame, ts.fit(frame))
    assert out["vip"].tolist() == [False] * 8 + [True] * 2


@pytest.mark.parametrize("cuts, line, message", [
    ("edges: [100, 300, 300]", 6, "edges must be strictly increasing, but edges[2] = 300 follows 300"),
    ("edges: [500, 300, 800]", 6, "edges must be strictly increasing, but edges[1] = 300 follows 500"),
    ("quantiles: [0.5, 0.2, 0.9]", 6, "quantiles must be strictly increasing"),
    ("quantiles: [0.5, 1.0, 1.5]", 6, "quantiles must lie strictly between 0 and 1"),
    ("edges: [100, 200]", 7, "2 edges make 3 buckets, but 4 labels are given"),
])
def test_bad_bucket_edges(tmp_path, cuts, line, message):
    body = f"""
        tags:
          - id: b
            {HEAD}
            kind: bucket
            {cuts}
            labels: [a, b, c, d]
            input: tx_spend_365d
        """
    got = load_error(tmp_path, body)
    assert got.startswith(f"{tmp_path / 'tags.yaml'}:{line}: tag 'b': ") and message in got


def test_multi_line_edges_point_at_the_bad_element(tmp_path):
    body = f"""
        tags:
          - id: b
            {HEAD}
            kind: bucket
            input: tx_spend_365d
            labels: [a, b, c, d]
            edges:
              - 100
              - 300
              - 200
        """
    assert f"{tmp_path / 'tags.yaml'}:11: tag 'b': edges must be strictly increasing" in load_error(tmp_path, body)


def test_score_value_and_top(tmp_path):
    ts = load(tmp_path, f"""
        tags:
          - id: churn_risk
            {HEAD}
            kind: score
            input: churn_risk
          - id: spend_per_order
            {HEAD}
            kind: value
            input: tx_spend_365d / tx_count_365d
          - id: top_interests
            {HEAD}
            kind: top
            pattern: interest_*
            n: 2
          - id: strong_interests
            {HEAD}
            kind: top
            pattern: interest_*
            n: 3
            min: 0.5
          - id: likes_books
            {HEAD}
            kind: flag
            when: top_interests contains 'books' and churn_risk < 0.5
        """)
    frame = pd.DataFrame({"churn_risk": [0.2, 0.9, np.nan], "tx_spend_365d": [100.0, 50.0, 1.0],
                          "tx_count_365d": [4.0, 0.0, 1.0], "interest_beauty": [0.9, 0.1, np.nan],
                          "interest_books": [0.3, 0.1, np.nan], "interest_food": [0.6, 0.2, np.nan],
                          "attr_age": 1.0, "city": "sh"})
    out = ts.evaluate(frame, {})
    assert out["churn_risk"].dtype == np.float64 and out["churn_risk"].tolist()[:2] == [0.2, 0.9]
    assert out["spend_per_order"].tolist()[0] == 25.0 and np.isnan(out["spend_per_order"].iloc[1])
    assert out["top_interests"].tolist() == [("beauty", "food"), ("food", "beauty"), None]   # ties: name order
    assert out["strong_interests"].tolist() == [("beauty", "food"), (), None]
    assert out["likes_books"].tolist() == [False, False, NA]
    cat = {c["id"]: c for c in ts.catalog()}
    assert cat["churn_risk"]["type"] == "model" and cat["churn_risk"]["value_type"] == "number"
    assert cat["spend_per_order"]["type"] == "statistic"
    assert cat["top_interests"]["value_type"] == "list"
    assert [v["value"] for v in cat["top_interests"]["values"]] == ["beauty", "books", "food"]
    assert cat["likes_books"]["inputs"] == ["churn_risk", "interest_beauty", "interest_books", "interest_food"]


def test_top_matches_a_per_row_reference(tmp_path):
    """Largest first, ties by category name, nulls and values under `min` skipped, None when all are null."""
    ts = load(tmp_path, f"""
        tags:
          - id: t
            {HEAD}
            kind: top
            pattern: s_*
            n: 3
            min: 0.2
        """, columns={f"s_c{j}": "number" for j in range(6)})
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({f"s_c{j}": np.round(rng.random(600), 1) for j in range(6)})
    frame = frame.mask(rng.random(frame.shape) < 0.3)
    got = ts.evaluate(frame, {})["t"].tolist()
    for i, row in enumerate(frame.itertuples(index=False)):
        pairs = [(v, f"c{j}") for j, v in enumerate(row) if not np.isnan(v)]
        expected = None if not pairs else tuple(c for _, c in sorted((-v, c) for v, c in pairs if v >= 0.2))[:3]
        assert got[i] == expected, (i, row)


def test_a_score_must_name_one_column(tmp_path):
    message = load_error(tmp_path, f"""
        tags:
          - id: s
            {HEAD}
            kind: score
            input: churn_risk * 2
        """)
    assert ":6: tag 's': a score passes one model-score column through" in message


# --- references, order, cycles, unknown names ---------------------------------------------------------------------

def test_tags_reference_tags_in_dependency_order(tmp_path):
    ts = load(tmp_path, f"""
        tags:
          - id: old_big
            {HEAD}
            kind: flag
            when: is_old and spend_level == 'high'
          - id: spend_level
            {HEAD}
            kind: bucket
            input: tx_spend_365d
            edges: [1000]
            labels: [low, high]
          - id: is_old
            {HEAD}
            kind: flag
            when: attr_age >= 60
        """)
    assert [t.id for t in ts.tags] == ["spend_level", "is_old", "old_big"]
    frame = pd.DataFrame({"attr_age": [70.0, 70.0, 20.0, np.nan], "tx_spend_365d": [5000.0, 10.0, 5000.0, 5000.0]})
    assert ts.evaluate(frame, {})["old_big"].tolist() == [True, False, False, NA]
    assert ts.catalog()[2]["depends_on"] == ["is_old", "spend_level"]


def test_tags_across_files(tmp_path):
    a = write(tmp_path, "a.yaml", f"""
        tags:
          - id: uses_b
            {HEAD}
            kind: flag
            when: b_flag or attr_age > 90
        """)
    b = write(tmp_path, "b.yml", f"""
        tags:
          - id: b_flag
            {HEAD}
            kind: flag
            when: attr_age < 10
        """)
    (tmp_path / "notes.txt").write_text("not a tag file")
    ts = load_tagset([tmp_path], columns=COLS)       # a directory: every *.yaml / *.yml, sorted
    assert [t.id for t in ts.tags] == ["b_flag", "uses_b"]
    assert ts["uses_b"].source == f"{a}:2" and ts["b_flag"].source == f"{b}:2"


def test_a_cycle_names_its_tags_and_lines(tmp_path):
    message = load_error(tmp_path, f"""
        tags:
          - id: a
            {HEAD}
            kind: flag
            when: b and attr_age > 1
          - id: ok
            {HEAD}
            kind: flag
            when: attr_age > 1
          - id: b
            {HEAD}
            kind: flag
            when: c
          - id: c
            {HEAD}
            kind: flag
            when: not a
        """)
    f = tmp_path / "tags.yaml"
    assert message == f"{f}:2: tag 'a': dependency cycle: a ({f}:2) -> b ({f}:12) -> c ({f}:17) -> a ({f}:2)"


def test_a_tag_referencing_itself_is_a_cycle(tmp_path):
    assert "dependency cycle: a (" in load_error(tmp_path, f"""
        tags:
          - id: a
            {HEAD}
            kind: flag
            when: a
        """)


def test_unknown_column_with_did_you_mean(tmp_path):
    message = load_error(tmp_path, f"""
        tags:
          - id: fine
            {HEAD}
            kind: flag
            when: attr_age > 1
          - id: spend_level
            {HEAD}
            kind: bucket
            edges: [100]
            labels: [low, high]
            input: tx_spend_356d
        """)
    assert message == (f"{tmp_path / 'tags.yaml'}:13: tag 'spend_level': unknown column 'tx_spend_356d' "
                       "(did you mean 'tx_spend_365d'?)")


def test_unknown_tag_value_and_type_mismatch_are_load_errors(tmp_path):
    two = f"""
        tags:
          - id: lvl
            {HEAD}
            kind: bucket
            input: tx_spend_365d
            edges: [100]
            labels: [low, high]
          - id: f
            {HEAD}
            kind: flag
            when: attr_age > 1 and WHEN
        """
    typo = load_error(tmp_path, two.replace("WHEN", "lvl == 'hihg'"))
    assert f"{tmp_path / 'tags.yaml'}:13: tag 'f': when: 'lvl' has no value 'hihg' (did you mean 'high'?)" in typo
    assert "    attr_age > 1 and lvl == 'hihg'\n                            ^" in typo
    mismatch = load_error(tmp_path, two.replace("WHEN", "city > 3"))
    assert ":13: tag 'f': when: '>' orders numbers, but 'city' is a string" in mismatch
    not_bool = load_error(tmp_path, two.replace("attr_age > 1 and WHEN", "attr_age"))
    assert ":13: tag 'f': when must be a true/false condition (a condition such as 'x > 0'), but 'attr_age' is a " \
           "number" in not_bool
    bad_syntax = load_error(tmp_path, two.replace("WHEN", "and"))
    assert ":13: tag 'f': when: unexpected 'and' at column 18" in bad_syntax


def test_expression_errors_in_a_literal_block_point_at_their_line(tmp_path):
    message = load_error(tmp_path, f"""
        tags:
          - id: f
            {HEAD}
            kind: flag
            when: |
              attr_age > 1
              and tx_spend_365d > 100
              and or
        """)
    assert f"{tmp_path / 'tags.yaml'}:9: tag 'f': when: unexpected 'or'" in message


def test_duplicate_id_across_files_names_both(tmp_path):
    flag = f"""
        tags:
          - id: adult
            {HEAD}
            kind: flag
            when: attr_age >= 18
        """
    a = write(tmp_path, "a.yaml", flag)
    b = write(tmp_path, "b.yaml", "# mine\n# too\n" + textwrap.dedent(flag).lstrip("\n"))
    with pytest.raises(RuleError) as info:
        load_tagset([a, b], columns=COLS)
    assert str(info.value) == (f"{b}:4: tag 'adult': id already defined at {a}:2; tag ids must be unique across "
                               "all files")


def test_a_tag_id_may_not_shadow_a_column(tmp_path):
    message = load_error(tmp_path, f"""
        tags:
          - id: attr_age
            {HEAD}
            kind: value
            input: attr_age + 1
        """)
    assert ":2: tag 'attr_age': id is also the name of an input column" in message


# --- bad files: every error names the file and the line -----------------------------------------------------------

@pytest.mark.parametrize("body, line, fragment", [
    # bad YAML syntax
    ("tags:\n  - id: a\n    name: {zh: x, en: y\n    kind: flag\n", 4, "invalid YAML"),
    ("tags:\n  - id: a\n     kind: flag\n", 3, "invalid YAML"),
    ("tags:\n\t- id: a\n", 2, "invalid YAML"),
    # unknown key (with did-you-mean), in a tag and nested
    ("tags:\n  - id: a\n    name: {zh: x, en: y}\n    category: basic\n    kind: flag\n    whn: attr_age > 1\n", 6,
     "tag 'a': unknown key 'whn' (did you mean 'when'?)"),
    ("tags:\n  - id: a\n    name: {zh: x, en: y, fr: z}\n    category: basic\n    kind: flag\n    when: attr_age > 1\n",
     3, "tag 'a': unknown key 'fr'; expected one of zh, en"),
    ("tags:\n  - id: e\n    name: {zh: x, en: y}\n    category: basic\n    kind: enum\n    values:\n"
     "      - value: v\n        when: attr_age > 1\n        colour: red\n", 9, "tag 'e': unknown key 'colour'"),
    ("tag:\n  - id: a\n", 1, "unknown top-level key 'tag' (did you mean 'tags'?)"),
    # wrong type
    ("tags:\n  - id: a\n    name: {zh: x, en: y}\n    category: basic\n    kind: flag\n    version: two\n"
     "    when: attr_age > 1\n", 6, "tag 'a': version: Input should be a valid integer"),
    ("tags:\n  - id: a\n    name: {zh: x, en: y}\n    category: basic\n    kind: flag\n    when: [1, 2]\n", 6,
     "tag 'a': when: Input should be a valid string"),
    ("tags:\n  - id: b\n    name: {zh: x, en: y}\n    category: basic\n    kind: bucket\n    input: attr_age\n"
     "    labels: [a, b]\n    edges: [10, ten]\n", 8, "tag 'b': edges[1]: Input should be a valid number"),
    ("tags:\n  - id: a\n    name: {zh: x, en: y}\n    category: shopping\n    kind: flag\n    when: attr_age > 1\n", 4,
     "tag 'a': category: Input should be 'basic', 'consumption', 'behaviour', 'predictive' or 'enrichment'"),
    ("tags:\n  - id: a\n    name: {zh: x, en: y}\n    category: basic\n    kind: flags\n", 5,
     "tag 'a': unknown kind 'flags' (did you mean 'flag'?)"),
    ("tags:\n  - id: Bad-Id\n    name: {zh: x, en: y}\n    category: basic\n    kind: flag\n    when: attr_age > 1\n", 2,
     "id: Value error, 'Bad-Id' is not snake_case"),
    ("tags: {id: a}\n", 1, "'tags' must be a list of tags"),
    ("tags:\n  - just a string\n", 2, "each tag must be a mapping"),
    ("optional_inputs: maybe\ntags: []\n", 1, "optional_inputs must be true or false"),
    # missing field: the line of the tag (or of the mapping that lacks it)
    ("tags:\n  - id: a\n    category: basic\n    kind: flag\n    when: attr_age > 1\n", 2, "tag 'a': missing field 'name'"),
    ("tags:\n  - id: a\n    name: {zh: x, en: y}\n    category: basic\n    kind: flag\n", 2,
     "tag 'a': missing field 'when'"),
    ("tags:\n  - id: a\n    name: {zh: x}\n    category: basic\n    kind: flag\n    when: attr_age > 1\n", 3,
     "tag 'a': missing field 'en' in name"),
    ("tags:\n  - id: a\n    name: {zh: x, en: y}\n    category: basic\n    when: attr_age > 1\n", 2,
     "tag 'a': missing field 'kind'"),
    ("tags:\n  - id: e\n    name: {zh: x, en: y}\n    category: basic\n    kind: enum\n    values:\n"
     "      - value: v\n      - value: w\n        when: attr_age > 1\n", 7, "tag 'e': missing field 'when' in values[0]"),
    # duplicate keys in one mapping
    ("tags:\n  - id: a\n    name: {zh: x, en: y}\n    category: basic\n    kind: flag\n    when: attr_age > 1\n"
     "    when: attr_age > 2\n", 7, "key 'when' appears twice in one mapping (first at line 6)"),
    ("\n", 1, "empty file"),
])
def test_bad_files_report_file_and_line(tmp_path, body, line, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(RuleError) as info:
        load_tagset([path], columns=COLS)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert fragment in message, message


def test_a_comma_in_flow_text_gets_a_hint(tmp_path):
    message = load_error(tmp_path, """
        tags:
          - id: a
            name: {zh: x, en: y}
            category: basic
            kind: flag
            description: {zh: 说明, en: Bought twice, or more}
            when: attr_age > 1
        """)
    assert ":6: tag 'a': unknown key 'or more'" in message and "quote text that contains commas" in message


def test_missing_path_is_an_error():
    with pytest.raises(RuleError, match="no such file or directory"):
        load_tagset([Path("/nonexistent/tags.yaml")], columns=COLS)


# --- optional inputs, segments ------------------------------------------------------------------------------------

OPTIONAL = f"""
optional_inputs: true
tags:
  - id: app_heavy
    {HEAD}
    kind: flag
    when: eng_sessions_30d > 20
  - id: heavy_and_old
    {HEAD}
    kind: flag
    when: app_heavy and attr_age > 60
  - id: interests
    {HEAD}
    kind: top
    pattern: aff_view_share_*_90d
  - id: old
    {HEAD}
    kind: flag
    when: attr_age > 60
"""


def test_optional_inputs_drop_tags_whose_columns_are_missing(tmp_path):
    ts = load(tmp_path, OPTIONAL)
    assert [t.id for t in ts.tags] == ["old"]
    assert ts.unavailable == {"app_heavy": "missing column 'eng_sessions_30d'",
                              "heavy_and_old": "depends on unavailable tag 'app_heavy'",
                              "interests": "no column matches 'aff_view_share_*_90d'"}
    assert ts.inputs() == {"attr_age"}
    with_app = {**COLS, "eng_sessions_30d": "number", "aff_view_share_beauty_90d": "number"}
    assert [t.id for t in load(tmp_path, OPTIONAL, with_app).tags] == ["app_heavy", "heavy_and_old", "interests",
                                                                       "old"]


def test_without_optional_inputs_a_missing_column_is_an_error(tmp_path):
    message = load_error(tmp_path, OPTIONAL.replace("optional_inputs: true\n", ""))
    assert message.startswith(f"{tmp_path / 'tags.yaml'}:6: tag 'app_heavy': unknown column 'eng_sessions_30d'")


def test_a_strict_tag_depending_on_a_dropped_optional_tag_is_an_error(tmp_path):
    write(tmp_path, "a_defaults.yaml", OPTIONAL)
    write(tmp_path, "b_mine.yaml", f"""
        tags:
          - id: mine
            {HEAD}
            kind: flag
            when: app_heavy
        """)
    with pytest.raises(RuleError, match=r"b_mine.yaml:2: tag 'mine': depends on tag 'app_heavy' \(.*a_defaults.yaml:3\)"
                                        r", which is unavailable in this workspace: missing column 'eng_sessions_30d'"):
        load_tagset([tmp_path], columns=COLS)


def test_segments_are_kept_raw_with_lines(tmp_path):
    ts = load(tmp_path, f"""
        tags:
          - id: old
            {HEAD}
            kind: flag
            when: attr_age > 60
        segments:
          - id: old_rich
            when: old and whatever_segments_mean
        """)
    (seg,) = ts.segment_nodes
    assert seg.line == 7 and seg.node.value[0].start_mark.line + 1 == 8
    assert [t.id for t in ts.tags] == ["old"]


def test_a_file_with_only_segments_loads(tmp_path):
    ts = load(tmp_path, "segments:\n  - id: s\n    when: x\n")
    assert ts.tags == [] and len(ts.segment_nodes) == 1


# --- evaluation contract ------------------------------------------------------------------------------------------

def test_evaluate_never_refits_and_one_row_matches_the_batch(tmp_path):
    ts = load(tmp_path, f"""
        tags:
          - id: lvl
            {HEAD}
            kind: bucket
            input: tx_spend_365d
            quantiles: [0.5]
            labels: [low, high]
          - id: rich_old
            {HEAD}
            kind: flag
            when: lvl == 'high' and attr_age > 50
        """)
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"tx_spend_365d": rng.random(200) * 1000, "attr_age": rng.random(200) * 80})
    stats = ts.fit(frame)
    batch = ts.evaluate(frame, stats)
    for i in (0, 17, 199):
        one = ts.evaluate(frame.iloc[[i]], stats)
        pd.testing.assert_frame_equal(one, batch.iloc[[i]])
    # a lone online row is judged against the population's median, not its own
    assert ts.evaluate(pd.DataFrame({"tx_spend_365d": [stats["lvl"]["edges"][0] - 1], "attr_age": [60.0]}),
                       stats)["lvl"].tolist() == ["low"]


def test_a_frame_missing_an_input_column_is_an_error(tmp_path):
    ts = load(tmp_path, f"""
        tags:
          - id: old
            {HEAD}
            kind: flag
            when: attr_age > 60
        """)
    with pytest.raises(RuleError, match=r"tags.yaml:2: tag 'old': the frame has no column 'attr_age'"):
        ts.evaluate(pd.DataFrame({"x": [1.0]}), {})


def test_string_columns_in_rules(tmp_path):
    ts = load(tmp_path, f"""
        tags:
          - id: shanghai
            {HEAD}
            kind: flag
            when: city == '上海' or city in ['sh']
        """)
    frame = pd.DataFrame({"city": ["上海", "sh", "北京", None]})
    assert ts.evaluate(frame, {})["shanghai"].tolist() == [True, True, False, NA]


def test_catalog_has_every_field(tmp_path):
    ts = load(tmp_path, """
        tags:
          - id: adult
            name: {zh: 成年人, en: Adult}
            category: basic
            kind: flag
            owner: crm-team
            cadence: weekly
            version: 3
            description: {zh: 年满18岁, en: Aged 18 or over}
            when: attr_age >= 18
        """)
    (entry,) = ts.catalog()
    assert entry == {
        "id": "adult", "name_zh": "成年人", "name_en": "Adult", "category": "basic", "category_zh": "基础属性",
        "type": "rule", "kind": "flag", "value_type": "bool",
        "values": [{"value": True, "zh": "是", "en": "yes"}, {"value": False, "zh": "否", "en": "no"}],
        "owner": "crm-team", "description": "Aged 18 or over", "description_zh": "年满18岁", "cadence": "weekly",
        "version": 3, "source": f"{tmp_path / 'tags.yaml'}:2", "inputs": ["attr_age"], "depends_on": [],
    }
    json.dumps(ts.catalog())


def test_an_empty_population_fits_to_nulls_and_an_empty_frame_evaluates(tmp_path):
    ts = load(tmp_path, RFM)
    frame, _ = rfm_frame()
    stats = ts.fit(frame.iloc[:0])
    assert stats["rfm"]["population"] == 0 and stats["rfm"]["recency"] is None
    assert ts.evaluate(frame, stats)["rfm"].isna().all()
    empty = ts.evaluate(frame.iloc[:0], ts.fit(frame))
    assert empty.shape == (0, 1) and isinstance(empty["rfm"].dtype, pd.CategoricalDtype)
