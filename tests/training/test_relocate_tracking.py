"""A copied or moved workspace reads and writes its own MLflow artifacts, never the original's."""

import hashlib
import shutil
import sqlite3
import threading
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from persona.config import parse_config
from persona.workspace import Workspace
from training import tracking

pytestmark = pytest.mark.slow  # a new MLflow store (its migrations) takes several seconds

NAME = tracking.model_name("relocation_test")


def _config():
    return parse_config({
        "sources": {"t": {"channel": "other", "kind": "transactions", "path": "t.csv",
                          "timestamp": {"column": "ts"}, "identifiers": {"customer_id": "c"},
                          "fields": {"amount": "a"}}},
        "identity": {"identifiers": {"customer_id": {"account": True}}},
    })


@pytest.fixture
def cfg(monkeypatch):
    monkeypatch.delenv(tracking.TRACKING_VAR, raising=False)
    return _config()


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    """A workspace's tracking store with one logged, registered, champion model (a regression on 20 rows).

    Shared by the module's tests: each works on a copy, and one moves it away for a while and back.
    """
    root = tmp_path_factory.mktemp("relocate") / "ws"
    root.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(tracking.TRACKING_VAR, raising=False)
        client = tracking.connect(Workspace.open(root), _config())
    x = pd.DataFrame({"f": np.arange(20.0)})
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(LogisticRegression().fit(x, (x["f"] > 9).astype(int)), name="model",
                                        serialization_format="cloudpickle",  # skops' import alone takes seconds
                                        pip_requirements=["scikit-learn"], registered_model_name=NAME)
    client.set_registered_model_alias(NAME, tracking.CHAMPION, info.registered_model_version)
    return root


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def _locations_mentioning(db: Path, text: str) -> list[tuple[str, str, str]]:
    """Every (table, column, value) of the store whose text contains `text`."""
    found = []
    with sqlite3.connect(db) as con:
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            for column in [r[1] for r in con.execute(f"PRAGMA table_info('{table}')")]:
                rows = con.execute(f'SELECT CAST("{column}" AS TEXT) FROM "{table}" '
                                   f'WHERE instr(CAST("{column}" AS TEXT), ?) > 0', (text,)).fetchall()
                found += [(table, column, r[0]) for r in rows]
    return found


def test_a_copied_workspace_loads_and_logs_under_its_own_folder(tmp_path, original, cfg):
    copy = tmp_path / "copy"
    shutil.copytree(original, copy, symlinks=True)
    before = _files(original)
    away = original.with_name("ws-away")
    original.rename(away)  # anything the copy still reads or writes at the old path now fails or shows up there
    try:
        ws = Workspace.open(copy)
        client = tracking.connect(ws, cfg)
        model = mlflow.pyfunc.load_model(f"models:/{NAME}@{tracking.CHAMPION}")
        assert model.predict(pd.DataFrame({"f": [0.0, 19.0]})).tolist() == [0, 1]
        with mlflow.start_run() as run:
            mlflow.log_dict({"copied": True}, "note.json")
        assert run.info.artifact_uri.startswith((copy / "mlartifacts").as_uri() + "/")
        assert any(p.name == "note.json" for p in (copy / "mlartifacts").rglob("*"))
        assert not original.exists()
    finally:
        away.rename(original)
    assert _files(original) == before  # byte-identical, nothing added

    assert _locations_mentioning(copy / "mlflow.db", str(original) + "/") == []
    assert all(r["aliases"] for r in tracking.list_models(client) if r["model"] == NAME)
    # Idempotent, and the original still points at itself.
    uri = tracking.tracking_uri(ws, cfg)
    assert tracking.relocate_artifacts(ws, uri, cfg.tracking.experiment) is None
    assert _locations_mentioning(original / "mlflow.db", str(copy) + "/") == []


def test_two_connections_opening_a_copy_at_once_relocate_it_once(tmp_path, original, cfg):
    copy = tmp_path / "copy"
    shutil.copytree(original, copy, symlinks=True)
    ws = Workspace.open(copy)
    uri = tracking.tracking_uri(ws, cfg)
    start = threading.Barrier(2)
    results = []

    def open_copy():
        start.wait()
        results.append(tracking.relocate_artifacts(ws, uri, cfg.tracking.experiment))

    threads = [threading.Thread(target=open_copy) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results, key=str) == [original, None]
    assert _locations_mentioning(copy / "mlflow.db", str(original) + "/") == []


def test_a_store_outside_the_workspace_is_left_alone(tmp_path, original, cfg):
    """Another workspace pointed at this store (as a shared server would be) rewrites nothing."""
    other = Workspace.open(tmp_path / "other")
    uri = f"sqlite:///{original / 'mlflow.db'}"
    before = _files(original)
    assert tracking.relocate_artifacts(other, uri, cfg.tracking.experiment) is None
    assert _files(original) == before


def test_an_empty_or_foreign_database_is_left_to_mlflow(tmp_path, cfg):
    ws = Workspace.open(tmp_path)
    uri = tracking.tracking_uri(ws, cfg)
    (tmp_path / "mlflow.db").write_bytes(b"")  # SQLite's empty database: MLflow creates the tables
    assert tracking.relocate_artifacts(ws, uri, cfg.tracking.experiment) is None
    (tmp_path / "mlflow.db").write_text("not a database", encoding="utf-8")
    assert tracking.relocate_artifacts(ws, uri, cfg.tracking.experiment) is None
