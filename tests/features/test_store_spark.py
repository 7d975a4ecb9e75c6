"""The Feast store on `engine: spark`: Feast's Spark offline store joins the same Parquet snapshots as DuckDB.

Built on the small snapshot files of tests/features/test_store.py (values known per persona and date). The Spark
tests share the session fixture `spark` (local[2]); without Java 17 or pyspark they skip, naming what is missing.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource
from feast.infra.offline_stores.file_source import FileSource

from feature_repo import definitions as defs
from features import feature_log
from features import store as fs
from persona.config import parse_config
from persona.workspace import Workspace
from tests.conftest import SPARK_TEST_CONF
from tests.features.test_store import (
    D1,
    D2,
    FEATURE,
    MINIMAL_CONFIG,
    SERVICES,
    TX_COUNT,
    WRITTEN,
    build,
    check_materialize_online,
    check_push,
    check_services,
    features_of,
    make_config,
    value,
)

pytestmark = pytest.mark.slow


def spark_config(spark, **conf):
    """A persona.yaml on engine spark whose `spark:` names the test session (so Feast joins it)."""
    context = spark.sparkContext
    return parse_config({**MINIMAL_CONFIG, "store": {"project": "persona_test"}, "engine": "spark",
                         "spark": {"master": context.master, "app_name": context.appName,
                                   "conf": {**SPARK_TEST_CONF, **conf}}})


def test_the_rendered_store_names_the_spark_offline_store_with_the_sessions_master(tmp_path, spark):
    ws = Workspace.open(tmp_path)
    cfg = spark_config(spark)
    store = fs.open_store(ws, cfg)
    offline = store.config.offline_store
    assert offline.type == "spark"
    assert offline.spark_conf["spark.master"] == spark.sparkContext.master == "local[2]"
    assert offline.spark_conf["spark.app.name"] == spark.sparkContext.appName
    assert offline.spark_conf["spark.sql.session.timeZone"] == "UTC"
    assert {k: offline.spark_conf[k] for k in SPARK_TEST_CONF} == SPARK_TEST_CONF
    # the online service's store reads online only and writes feature logs as Parquet: DuckDB, no JVM
    assert fs.open_store(ws, cfg, serving=True).config.offline_store.type == "duckdb"
    assert fs.open_store(ws, make_config()).config.offline_store.type == "duckdb"
    with pytest.raises(ValueError, match=r"\['spark.driver.extraJavaOptions'\] hold a '\$'"):
        fs.render_store_yaml(ws, spark_config(spark, **{"spark.driver.extraJavaOptions": "-Dx=$HOME"}))


def test_historical_features_on_spark_equal_those_on_duckdb(tmp_path_factory, spark):
    duck = build(tmp_path_factory.mktemp("duckdb"), make_config())
    on_spark = build(tmp_path_factory.mktemp("spark"), spark_config(spark))
    assert fs.engine_of(on_spark.store) == "spark"
    day = timedelta(days=1)
    rows = [  # (persona, time, the snapshot date it must see, or None for nulls)
        ("b", D2 + 40 * day, D2),
        ("a", D1 - day, None),  # before every snapshot: nulls, not dropped
        ("late", D1 + 3 * day, None),  # its only snapshot (D2) is later
        ("a", D1, D1),  # exactly at a snapshot
        ("nobody", D2 + day, None),  # a persona with no snapshot at all
        ("a", D2 - pd.Timedelta(microseconds=1), D1),  # an instant before D2: still D1
        ("late", D2 + day, D2),
        ("b", D1 + 10 * day, D1),
        ("a", D2, D2),
        ("b", D1 + 10 * day, D1),  # duplicate rows stay duplicate rows
    ]
    entity_df = pd.DataFrame({"persona_id": [p for p, _, _ in rows], "event_timestamp": [t for _, t, _ in rows],
                              "label": np.arange(len(rows))}, index=np.arange(len(rows))[::-1])
    service = "churn_risk_v1"
    expected = fs.historical_features(duck.store, service, entity_df)
    got = fs.historical_features(on_spark.store, service, entity_df)
    pd.testing.assert_frame_equal(got, expected)
    # and both are the known values
    for i, (persona, _, seen) in enumerate(rows):
        for g in SERVICES[service]:
            name = FEATURE[g][0]
            assert pd.isna(got.at[i, name]) if seen is None else got.at[i, name] == value(g, persona, seen), (i, name)
        assert pd.isna(got.at[i, TX_COUNT]) if seen is None else got.at[i, TX_COUNT] == {D1: 1, D2: 2}[seen]
    assert list(got.columns) == ["persona_id", "event_timestamp", "label", *features_of(SERVICES[service])]
    # Feast's settings for its query do not stay on the shared session
    assert spark.conf.get("spark.sql.parser.quotedRegexColumnNames", None) in (None, "false")
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"


def test_apply_materialise_and_serve_on_a_spark_engine_workspace(tmp_path, spark):
    applied = build(tmp_path, spark_config(spark))
    check_services(applied)
    views = {v.name: v for v in applied.store.list_feature_views()}
    assert all(isinstance(v.batch_source, SparkSource) for v in views.values())
    assert views[defs.REALTIME].stream_source.batch_source.path == views[defs.REALTIME].batch_source.path
    assert views["transactions"].batch_source.created_timestamp_column == defs.CREATED
    check_materialize_online(applied)  # the bulk writer reads the snapshots itself: no Spark job
    check_push(applied)
    fs.push_tags(applied.store, pd.DataFrame({"persona_id": ["a"], "churn_risk": ["high"]}), D2)
    assert isinstance(applied.store.get_feature_view(defs.TAGS_VIEW).batch_source, SparkSource)

    # the service's store (DuckDB offline store) writes feature logs for the Spark-declared services
    serving = fs.open_store(applied.ws, applied.cfg, serving=True)
    services = [serving.get_feature_service(name) for name in applied.services]
    logger = feature_log.FeatureLogger(serving, services, sample_rate=1.0, seed=0)
    logger.offer(["a", "nobody"], "req-1")
    assert logger.flush() == 2
    assert sorted(feature_log.read_logs(feature_log.log_root(applied.ws), "high_value_v1")["persona_id"]) == \
        ["a", "nobody"]


def test_a_duckdb_workspace_switched_to_spark_redeclares_its_sources(tmp_path, spark):
    applied = build(tmp_path, make_config())
    fs.push_tags(applied.store, pd.DataFrame({"persona_id": ["a"], "churn_risk": ["high"]}), D2)
    assert all(isinstance(v.batch_source, FileSource) for v in applied.store.list_feature_views())
    fs.materialize(applied.store, D1 + timedelta(days=1))

    cfg = spark_config(spark)
    store = fs.open_store(applied.ws, cfg)
    assert fs.apply(store, applied.ws, cfg) == applied.services
    views = store.list_feature_views()
    assert sorted(v.name for v in views) == sorted([*WRITTEN, defs.TAGS_VIEW])
    assert all(isinstance(v.batch_source, SparkSource) for v in views)
    # what was materialised stays materialised: the next load is incremental
    report = fs.materialize(store, D2 + timedelta(days=1))
    assert {r["mode"] for r in report["views"].values()} == {"incremental"}
    got = fs.online_features(store, "churn_risk_v1", ["a", "late"]).set_index("persona_id")
    assert got.at["a", FEATURE["attributes"][0]] == value("attributes", "a", D2)


def test_the_point_in_time_join_reads_in_utc_whatever_the_sessions_time_zone(tmp_path, spark):
    """Feast's Spark SQL bounds the snapshots by naive UTC literals (the latest entity time); in a session set to
    UTC+8 a snapshot dated exactly at that bound would fall outside it, and the row would get the older snapshot."""
    applied = build(tmp_path, spark_config(spark))
    entity_df = pd.DataFrame({"persona_id": ["a", "b"], "event_timestamp": [D2, D1]})
    spark.conf.set("spark.sql.session.timeZone", "Asia/Shanghai")
    try:
        got = fs.historical_features(applied.store, "high_value_v1", entity_df)
        assert spark.conf.get("spark.sql.session.timeZone") == "Asia/Shanghai"  # the session's own, put back
    finally:
        spark.conf.set("spark.sql.session.timeZone", "UTC")
    assert got["tx_amount_90d"].tolist() == [value("transactions", "a", D2), value("transactions", "b", D1)]
