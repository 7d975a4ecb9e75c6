"""A trained and rescored 1,500-customer workspace for the serving tests: built once per session (about 2 minutes),
copied for each module that needs one, so that a module's events, promotions and broken stores stay its own."""

import shutil
from pathlib import Path

import pytest
import yaml

from persona.workspace import SALT_VAR, Workspace


def _edit_config(root: Path, **sections: dict) -> None:
    path = root / "persona.yaml"
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    for name, values in sections.items():
        cfg[name] = {**(cfg.get(name) or {}), **values}
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")


@pytest.fixture(scope="session")
def rescored_base(tmp_path_factory) -> Path:
    """generate -> integrate -> features -> train --promote -> rescore, as `persona` runs them (read-only after)."""
    from features.build import build_features
    from features.generate import generate
    from features.integrate import integrate
    from serving.batch import rescore
    from training.train import train

    root = tmp_path_factory.mktemp("serving_base")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(SALT_VAR, raising=False)  # the workspace's own secrets.env, as the servers will read it
        generate(root, 1500, seed=3)
        _edit_config(root, training={"min_positives": 20, "min_negatives": 20, "cutoffs": 3})
        ws = Workspace.open(root)
        integrate(ws)
        build_features(ws)
        train(ws, promote=True)
        rescore(ws)
    return root


@pytest.fixture(scope="module")
def workspace(rescored_base, tmp_path_factory) -> Workspace:
    """A module's own copy of the rescored workspace, checking for new champions every second.

    The copy shares the base's model artifacts and offline snapshot files (MLflow and the Feast registry hold their
    absolute paths), which nothing here writes; its online store, registry database and MLflow database are its own.
    """
    root = tmp_path_factory.mktemp("serving_ws") / "ws"
    shutil.copytree(rescored_base, root, symlinks=True)
    _edit_config(root, serving={"reload_seconds": 1.0})
    return Workspace.open(root)
