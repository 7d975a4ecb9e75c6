"""The production profile's MLflow backend: runs, registry and aliases on a real PostgreSQL server."""

import uuid

import mlflow
import numpy as np
import pandas as pd
import psycopg
import pytest
from sqlalchemy.engine import make_url

from persona.config import parse_config
from persona.workspace import Workspace
from training import tracking
from training.models import TagModel

pytestmark = pytest.mark.production


@pytest.fixture
def tracking_db(production_servers):
    """A throwaway database on the production PostgreSQL server, dropped afterwards."""
    admin = make_url(production_servers["registry_url"]).set(drivername="postgresql")
    name = f"persona_mlflow_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield admin.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class _Constant:
    def __init__(self, p: float) -> None:
        self.p = p

    def predict_proba(self, x):
        return np.column_stack([np.full(len(x), 1 - self.p), np.full(len(x), self.p)])


def test_runs_registry_and_aliases_on_postgresql(tmp_path, tracking_db, monkeypatch):
    monkeypatch.delenv(tracking.TRACKING_VAR, raising=False)
    cfg = parse_config({
        "sources": {"t": {"channel": "other", "kind": "transactions", "path": "t.csv",
                          "timestamp": {"column": "ts"}, "identifiers": {"customer_id": "c"},
                          "fields": {"amount": "a"}}},
        "identity": {"identifiers": {"customer_id": {"account": True}}},
        "tracking": {"uri": tracking_db},
    })
    ws = Workspace.open(tmp_path)
    assert tracking.tracking_uri(ws, cfg) == tracking_db
    client = tracking.connect(ws, cfg)
    assert mlflow.get_tracking_uri().startswith("postgresql")

    example = pd.DataFrame({"f": [1.0, 2.0]})
    name = tracking.model_name("churn_risk")
    versions = []
    for p in (0.2, 0.3):
        with mlflow.start_run():
            mlflow.log_params({"metric": "auc", "test_date": "2026-06-01"})
            mlflow.log_metric("test_metric", p)
            info = mlflow.pyfunc.log_model(name="model", python_model=TagModel("churn_risk", "probability", ["f"],
                                           {"churn_risk": _Constant(p)}, 90), input_example=example,
                                           pip_requirements=["pandas"], registered_model_name=name)
        versions.append(str(info.registered_model_version))
    client.set_registered_model_alias(name, tracking.CHAMPION, versions[0])
    client.set_registered_model_alias(name, tracking.CHALLENGER, versions[1])
    assert tracking.alias_version(client, name, tracking.CHAMPION) == versions[0]

    champion = mlflow.pyfunc.load_model(f"models:/{name}@{tracking.CHAMPION}")
    assert champion.predict(example)["churn_risk"].tolist() == [0.2, 0.2]
    rows = {r["version"]: r for r in tracking.list_models(client) if r["model"] == name}
    assert rows[versions[0]]["aliases"] == ["champion"] and rows[versions[1]]["aliases"] == ["challenger"]
    assert rows[versions[1]]["value"] == pytest.approx(0.3)
    assert rows[versions[1]]["gate"] is None  # never put to the promotion gate

    # A shared tracking database is nobody's workspace: opened from another folder it is not rewritten, and
    # artifacts stay where the experiment says.
    elsewhere = tracking.connect(Workspace.open(tmp_path / "elsewhere"), cfg)
    experiment = elsewhere.get_experiment_by_name(cfg.tracking.experiment)
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()
    assert mlflow.pyfunc.load_model(f"models:/{name}@{tracking.CHAMPION}").predict(example)["churn_risk"].tolist() \
        == [0.2, 0.2]
