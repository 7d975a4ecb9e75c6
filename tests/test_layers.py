"""The house: every module belongs to a floor, and imports only point down (or within its floor).

Floors, bottom to top (README, "Layout"):

    0  persona.{config, workspace, errors, faults, quiet}   ground: settings, the workspace folder, kill points
    1  features.integration                                  ingest, standardise, OneID, survivorship, enrichment
    2  features, feature_repo                                feature groups, snapshots, the Feast store, model tags
    3  training                                              candidates, selection, the promotion gate, MLflow
    4  rules                                                 rule tags, the catalog, segments, tag history
    5  serving                                               scoring, batch rescoring, the online engine and service
    6  persona.cli                                           the entry points: command line, demo, schedule, forget
    7  bench                                                 benchmarks (nothing imports them)

Imports inside functions count too: hiding an upward import in a function does not make it point down. Modules are
read with `ast`, never imported, so the check costs nothing and cannot be fooled by import order.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("persona", "features", "feature_repo", "training", "rules", "serving", "bench")
FLOORS = [  # (module prefix, floor): the longest matching prefix wins
    ("persona", 0), ("features.integration", 1), ("features", 2), ("feature_repo", 2), ("training", 3),
    ("rules", 4), ("serving", 5), ("persona.cli", 6), ("bench", 7),
]
MAX_LINES = 600


def floor(module: str) -> int:
    best = max((p for p, _ in FLOORS if module == p or module.startswith(p + ".")), key=len)
    return dict(FLOORS)[best]


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports anywhere in it (`from a import b` of a module b counts as a.b only)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from pkg import mod` depends on the module; `from pkg import name` on the package's own names
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    # A package's __init__ is its own node: a module importing `pkg.mod` does not depend on `pkg`'s other modules.
    return {name: imports(path, known) - {name} for name, path in found.items()}


def test_floors_cover_every_package():
    assert floor("persona.config") == 0 and floor("persona.cli.demo") == 6
    assert floor("features.integration.oneid") == 1 and floor("features.store") == 2


def test_no_import_points_up(graph):
    upward = sorted(f"{m} (floor {floor(m)}) imports {t} (floor {floor(t)})"
                    for m, targets in graph.items() for t in targets if floor(t) > floor(m))
    assert not upward, "imports that point up a floor:\n" + "\n".join(upward)


def test_no_cycle(graph):
    """No module reaches itself through imports (packages' __init__ re-exports included)."""
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_file_over_600_lines():
    long = sorted(f"{p.relative_to(ROOT)}: {n} lines" for p in modules().values()
                  if (n := len(p.read_text().splitlines())) > MAX_LINES)
    assert not long, f"files over {MAX_LINES} lines (split them by concern):\n" + "\n".join(long)


def test_the_check_sees_an_upward_import_inside_a_function(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text("def f():\n    from serving.scoring import Scorer\n    return Scorer\n")
    found = imports(path, {"serving", "serving.scoring", "rules"})
    assert found == {"serving.scoring"} and floor("serving.scoring") > floor("rules.catalog")
