"""The Models page's data (serving/console/models.py) on the session's trained workspace: every tag listed with its
champion, the held-out table against the baselines, the charts' data training logged (curves/<output>.json), the
history with its aliases and gate verdicts, a new version seen by a reader that has cached the old ones, the figures
of a run logged before the curves existed, and the errors for what does not exist."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from features import model_tags
from persona.workspace import Workspace
from serving.console import models as md
from training import tracking

pytestmark = pytest.mark.slow  # the session's trained workspace (about a minute, once)


@pytest.fixture(scope="module")
def ws(trained_workspace) -> Workspace:
    """The trained workspace itself: these tests only read it."""
    return Workspace.open(trained_workspace)


def _copy(trained_workspace: Path, tmp_path: Path) -> Workspace:
    root = tmp_path / "ws"
    shutil.copytree(trained_workspace, root, symlinks=True)
    return Workspace.open(root)


def test_pages_list_every_tag_with_its_champion_and_quality(ws):
    pages = md.model_pages(ws)
    assert [p["tag"] for p in pages] == list(model_tags.names())
    client = tracking.connect(ws, ws.config())
    for p in pages:
        entry = model_tags.get(p["tag"])
        assert (p["kind"], p["metric"], p["model"]) == (entry.kind, entry.metric, tracking.model_name(entry.name))
        assert p["champion"] == tracking.alias_version(client, p["model"], tracking.CHAMPION) is not None
        q = p["quality"]
        assert q["alias"] == "champion" and q["version"] == p["champion"]
        run = client.get_run(client.get_model_version(p["model"], p["champion"]).run_id)
        assert q["value"] == pytest.approx(run.data.metrics["test_metric"])
        assert q["baseline"] and q["baseline_value"] is not None and q["grade"] == run.data.tags["grade"]
    json.dumps(pages, allow_nan=False)


def test_detail_table_puts_the_model_next_to_every_logged_baseline(ws):
    d = md.model_detail(ws, "churn_risk")
    assert d["version"] == d["champion"] and len(d["outputs"]) == 1
    out = d["outputs"][0]
    client = tracking.connect(ws, ws.config())
    metrics = client.get_run(d["run_id"]).data.metrics
    model, *rows = out["table"]
    assert model["role"] == "model" and model["value"] == pytest.approx(metrics["test_auc"])
    assert {r["name"]: r["value"] for r in rows} == pytest.approx(
        {k.removeprefix("baseline_").removesuffix("_auc"): v for k, v in metrics.items() if k.startswith("baseline_")})
    assert "rfm_heuristic" in {r["name"] for r in rows}
    assert sum(r["winner"] for r in out["table"]) == 1
    winner = next(r for r in out["table"] if r["winner"])
    # the model wins only by beating every baseline (the gate's rule); else the best baseline is marked
    assert winner is model if all(r["beaten"] for r in rows) else winner["value"] == max(r["value"] for r in rows)
    assert out["metrics"]["auc"] == model["value"] and "pr_auc" in out["metrics"]
    json.dumps(d, allow_nan=False)


@pytest.mark.parametrize("tag", model_tags.names())
def test_curves_are_logged_for_every_output_of_a_fresh_tag(ws, tag):
    d = md.model_detail(ws, tag)
    entry = model_tags.get(tag)
    assert d["outputs"]
    for out in d["outputs"]:
        c = out["curves"]
        assert c is not None and c["kind"] == entry.kind and c["rows"] == out["metrics"]["rows"]
        gains = c["deciles"]["share_captured"]
        assert all(b >= a for a, b in zip(gains, gains[1:])) and gains[-1] == 1.0
        if entry.kind == "probability":
            roc = c["roc"]
            assert (roc["fpr"][-1], roc["tpr"][-1]) == (1.0, 1.0) and len(roc["fpr"]) <= 101
            # one held-out fold: the pooled scores' AUC is the logged one; several: the logged one is their mean
            assert roc["auc"] == pytest.approx(out["metrics"]["auc"], abs=1e-5 if c["folds"] == 1 else 0.05)
            assert len(c["calibration"]["predicted"]) == len(c["calibration"]["observed"]) >= 2
        else:
            assert c["roc"] is None and len(c["deciles"]["mean_outcome"]) == 10
        assert out["importance"] == c["importance"]
        assert len(c["importance"]) <= 30
        if out["learner"] == "lightgbm":  # LightGBM's gains are logged for its output
            assert c["importance"] and c["importance"][0]["gain"] >= c["importance"][-1]["gain"]
        assert len(json.dumps(c)) < 8_000


def test_history_shows_aliases_and_follows_a_new_challenger(trained_workspace, tmp_path):
    ws = _copy(trained_workspace, tmp_path)
    reader = md.ModelsData.open(ws)
    first = reader.detail("high_value")
    (only,) = first["history"]
    assert only["aliases"] == ["challenger", "champion"] and only["gate"] in ("promoted", "refused")
    assert only["gate_reason"] and only["run_id"] == first["run_id"] and only["created"].endswith("+00:00")

    # a second version from a run the gate has not judged yet: the same reader sees it and its verdict once recorded
    client = reader.client
    name = tracking.model_name("high_value")
    old = client.get_model_version(name, only["version"])
    run = client.create_run(client.get_run(old.run_id).info.experiment_id)
    client.log_metric(run.info.run_id, "test_metric", 0.5)
    client.set_terminated(run.info.run_id)
    new = client.create_model_version(name, old.source, run_id=run.info.run_id)
    client.set_registered_model_alias(name, tracking.CHALLENGER, new.version)
    second = reader.detail("high_value")
    assert [h["version"] for h in second["history"]] == [str(new.version), only["version"]]
    assert second["history"][0]["aliases"] == ["challenger"] and second["history"][1]["aliases"] == ["champion"]
    assert second["history"][0]["gate"] is None and second["challenger"] == str(new.version)
    assert second["version"] == second["champion"] == only["version"]  # the page shows the champion
    tracking.record_gate(client, name, str(new.version), promoted=False, reason="test: refused", metrics={})
    third = reader.detail("high_value")
    assert (third["history"][0]["gate"], third["history"][0]["gate_reason"]) == ("refused", "test: refused")
    page = next(p for p in reader.pages() if p["tag"] == "high_value")
    assert (page["champion"], page["challenger"]) == (only["version"], str(new.version))

    # a version that only has its metrics (no lineage, no curves, no figures) still shows
    shown = reader.detail("high_value", str(new.version))
    assert shown["version"] == str(new.version) and shown["figures"] == []
    assert [o["curves"] for o in shown["outputs"]] == [None]


def test_a_run_logged_before_the_curves_shows_its_figures(trained_workspace, tmp_path):
    ws = _copy(trained_workspace, tmp_path)
    reader = md.ModelsData.open(ws)
    run_id = reader.detail("churn_risk")["run_id"]
    curves = Path(unquote(urlparse(reader.client.get_run(run_id).info.artifact_uri).path)) / "curves"
    assert curves.is_dir() and curves.is_relative_to(ws.root)  # the copy's own artifacts
    shutil.rmtree(curves)
    d = md.ModelsData.open(ws).detail("churn_risk")  # a new reader: the first one keeps what it read
    assert [o["curves"] for o in d["outputs"]] == [None] and d["outputs"][0]["importance"] is None
    assert "roc_calibration.png" in d["figures"]
    path = reader.figure(run_id, "roc_calibration.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert reader.figure(run_id, "lineage.json") is None  # figures only
    assert reader.figure(run_id, "../roc_calibration.png") is None
    assert reader.figure("0" * 32, "roc_calibration.png") is None  # not a persona model's run


def test_unknown_tag_and_version_name_what_exists(ws):
    with pytest.raises(KeyError) as exc:
        md.model_detail(ws, "churn")
    assert str(exc.value) == f"no model tag 'churn'; the model tags are {', '.join(model_tags.names())}"
    with pytest.raises(KeyError, match=r"persona_churn_risk has no version '99' \(versions: \d"):
        md.model_detail(ws, "churn_risk", "99")
