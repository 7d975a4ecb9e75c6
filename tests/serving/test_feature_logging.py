"""The online engine logs what it served through Feast's feature logging when serving.feature_log_sample_rate > 0."""

from __future__ import annotations

from pathlib import Path

import yaml

from features import feature_log
from rules import history
from serving.online import Customer, OnlineEngine
from tests.serving.conftest import serving_copy


def test_answered_personas_are_logged_by_the_next_refresh(rescored_base, tmp_path):
    ws = serving_copy(rescored_base, tmp_path / "ws")
    path = ws.root / "persona.yaml"
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    cfg["serving"]["feature_log_sample_rate"] = 1.0
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
    engine = OnlineEngine(ws)
    assert engine.feature_log.enabled
    pids = history.read(ws, columns=["persona_id"])["persona_id"].astype(str).iloc[:3].tolist()
    before = {s.name: len(feature_log.read_logs(Path(s.logging_config.destination.path).parent, s.name))
              for s in engine.feature_log.services}
    assert all(p is not None for p in engine.profiles([Customer(persona_id=p) for p in pids]))
    assert sorted(engine.feature_log.pending()) == sorted(pids)  # queued on the request, not written there
    engine.refresh()
    assert engine.feature_log.pending() == []
    for service in engine.feature_log.services:
        logged = feature_log.read_logs(Path(service.logging_config.destination.path).parent, service.name)
        assert len(logged) == before[service.name] + 3
        assert set(pids) <= set(logged["persona_id"])


def test_logging_is_off_by_default(workspace):
    engine = OnlineEngine(workspace)
    assert not engine.feature_log.enabled
    engine.profiles([Customer(persona_id="anyone")])
    assert engine.feature_log.pending() == []
