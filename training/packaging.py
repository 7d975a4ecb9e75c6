"""Logging a model tag so that it loads outside this repository.

MLflow pickles a `TagModel` with cloudpickle, and the pickle names its classes by module: `training.models.TagModel`,
`training.candidates.Calibrated`, `training.btyd.BetaGeoModel`, ... Unpickling imports those modules, so whatever
loads `models:/persona_churn_risk@champion` away from this checkout (`mlflow models serve`, the Python workers of
`mlflow.pyfunc.spark_udf`, a notebook) needs them. There are two ways to supply them: persona as a pip requirement,
or the modules inside the model (`code_paths`). The model carries its code, because:

* persona is not on PyPI (a package of that name there is someone else's, about writing novels): a requirement
  `persona==0.1.0` fails, or installs the wrong thing, wherever MLflow builds the model's environment from its
  requirements.txt (`mlflow models serve` and `spark_udf` with env_manager virtualenv, uv or conda). Code inside
  the model needs no index and no wheel.
* what it carries is exact and small: the project modules the pickle names, followed through their imports (for a
  `TagModel` today training.{models,candidates,btyd,pareto}, about 90 kB, no feature store, no BentoML, no
  config), found by reading the pickle and the modules' import statements, not by a list that could go stale.
  The third-party packages those modules import become the requirements, pinned at the versions that trained the
  model (scikit-learn's pickles in particular are only guaranteed to load in the release that wrote them).

The modules are copied as `code/training/models.py`, ... without `training/__init__.py`. MLflow puts `code/` first
on sys.path when it loads the model, and a folder without `__init__.py` is a namespace-package portion, which
Python takes only when no regular package of that name is found further down sys.path. So where persona is
installed (or in this repository) the installed `training` wins and the process keeps one copy of every class
(serving's unwrapped models, a later `import training.train`, all see the same modules); where it is not, the
model's own copy loads. A package whose `__init__.py` has code would break that (it would shadow the installed
package), so logging refuses it with a message saying so.
"""

from __future__ import annotations

import ast
import importlib.metadata
import io
import pickle
import shutil
import sys
import tempfile
from pathlib import Path

import cloudpickle
import mlflow.pyfunc
import pandas as pd
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo

# The top-level packages of the wheel (pyproject.toml, [tool.hatch.build.targets.wheel]): a module under one of
# them is the project's own code and travels with the model; anything else is a requirement or the standard library.
PROJECT_PACKAGES = ("persona", "features", "feature_repo", "training", "serving", "rules")
_ROOT = Path(__file__).resolve().parents[1]  # where those packages live: the repository, or site-packages
_SELF_PINNED = {"mlflow"}  # MLflow adds `mlflow==<its version>` to every model's requirements itself


class PackagingError(ValueError):
    """A model that could not load outside this process as it stands (the message says what to change)."""


def pickled_modules(python_model) -> set[str]:
    """Every module the pickle of `python_model` names, i.e. what unpickling it imports.

    Pickled with cloudpickle, as MLflow does, and read back with an unpickler that records each class or function
    it looks up: exact, where scanning the opcodes would have to replay pickle's memo.
    """
    seen: set[str] = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            seen.add(module)
            return super().find_class(module, name)

    Recorder(io.BytesIO(cloudpickle.dumps(python_model))).load()
    return seen


def _source(module: str) -> Path | None:
    """The file that defines a project module (None: a namespace folder, or a name imported from a module)."""
    base = _ROOT.joinpath(*module.split("."))
    for path in (base.parent / f"{base.name}.py", base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(module: str, path: Path) -> set[str]:
    """Modules `path` imports anywhere (inside functions too: they run when the model does), relative ones resolved.

    `from a import b` yields both `a` and `a.b`, since b may be a submodule; a plain name has no source and drops out.
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            target = node.module if not node.level else ".".join(p for p in (base, node.module) if p)
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def _has_code(init: Path) -> bool:
    """Whether a package's `__init__.py` does anything beyond a docstring."""
    body = ast.parse(init.read_text(encoding="utf-8"), str(init)).body
    return any(not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)) for s in body)


def code_closure(python_model) -> tuple[dict[str, Path], set[str]]:
    """(the project modules the unpickled model imports, by name -> source file; the third-party top-level modules).

    Starts from `pickled_modules` and follows each project module's imports, parents first as Python runs them;
    the standard library is left out. Raises PackagingError for what would not load anywhere else.
    """
    modules: dict[str, Path] = {}
    third: set[str] = set()
    seen: set[str] = set()
    todo = sorted(pickled_modules(python_model))
    if "__main__" in todo:
        raise PackagingError("the model pickles something defined in __main__ (a script or notebook): define it in "
                             "a module of the project so that it can be imported where the model is loaded")
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        top = module.split(".")[0]
        if top not in PROJECT_PACKAGES:
            if top not in sys.stdlib_module_names:
                third.add(top)
            continue
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        path = _source(module)
        if path is None:
            continue
        if path.name == "__init__.py" and _has_code(path):
            raise PackagingError(f"{path.relative_to(_ROOT)} has code, and a model using {module} would carry it: "
                                 "its copy would then shadow an installed persona (see training/packaging.py). "
                                 "Move that code into a module of the package")
        if path.name != "__init__.py":
            modules[module] = path
        todo.extend(_imports(module, path))
    return modules, third


def pip_requirements(third_party: set[str]) -> list[str]:
    """`dist==version` for the distributions providing these top-level modules, as installed here (mlflow aside)."""
    providers = importlib.metadata.packages_distributions()
    unknown = sorted(m for m in third_party if m not in providers)
    if unknown:
        raise PackagingError(f"no installed distribution provides module(s) {unknown}: install them as packages, "
                             "or move them into the project's packages")
    dists = {d for m in third_party - _SELF_PINNED for d in providers[m]}
    return [f"{d}=={importlib.metadata.version(d)}" for d in sorted(dists)]


def _stage(modules: dict[str, Path], into: Path) -> list[str]:
    """Copy the modules under `into`, package folders without `__init__.py`; one code path per top-level package."""
    for path in modules.values():
        target = into / path.relative_to(_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return sorted(str(into / top) for top in {m.split(".")[0] for m in modules})


def log_tag_model(python_model, *, input_example: pd.DataFrame, registered_model_name: str) -> ModelInfo:
    """Log `python_model` (a `training.models.TagModel`) as the run's "model" and register it under
    `registered_model_name`, carrying the project code it needs and pinned requirements (module docstring: why).

    The signature is inferred from `input_example` and the model's own predictions on it. Requirements are given
    explicitly, so MLflow neither imports the model to guess them nor asks pip (closed networks, no pip in a uv
    environment). Call it inside `mlflow.start_run()`, with the tracking and registry URIs set.
    """
    modules, third = code_closure(python_model)
    requirements = pip_requirements(third)
    signature = infer_signature(input_example, python_model.predict(None, input_example))
    with tempfile.TemporaryDirectory(prefix="persona-model-code-") as tmp:
        return mlflow.pyfunc.log_model(
            name="model", python_model=python_model, input_example=input_example, signature=signature,
            pip_requirements=requirements, code_paths=_stage(modules, Path(tmp)),
            registered_model_name=registered_model_name)
