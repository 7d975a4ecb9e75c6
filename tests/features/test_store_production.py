"""The Feast store on the production profile: Redis online store, SQL registry on PostgreSQL (the `production_servers`
fixture: skipped where they are unreachable, failed with $PERSONA_REQUIRE_SERVERS=1).

The same checks as the embedded profile (tests/features/test_store.py). Each store gets a Feast project of its own,
`persona_test_<random>`, removed at the end: its registry rows and its Redis keys, nothing else. Feast's own
`FeatureStore.teardown()` is not used: the SQL registry's teardown empties the registry tables of every project
in the database, and the database is shared.
"""

from __future__ import annotations

import uuid

import pytest
import redis
import yaml
from sqlalchemy import delete, func, select

from features import store as fs
from features import online_reader
from persona.workspace import Workspace
from tests.features.test_online_reader import check_delete, check_reader_paths
from tests.features.test_store import (
    Applied,
    build,
    check_materialize_online,
    check_point_in_time,
    check_push,
    check_reshape,
    check_services,
    make_config,
)

pytestmark = pytest.mark.production


def _drop_project(applied: Applied) -> None:
    """Delete the registry rows and Redis keys of the store's project, then check that none is left."""
    store = applied.store
    registry = store.registry
    project = store.project
    thread = getattr(registry, "registry_refresh_thread", None)
    if thread is not None:  # cache_mode thread: stop re-reading a registry that is going away
        thread.cancel()
    from feast.infra.registry import sql as sql_registry

    registry.delete_project(project)
    history = sql_registry.feature_view_version_history  # not covered by delete_project in Feast 0.67
    with registry.write_engine.begin() as conn:
        conn.execute(delete(history).where(history.c.project_id == project))
    online = store._get_provider().online_store
    online.delete_entity_values(store.config, ["persona_id"])
    online._get_client(store.config.online_store).delete(online_reader.MARKER_KEY + project)  # the marker, this project's own

    with registry.write_engine.connect() as conn:
        left = {t.name: conn.execute(select(func.count()).select_from(t).where(t.c.project_id == project)).scalar()
                for t in sql_registry.metadata.sorted_tables if "project_id" in t.c}
    registry.write_engine.dispose()
    assert not any(left.values()), f"registry rows of {project} left: {left}"
    address = store.config.online_store.connection_string.split(",")[0]
    host, _, port = address.rpartition(":")
    keys = list(redis.Redis(host=host, port=int(port)).scan_iter(b"*" + project.encode()))
    assert not keys, f"Redis keys of {project} left: {len(keys)}"


@pytest.fixture(scope="module")
def production_store(production_servers, tmp_path_factory):
    """A factory of applied workspaces on the production profile, each with a new Feast project."""
    made: list[Applied] = []

    def make(groups=None) -> Applied:
        cfg = make_config(profile="production", project=f"persona_test_{uuid.uuid4().hex[:10]}",
                          redis=production_servers["redis"], registry_url=production_servers["registry_url"])
        root = tmp_path_factory.mktemp("prod")
        applied = build(root, cfg) if groups is None else build(root, cfg, groups=groups)
        made.append(applied)
        return applied

    yield make
    for applied in made:
        _drop_project(applied)


@pytest.fixture(scope="module")
def applied(production_store) -> Applied:
    return production_store()


def test_apply_registers_each_service_with_its_present_groups(applied):
    assert applied.store.config.online_store.type == "redis"
    assert applied.store.config.registry.path.startswith("postgresql")
    check_services(applied)


def test_historical_features_are_point_in_time_correct(applied):
    check_point_in_time(applied)


def test_materialize_serves_the_latest_snapshot_online_and_is_incremental(production_store):
    check_materialize_online(production_store())


def test_a_snapshot_gaining_a_feature_is_reloaded_in_full(production_store):
    # Redis ignores a rewrite at the time it already holds: the view must be dropped with its values to reload.
    check_reshape(production_store())


def test_push_realtime_changes_online_values_at_once(applied):
    check_push(applied)


def test_the_direct_read_and_the_public_fallback_give_the_same(production_store):
    check_reader_paths(production_store(groups=("attributes", "transactions", "realtime")))


@pytest.mark.parametrize("internals", [True, False])
def test_deleting_personas_leaves_nothing_to_serve(production_store, monkeypatch, internals):
    check_delete(production_store(groups=("attributes", "realtime")), internals=internals, monkeypatch=monkeypatch)


def test_open_store_renders_redis_and_the_sql_registry(tmp_path, monkeypatch):
    """No server needed: opening the store connects to nothing."""
    monkeypatch.delenv(fs.REDIS_VAR, raising=False)
    monkeypatch.delenv(fs.REGISTRY_VAR, raising=False)
    url = "postgresql+psycopg://persona@registry.internal:5432/features"
    cfg = make_config(profile="production", project="persona_prod", redis="redis.internal:6380,db=2",
                      registry_url=url, key_ttl_seconds=86400)
    ws = Workspace.open(tmp_path)
    store = fs.open_store(ws, cfg)
    assert store.project == "persona_prod"
    online = store.config.online_store
    # every Redis call of a batch job is bounded (60 s); the service's own file bounds them by
    # serving.store_timeout_seconds (1 s), so a frozen Redis is a 503, not a hang
    bounded = ",socket_timeout=60,socket_connect_timeout=60"
    assert (online.type, online.connection_string, online.key_ttl_seconds) == (
        "redis", "redis.internal:6380,db=2" + bounded, 86400)
    serving = fs.open_store(ws, cfg, serving=True).config.online_store
    assert serving.connection_string == "redis.internal:6380,db=2,socket_timeout=1,socket_connect_timeout=1"
    registry = store.config.registry
    assert (registry.registry_type, registry.path, registry.cache_mode) == ("sql", url, "thread")
    assert registry.sqlalchemy_config_kwargs == {"pool_pre_ping": True}
    assert store.config.offline_store.type == "duckdb"
    assert not (tmp_path / "feature_store" / "online.db").exists()

    # The environment wins, and its values reach the file only as ${VAR} references (credentials stay out of it).
    monkeypatch.setenv(fs.REDIS_VAR, "10.0.0.7:6390,password=s3cret")
    monkeypatch.setenv(fs.REGISTRY_VAR, "postgresql+psycopg://persona:pw@10.0.0.8:5433/reg")
    store = fs.open_store(ws, cfg)
    assert store.config.online_store.connection_string == "10.0.0.7:6390,password=s3cret" + bounded
    assert store.config.registry.path == "postgresql+psycopg://persona:pw@10.0.0.8:5433/reg"
    text = (tmp_path / "feature_store" / "feature_store.yaml").read_text(encoding="utf-8")
    assert "s3cret" not in text and ":pw@" not in text
    rendered = yaml.safe_load(text)
    assert rendered["online_store"]["connection_string"] == "${PERSONA_REDIS}" + bounded
    assert rendered["registry"]["path"] == "${PERSONA_REGISTRY_URL}"

    # A literal '$' in persona.yaml would be expanded by Feast: refused, pointing at the variable to use instead.
    monkeypatch.delenv(fs.REDIS_VAR)
    with pytest.raises(ValueError, match=r"store\.redis.*set \$PERSONA_REDIS"):
        fs.open_store(ws, make_config(profile="production", redis="host:6379,password=a$b"))

