"""`persona rescore` and the tag catalog commands on a trained workspace: `tags` lists every tag with its coverage,
`tags show` its distribution and last change, `tags diff` who entered and left between two rescores."""

import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from persona.cli import app
from persona.workspace import Workspace, read_json
from rules import history

pytestmark = pytest.mark.slow
run = CliRunner()


def _json(args: list[str]) -> dict:
    result = run.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def rescored(trained_workspace, tmp_path_factory) -> Workspace:
    """A copy rescored twice from the command line: at the feature snapshot before the last, then the latest."""
    root = tmp_path_factory.mktemp("cli_tags") / "ws"
    shutil.copytree(trained_workspace, root, symlinks=True)
    dates = sorted(read_json(root / "features" / "manifest.json")["dates"])
    through = str((pd.Timestamp(dates[-2]) - pd.Timedelta(days=1)).date())  # the snapshot at dates[-2] holds that day
    earlier = _json(["rescore", "-w", str(root), "--as-of", through, "--no-push", "--json"])
    latest = _json(["rescore", "-w", str(root), "--no-push", "--json"])
    assert earlier["date"] == dates[-2][:10] and latest["date"] == dates[-1][:10]
    assert earlier["pushed"] is None and latest["personas"] > 1000
    return Workspace.open(root)


def test_tags_before_any_rescore_have_no_coverage(trained_workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(trained_workspace, root, symlinks=True)
    listed = _json(["tags", "-w", str(root), "--json"])
    assert listed["date"] is None and listed["tags"] and all(t["coverage"] is None for t in listed["tags"])
    shown = _json(["tags", "show", "lifecycle_stage", "-w", str(root), "--json"])
    assert shown["date"] is None and shown["distribution"] == [] and shown["last_change"] is None
    # The catalog learns the model outputs from a snapshot: before one, model-based tags say why they are missing.
    assert "churn_risk" in listed["unavailable"]["churn_risk_band"]
    result = run.invoke(app, ["tags", "show", "churn_risk_band", "-w", str(root)])
    assert result.exit_code == 2 and "unavailable in this workspace" in result.output
    result = run.invoke(app, ["tags", "diff", "-w", str(root)])
    assert result.exit_code == 2 and "no tag snapshots yet" in result.output


def test_tags_lists_every_tag_with_category_type_and_coverage(rescored):
    listed = _json(["tags", "-w", str(rescored.root), "--json"])
    assert listed["date"] == history.latest_date(rescored) and listed["unavailable"] == {}
    by_id = {t["id"]: t for t in listed["tags"]}
    meta = history.read_meta(rescored)
    assert set(by_id) >= {t["id"] for t in meta["tags"]} >= {
        "churn_risk_band", "rfm_segment", "lifecycle_stage", "high_value_customer", "valuable_at_risk", "top_interests"}
    for t in listed["tags"]:
        assert t["category"] in {"basic", "consumption", "behaviour", "predictive", "enrichment"} and t["category_zh"]
        assert t["type"] and t["value_type"] in {"bool", "category", "list", "number"}
        assert t["coverage"] == meta["coverage"].get(t["id"])
    assert by_id["churn_risk_band"]["category"] == "predictive"
    assert 0 < by_id["churn_risk_band"]["coverage"] <= 1

    table = run.invoke(app, ["tags", "-w", str(rescored.root)])
    assert table.exit_code == 0 and f"tag catalog ({len(listed['tags'])} tags" in table.output


def test_tags_show_has_the_distribution_and_last_change(rescored):
    shown = _json(["tags", "show", "churn_risk_band", "-w", str(rescored.root), "--json"])
    snap = history.read(rescored, columns=["persona_id", "churn_risk_band"])
    assert shown["tag"]["id"] == "churn_risk_band" and shown["date"] == history.latest_date(rescored)
    counts = {d["value"]: d["count"] for d in shown["distribution"]}
    assert counts == snap["churn_risk_band"].dropna().astype(str).value_counts().to_dict()
    assert set(counts) <= {"low", "medium", "high"}
    assert shown["coverage"] == pytest.approx(snap["churn_risk_band"].notna().mean())
    change = shown["last_change"]
    assert (change["from"], change["to"]) == tuple(history.list_dates(rescored))
    assert sum(v["after"] for v in change["values"].values()) == sum(counts.values())

    score = _json(["tags", "show", "churn_risk", "-w", str(rescored.root), "--json"])
    assert score["last_change"] is None and sum(d["count"] for d in score["distribution"]) == len(snap)


def test_an_unknown_tag_exits_2_with_a_suggestion(rescored):
    result = run.invoke(app, ["tags", "show", "churn_risk_bnd", "-w", str(rescored.root)])
    assert result.exit_code == 2
    assert "no tag 'churn_risk_bnd'" in result.output and "did you mean 'churn_risk_band'" in result.output


def test_tags_diff_between_two_rescores(rescored):
    first, second = history.list_dates(rescored)
    diff = _json(["tags", "diff", "-w", str(rescored.root), "--json"])  # previous -> latest
    assert (diff["from"], diff["to"]) == (first, second)
    assert diff["personas"]["to"] == len(history.read(rescored, columns=["persona_id"]))
    assert "churn_risk" not in diff["tags"] and {"churn_risk_band", "top_interests"} <= set(diff["tags"])
    old = history.read(rescored, first, columns=["persona_id", "lifecycle_stage"]).set_index("persona_id")
    new = history.read(rescored, second, columns=["persona_id", "lifecycle_stage"]).set_index("persona_id")
    for value, c in diff["tags"]["lifecycle_stage"].items():
        assert c["after"] - c["before"] == c["entered"] - c["left"]
        assert c["before"] == int((old["lifecycle_stage"].astype(str) == value).sum())
        assert c["after"] == int((new["lifecycle_stage"].astype(str) == value).sum())
        for p in c["entered_sample"]:
            assert str(new.loc[p, "lifecycle_stage"]) == value and (p not in old.index
                                                                     or str(old.loc[p, "lifecycle_stage"]) != value)
    assert any(c["entered"] or c["left"] for c in diff["tags"]["lifecycle_stage"].values())

    only = _json(["tags", "diff", first, second, "--tag", "churn_risk_band", "-w", str(rescored.root), "--json"])
    assert list(only["tags"]) == ["churn_risk_band"] and only["tags"]["churn_risk_band"] == diff["tags"]["churn_risk_band"]
    table = run.invoke(app, ["tags", "diff", "-w", str(rescored.root)])
    assert table.exit_code == 0 and f"{first} -> {second}" in table.output


@pytest.mark.parametrize("args,message", [
    (["tags", "diff", "--tag", "no_such_tag"], "no tag ['no_such_tag']"),
    (["tags", "diff", "2020-01-01", "latest"], "no tag snapshot dated '2020-01-01'"),
    (["rescore", "--as-of", "1999-01-01", "--no-push"], "no feature snapshot holds the data up to and including "
                                                         "1999-01-01"),
    (["rescore", "--as-of", "soon"], "--as-of 'soon'"),
    (["rescore", "--as-of", "2026-06-30T12:00"], "not a time of day"),
    (["rescore", "--nearest"], "--nearest needs --as-of"),
])
def test_bad_requests_exit_2_with_the_reason(rescored, args, message):
    result = run.invoke(app, [*args, "-w", str(rescored.root)])
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\n", "")


def test_rescore_prints_the_snapshot_it_used_and_refuses_another_unless_asked(trained_workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(trained_workspace, root, symlinks=True)
    dates = [pd.Timestamp(d) for d in sorted(read_json(root / "features" / "manifest.json")["dates"])]
    day = str((dates[-2] + pd.Timedelta(days=2)).date())  # two days after a snapshot, on no snapshot
    refused = run.invoke(app, ["rescore", "-w", str(root), "--as-of", day, "--no-push"])
    text = refused.output.replace("\n", "")
    assert refused.exit_code == 2 and f"up to and including {day}" in text and "--nearest" in text
    assert str((dates[-2] - pd.Timedelta(days=1)).date()) in text  # the days there are snapshots through
    assert history.list_dates(Workspace.open(root)) == []

    done = run.invoke(app, ["rescore", "-w", str(root), "--as-of", day, "--nearest", "--no-push"])
    text = done.output.replace("\n", " ")
    assert done.exit_code == 0, done.output
    assert f"feature snapshot {dates[-2].date()} (data up to and including {(dates[-2] - pd.Timedelta(days=1)).date()})" \
        in " ".join(text.split())
    assert "--nearest:" in text and history.list_dates(Workspace.open(root)) == [str(dates[-2].date())]
