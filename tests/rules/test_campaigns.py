"""Campaigns: a stable holdout, a record that appears whole, and a report that recovers a planted effect (and covers
zero when there is none), on small workspaces written here; end to end through generate, plant and integrate."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from persona.cli import app
from persona.faults import EXIT_CODE, KILL_VAR
from persona.workspace import Workspace, publishing, write_parquet_atomic
from rules import campaigns, history
from rules.campaigns import CampaignError, held_out, mean_difference, rate_difference
from rules.segments import load_segments

N = 6000
START, END = dt.date(2025, 10, 8), dt.date(2025, 10, 21)
CONFIG = {
    "version": 1, "timezone": "Asia/Shanghai",
    "sources": {"crm": {"channel": "crm", "kind": "profile", "path": "raw/crm.csv",
                        "identifiers": {"member_id": "member_id"}}},
    "identity": {"identifiers": {"member_id": {"account": True}}},
    "tags": {"defaults": False},
}
SEGMENTS = """
segments:
  - id: at_risk
    name: {zh: 流失预警, en: At risk}
    when: "churn_risk >= 0.3"
"""


def _snapshot(seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    ids = [f"P{i:06d}" for i in range(N)]
    snap = pd.DataFrame({
        "persona_id": ids, "churn_risk": rng.uniform(0, 1, N),
        "tier": pd.Categorical(rng.choice(["gold", "silver"], N, p=[0.3, 0.7])),
        "top_interests": pd.Series([tuple(rng.choice(["food", "toys"], rng.integers(0, 3), replace=False))
                                    for _ in range(N)], dtype=object),
    })
    consent = np.where(rng.random(N) < 0.05, False, True)
    profiles = pd.DataFrame({"persona_id": ids, "consent_marketing": pd.array(consent, dtype="boolean"),
                             "member_id_hash": [f"{i:064x}" for i in range(N)]})
    return snap, profiles


def _publish(ws: Workspace, run: str, profiles: pd.DataFrame, tx: pd.DataFrame,
             aliases: pd.DataFrame | None = None) -> None:
    with publishing(ws, "integrated", run) as out:
        write_parquet_atomic(out / "profiles.parquet", profiles)
        write_parquet_atomic(out / "transactions.parquet", tx)
        write_parquet_atomic(out / "aliases.parquet", aliases if aliases is not None else
                             pd.DataFrame({"persona_id": pd.Series([], dtype=object),
                                           "alias_of": pd.Series([], dtype=object),
                                           "reason": pd.Series([], dtype=object)}))


def _tx(persona_ids, ts, amount, status=None) -> pd.DataFrame:
    n = len(persona_ids)
    return pd.DataFrame({"persona_id": pd.Series(persona_ids, dtype=object),
                         "ts": pd.to_datetime(pd.Series(ts, dtype="datetime64[ns]")).dt.tz_localize("UTC"),
                         "amount": np.asarray(amount, dtype=np.float64),
                         "status": pd.Series(status if status is not None else ["paid"] * n, dtype=object)})


@pytest.fixture
def ws(tmp_path) -> Workspace:
    (tmp_path / "persona.yaml").write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "segments.yaml").write_text(SEGMENTS, encoding="utf-8")
    ws = Workspace.open(tmp_path)
    snap, profiles = _snapshot()
    history.write(ws, "2025-10-01", history.to_arrow(snap), {"date": "2025-10-01", "tags": []})
    # history before the window: must not count
    _publish(ws, "run-1", profiles, _tx(snap["persona_id"][:100], ["2025-09-30 12:00"] * 100, [50.0] * 100))
    return ws


def _create(ws: Workspace, name: str = "autumn", **kw) -> dict:
    args = dict(holdout=0.3, start=START, end=END, cost_per_contact=1.0)
    args.update(kw)
    return campaigns.create(ws, load_segments([ws.root / "rules"]), name, kw.pop("segment", "at_risk"),
                            **{k: v for k, v in args.items() if k != "segment"})


def _plant(ws: Workspace, name: str, *, base: float, lift: float, seed: int = 5, value: float = 100.0) -> None:
    """Purchases in the window: base rate for everyone, + lift for the treated; one order of mean `value` each."""
    rng = np.random.default_rng(seed)
    a = pd.read_parquet(campaigns.folder(ws, name) / campaigns.ASSIGNMENT)
    p = np.where(a["group"] == "treatment", base + lift, base)
    buyers = a["persona_id"][rng.random(len(a)) < p].to_numpy()
    ts = pd.Timestamp("2025-10-10 03:00") + pd.to_timedelta(rng.integers(0, 11 * 86400, len(buyers)), unit="s")
    amount = rng.exponential(value, len(buyers))
    old = pd.read_parquet(ws.current("integrated") / "transactions.parquet")
    # a return inside the window by a buyer: not a conversion of its own, and it nets off revenue
    ret = _tx(buyers[:1], [ts[0] + pd.Timedelta(hours=1)], [5.0], ["returned"])
    _, profiles = _snapshot()
    _publish(ws, f"run-{seed}-{name}", profiles, pd.concat([old, _tx(buyers, ts, amount), ret], ignore_index=True))


# --- the split ------------------------------------------------------------------------------------------------------
def test_the_holdout_is_stable_independent_of_order_and_differs_between_campaigns():
    ids = np.array([f"P{i:06d}" for i in range(20_000)], dtype=object)
    key = campaigns.key_of("spring")
    h = held_out(ids, key, 0.1)
    assert 0.09 < h.mean() < 0.11
    perm = np.random.default_rng(0).permutation(len(ids))
    assert (held_out(ids[perm], key, 0.1) == h[perm]).all()  # a member's group does not depend on who else is in
    assert (held_out(ids, campaigns.key_of("spring"), 0.1) == h).all()
    other = held_out(ids, campaigns.key_of("summer"), 0.1)
    assert 0.005 < (other & h).mean() < 0.02  # independent draws: about 1% in both
    assert (held_out(ids, key, 0.2) >= h).all()  # a larger holdout keeps everyone the smaller one held out


def test_create_records_the_split_and_writes_the_treatment_list(ws):
    r = _create(ws)
    folder = campaigns.folder(ws, "autumn")
    a = pd.read_parquet(folder / campaigns.ASSIGNMENT)
    snap, profiles = _snapshot()
    eligible = (snap["churn_risk"] >= 0.3) & profiles["consent_marketing"].to_numpy(dtype=bool)
    assert r["audience"] == len(a) == int(eligible.sum())
    assert set(a["persona_id"]) == set(snap["persona_id"][eligible])  # opted-out customers are never in
    assert r["treatment"] + r["held_out"] == r["audience"] and 0.25 < r["held_out"] / r["audience"] < 0.35
    treated = pd.read_csv(folder / campaigns.TREATMENT)
    assert set(treated["persona_id"]) == set(a["persona_id"][a["group"] == "treatment"])
    assert "member_id_hash" in treated.columns and treated["segment"].eq("campaign:autumn").all()
    assert set(a.columns) >= {"tier", "top_interests"}  # tag values at the snapshot, for the report by tag
    assert not list((ws.root / campaigns.DIRNAME).glob(".tmp-*"))


def test_create_again_is_a_no_op_and_other_settings_are_refused_unless_replaced(ws):
    first = _create(ws)
    before = (campaigns.folder(ws, "autumn") / campaigns.ASSIGNMENT).read_bytes()
    again = _create(ws)
    assert again["unchanged"] and again["held_out"] == first["held_out"]
    with pytest.raises(CampaignError, match="exists with other settings.*holdout: 0.3 -> 0.5"):
        _create(ws, holdout=0.5)
    assert (campaigns.folder(ws, "autumn") / campaigns.ASSIGNMENT).read_bytes() == before
    replaced = _create(ws, holdout=0.5, replace=True)
    assert replaced["held_out"] > first["held_out"] and not replaced.get("unchanged")


@pytest.mark.parametrize("kw, match", [
    ({"holdout": 0}, "holdout"), ({"holdout": 1.0}, "holdout"),
    ({"end": dt.date(2025, 10, 1)}, "ends .* before it starts"), ({"cost_per_contact": -1}, "cost_per_contact"),
    ({"segment": "churn_risk >= 2"}, "selects no one"), ({"segment": "churn_rsk >= 0.5"}, "did you mean"),
])
def test_bad_settings_are_refused_with_the_reason(ws, kw, match):
    from rules.segments import SegmentError

    with pytest.raises((CampaignError, SegmentError), match=match):
        _create(ws, **kw)
    assert not (ws.root / campaigns.DIRNAME / "autumn").exists()


def test_a_bad_name_and_an_unknown_campaign(ws):
    with pytest.raises(CampaignError, match="lower-case letters"):
        _create(ws, name="Bad Name!")
    _create(ws)
    with pytest.raises(CampaignError, match="no campaign 'nope'.*autumn"):
        campaigns.report(ws, "nope")


# --- the report -----------------------------------------------------------------------------------------------------
def test_report_recovers_a_planted_effect_within_its_interval(ws):
    _create(ws)
    _plant(ws, "autumn", base=0.10, lift=0.08)
    r = campaigns.report(ws, "autumn")
    t, h = r["groups"]["treatment"], r["groups"]["holdout"]
    assert t["customers"] + h["customers"] == r["groups"]["treatment"]["customers"] + h["customers"]
    lift = r["lift"]["conversion_rate"]
    assert lift["low"] < 0.08 < lift["high"] and lift["low"] > 0  # the effect is found, and its size covered
    assert lift["estimate"] == pytest.approx(t["conversion_rate"] - h["conversion_rate"], abs=1e-6)
    inc = r["lift"]["incremental_conversions"]
    assert inc["estimate"] == pytest.approx(lift["estimate"] * t["customers"], rel=1e-4)
    rev = r["lift"]["revenue_per_customer"]
    assert rev["low"] < 0.08 * 100 < rev["high"]
    roi = r["roi"]
    assert roi["cost"] == pytest.approx(t["customers"] * 1.0)
    inc_rev = r["lift"]["incremental_revenue"]
    assert roi["roi"]["estimate"] == pytest.approx((inc_rev["estimate"] - roi["cost"]) / roi["cost"], rel=1e-3)
    assert r["complete"] and "warning" not in r and not r["notes"]
    gold = [b for b in r["by_tag"] if b["tag"] == "tier" and b["value"] == "gold"]
    assert gold and gold[0]["lift"]["low"] < 0.08 < gold[0]["lift"]["high"]
    assert {b["value"] for b in r["by_tag"] if b["tag"] == "top_interests"} == {"food", "toys"}


def test_report_with_no_effect_covers_zero(ws):
    _create(ws)
    _plant(ws, "autumn", base=0.12, lift=0.0, seed=9)
    r = campaigns.report(ws, "autumn")
    assert r["lift"]["conversion_rate"]["low"] < 0 < r["lift"]["conversion_rate"]["high"]
    assert r["lift"]["revenue_per_customer"]["low"] < 0 < r["lift"]["revenue_per_customer"]["high"]


def test_few_buyers_make_the_revenue_interval_approximate_and_the_report_says_so(ws):
    _create(ws)
    _plant(ws, "autumn", base=0.005, lift=0.0, seed=3)
    r = campaigns.report(ws, "autumn")
    assert any("approximate" in n for n in r["notes"])


def test_report_before_the_window_has_data_warns_and_counts_nothing(ws):
    _create(ws, value_per_conversion=40.0)
    r = campaigns.report(ws, "autumn")
    assert not r["complete"] and "partial" in r["warning"]
    assert r["groups"]["treatment"]["converted"] == 0 == r["groups"]["holdout"]["converted"]  # September not counted
    assert r["roi"]["value_basis"].startswith("incremental conversions x value")


def test_purchases_of_a_persona_merged_since_are_followed(ws):
    _create(ws, holdout=0.5)
    a = pd.read_parquet(campaigns.folder(ws, "autumn") / campaigns.ASSIGNMENT)
    member = a["persona_id"].iloc[0]
    _, profiles = _snapshot()
    aliases = pd.DataFrame({"persona_id": [member], "alias_of": ["P999999"], "reason": ["merge"]})
    _publish(ws, "run-merged", profiles, _tx(["P999999"], ["2025-10-12 04:00"], [80.0]), aliases)
    r = campaigns.report(ws, "autumn")
    group = a["group"].iloc[0]
    assert r["groups"][group]["converted"] == 1 and r["groups"][group]["revenue"] == 80.0
    assert r["merged_since"] == 1


def test_intervals_match_their_formulas():
    d, lo, hi = rate_difference([30], [100], [20], [100])
    pt, ph = 31 / 102, 21 / 102
    se = np.sqrt(pt * (1 - pt) / 102 + ph * (1 - ph) / 102)
    assert d[0] == pytest.approx(0.1) and lo[0] == pytest.approx(pt - ph - 1.959964 * se, rel=1e-6)
    a, b = np.array([1.0, 2, 3, 4]), np.array([0.0, 0, 1])
    d, lo, hi = mean_difference(a.sum(), (a ** 2).sum(), 4, b.sum(), (b ** 2).sum(), 3)
    se = np.sqrt(a.var(ddof=1) / 4 + b.var(ddof=1) / 3)
    assert float(d) == pytest.approx(a.mean() - b.mean()) and float(hi) == pytest.approx(float(d) + 1.959964 * se,
                                                                                          rel=1e-6)


def test_the_intervals_cover_the_true_effect_95_times_in_100():
    """Many simulated campaigns (conversions: a holdout of 100 at a low base rate; revenue: zero-inflated and
    skewed): the 95% intervals cover the true lift in 92 to 97% of them."""
    rng = np.random.default_rng(42)
    reps, n_t, n_h, p, lift = 4000, 900, 100, 0.08, 0.03
    x_t, x_h = rng.binomial(n_t, p + lift, reps), rng.binomial(n_h, p, reps)
    _, lo, hi = rate_difference(x_t, n_t, x_h, n_h)
    assert 0.93 <= ((lo <= lift) & (lift <= hi)).mean() <= 0.97
    # Revenue: a buyer spends Exp(value), everyone else 0, so the true lift per customer is lift x value. Welch's
    # normal interval needs enough buyers in each group (with ~8 in the holdout it covers ~88%: the report says so
    # below MIN_BUYERS); with ~50 it holds.
    reps, n_t, n_h, p, value = 2000, 2000, 500, 0.1, 100.0
    rev_t = rng.exponential(value, (reps, n_t)) * (rng.random((reps, n_t)) < p + lift)
    rev_h = rng.exponential(value, (reps, n_h)) * (rng.random((reps, n_h)) < p)
    _, lo, hi = mean_difference(rev_t.sum(1), (rev_t ** 2).sum(1), n_t, rev_h.sum(1), (rev_h ** 2).sum(1), n_h)
    assert 0.92 <= ((lo <= lift * value) & (lift * value <= hi)).mean() <= 0.97


# --- crash safety ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("point", ["campaign.built", "campaign.set_aside"])
def test_a_create_killed_halfway_leaves_the_old_record_whole(ws, point):
    first = _create(ws)
    args = [sys.executable, "-m", "persona.cli", "campaign", "create", "autumn", "-w", str(ws.root), "--segment",
            "at_risk", "--holdout", "0.5", "--start", str(START), "--end", str(END), "--replace"]
    env = {**os.environ, KILL_VAR: point}
    assert subprocess.run(args, env=env, capture_output=True).returncode == EXIT_CODE
    # the next reader sees the old campaign (restored if it was set aside), and the next create finishes the job
    if point == "campaign.built":
        assert campaigns.load(ws, "autumn").holdout == 0.3
    campaigns.recover(ws, "autumn")
    assert campaigns.load(ws, "autumn").held_out == first["held_out"]
    assert not list((ws.root / campaigns.DIRNAME).glob(".*"))
    env.pop(KILL_VAR)
    done = subprocess.run(args + ["--json"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["holdout"] == 0.5


def test_cli_create_report_list_and_errors(ws):
    runner = CliRunner()
    w = ["-w", str(ws.root)]
    r = runner.invoke(app, ["campaign", "create", "autumn", *w, "--segment", "at_risk", "--start", "2025-10-08",
                            "--end", "2025-10-21", "--holdout", "0.3", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["campaign"] == "autumn"
    r = runner.invoke(app, ["campaign", "report", "autumn", *w])
    assert r.exit_code == 0 and "conversion lift" in r.stdout
    r = runner.invoke(app, ["campaign", "list", *w, "--json"])
    assert [c["name"] for c in json.loads(r.stdout)["campaigns"]] == ["autumn"]
    r = runner.invoke(app, ["campaign", "create", "x", *w, "--segment", "at_risk", "--start", "2025-13-01",
                            "--end", "2025-10-21"])
    assert r.exit_code == 2 and "not a date" in r.output


# --- end to end -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_planted_campaign_end_to_end_through_integrate(trained_workspace, tmp_path):
    """generate -> ... -> rescore, create two campaigns, plant a +8 point effect in one and none in the other,
    integrate their windows' purchases like any other data, and report."""
    root = tmp_path / "ws"
    shutil.copytree(trained_workspace, root, symlinks=True)
    runner = CliRunner()
    w = ["-w", str(root)]
    assert runner.invoke(app, ["rescore", *w, "--no-push"]).exit_code == 0
    for name, start, end in (("effect", "2026-10-08", "2026-10-21"), ("none", "2026-11-01", "2026-11-14")):
        r = runner.invoke(app, ["campaign", "create", name, *w, "--segment", "churn_risk >= 0", "--holdout", "0.4",
                                "--start", start, "--end", end, "--cost-per-contact", "1"])
        assert r.exit_code == 0, r.output
    truths = {}
    for name, lift in (("effect", 0.3), ("none", 0.0)):
        r = runner.invoke(app, ["campaign", "plant", name, *w, "--lift", str(lift), "--base-rate", "0.2", "--json"])
        assert r.exit_code == 0, r.output
        truths[name] = json.loads(r.stdout)
    assert runner.invoke(app, ["integrate", *w]).exit_code == 0
    for name, truth in truths.items():
        r = runner.invoke(app, ["campaign", "report", name, *w, "--json"])
        assert r.exit_code == 0, r.output
        rep = json.loads(r.stdout)
        lift = rep["lift"]["conversion_rate"]
        expected = truth["expected_conversion_lift"]
        assert lift["low"] <= expected <= lift["high"], (name, lift, truth, rep["groups"])
        conv = rep["groups"]["treatment"]["converted"] + rep["groups"]["holdout"]["converted"]
        assert conv == truth["orders"]  # every planted purchase reached its member through integration
    assert runner.invoke(app, ["campaign", "report", "effect", *w, "--json"]).exit_code == 0
    effect = json.loads(runner.invoke(app, ["campaign", "report", "effect", *w, "--json"]).stdout)
    assert effect["lift"]["conversion_rate"]["low"] > 0
    none = json.loads(runner.invoke(app, ["campaign", "report", "none", *w, "--json"]).stdout)
    assert none["lift"]["conversion_rate"]["low"] < 0 < none["lift"]["conversion_rate"]["high"]
