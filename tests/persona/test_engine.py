"""The engine setting: duckdb by default, spark with its cluster settings; a Spark setting on a machine without
pyspark or Java 17 gets one error naming what is missing (pyspark and java hidden here, whatever is installed)."""

from __future__ import annotations

import sys

import pytest

from persona import engine
from persona.config import ConfigError, parse_config
from tests.features.test_store import MINIMAL_CONFIG


def test_the_default_engine_is_duckdb_and_spark_settings_are_read():
    assert parse_config(MINIMAL_CONFIG).engine == "duckdb"
    cfg = parse_config({**MINIMAL_CONFIG, "engine": "spark", "spark": {
        "master": "spark://head:7077", "conf": {"spark.executor.instances": 4, "spark.dynamicAllocation.enabled": True}}})
    assert cfg.engine == "spark" and cfg.spark.master == "spark://head:7077"
    assert cfg.spark.conf == {"spark.executor.instances": "4", "spark.dynamicAllocation.enabled": "true"}


def test_an_unknown_engine_is_refused_by_name():
    with pytest.raises(ConfigError, match="engine"):
        parse_config({**MINIMAL_CONFIG, "engine": "hadoop"})


def test_without_pyspark_the_error_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyspark", None)  # import pyspark now raises ImportError
    with pytest.raises(engine.EngineUnavailable, match=r"persona\[spark\]"):
        engine.check_spark()


def test_without_java_the_error_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    assert engine.java_version() is None
    pytest.importorskip("pyspark")
    with pytest.raises(engine.EngineUnavailable, match="Java 17"):
        engine.check_spark()


def test_an_old_java_is_named(monkeypatch, tmp_path):
    fake = tmp_path / "jdk" / "bin" / "java"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/bin/sh\necho \'openjdk version "11.0.2" 2019-01-15\' >&2\n')
    fake.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    assert engine.java_version() == 11
    pytest.importorskip("pyspark")
    with pytest.raises(engine.EngineUnavailable, match="version 11"):
        engine.check_spark()


def test_a_spark_workspace_without_java_stops_before_any_work(tmp_path, monkeypatch):
    import yaml
    from typer.testing import CliRunner

    from persona.cli.commands import app

    pytest.importorskip("pyspark")
    (tmp_path / "persona.yaml").write_text(yaml.safe_dump({**MINIMAL_CONFIG, "engine": "spark"}))
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    result = CliRunner().invoke(app, ["integrate", "-w", str(tmp_path)])
    assert result.exit_code == 2
    assert "Java 17" in result.output
    assert not (tmp_path / "staging").exists()  # nothing was staged


@pytest.mark.slow
def test_a_setting_holds_for_the_step_only_and_the_earlier_value_comes_back(spark):
    key, other = "spark.sql.legacy.parquet.nanosAsLong", "spark.sql.shuffle.partitions"
    spark.conf.unset(key)
    before = spark.conf.get(other)
    with engine.spark_conf(spark, {**engine.NANOS_AS_LONG, other: "7"}):
        assert spark.conf.get(key) == "true" and spark.conf.get(other) == "7"
    assert spark.conf.get(key, None) in (None, "false") and spark.conf.get(other) == before
    with pytest.raises(ZeroDivisionError), engine.spark_conf(spark, {other: "3"}):
        1 / 0  # a failing step leaves nothing behind either
    assert spark.conf.get(other) == before
    with engine.spark_conf(spark, {other: None}):  # None: left as it is, and put back after whatever the step set
        assert spark.conf.get(other) == before
        spark.conf.set(other, "5")
    assert spark.conf.get(other) == before


@pytest.mark.slow
def test_each_item_runs_in_a_task_of_its_own(spark):
    import pandas as pd

    def work(item: str) -> pd.DataFrame:
        from pyspark import TaskContext

        return pd.DataFrame({"item": [item], "part": [TaskContext.get().partitionId()], "n": [len(item)]})

    rows = engine.task_per_item(spark, ["a", "bb", "ccc"], work, "item string, part int, n long")
    assert sorted((r["item"], r["part"], r["n"]) for r in rows) == [("a", 0, 1), ("bb", 1, 2), ("ccc", 2, 3)]
    assert engine.task_per_item(spark, [], work, "item string, part int, n long") == []
