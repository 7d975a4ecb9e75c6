"""Raw identifiers only where the README says: the published identity map (and the staged quarantine's raw values).

Staging keeps salted hashes, older run folders lose their raw values after the next publish, and a run killed after
staging a file and before publishing it does not lose that file's values."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from features.integration import standardise as std
from features.generate import generate
from features.integration.run import MANIFEST, integrate
from persona.faults import EXIT_CODE, KILL_VAR
from persona.workspace import SALT_VAR, Workspace

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[3]
# Staged by the later runs only: the month of app events holding the most identifiers no other file holds.
HELD_SOURCE, HELD_BACK = "app_events", "raw/app_events/2026-09.parquet"


# --- a scanner for every file of a workspace --------------------------------------------------------------------
def find_in_files(root: Path, needles: list[str], *, skip: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """(file, where, needle) for every needle found (case-insensitively) in a file under `root`.

    Every file's bytes are searched (JSON, text, SQLite pages), and a Parquet file's text columns decoded (its
    pages are compressed). Symlinks are not followed: each real file is read once. `skip`: relative path prefixes.
    """
    pattern = re.compile(_trie_pattern({n.lower() for n in needles}))
    found = []
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink() or rel.startswith(skip):
                continue
            for m in set(pattern.findall(path.read_bytes().decode("latin-1").lower())):
                found.append((rel, "bytes", m))
            if name.endswith(".parquet"):
                table = pq.read_table(path)
                for col_name in table.column_names:
                    text = _text(table.column(col_name)).lower()
                    for m in set(pattern.findall(text)) if text else ():
                        found.append((rel, col_name, m))
    return found


def _trie_pattern(words: set[str]) -> str:
    """One regex matching any of `words`, as a trie: thousands of phones sharing '+86 1' are tried once, not each."""
    trie: dict = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def walk(node: dict) -> str:
        branches = [re.escape(ch) + walk(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return walk(trie)


def _text(col: pa.ChunkedArray) -> str:
    while pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        col = pc.list_flatten(col)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_binary(col.type)):
        return ""
    return "\n".join(str(v) for v in pc.unique(col).to_pylist() if v is not None)


# --- the generated workspace --------------------------------------------------------------------------------------
def raw_contacts(ws: Workspace) -> list[str]:
    """Every phone and e-mail of the raw sources, as written there and normalised."""
    cfg = ws.config()
    out: set[str] = set()
    for spec in cfg.sources.values():
        for path in sorted(ws.root.glob(spec.path)):
            frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str)
            for id_type, column in spec.identifiers.items():
                how = cfg.identity.identifiers[id_type].normalise
                if how not in ("phone", "email"):
                    continue
                values = frame[column].dropna().astype(str)
                norm = std.normalise_identifiers(values, how, cfg.phone_region).dropna()
                out |= set(values) | set(norm)
    return sorted(v for v in out if len(v) >= 8)  # 8+: no accidental hit inside a number or a hash


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Workspace, Workspace, subprocess.CompletedProcess, dict]:
    """300 generated customers integrated without one month of app events; then that month added and integrated by a
    run killed after staging it, and by a normal run. `clean`: the same month integrated by a single normal run."""
    base = tmp_path_factory.mktemp("pii")
    ws = Workspace.open(base / "ws")
    clean = Workspace.open(base / "clean")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(SALT_VAR, raising=False)  # the salt of secrets.env, as the killed subprocess uses
        generate(ws.root, 300, seed=11)
        (ws.root / HELD_BACK).rename(base / "held_back")
        integrate(ws)
        shutil.copytree(ws.root, clean.root, symlinks=True)
        for root in (ws.root, clean.root):
            shutil.copy2(base / "held_back", root / HELD_BACK)
        published = ws.current("integrated")
        killed = subprocess.run([sys.executable, "-c", "from persona.cli import app; app()", "integrate", "-w",
                                 str(ws.root), "--json"], cwd=REPO, capture_output=True, text=True,
                                env={**{k: v for k, v in os.environ.items() if k != SALT_VAR},
                                     KILL_VAR: "integrate.staged"})
        assert ws.current("integrated") == published  # staged, never published
        unpublished = json.loads((ws.state / MANIFEST).read_text())[HELD_SOURCE][HELD_BACK]
        integrate(ws)
        integrate(clean)
    return ws, clean, killed, unpublished


def identity_map(ws: Workspace) -> pd.DataFrame:
    return pd.read_parquet(ws.current("integrated") / "identity_map.parquet")


def assert_complete(ids: pd.DataFrame, salt: str) -> None:
    """Every identifier of the map has its normalised value, and the value is the one its hash was made from."""
    assert ids["value"].notna().all()
    assert (std.salted_hash(ids["value"], salt).astype(str) == ids["value_hash"].astype(str)).all()


def test_staging_and_older_runs_hold_no_raw_identifier(runs):
    ws = runs[0]
    contacts = raw_contacts(ws)
    assert len(contacts) > 300
    assert find_in_files(ws.staging, contacts) == []
    older = [p for p in (ws.stage_dir("integrated") / "runs").iterdir() if p != ws.current("integrated")]
    assert older and all(find_in_files(p, contacts) == [] for p in older)
    assert all("value" not in pq.read_schema(p / "identity_map.parquet").names for p in older)
    # The identity map of the published run is the one place that keeps them, complete.
    ids = identity_map(ws)
    assert_complete(ids, ws.salt())
    mentions = pd.concat([pd.read_parquet(p) for p in ws.staging.glob("*/*.mentions.parquet")])
    assert list(mentions.columns) == ["mention_key", "id_type", "value_hash"]
    assert set(zip(mentions["id_type"], mentions["value_hash"])) <= set(zip(ids["id_type"], ids["value_hash"]))
    phones = ids.loc[ids["id_type"] == "phone", "value"]
    assert len(phones) > 100 and set(phones) <= set(contacts)


def test_run_killed_after_staging_loses_no_raw_value(runs):
    ws, clean, killed, unpublished = runs
    assert killed.returncode == EXIT_CODE, killed.stderr
    assert unpublished["published"] is False
    # The next run staged the file again from its source: the identity map is the one of an uninterrupted run.
    ids, expected = identity_map(ws), identity_map(clean)
    first = min(p for p in (ws.stage_dir("integrated") / "runs").iterdir() if p != ws.current("integrated"))
    new = set(ids["value_hash"]) - set(pd.read_parquet(first / "identity_map.parquet")["value_hash"])
    assert len(new) >= 5  # the month staged by the killed run brought identifiers only it held
    assert_complete(ids, ws.salt())
    by = ["id_type", "value_hash"]
    pd.testing.assert_frame_equal(ids.sort_values(by, ignore_index=True), expected.sort_values(by, ignore_index=True))
    assert "published" not in json.loads((ws.state / MANIFEST).read_text())[HELD_SOURCE][HELD_BACK]
