"""MLflow at the edges: where tracking lives, model names, promotion by alias, listing.

Tracking defaults to SQLite inside the workspace (`sqlite:///<ws>/mlflow.db`) with artifacts in `<ws>/mlartifacts`;
the production profile points `tracking.uri` (or $PERSONA_TRACKING_URI) at PostgreSQL. Model stages are deprecated
in MLflow 3, so versions move between the aliases `challenger` and `champion`.
"""

from __future__ import annotations

import os
import warnings

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from persona.config import PersonaConfig
from persona.workspace import Workspace

TRACKING_VAR = "PERSONA_TRACKING_URI"
MODEL_PREFIX = "persona_"
CHALLENGER = "challenger"
CHAMPION = "champion"


def tracking_uri(ws: Workspace, cfg: PersonaConfig) -> str:
    return os.environ.get(TRACKING_VAR) or cfg.tracking.uri or f"sqlite:///{ws.root / 'mlflow.db'}"


def connect(ws: Workspace, cfg: PersonaConfig) -> MlflowClient:
    """Point MLflow at the workspace's tracking store and experiment; called once by an entry point."""
    uri = tracking_uri(ws, cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    name = cfg.tracking.experiment
    if client.get_experiment_by_name(name) is None:
        client.create_experiment(name, artifact_location=(ws.root / "mlartifacts").as_uri())
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
    """Every persona model version with its aliases and held-out metrics."""
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
            })
    return sorted(rows, key=lambda r: (r["model"], -int(r["version"])))
