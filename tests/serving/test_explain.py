"""Explanations of the champions' scores on a trained and rescored 1,500-customer workspace: the batch adds one
`<output>_reasons` column per output only when asked (and leaves everything else as it was); the online engine and
the console's `Explainer` give a persona the same factors as the batch; `--explain` on Spark is refused up front."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from features import offline
from persona.workspace import Workspace
from rules import history
from serving import explaining
from serving.batch import EXPLAIN_EMBEDDED_ONLY, rescore
from serving.online import OnlineEngine
from tests.serving.conftest import serving_copy
from training.explain import DEFAULT_FACTORS

pytestmark = pytest.mark.slow
EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "persona.example.yaml"


@pytest.fixture(scope="module")
def explained(rescored_base, tmp_path_factory) -> tuple[Workspace, dict]:
    """A copy of the rescored workspace rescored again with explanations (not pushed: the online store keeps the
    first run's rows, so the engine scores everything itself)."""
    ws = serving_copy(rescored_base, tmp_path_factory.mktemp("explained") / "ws")
    return ws, rescore(ws, push=False, explain=True)


def _reasons(snapshot: pd.DataFrame, output: str) -> pd.Series:
    return snapshot.set_index("persona_id")[explaining.reasons_column(output)].map(json.loads)


def test_reasons_columns_only_on_request_and_the_rest_of_the_snapshot_unchanged(rescored_base, explained):
    plain = history.read(Workspace.open(rescored_base))
    ws, result = explained
    meta = history.read_meta(ws)
    outputs = meta["outputs"]
    wanted = [explaining.reasons_column(o) for o in outputs]
    assert not any(c.endswith(explaining.REASONS) for c in plain.columns)
    assert "reasons" not in history.read_meta(Workspace.open(rescored_base))
    snap = history.read(ws)
    assert list(snap.columns) == [*plain.columns, *wanted] and result["reasons"] == meta["reasons"] == wanted
    pd.testing.assert_frame_equal(snap[plain.columns], plain)  # scores and tags as without explanations
    for output in outputs:
        reasons = _reasons(snap, output)
        first = reasons.iloc[0]
        assert first["scale"] in ("log-odds", "log", "score") and first["method"] in ("lightgbm", "occlusion", "blend")
        sizes = reasons.map(lambda r: len(r["factors"]))
        assert sizes.between(0, DEFAULT_FACTORS).all() and sizes.max() >= 1, output
        if first["method"] == "lightgbm":  # trees spread a score over many features; a BTYD formula reads few
            assert sizes.max() == DEFAULT_FACTORS, output
        for r in reasons.iloc[:50]:
            size = [abs(f["contribution"]) for f in r["factors"]]
            assert size == sorted(size, reverse=True) and all(s > 0 for s in size)


def test_online_and_console_explanations_equal_the_batchs(explained):
    ws, _ = explained
    snap = history.read(ws)
    meta = history.read_meta(ws)
    pids = snap["persona_id"].astype(str).iloc[:8].tolist()
    batch = {o: _reasons(snap, o) for o in meta["outputs"]}
    engine = OnlineEngine(ws)
    online = engine.explain(pids)
    console = explaining.Explainer.load(ws)
    for pid, got in zip(pids, online):
        assert set(got) == set(meta["outputs"])
        for output, record in got.items():
            assert record == batch[output][pid], (pid, output)
        assert console.persona(pid) == got
    fewer = engine.explain(pids[:1], 2)[0]
    assert all(len(r["factors"]) <= 2 for r in fewer.values())
    assert engine.explain(["P-nobody"]) == [None]
    with pytest.raises(LookupError, match="P-nobody"):
        console.persona("P-nobody")


def test_the_references_are_the_medians_of_the_scored_snapshot(explained):
    ws, _ = explained
    meta = history.read_meta(ws)
    console = explaining.Explainer.load(ws)
    names = console.models.features()
    frame = offline.offline_frame(ws, pd.Timestamp(meta["as_of"]))
    want = {n: float(np.nanmedian(frame[n].to_numpy(dtype=np.float64))) for n in names if frame[n].notna().any()}
    got = explaining.References(ws, meta["as_of"], names, needed=True).get()
    assert {n: got[n] for n in want} == want
    # a row of features given by name explains as the persona does
    pid = frame["persona_id"].astype(str).iloc[3]
    row = frame.set_index(frame["persona_id"].astype(str)).loc[pid, names].astype(float).to_dict()
    assert console.features(row) == console.persona(pid)


def test_explain_on_spark_is_refused_before_any_work(tmp_path):
    cfg = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    cfg["engine"] = "spark"
    (tmp_path / "persona.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ValueError) as refused:
        rescore(Workspace.open(tmp_path), explain=True)
    assert str(refused.value) == EXPLAIN_EMBEDDED_ONLY
    from persona.cli import app

    done = CliRunner().invoke(app, ["rescore", "-w", str(tmp_path), "--explain"])
    assert done.exit_code == 2 and "--explain" in done.output and "embedded engine only" in " ".join(
        done.output.split()), done.output
