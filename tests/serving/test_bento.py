"""The Bento of the online service: `persona build` makes it from bentofile.yaml into $BENTOML_HOME without the
network, and it holds what a container needs to serve and to run the nightly commands: the service, the project's
packages, the default rule tags and pyproject's requirements. Slow: BentoML imports the service to build it."""

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from training.packaging import PROJECT_PACKAGES

ROOT = Path(__file__).resolve().parents[2]
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: any download the build tried would fail


def _requirements(lines: list[str]) -> list[tuple[str, tuple[str, ...], str]]:
    """(name, extras, specifier) of each requirement, normalised: `feast[redis,duckdb]` == `feast[duckdb,redis]`."""
    found = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            found.append((canonicalize_name(req.name), tuple(sorted(req.extras)),
                          ",".join(sorted(str(s) for s in req.specifier))))
    return sorted(found)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[dict, dict]:
    """`persona build --json` run from an unrelated folder, offline, into a fresh BentoML home: (its report, env)."""
    home = tmp_path_factory.mktemp("bentoml_home")
    proxies = {k: UNREACHABLE for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy")}
    env = {**os.environ, **proxies, "NO_PROXY": "", "no_proxy": "", "PIP_NO_INDEX": "1", "UV_OFFLINE": "1",
           "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    done = subprocess.run([sys.executable, "-m", "persona.cli", "build", "--json"], cwd=home.parent, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"persona build failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report, env


@pytest.mark.slow
def test_the_bento_is_in_bentoml_home_and_names_the_service(built):
    report, env = built
    home = Path(env["BENTOML_HOME"])
    bento = Path(report["path"])
    assert bento.is_dir() and bento.parents[2] == home and report["bentoml_home"] == str(home)
    assert report["tag"] == f"persona:{bento.name}" and report["containerize"] == f"bentoml containerize {report['tag']}"
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["service"] == report["service"] == "serving.service:PersonaService"
    assert info["name"] == "persona" and [s["name"] for s in info["services"]] == ["persona"]
    # BentoML's own store lists it (what `bentoml containerize persona:<version>` looks up)
    listed = subprocess.run([Path(sys.executable).with_name("bentoml"), "list", "-o", "json"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert [b["tag"] for b in json.loads(listed.stdout)] == [report["tag"]]


@pytest.mark.slow
def test_the_bento_holds_the_packages_and_the_default_rule_tags(built):
    src = Path(built[0]["path"]) / "src"
    assert (src / "serving" / "service.py").read_bytes() == (ROOT / "serving" / "service.py").read_bytes()
    defaults = sorted(p.name for p in (ROOT / "rules" / "default").glob("*.yaml"))
    assert defaults and sorted(p.name for p in (src / "rules" / "default").glob("*.yaml")) == defaults
    for name in defaults:
        assert (src / "rules" / "default" / name).read_bytes() == (ROOT / "rules" / "default" / name).read_bytes()
    # exactly the project's packages (what a registered model needs to load), each module of them, and nothing else:
    # no tests, benchmarks, workspaces, secrets or bytecode
    assert {p.name for p in src.iterdir() if p.is_dir()} == set(PROJECT_PACKAGES)
    for package in PROJECT_PACKAGES:
        modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / package).rglob("*.py")}
        assert {p.relative_to(src).as_posix() for p in (src / package).rglob("*.py")} == modules
    assert not [p for p in src.rglob("*") if p.name == "__pycache__" or p.suffix == ".pyc"]


@pytest.mark.slow
def test_the_bento_requires_what_pyproject_requires(built):
    bento = Path(built[0]["path"])
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    packed = (bento / "env" / "python" / "requirements.txt").read_text().splitlines()
    assert _requirements(packed) == _requirements(declared)
    assert not (bento / "env" / "python" / "requirements.lock.txt").exists()  # nothing resolved at build time
