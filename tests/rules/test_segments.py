"""Audience segments over hand-written tag snapshots: loading errors name file and line, counts and set algebra
match numpy, segments refer to each other (not in a cycle), opt-outs are left out, exports carry only hashes."""

import json
import shutil
import textwrap

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from persona.cli import app
from persona.workspace import Workspace, publishing, write_parquet_atomic
from rules import history
from rules.segments import Audience, SegmentError, count, export, load_segments, overlap, profile

N = 200
SEGMENTS = """\
segments:
  - id: risky
    when: "churn_risk >= 0.6"
  - id: vip
    name: {zh: 高价值, en: VIP}
    when: "high_value_customer"
  - id: vip_at_risk
    intersection: [vip, risky]
  - id: vip_or_risky
    union: [vip, risky]
  - id: safe_vip
    difference: [vip, risky]
  - id: beauty_vip
    when: "vip and top_interests contains 'beauty'"
  - id: everyone_risky
    when: "churn_risk >= 0.6"
    include_opted_out: true
"""
CONFIG = {
    "version": 1,
    "sources": {"crm": {"channel": "crm", "kind": "profile", "path": "raw/crm.csv",
                        "identifiers": {"member_id": "member_id", "phone": "mobile"}}},
    "identity": {"identifiers": {"member_id": {"account": True}, "phone": {"normalise": "phone"}}},
    "tags": {"defaults": False},
}


def _data(seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    ids = [f"P{i:04d}" for i in range(N)]
    churn = rng.uniform(0, 1, N)
    churn[rng.choice(N, 10, replace=False)] = np.nan  # not scored: never a member of a churn condition
    vip = pd.array(rng.choice([True, False, None], N, p=[0.3, 0.6, 0.1]), dtype="boolean")
    interests = [tuple(rng.choice(["beauty", "food", "toys"], rng.integers(0, 3), replace=False)) for _ in range(N)]
    snap = pd.DataFrame({
        "persona_id": ids, "churn_risk": churn,
        "churn_risk_band": pd.Series(pd.Categorical(
            np.where(np.isnan(churn), None, np.where(churn >= 0.6, "high", np.where(churn >= 0.3, "medium", "low"))),
            categories=["low", "medium", "high"])),
        "high_value_customer": vip, "top_interests": pd.Series(interests, dtype=object),
    })
    consent = rng.choice([True, False, None], N, p=[0.7, 0.2, 0.1])
    profiles = pd.DataFrame({
        "persona_id": ids, "consent_marketing": pd.array(consent, dtype="boolean"),
        "city": rng.choice(["Shanghai", "Beijing"], N),
        "phone_hash": [f"{i:064x}" for i in range(N)], "member_id_hash": [f"{i + 7:064x}" for i in range(N)],
    })
    return snap, profiles


def _make(root, snap: pd.DataFrame, profiles: pd.DataFrame, date: str = "2025-10-01") -> Workspace:
    (root / "persona.yaml").write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    (root / "rules").mkdir(exist_ok=True)
    (root / "rules" / "segments.yaml").write_text(SEGMENTS, encoding="utf-8")
    ws = Workspace.open(root)
    history.write(ws, date, history.to_arrow(snap), {"date": date, "tags": []})
    with publishing(ws, "integrated", "run-1") as out:
        write_parquet_atomic(out / "profiles.parquet", profiles)
    return ws


@pytest.fixture
def data():
    return _data()


@pytest.fixture
def ws(tmp_path, data) -> Workspace:
    return _make(tmp_path, *data)


@pytest.fixture
def aud(ws) -> Audience:
    return Audience.open(ws, load_segments([ws.root / "rules"]))


@pytest.fixture
def truth(data) -> dict[str, np.ndarray]:
    snap, profiles = data
    opted_out = (profiles["consent_marketing"] == False).fillna(False).to_numpy(bool)  # noqa: E712
    risky = (snap["churn_risk"] >= 0.6).to_numpy()  # NaN >= 0.6 is False
    vip = snap["high_value_customer"].fillna(False).to_numpy(bool)
    beauty = snap["top_interests"].map(lambda v: "beauty" in v).to_numpy(bool)
    return {"opted_out": opted_out, "risky": risky, "vip": vip, "beauty": beauty}


# --- loading -----------------------------------------------------------------------------------------------------
def _load_text(tmp_path, text: str):
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path, lambda: load_segments([path])


def test_declared_segments_load_with_their_source_line(ws):
    found = load_segments([ws.root / "rules"])
    assert list(found)[:3] == ["risky", "vip", "vip_at_risk"]
    assert found["vip"].source.endswith("segments.yaml:4") and found["vip"].name.en == "VIP"
    assert found["vip_at_risk"].references() == {"vip", "risky"}
    assert found["beauty_vip"].references() == {"vip", "top_interests"}
    assert load_segments([ws.root / "nowhere"]) == {}


@pytest.mark.parametrize("text,match", [
    ("segments:\n  - id: a\n    when: 'x > 1'\n   bad: [\n", r"bad.yaml:\d+: not valid YAML"),
    ("segments:\n  - id: a\n    when: 'x > 1'\n    colour: red\n", r"bad.yaml:4: segment 'a': colour: Extra inputs"),
    ("segments:\n  - id: a\n    when: 'x > 1'\n  - id: a\n    when: 'x > 2'\n",
     r"bad.yaml:4: segment 'a' is already defined at .*bad.yaml:2"),
    ("segments:\n  - id: a\n    owner: me\n    when: 'x >'\n", r"bad.yaml:4: segment 'a': "),
    ("segments:\n  - id: a\n    when: 'x > 1'\n    union: [b, c]\n", r"bad.yaml:2: .*exactly one of when"),
    ("segments:\n  - id: Bad-Id\n    when: 'x > 1'\n", r"bad.yaml:2: segment 'Bad-Id': id:"),
    ("segments:\n  - id: a\n    difference: [b, c, d]\n", r"bad.yaml:3: segment 'a': difference"),
    ("segments: {a: 1}\n", r"bad.yaml:1: 'segments' must be a list"),
    ("segments:\n  - just a string\n", r"bad.yaml:2: a segment must be a mapping"),
])
def test_a_bad_definition_names_the_file_and_line(tmp_path, text, match):
    _, load = _load_text(tmp_path, text)
    with pytest.raises(SegmentError, match=match):
        load()


def test_the_same_id_in_two_files_names_both(tmp_path):
    (tmp_path / "a.yaml").write_text("segments:\n  - id: s\n    when: 'x > 1'\n", encoding="utf-8")
    (tmp_path / "b.yml").write_text("tags: []\nsegments:\n  - id: s\n    when: 'x > 2'\n", encoding="utf-8")
    with pytest.raises(SegmentError, match=r"b.yml:3: segment 's' is already defined at .*a.yaml:2"):
        load_segments([tmp_path])


# --- evaluation ----------------------------------------------------------------------------------------------------
def test_an_expression_counts_its_members_without_opt_outs(aud, truth):
    result = count(aud, "churn_risk >= 0.6")
    assert result["count"] == int((truth["risky"] & ~truth["opted_out"]).sum())
    assert result["population"] == N and result["date"] == "2025-10-01"
    assert result["share"] == pytest.approx(result["count"] / N)
    with_all = count(aud, "churn_risk >= 0.6", include_opted_out=True)
    assert with_all["count"] == int(truth["risky"].sum()) > result["count"]
    # unknown consent is not an opt-out; a persona whose vip is unknown is not a vip
    assert count(aud, "high_value_customer", include_opted_out=True)["count"] == int(truth["vip"].sum())


def test_set_algebra_matches_numpy(aud, truth):
    keep = ~truth["opted_out"]
    r, v = truth["risky"], truth["vip"]
    assert np.array_equal(aud.select("risky"), r & keep)
    assert np.array_equal(aud.select("vip_at_risk"), v & r & keep)
    assert np.array_equal(aud.select("vip_or_risky"), (v | r) & keep)
    assert np.array_equal(aud.select("safe_vip"), v & ~r & keep)
    assert np.array_equal(aud.select("beauty_vip"), v & truth["beauty"] & keep)
    assert np.array_equal(aud.select("everyone_risky"), r)  # include_opted_out: true
    assert np.array_equal(aud.select("vip and not risky"), v & ~r & keep)  # segments inside an expression
    assert np.array_equal(aud.select("churn_risk_band == 'high'"), r & keep)


def test_segments_that_refer_to_each_other_in_a_cycle_are_refused(ws):
    segs = load_segments([ws.root / "rules"])
    (ws.root / "cycle.yaml").write_text(textwrap.dedent("""\
        segments:
          - id: a
            when: "b and churn_risk > 0.1"
          - id: b
            union: [c, vip]
          - id: c
            when: "a"
    """), encoding="utf-8")
    aud = Audience.open(ws, {**segs, **load_segments([ws.root / "cycle.yaml"])})
    with pytest.raises(SegmentError, match="cycle: a -> b -> c -> a"):
        aud.select("a")


def test_unknown_names_suggest_the_closest(aud, ws):
    with pytest.raises(SegmentError, match=r"unknown name 'churn_riskk' \(did you mean 'churn_risk'\?\).*2025-10-01"):
        aud.select("churn_riskk > 0.5")
    with pytest.raises(SegmentError, match=r"unknown name 'viip' \(did you mean 'vip'\?\)"):
        aud.select("viip")
    (ws.root / "more.yaml").write_text("segments:\n  - id: both\n    union: [vip, riskyy]\n", encoding="utf-8")
    aud2 = Audience.open(ws, {**aud.segments, **load_segments([ws.root / "more.yaml"])})
    with pytest.raises(SegmentError, match=r"segment 'both' \(.*more.yaml:2\): unknown segment 'riskyy' "
                                           r"\(did you mean 'risky'\?\)"):
        aud2.select("both")


def test_an_expression_that_is_not_a_condition_or_does_not_parse_is_refused(aud):
    with pytest.raises(SegmentError, match="is not a condition.*compare it"):
        aud.select("churn_risk")
    with pytest.raises(SegmentError, match="expression 'churn_risk >='"):
        aud.select("churn_risk >=")


def test_another_snapshot_date_and_an_unknown_one(ws, data):
    snap, _ = data
    history.write(ws, "2025-11-01", history.to_arrow(snap.assign(churn_risk=0.9)), {"date": "2025-11-01"})
    segs = load_segments([ws.root / "rules"])
    assert Audience.open(ws, segs).date == "2025-11-01"
    assert count(Audience.open(ws, segs, "2025-10-01"), "risky")["count"] < \
           count(Audience.open(ws, segs), "everyone_risky")["count"] == N
    with pytest.raises(FileNotFoundError, match="2025-10-01, 2025-11-01"):
        Audience.open(ws, segs, "2025-10-15")


# --- export, profile, overlap --------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_writes_ids_and_hashes_only(aud, truth, tmp_path, suffix, data):
    out = tmp_path / "out" / f"vip{suffix}"
    result = export(aud, "vip_at_risk", out)
    frame = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    members = data[0]["persona_id"][truth["vip"] & truth["risky"] & ~truth["opted_out"]]
    assert result["rows"] == len(frame) == len(members) > 0
    assert list(frame.columns) == ["persona_id", "segment", "snapshot_date", "phone_hash", "member_id_hash"]
    assert list(frame["persona_id"]) == list(members) and set(frame["segment"]) == {"vip_at_risk"}
    assert set(frame["snapshot_date"].astype(str)) == {"2025-10-01"}
    prof = data[1].set_index("persona_id")
    assert list(frame["phone_hash"]) == list(prof.loc[members, "phone_hash"])
    assert not any(c in frame.columns for c in ("phone", "email", "city", "consent_marketing"))
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left


def test_export_of_an_expression_and_a_bad_suffix(aud, tmp_path):
    result = export(aud, "churn_risk < 0.1", tmp_path / "low.csv")
    assert set(pd.read_csv(tmp_path / "low.csv")["segment"]) <= {"expression"} and result["rows"] >= 0
    with pytest.raises(SegmentError, match=r"low.xlsx: the export must end in .csv or .parquet"):
        export(aud, "risky", tmp_path / "low.xlsx")


def test_profile_gives_size_and_the_values_members_over_index_on(aud, truth):
    result = profile(aud, "risky")
    size = int((truth["risky"] & ~truth["opted_out"]).sum())
    assert (result["size"], result["population"]) == (size, N)
    high = next(t for t in result["tags"] if t["tag"] == "churn_risk_band" and t["value"] == "high")
    assert high["share_in"] == 1.0 and high["index"] > 100
    low = next(t for t in result["tags"] if t["tag"] == "churn_risk_band" and t["value"] == "low")
    assert low["share_in"] == 0 and low["index"] == 0
    feat = next(f for f in result["features"] if f["feature"] == "churn_risk")
    assert feat["mean_in"] >= 0.6 > feat["mean_out"] and feat["index"] > 100
    empty = profile(aud, "churn_risk > 2")
    assert empty["size"] == 0 and empty["tags"] == [] and empty["features"] == []


def test_overlap_counts_members_in_both(aud, truth):
    result = overlap(aud, ["vip", "risky", "churn_risk < 0.3"])
    keep = ~truth["opted_out"]
    assert result["sizes"]["vip"] == int((truth["vip"] & keep).sum())
    pair = next(p for p in result["pairs"] if (p["a"], p["b"]) == ("vip", "risky"))
    assert pair["both"] == int((truth["vip"] & truth["risky"] & keep).sum())
    assert pair["share_of_a"] == pytest.approx(pair["both"] / result["sizes"]["vip"])
    disjoint = next(p for p in result["pairs"] if (p["a"], p["b"]) == ("risky", "churn_risk < 0.3"))
    assert disjoint["both"] == 0


# --- the command line ------------------------------------------------------------------------------------------
def test_cli_segment_count_export_profile_overlap(ws, truth, tmp_path):
    run = CliRunner()
    result = run.invoke(app, ["segment", "count", "churn_risk >= 0.6", "-w", str(ws.root), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["count"] == int((truth["risky"] & ~truth["opted_out"]).sum())
    result = run.invoke(app, ["segment", "count", "churn_risk >= 0.6", "-w", str(ws.root), "--json",
                              "--include-opted-out"])
    assert json.loads(result.stdout)["count"] == int(truth["risky"].sum())

    out = tmp_path / "exp" / "v.parquet"
    result = run.invoke(app, ["segment", "export", "vip", "--out", str(out), "-w", str(ws.root), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"] == len(pd.read_parquet(out)) == int((truth["vip"] & ~truth["opted_out"]).sum())

    result = run.invoke(app, ["segment", "profile", "vip", "-w", str(ws.root), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["size"] == int((truth["vip"] & ~truth["opted_out"]).sum())
    result = run.invoke(app, ["segment", "overlap", "vip", "risky", "-w", str(ws.root), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["pairs"][0]["both"] == int((truth["vip"] & truth["risky"] & ~truth["opted_out"]).sum())


def test_cli_errors_exit_2_with_the_reason(ws):
    run = CliRunner()
    result = run.invoke(app, ["segment", "count", "churn_riskk > 0.5", "-w", str(ws.root)])
    assert result.exit_code == 2 and "did you mean 'churn_risk'" in result.output
    result = run.invoke(app, ["segment", "count", "risky", "-w", str(ws.root), "--date", "2024-01-01"])
    assert result.exit_code == 2 and "2025-10-01" in result.output
    (ws.root / "rules" / "broken.yaml").write_text("segments:\n  - id: x\n    when: 'a >'\n", encoding="utf-8")
    result = run.invoke(app, ["segment", "count", "risky", "-w", str(ws.root)])
    assert result.exit_code == 2 and "broken.yaml:3" in result.output


# --- on a rescored workspace ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_default_segments_on_a_rescored_workspace(trained_workspace, tmp_path):
    import pyarrow.parquet as pq

    from serving.batch import rescore
    from rules.catalog import rule_paths

    root = tmp_path / "ws"
    shutil.copytree(trained_workspace, root, symlinks=True)
    ws = Workspace.open(root)
    rescore(ws, push=False)
    aud = Audience.open(ws, load_segments(rule_paths(ws, ws.config())))
    snap = history.read(ws)
    prof = pq.read_table(ws.current("integrated") / "profiles.parquet").to_pandas().set_index("persona_id")
    keep = ~(prof["consent_marketing"].reindex(snap["persona_id"]) == False).fillna(False).to_numpy(bool)  # noqa: E712
    vip = snap["high_value_customer"].fillna(False).to_numpy(bool) & (snap["churn_risk_band"] == "high").to_numpy()
    assert np.array_equal(aud.select("vip_at_risk"), vip & keep)
    assert count(aud, "new_with_intent")["count"] >= 0  # reads a feature (rt_cart_adds_24h) beside the tags

    out = tmp_path / "win_back.csv"
    result = export(aud, "win_back", out)
    frame = pd.read_csv(out)
    assert result["rows"] == len(frame) == int(aud.select("win_back").sum())
    assert "persona_id" in frame.columns and any(c.endswith("_hash") for c in frame.columns)
    assert not {"phone", "email", "mobile", "value"} & set(frame.columns)
    assert profile(aud, "vip_at_risk")["size"] == int(aud.select("vip_at_risk").sum())
