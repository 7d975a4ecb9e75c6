"""MLflow at the edges: where tracking lives, model names, promotion by alias, the gate's record, listing.

Tracking defaults to SQLite inside the workspace (`sqlite:///<ws>/mlflow.db`) with artifacts in `<ws>/mlartifacts`;
the production profile points `tracking.uri` (or $PERSONA_TRACKING_URI) at PostgreSQL. Model stages are deprecated
in MLflow 3, so versions move between the aliases `challenger` and `champion`.

MLflow stores artifact locations as absolute URIs (`file:///<ws>/mlartifacts/...`). For the embedded store,
`connect` rewrites them when the workspace has been copied or moved (`relocate_artifacts`), so a copy reads and
writes its own artifacts. A tracking database outside the workspace (PostgreSQL) is shared: nothing is rewritten,
and every workspace using it reads and writes artifacts where the experiment's artifact location says (the folder of
the workspace that created the experiment), so that location must be reachable by all of them.
"""

from __future__ import annotations

import math
import os
import sqlite3
import warnings
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from persona.config import PersonaConfig
from persona.workspace import Workspace

TRACKING_VAR = "PERSONA_TRACKING_URI"
MODEL_PREFIX = "persona_"
CHALLENGER = "challenger"
CHAMPION = "champion"
GATE_TAG = "promotion_gate"  # on the challenger's run: promoted | refused
GATE_REASON_TAG = "promotion_reason"  # which comparison decided, with its numbers
ARTIFACTS_DIR = "mlartifacts"
MAX_TAG_CHARS = 5000  # MLflow caps tag values (8,000 characters in the SQL stores)


def tracking_uri(ws: Workspace, cfg: PersonaConfig) -> str:
    return os.environ.get(TRACKING_VAR) or cfg.tracking.uri or f"sqlite:///{ws.root / 'mlflow.db'}"


def connect(ws: Workspace, cfg: PersonaConfig) -> MlflowClient:
    """Point MLflow at the workspace's tracking store and experiment; called once by an entry point.

    The workspace's own SQLite store is first made to point at this workspace's artifacts (`relocate_artifacts`).
    """
    uri = tracking_uri(ws, cfg)
    relocate_artifacts(ws, uri, cfg.tracking.experiment)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    name = cfg.tracking.experiment
    if client.get_experiment_by_name(name) is None:
        client.create_experiment(name, artifact_location=(ws.root / ARTIFACTS_DIR).as_uri())
    mlflow.set_experiment(name)
    warnings.filterwarnings("ignore", module="mlflow")
    return client


def model_name(tag: str) -> str:
    return f"{MODEL_PREFIX}{tag}"


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def list_models(client: MlflowClient) -> list[dict]:
    """Every persona model version with its aliases, held-out metrics and promotion-gate verdict.

    `gate` is "promoted" or "refused" (None: the version was never put to the gate, e.g. trained without promote)
    and `gate_reason` says which comparison decided, with its numbers.
    """
    rows = []
    for rm in client.search_registered_models(f"name LIKE '{MODEL_PREFIX}%'"):
        aliases: dict[str, list[str]] = {}
        for alias, version in (rm.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        for mv in client.search_model_versions(f"name = '{rm.name}'"):
            run = client.get_run(mv.run_id) if mv.run_id else None
            metrics = run.data.metrics if run else {}
            rows.append({
                "model": rm.name, "version": str(mv.version), "aliases": sorted(aliases.get(str(mv.version), [])),
                "created": mv.creation_timestamp, "run_id": mv.run_id,
                "metric": (run.data.params.get("metric") if run else None),
                "value": metrics.get("test_metric"),
                "held_out": (run.data.params.get("test_date") if run else None),
                "grade": (run.data.tags.get("grade") if run else None),
                "gate": (run.data.tags.get(GATE_TAG) if run else None),
                "gate_reason": (run.data.tags.get(GATE_REASON_TAG) if run else None),
            })
    return sorted(rows, key=lambda r: (r["model"], -int(r["version"])))


def record_gate(client: MlflowClient, name: str, version: str, *, promoted: bool, reason: str,
                metrics: dict[str, float | None]) -> None:
    """Log the promotion gate's verdict on the run that produced this model version (tags and gate_* metrics)."""
    run_id = client.get_model_version(name, version).run_id
    if not run_id:
        return
    client.set_tag(run_id, GATE_TAG, "promoted" if promoted else "refused")
    if len(reason) > MAX_TAG_CHARS:
        reason = reason[:MAX_TAG_CHARS - 3] + "..."
    client.set_tag(run_id, GATE_REASON_TAG, reason)
    for key, value in metrics.items():
        if value is not None and math.isfinite(value):
            client.log_metric(run_id, key, float(value))


# --- a copied or moved workspace ------------------------------------------------------------------------------------
# (table, column, condition): every place an MLflow 3 SQL store keeps an artifact location. Tables or columns an
# older schema lacks are skipped; MLflow's own migrations run after this, on open.
LOCATION_COLUMNS = (
    ("experiments", "artifact_location", ""),
    ("runs", "artifact_uri", ""),
    ("model_versions", "source", ""),
    ("model_versions", "storage_location", ""),
    ("logged_models", "artifact_location", ""),
    ("trace_tags", "value", "key = 'mlflow.artifactLocation'"),
    ("workspaces", "default_artifact_root", ""),
    ("workspaces", "trace_archival_location", ""),
)


def _workspace_db(ws: Workspace, uri: str) -> Path | None:
    """The SQLite file of a tracking URI if it is this workspace's own `mlflow.db`, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri.removeprefix("sqlite:///").partition("?")[0])  # sqlite:////abs/path, sqlite:///relative/path
    path = path if path.is_absolute() else Path.cwd() / path  # SQLAlchemy reads a relative path from the cwd
    return path if path.resolve() == (ws.root / "mlflow.db").resolve() else None


def _path_of(location: str) -> Path | None:
    """The local path of a `file:` URI or an absolute path; None for any other scheme (s3:, models:, ...)."""
    if location.startswith("file:"):
        return Path(unquote(urlparse(location).path))
    return Path(location) if location.startswith("/") else None


def _moved_from(stored: str | None, ws: Workspace) -> Path | None:
    """The old workspace root if the experiment's artifact location is another workspace's `mlartifacts`."""
    old = _path_of(stored) if stored else None
    if old is None or old.name != ARTIFACTS_DIR or old.parent == ws.root:
        return None
    return old.parent


def relocate_artifacts(ws: Workspace, uri: str, experiment: str) -> Path | None:
    """If `uri` is this workspace's SQLite store and its experiment's artifacts are under another folder's
    `mlartifacts` (the workspace was copied or moved), rewrite every stored location under that old workspace root
    to this one, in one transaction. Returns the old root, or None when nothing moved (one query).

    Safe when several processes open the store at once: the check is repeated inside an immediate (write-locking)
    transaction, so the second one finds nothing left to do. Artifacts themselves are not touched: the copy already
    holds them.
    """
    db = _workspace_db(ws, uri)
    if db is None or not db.is_file():
        return None
    query = "SELECT artifact_location FROM experiments WHERE name = ?"
    con = sqlite3.connect(db, timeout=60, isolation_level=None)
    try:
        try:
            row = con.execute(query, (experiment,)).fetchone()
        except sqlite3.DatabaseError as exc:
            if "no such table" in str(exc) or "not a database" in str(exc):
                return None  # empty (MLflow creates its tables on open) or foreign: MLflow will say what is wrong
            raise
        if _moved_from(row[0] if row else None, ws) is None:
            return None
        try:
            con.execute("BEGIN IMMEDIATE")
            row = con.execute(query, (experiment,)).fetchone()
            old = _moved_from(row[0] if row else None, ws)
            if old is not None:
                _rewrite_prefixes(con, old, ws.root)
            con.execute("COMMIT")
            return old
        except sqlite3.Error as exc:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise RuntimeError(
                f"{db}: this workspace was copied or moved (its tracking database points at artifacts in another "
                f"folder) and the database could not be updated to point here: {exc}. Make the file writable and "
                "retry.") from exc
    finally:
        con.close()


def _rewrite_prefixes(con: sqlite3.Connection, old: Path, new: Path) -> None:
    """Replace the old root by the new one at the start of every stored location, as a file URI and as a path."""
    pairs = [(old.as_uri() + "/", new.as_uri() + "/"), (str(old) + "/", str(new) + "/")]
    for table, column, condition in LOCATION_COLUMNS:
        columns = {r[1] for r in con.execute(f"PRAGMA table_info('{table}')")}
        if column not in columns:
            continue
        for before, after in pairs:
            where = f"substr({column}, 1, ?) = ?" + (f" AND {condition}" if condition else "")
            con.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE {where}",
                        (after, len(before) + 1, len(before), before))
