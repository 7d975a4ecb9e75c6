"""A trained and rescored 1,500-customer workspace for the service tests: the session's `trained_workspace` (see
tests/conftest.py) copied and rescored once, then copied again for each module that serves it, so that a module's
events, promotions and broken stores stay its own."""

import shutil
from pathlib import Path

import pytest
import yaml

from persona.workspace import SALT_VAR, Workspace


@pytest.fixture(scope="session")
def rescored_base(trained_workspace, tmp_path_factory) -> Path:
    """`persona rescore` on a copy of the trained workspace (read-only after)."""
    from serving.batch import rescore

    root = tmp_path_factory.mktemp("rescored") / "ws"
    shutil.copytree(trained_workspace, root, symlinks=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(SALT_VAR, raising=False)  # the workspace's own secrets.env, as the servers will read it
        rescore(Workspace.open(root))
    return root


def serving_copy(base: Path, root: Path) -> Workspace:
    """A copy of the rescored workspace at `root`, checking for a new champion every second.

    Copies share the base's model artifacts and offline snapshot files (MLflow and the Feast registry hold their
    absolute paths), which nothing here writes; the online store, registry and MLflow databases are the copy's own.
    """
    shutil.copytree(base, root, symlinks=True)
    path = root / "persona.yaml"
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    cfg["serving"] = {**(cfg.get("serving") or {}), "reload_seconds": 1.0}
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return Workspace.open(root)


@pytest.fixture(scope="module")
def workspace(rescored_base, tmp_path_factory) -> Workspace:
    """A module's own copy of the rescored workspace (see `serving_copy`)."""
    return serving_copy(rescored_base, tmp_path_factory.mktemp("serving") / "ws")
