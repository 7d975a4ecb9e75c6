"""A copied workspace works on its own and never touches the original.

MLflow and the Feast registry store absolute paths; a copy that kept them would train into, materialise from or
load models out of the folder it was copied from. Here a rescored workspace (`orig`) is copied to `moved`, and in
`moved` an operator retrains a tag, recomputes the features, rescores and serves a profile. Afterwards every stored
location in `moved` is under `moved`, and `orig` is byte for byte (and mtime for mtime) what it was: no file added,
removed or changed. Making `orig` read-only would not prove as much: a writer aimed at it would fail instead of
being caught.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd
import pytest

from features import store as feature_store
from persona.workspace import Workspace
from rules import history
from serving.online import Customer, OnlineEngine
from tests.test_loop import persona  # the command line in a new process
from training import tracking

pytestmark = pytest.mark.slow


def tree(root: Path) -> dict[str, tuple]:
    """Every entry under root: files by size, mtime and SHA-256, symlinks by target, folders by mtime (an entry
    created and removed again still moves its folder's mtime)."""
    found = {}
    for folder, dirs, files in os.walk(root):  # symlinks are listed, not followed
        for name in [*dirs, *files]:
            path = Path(folder) / name
            st = path.lstat()
            if path.is_symlink():
                found[path.relative_to(root).as_posix()] = ("link", os.readlink(path))
            elif path.is_dir():
                found[path.relative_to(root).as_posix()] = ("dir", st.st_mtime_ns)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                found[path.relative_to(root).as_posix()] = ("file", st.st_size, st.st_mtime_ns, digest)
    found["."] = ("dir", root.stat().st_mtime_ns)
    return found


def tree_changes(before: dict, after: dict) -> dict[str, list[str]]:
    return {"added": sorted(set(after) - set(before)), "removed": sorted(set(before) - set(after)),
            "changed": sorted(k for k in set(before) & set(after) if before[k] != after[k])}


def local_path(location: str) -> Path | None:
    """The filesystem path a stored location names (file: URI or absolute path); None for models:/, runs:/ ..."""
    if location.startswith("file:"):
        return Path(unquote(urlparse(location).path))
    return Path(location) if location.startswith("/") else None


def stored_locations(db: Path) -> list[tuple[str, str, str]]:
    """(table, column, value) of every artifact location the MLflow store keeps (tracking.LOCATION_COLUMNS), but
    the `Default` experiment's: MLflow creates it with `./mlruns` of the creating process's working folder, and
    persona never logs to it."""
    found = []
    with sqlite3.connect(db) as con:
        for table, column, condition in tracking.LOCATION_COLUMNS:
            columns = {r[1] for r in con.execute(f"PRAGMA table_info('{table}')")}
            if column not in columns:
                continue
            if table == "experiments":
                condition = " AND ".join(c for c in (condition, "name != 'Default'") if c)
            where = f" AND {condition}" if condition else ""
            found += [(table, column, v) for (v,) in
                      con.execute(f'SELECT "{column}" FROM "{table}" WHERE "{column}" IS NOT NULL{where}')]
    return found


def mentions(db: Path, text: str) -> list[tuple[str, str, bytes]]:
    """Every (table, column, value) of an SQLite database whose value holds `text`, compared byte for byte (Feast's
    registry keeps protobuf blobs)."""
    found = []
    with sqlite3.connect(db) as con:
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            for column in [r[1] for r in con.execute(f"PRAGMA table_info('{table}')")]:
                rows = con.execute(f'SELECT CAST("{column}" AS BLOB) FROM "{table}" '
                                   f'WHERE instr(CAST("{column}" AS BLOB), CAST(? AS BLOB)) > 0', (text,)).fetchall()
                found += [(table, column, bytes(r[0])[:200]) for r in rows]
    return found


@pytest.fixture(scope="module")
def orig(trained_workspace, tmp_path_factory) -> Path:
    """A rescored copy of the trained workspace: the original that `moved` is copied from."""
    root = tmp_path_factory.mktemp("relocate") / "orig"
    shutil.copytree(trained_workspace, root, symlinks=True)
    persona(root, "rescore")
    return root


def test_a_copied_workspace_trains_features_rescores_and_serves_on_its_own(orig, tmp_path):
    orig, moved = orig.resolve(), tmp_path.resolve() / "moved"  # as the workspace records its root
    shutil.copytree(orig, moved, symlinks=True)
    before = tree(orig)
    ws = Workspace.open(moved)
    databases = [moved / "mlflow.db", feature_store.store_dir(ws) / "registry.db"]
    assert all(mentions(db, str(orig)) for db in databases)  # as copied, both still name the original's files
    dates = history.list_dates(ws)

    trained = persona(moved, "train", "--promote", "--tag", "churn_risk")
    features = persona(moved, "features")
    rescored = persona(moved, "rescore")
    assert [m["tag"] for m in trained["models"]] == ["churn_risk"], trained.get("skipped")
    assert features["materialized"] and rescored["personas"] > 0
    assert history.list_dates(ws) == sorted({*dates, rescored["date"]})
    # The commands moved every location (looked at before this process opens the copy, which would move them too):
    # nothing the copy's databases hold names the original any more, but Feast's history of earlier view
    # definitions (read back only for a view pinned to a version, which persona never asks for).
    left = {db.name: [m for m in mentions(db, str(orig)) if m[0] != "feature_view_version_history"]
            for db in databases}
    assert left == {db.name: [] for db in databases}, left

    # A profile served from the copy: a customer looked up by phone, as a caller would.
    snapshot = history.read(ws, columns=["persona_id"])
    ids = pd.read_parquet(ws.require_current("integrated", "") / "identity_map.parquet",
                          columns=["id_type", "value", "persona_id", "status"])
    phones = ids[(ids["id_type"] == "phone") & (ids["status"] == "linked")
                 & ids["persona_id"].isin(snapshot["persona_id"])].sort_values("persona_id")
    pick = phones.iloc[len(phones) // 2]
    engine = OnlineEngine(ws)
    (profile,) = engine.profiles([Customer(id_type="phone", value=str(pick["value"]))])
    assert profile is not None and profile["persona_id"] == pick["persona_id"]
    assert profile["scores"]["churn_risk"] is not None and profile["tags"]
    assert profile["models"]["churn_risk"] == tracking.alias_version(engine.client, "persona_churn_risk",
                                                                     tracking.CHAMPION)

    # MLflow: every stored location is the copy's, and the new run's artifacts are in the copy.
    db = moved / "mlflow.db"
    outside = [(t, c, v) for t, c, v in stored_locations(db)
               if (p := local_path(v)) is not None and not p.is_relative_to(moved)]
    assert outside == [], f"MLflow locations outside the copy: {outside[:10]}"
    with sqlite3.connect(db) as con:
        uri = con.execute("SELECT r.artifact_uri FROM runs r JOIN model_versions v ON v.run_id = r.run_uuid "
                          "WHERE v.name = 'persona_churn_risk' AND v.version = ?",
                          (int(trained["models"][0]["version"]),)).fetchone()[0]
    artifacts = local_path(uri)
    assert artifacts is not None and artifacts.is_relative_to(moved / tracking.ARTIFACTS_DIR), uri
    assert artifacts.is_dir() and any(artifacts.rglob("*")), uri

    # Feast: every registered data source reads the copy's files.
    store = feature_store.open_store(ws, ws.config())
    sources = {v.name: v.batch_source.path for v in store.list_feature_views() if getattr(v.batch_source, "path", "")}
    assert sources and all(Path(p).is_relative_to(moved) for p in sources.values()), sources
    others = {s.name: s.path for s in store.list_data_sources() if getattr(s, "path", "")}
    assert all(Path(p).is_relative_to(moved) for p in others.values()), others

    # No link of the copy leads back out of it.
    links = [p for p in moved.rglob("*") if p.is_symlink()]
    assert links and all(p.resolve().is_relative_to(moved) for p in links), \
        [str(p) for p in links if not p.resolve().is_relative_to(moved)]

    # And the original is exactly as it was.
    changes = tree_changes(before, tree(orig))
    assert changes == {"added": [], "removed": [], "changed": []}, changes
