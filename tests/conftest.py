"""Shared fixtures: a known hashing salt, no salt leaking in from the developer's environment, and the production
profile's servers (reachable, or the test is skipped; mandatory in CI), and one local Spark session for the Spark engine's tests
(Java 17 and pyspark, or the test is skipped; mandatory in CI)."""

import os
import sys
from pathlib import Path

import pytest

from persona.servers import unreachable
from persona.workspace import SALT_VAR


@pytest.fixture(autouse=True)
def _no_ambient_salt(monkeypatch):
    monkeypatch.delenv(SALT_VAR, raising=False)


@pytest.fixture
def salt(monkeypatch) -> str:
    """Set $PERSONA_SALT for the test (workspaces written in tests have no secrets.env)."""
    monkeypatch.setenv(SALT_VAR, "test-salt")
    return "test-salt"


# --- the production profile's servers ---------------------------------------------------------------------------
REQUIRE_SERVERS_VAR = "PERSONA_REQUIRE_SERVERS"


@pytest.fixture(scope="session")
def production_servers() -> dict[str, str]:
    """The Redis address and PostgreSQL registry URL of the production tests ($PERSONA_REDIS, $PERSONA_REGISTRY_URL
    or the local defaults, database `test`).

    Skips a test when a server does not answer; with $PERSONA_REQUIRE_SERVERS=1 (CI) the test fails instead,
    naming the server.
    """
    servers = {
        "redis": os.environ.get("PERSONA_REDIS") or "127.0.0.1:6379",
        "registry_url": os.environ.get("PERSONA_REGISTRY_URL") or "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    }
    down = unreachable(servers["redis"], servers["registry_url"])
    if down:
        message = "production servers unreachable: " + "; ".join(down)
        if os.environ.get(REQUIRE_SERVERS_VAR) == "1":
            pytest.fail(f"{message} (${REQUIRE_SERVERS_VAR}=1 makes these tests mandatory)", pytrace=False)
        pytest.skip(f"{message} (start them, or set ${REQUIRE_SERVERS_VAR}=1 to fail instead of skipping)")
    return servers


# --- the Spark engine ---------------------------------------------------------------------------------------------
REQUIRE_SPARK_VAR = "PERSONA_REQUIRE_SPARK"
# What every Spark test runs on: two local cores, no UI, few shuffle partitions (small data), loopback only.
SPARK_TEST_CONF = {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4",
                   "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}


def spark_or_skip() -> None:
    """Skip the test when Spark cannot start here (no Java 17, no pyspark); fail instead with $PERSONA_REQUIRE_SPARK=1."""
    from persona import engine

    try:
        engine.check_spark()
    except engine.EngineUnavailable as exc:
        if os.environ.get(REQUIRE_SPARK_VAR) == "1":
            pytest.fail(f"{exc} (${REQUIRE_SPARK_VAR}=1 makes the Spark tests mandatory)", pytrace=False)
        pytest.skip(f"{exc} (or set ${REQUIRE_SPARK_VAR}=1 to fail instead of skipping)")


@pytest.fixture(scope="session")
def spark():
    """One local[2] Spark session for the whole test run (a JVM start costs seconds); stopped at the end."""
    from persona import engine
    from persona.config import SparkConfig

    spark_or_skip()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = engine.spark_session(SparkConfig(master="local[2]", app_name="persona-tests", conf=SPARK_TEST_CONF))
    yield session
    session.stop()


# --- a trained workspace ----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def trained_workspace(tmp_path_factory) -> Path:
    """generate (1,500 customers) -> integrate -> features -> train --promote, once per session (about 75 s).

    Read-only: a test that writes (rescores, prunes, promotes) copies it first with `shutil.copytree(...,
    symlinks=True)`. A copy works on its own: its MLflow database and feature store are found under its own root
    and the salt comes from the secrets.env that generate wrote, not from the environment.
    """
    import yaml

    from features.build import build_features
    from features.generate import generate
    from features.integration.run import integrate
    from persona.workspace import Workspace
    from training.train import train

    root = tmp_path_factory.mktemp("trained") / "ws"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(SALT_VAR, raising=False)  # the salt of secrets.env, as a copy will use
        # A fixed salt: persona ids and row order follow the hashes, so a random one would grow other trees each run
        root.mkdir(parents=True)
        (root / "secrets.env").write_text(f"{SALT_VAR}=0123456789abcdef0123456789abcdef\n", encoding="utf-8")
        generate(root, 1500, seed=3)
        path = root / "persona.yaml"
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
        cfg["training"] = {**(cfg.get("training") or {}), "min_positives": 20, "min_negatives": 20, "cutoffs": 3}
        path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
        ws = Workspace.open(root)
        integrate(ws)
        build_features(ws)
        train(ws, promote=True)
        _promote_every_challenger(ws)
    return root


def _promote_every_challenger(ws) -> None:
    """Make each tag's challenger the champion, as an operator may in the MLflow UI.

    On 1,500 generated customers a model may not clear the promotion gate (it must beat every baseline and the
    champion by a margin; tested in tests/training/test_promotion.py); the tests built on this workspace need
    champions to serve, whatever the gate said.
    """
    from training import tracking

    client = tracking.connect(ws, ws.config())
    for rm in client.search_registered_models(f"name LIKE '{tracking.MODEL_PREFIX}%'"):
        version = tracking.alias_version(client, rm.name, tracking.CHALLENGER)
        if version is not None:
            client.set_registered_model_alias(rm.name, tracking.CHAMPION, version)
