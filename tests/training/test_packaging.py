"""A registered model tag loads outside this repository: in a fresh virtualenv holding only the wheel built from it,
in one holding only the runtime libraries (the model's own code), and in Spark's Python workers (`spark_udf`).

The model is a real `TagModel` fitted here on a few thousand synthetic customers, with every candidate family the
pickle can hold (LightGBM, linear, BG/NBD, BG/NBD with covariates, a blend of them) and the BG/NBD and Pareto/NBD
fits whose outputs are features, logged by `log_tag_model` into a SQLite tracking store under tmp.
"""

import importlib.metadata
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from scipy import special

from training import candidates as cand
from training import models as mdl
from training import packaging
from training.pareto import ParetoNBDModel

REPO = Path(__file__).resolve().parents[2]
UV = REPO / ".tools" / "bin" / "uv"
NAME = "persona_churn_risk"
FEATURES = ["tx_btyd_frequency", "tx_btyd_recency", "tx_btyd_T", "tx_aov_365d", "web_visits_30d"]
# What a model tag needs of the project today: a change that makes it drag in more (the feature store, config)
# fails here first, and should be a deliberate one.
MODEL_CODE = {"training.models", "training.candidates", "training.btyd", "training.pareto"}
RUNTIME = ["mlflow", "lightgbm", "scikit-learn", "pandas", "numpy", "scipy"]  # what a TagModel needs, nothing else

# Run in the fresh environments, from a folder outside the repository: load the champion, score, say where the
# project code came from and which project modules loading and scoring imported.
LOAD_AND_SCORE = """
import importlib.util, json, sys
import mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
model.predict(pd.read_parquet(sys.argv[2])).to_parquet(sys.argv[3])
import training.models
project = ("persona", "features", "feature_repo", "training", "serving", "rules")
print(json.dumps({"training": training.models.__file__,
                  "persona_installed": importlib.util.find_spec("persona") is not None,
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in project)}))
"""


def customers(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Purchase histories (count, last purchase, age in days), spend per order (10% missing), visits, and a churn
    label that depends on them."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(30, 400, n)
    freq = rng.poisson(rng.gamma(0.8, 1 / 40, n) * age)
    recency = np.where(freq > 0, age * rng.beta(3, 1, n), 0.0)
    aov = rng.lognormal(3.5, 0.6, n)
    aov[rng.random(n) < 0.1] = np.nan
    visits = rng.poisson(2, n).astype(np.float64)
    churn = rng.random(n) < special.expit(1.2 - 2.0 * np.log1p(freq) + 0.01 * (age - recency) - 0.15 * visits)
    frame = pd.DataFrame(dict(zip(FEATURES, (freq, recency, age, aov, visits)))).astype(np.float32)
    return frame, churn.astype(int)


def fit_tag_model(n: int = 3000, seed: int = 11) -> mdl.TagModel:
    frame, y = customers(n, seed)
    f, r, t = (frame[c].to_numpy(np.float64) for c in FEATURES[:3])
    bg, _ = cand.fit_btyd(f, r, t, None)
    model = mdl.TagModel("churn_risk", "probability", FEATURES, {}, 90, btyd=bg,
                         pareto=ParetoNBDModel(penalizer=0.001).fit(f, r, t))
    x = mdl.matrix(model.model_frame(frame))
    half = n // 2
    (xt, yt), (xv, yv) = (x[:half], y[:half]), (x[half:], y[half:])
    at = {c: i for i, c in enumerate(model.columns)}
    linear = cand.Linear("probability", range(len(at)), seed=7).fit(xt, yt)
    churn = cand.BtydChurn(bg, at, 90)
    members = {
        "lightgbm": mdl.fit_classifier(xt, yt, xv, yv, mdl.LearnerParams(min_child_samples=20, max_trees=60),
                                       names=model.columns),
        "linear": cand.Calibrated(linear, cand.Platt().fit(linear.score(xv), yv)),
        "bg_nbd": cand.Calibrated(churn, cand.Platt().fit(churn.score(xv), yv)),
    }
    model.estimators = {"churn_risk": cand.Blend("probability", members, seed=7).fit(xv, yv),
                        "churn_risk_covariates": cand.BtydCovariates(bg, at, 90, ["tx_aov_365d"], seed=7).fit(xt, yt)}
    return model


def pinned(dist: str) -> str:
    """`dist==version` with the version installed here: what a model logged here must pin it to."""
    return f"{dist}=={importlib.metadata.version(dist)}"


class _LocalScorer:
    """An estimator defined in a test module: importable here, in no package that a model could carry."""

    def predict_proba(self, x):
        return np.column_stack([1 - x[:, 0], x[:, 0]])


def test_project_packages_are_the_wheels():
    wheel = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert sorted(packaging.PROJECT_PACKAGES) == sorted(wheel["packages"])


def test_a_model_carries_only_the_modules_its_pickle_needs_and_pins_what_they_import():
    model = mdl.TagModel("churn_risk", "probability", ["a"], {"churn_risk": cand.Calibrated(
        cand.Linear("probability", [0], seed=7).fit(np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([0, 0, 1, 1])),
        cand.Platt())}, 90)
    modules, third = packaging.code_closure(model)
    assert set(modules) == MODEL_CODE  # candidates imports btyd; models imports pareto: followed through imports
    assert {"lightgbm", "numpy", "pandas", "scipy", "sklearn", "threadpoolctl"} <= third
    requirements = packaging.pip_requirements(third)
    assert pinned("scikit-learn") in requirements and pinned("lightgbm") in requirements
    assert not any(r.startswith(("persona", "mlflow")) for r in requirements)  # MLflow pins itself


def test_a_model_holding_code_outside_the_project_is_refused_with_the_reason():
    model = mdl.TagModel("churn_risk", "probability", ["a"], {"churn_risk": _LocalScorer()}, 90)
    with pytest.raises(packaging.PackagingError, match=r"no installed distribution provides module\(s\) \['tests'\]"):
        packaging.pip_requirements(packaging.code_closure(model)[1])


# --- the slow part: a registered model, fresh virtualenvs, Spark --------------------------------------------------
@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A fitted TagModel logged with `log_tag_model` into a SQLite store under tmp, aliased champion."""
    root = tmp_path_factory.mktemp("packaging")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        client = MlflowClient(uri, uri)
        mlflow.set_experiment(experiment_id=client.create_experiment(
            "packaging", artifact_location=(root / "mlartifacts").as_uri()))
        model = fit_tag_model()
        frame, _ = customers(200, seed=5)
        with mlflow.start_run():
            info = packaging.log_tag_model(model, input_example=frame.head(5), registered_model_name=NAME)
        client.set_registered_model_alias(NAME, "champion", info.registered_model_version)
        frame.to_parquet(root / "input.parquet")
        expected = mlflow.pyfunc.load_model(f"models:/{NAME}@champion").predict(frame)
        yield {"root": root, "uri": uri, "info": info, "frame": frame, "expected": expected, "model": model}
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])


def _run(*cmd, cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _clean_env(**extra: str) -> dict:
    """This process's environment without what points at the repository's virtualenv or code."""
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX"}}
    return {**env, **extra}


def _fresh_venv(path: Path, constraints: Path, *packages: str) -> Path:
    """A new virtualenv with `packages` installed, their dependencies held to the lock's versions."""
    _run(UV, "venv", "--quiet", "--python", sys._base_executable, path, cwd=path.parent, env=_clean_env())
    python = path / "bin" / "python"
    _run(UV, "pip", "install", "--quiet", "--python", python, "-c", constraints, *packages, cwd=path.parent,
         env=_clean_env())
    return python


def _load_elsewhere(python: Path, registry: dict, name: str) -> dict:
    """Load the champion and score in `python`, from a folder outside the repository; the predictions must be the
    in-process ones."""
    root = registry["root"]
    elsewhere = root / f"run_{name}"
    elsewhere.mkdir()
    out = elsewhere / "scores.parquet"
    report = _run(python, "-c", LOAD_AND_SCORE, f"models:/{NAME}@champion", root / "input.parquet", out,
                  cwd=elsewhere, env=_clean_env(MLFLOW_TRACKING_URI=registry["uri"]))
    scores = pd.read_parquet(out)
    assert list(scores.columns) == ["churn_risk", "churn_risk_covariates"]
    np.testing.assert_allclose(scores.to_numpy(), registry["expected"].to_numpy(), rtol=1e-12, atol=0)
    return json.loads(report.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def constraints(registry) -> Path:
    """The lock's versions of the runtime dependencies (no dev group, not the project itself)."""
    path = registry["root"] / "constraints.txt"
    _run(UV, "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes", "--format", "requirements-txt",
         "--output-file", path, "--quiet", cwd=REPO, env=_clean_env())
    return path


@pytest.mark.slow
def test_the_logged_model_holds_exactly_its_code_and_no_project_requirement(registry):
    local = Path(mlflow.artifacts.download_artifacts(registry["info"].model_uri, dst_path=str(registry["root"] / "dl")))
    code = sorted(str(p.relative_to(local / "code")) for p in (local / "code").rglob("*") if p.is_file())
    carried, _ = packaging.code_closure(registry["model"])
    assert code == sorted(f"{m.replace('.', '/')}.py" for m in carried)  # no __init__.py: see training/packaging.py
    requirements = (local / "requirements.txt").read_text().split()
    assert pinned("mlflow") in requirements and pinned("scikit-learn") in requirements
    assert not any(r.startswith("persona") for r in requirements)
    np.testing.assert_array_equal(registry["expected"].to_numpy(),
                                  pd.DataFrame(registry["model"].predict(None, registry["frame"])).to_numpy())


@pytest.mark.slow
def test_the_champion_loads_in_a_fresh_virtualenv_holding_only_the_wheel(registry, constraints):
    dist = registry["root"] / "dist"
    _run(UV, "build", "--wheel", "--quiet", "--out-dir", dist, REPO, cwd=registry["root"], env=_clean_env())
    (wheel,) = dist.glob("persona-*.whl")
    python = _fresh_venv(registry["root"] / "venv_wheel", constraints, wheel)
    seen = _load_elsewhere(python, registry, "wheel")
    # the installed package wins over the model's copy (one copy of every class in the process)
    assert seen["persona_installed"] and "site-packages" in seen["training"] and "/code/" not in seen["training"]
    listing = _run(python, "-c", "import feature_repo.definitions, pathlib; print(pathlib.Path("
                   "feature_repo.definitions.__file__).parent.joinpath('feature_store.embedded.yaml').is_file())",
                   cwd=registry["root"], env=_clean_env())
    assert listing.strip() == "True"  # feature_repo ships in the wheel, with its YAML


@pytest.mark.slow
def test_the_champion_loads_with_its_own_code_beside_only_the_runtime_libraries(registry, constraints):
    python = _fresh_venv(registry["root"] / "venv_runtime", constraints, *RUNTIME)
    seen = _load_elsewhere(python, registry, "runtime")
    assert not seen["persona_installed"] and seen["training"].endswith("/code/training/models.py")
    assert set(seen["loaded"]) == MODEL_CODE | {"training"}  # nothing else of the project was needed


@pytest.mark.slow
def test_spark_udf_scores_like_pyfunc(registry, monkeypatch):
    from pyspark.sql import SparkSession

    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    monkeypatch.setenv("PYSPARK_DRIVER_PYTHON", sys.executable)
    spark = (SparkSession.builder.master("local[2]").appName("persona-spark-udf")
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2")
             .config("spark.sql.execution.arrow.pyspark.enabled", "true")
             .config("spark.driver.host", "127.0.0.1").getOrCreate())
    try:
        frame = registry["frame"].reset_index(drop=True).assign(persona_id=lambda d: [f"p{i}" for i in d.index])
        udf = mlflow.pyfunc.spark_udf(spark, f"models:/{NAME}@champion", env_manager="local")
        sdf = spark.createDataFrame(frame)
        assert sdf.rdd.getNumPartitions() == 2  # local[2]: two Python workers each load the model
        scored = sdf.withColumn("scores", udf(*[sdf[c] for c in FEATURES])).select("persona_id", "scores.*")
        got = scored.toPandas().set_index("persona_id").loc[frame["persona_id"]]
    finally:
        spark.stop()
    expected = registry["expected"]
    assert list(got.columns) == list(expected.columns)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-12, atol=0)
