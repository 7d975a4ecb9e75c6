"""The workspace: one folder holding persona.yaml and everything persona writes.

Writes are atomic so that no reader ever sees half an output: single files are written to a temporary name in
the same folder and renamed over the target; a stage's set of outputs is written into a fresh run folder and
published by swapping the `current` symlink, so readers see either the previous run or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from persona.config import PersonaConfig, load_config

SALT_VAR = "PERSONA_SALT"
SECRETS_FILE = "secrets.env"
KEEP_RUNS = 3


class SecretError(RuntimeError):
    """The hashing salt is missing."""


@dataclass(frozen=True)
class Workspace:
    """Typed access to a workspace folder's layout."""

    root: Path

    @classmethod
    def open(cls, root: Path | str) -> Workspace:
        return cls(Path(root).resolve())

    def config(self) -> PersonaConfig:
        return load_config(self.root)

    def path(self, relative: str) -> Path:
        return self.root / relative

    # --- layout -------------------------------------------------------------------------------------------
    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def state(self) -> Path:
        return self.root / "state"

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def current(self, stage: str) -> Path | None:
        """The published folder of a stage (e.g. 'integrated'), or None before its first run."""
        link = self.stage_dir(stage) / "current"
        return link.resolve() if link.exists() else None

    def require_current(self, stage: str, hint: str) -> Path:
        found = self.current(stage)
        if found is None:
            raise FileNotFoundError(f"{self.stage_dir(stage)}: nothing published yet ({hint})")
        return found

    # --- secrets ------------------------------------------------------------------------------------------
    def salt(self) -> str:
        """The salt for hashing identifiers: $PERSONA_SALT, else the workspace's secrets.env; never the repository."""
        value = os.environ.get(SALT_VAR)
        if value:
            return value
        file = self.root / SECRETS_FILE
        if file.is_file():
            for line in file.read_text(encoding="utf-8").splitlines():
                key, sep, val = line.partition("=")
                if sep and key.strip() == SALT_VAR and val.strip():
                    return val.strip()
        raise SecretError(
            f"no hashing salt: set ${SALT_VAR} or put a line '{SALT_VAR}=<random hex>' in {file} "
            "(`persona init` writes one); keep it out of version control"
        )

    def ensure_secrets(self) -> Path:
        """Write secrets.env with a fresh random salt unless it exists."""
        file = self.root / SECRETS_FILE
        if not file.exists():
            write_text_atomic(file, f"{SALT_VAR}={secrets.token_hex(16)}\n")
            file.chmod(0o600)
        return file


# --- atomic writes ----------------------------------------------------------------------------------------
def _tmp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")


def write_text_atomic(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(target)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)


def write_json_atomic(target: Path, data: object) -> None:
    write_text_atomic(target, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: Path, default: object = None) -> object:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else default


def write_parquet_atomic(target: Path, frame: pd.DataFrame | pa.Table) -> None:
    """Write a Parquet file under a temporary name, then rename it over the target."""
    target.parent.mkdir(parents=True, exist_ok=True)
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    tmp = _tmp_name(target)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)




@contextmanager
def publishing(ws: Workspace, stage: str, run_id: str) -> Iterator[Path]:
    """Yield a fresh folder for a stage's outputs; on success make it `current` atomically, else discard it.

    Readers resolve `<stage>/current` once and read from that folder, so they never see a partial run.
    """
    runs = ws.stage_dir(stage) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    building = runs / f".{run_id}.building"
    if building.exists():
        shutil.rmtree(building)
    building.mkdir()
    try:
        yield building
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    final = runs / run_id
    os.replace(building, final)
    link = ws.stage_dir(stage) / "current"
    tmp_link = link.with_name(f".current.{uuid.uuid4().hex[:8]}")
    os.symlink(Path("runs") / run_id, tmp_link)
    os.replace(tmp_link, link)
    _prune(runs, keep=final.name)


def _prune(runs: Path, keep: str) -> None:
    done = sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith("."))
    for old in done[:-KEEP_RUNS]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)
