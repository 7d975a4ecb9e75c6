"""The batch engine of a workspace: `engine: duckdb` (the default: embedded, nothing to install) or `engine: spark`.

The Spark engine is optional: pyspark 4 (`pip install 'persona[spark]'`) and Java 17 or later where the driver runs.
Without them the default path is untouched (nothing here imports pyspark until a Spark session is asked for), and a
workspace set to Spark gets one error naming what is missing and how to get it, before any work starts.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from persona.config import PersonaConfig, SparkConfig

MIN_JAVA = 17


class EngineUnavailable(RuntimeError):
    """`engine: spark` is set but this machine cannot start Spark; the message says what is missing."""


def java_version() -> int | None:
    """The major version of the `java` Spark would start ($JAVA_HOME/bin/java, else the PATH's), None if none."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        return None
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not found:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def check_spark() -> None:
    """Raise EngineUnavailable unless pyspark 4 imports and Java 17+ is there."""
    try:
        import pyspark
    except ImportError:
        raise EngineUnavailable("engine: spark needs pyspark 4 (pip install 'persona[spark]'), which is not "
                                "installed; or set engine: duckdb in persona.yaml") from None
    if int(pyspark.__version__.split(".")[0]) < 4:
        raise EngineUnavailable(f"engine: spark needs pyspark 4 or later; pyspark {pyspark.__version__} is installed")
    version = java_version()
    if version is None:
        raise EngineUnavailable("engine: spark needs Java 17 or later, and no `java` was found ($JAVA_HOME or "
                                "PATH); install a JDK 17 (apt-get install openjdk-17-jre-headless) or set engine: "
                                "duckdb in persona.yaml")
    if version < MIN_JAVA:
        raise EngineUnavailable(f"engine: spark needs Java {MIN_JAVA} or later; the java found is version {version}")


# persona's defaults under persona.yaml's `spark.conf`: timestamps are compared and written in UTC (Feast's
# point-in-time SQL uses UTC literals), and no progress bars in the command line's output.
SESSION_DEFAULTS = {"spark.sql.session.timeZone": "UTC", "spark.ui.showConsoleProgress": "false"}


def session_conf(spark: SparkConfig | PersonaConfig) -> dict[str, str]:
    """Every setting of the workspace's session: master, name, persona's defaults, then persona.yaml's `conf`. The
    one list both persona's session and Feast's Spark offline store are built from, so whichever starts Spark
    first in a process, the other's getOrCreate joins that same session."""
    settings = spark.spark if isinstance(spark, PersonaConfig) else spark
    return {"spark.master": settings.master, "spark.app.name": settings.app_name, **SESSION_DEFAULTS,
            **settings.conf}


def spark_session(spark: SparkConfig | PersonaConfig):
    """The Spark session of the settings (`spark:` of persona.yaml), created once per process and reused."""
    check_spark()
    from pyspark.sql import SparkSession

    # pyspark starts its Python workers with $PYSPARK_PYTHON, else the PATH's python3, which need not have
    # persona's packages: default to this interpreter (`spark.pyspark.python` in persona.yaml still wins).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder
    for key, value in session_conf(spark).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


# Spark reads Parquet nanosecond timestamps (what pandas and the staged files hold) only as longs, under this setting.
NANOS_AS_LONG = {"spark.sql.legacy.parquet.nanosAsLong": "true"}


@contextmanager
def spark_conf(spark, conf: dict[str, str | None]) -> Iterator[None]:
    """The session's SQL settings `conf` for the duration (plans built and run inside), the earlier values back
    after, so one step's settings never leak into the next. A None value leaves that setting as it is during the
    step, and puts it back after (for a setting the step's library may change)."""
    before = {key: spark.conf.get(key, None) for key in conf}
    for key, value in conf.items():
        if value is not None:
            spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def task_per_item(spark, items: Sequence, work: Callable[[Any], Any], schema: str) -> list:
    """`work(item)` for every item of `items`, each in a Spark task of its own (the executors run them side by
    side), and the rows they return collected: `work` returns a pandas DataFrame of `schema` (a Spark DDL string),
    kept small (counts, names), since it reaches the driver. `work` and `items` travel to the executors pickled:
    they must not hold the session."""
    items = list(items)
    if not items:
        return []

    def run(batches):
        for batch in batches:
            for i in batch["id"].tolist():
                yield work(items[int(i)])

    return spark.range(0, len(items), 1, len(items)).mapInPandas(run, schema).collect()
