"""The workspace: one folder holding persona.yaml and everything persona writes.

Writes are atomic so that no reader ever sees half an output: single files are written to a temporary name in
the same folder and renamed over the target; a stage's set of outputs is written into a fresh run folder and
published by swapping the `current` symlink, so readers see either the previous run or the new one, never a mix.
A run killed part-way leaves only folders and links that no reader follows; the stage's next run removes them
before it starts (`clean_stage`).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from persona.config import CONFIG_NAME, PersonaConfig, load_config, parse_text
from persona.faults import kill_point

SALT_VAR = "PERSONA_SALT"
SECRETS_FILE = "secrets.env"
KEEP_RUNS = 3


_CONFIGS: dict[tuple[str, bytes], PersonaConfig] = {}  # (path, digest of its bytes) -> the validated settings
_CONFIGS_LOCK = threading.Lock()


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
        """The workspace's persona.yaml, parsed and validated once per process for each content it has had.

        Every layer asks the workspace for its settings; parsing and validating the YAML each time (five times per
        service start, once per call of a library function) cost milliseconds and repeated nothing useful. The file
        is still read (a few kB), so an edit is seen by the next call; the settings object is frozen, so sharing it
        is safe.
        """
        path = self.root / CONFIG_NAME
        try:
            text = path.read_bytes()
        except OSError:
            text = None
        if text is None:
            return load_config(self.root)  # raises the message naming what is missing
        key = (str(path), hashlib.blake2b(text, digest_size=16).digest())
        with _CONFIGS_LOCK:
            cached = _CONFIGS.get(key)
        if cached is None:
            cached = parse_text(text, path)
            with _CONFIGS_LOCK:
                if len(_CONFIGS) >= 64:  # tests open many workspaces; a process rarely holds more than a few
                    _CONFIGS.clear()
                _CONFIGS[key] = cached
        return cached

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


PART_BATCH = 122_880  # rows per row group of a file written from parts: what DuckDB's COPY writes


def write_parquet_parts(parts: Sequence[str | Path], target: Path, schema: pa.Schema, *,
                        keep: Callable[[pa.Table], pa.Table] | None = None,
                        visit: Callable[[pa.Table], None] | None = None, row_group: int = PART_BATCH) -> int:
    """One Parquet file `target` with `schema` (its columns, types and metadata; every column nullable) from the
    Parquet `parts`, in order, read a batch at a time (`conform`) and written in row groups of `row_group` rows
    whatever the parts' own, so memory is about one row group whatever the sizes; `keep(table)` filters each batch,
    `visit(table)` sees each batch written. Written under a temporary name, then renamed over the target. Returns
    the rows written."""
    schema = pa.schema([f.with_nullable(True) for f in schema], metadata=schema.metadata)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(target)
    rows, held = 0, []
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for part in parts:
                with pq.ParquetFile(part) as file:
                    present = [n for n in schema.names if n in file.schema_arrow.names]
                    batches = file.iter_batches(batch_size=row_group, columns=present)
                    for table in (conform(pa.Table.from_batches([b]), schema) for b in batches):
                        if keep is not None:
                            table = keep(table)
                        if visit is not None:
                            visit(table)
                        held.append(table)
                        rows += table.num_rows
                        if sum(t.num_rows for t in held) >= row_group:
                            whole = pa.concat_tables(held)
                            writer.write_table(whole.slice(0, row_group), row_group_size=row_group)
                            held = [whole.slice(row_group)]
            rest = pa.concat_tables(held) if held else schema.empty_table()
            if rest.num_rows or not rows:  # an empty file still has the schema
                writer.write_table(rest, row_group_size=row_group)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return rows


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns, by name, and types: a column missing or all null as nulls of its type
    (whatever type a writer guessed for it), nanosecond longs (how Spark carries timestamps) as the timestamps."""
    n = table.num_rows
    columns = []
    for field in schema:
        column = table.column(field.name) if field.name in table.column_names else None
        if column is None or column.null_count == n:
            columns.append(pa.nulls(n, field.type))
        elif pa.types.is_timestamp(field.type) and pa.types.is_integer(column.type):
            longs = column.cast(pa.int64())
            columns.append(pa.chunked_array([c.view(field.type) for c in longs.chunks], type=field.type))
        else:
            columns.append(column.cast(field.type))
    return pa.Table.from_arrays(columns, schema=schema)


@contextmanager
def publishing(ws: Workspace, stage: str, run_id: str) -> Iterator[Path]:
    """Yield a fresh folder for a stage's outputs; on success make it `current` atomically, else discard it.

    Readers resolve `<stage>/current` once and read from that folder, so they never see a partial run. The steps
    (each a kill point `<stage>.<step>`, see persona.faults) are: outputs written into `runs/.<id>.building`
    (`building`), renamed to `runs/<id>` (`renamed`), `current` swapped to it (`linked`), old runs pruned. What a
    killed run left is removed first (see `clean_stage`). Run ids must sort in run order (integrate's start with a
    zero-padded sequence number); one run of a stage at a time.
    """
    runs = ws.stage_dir(stage) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    clean_stage(ws, stage, run_id)
    building = runs / f".{run_id}.building"
    building.mkdir()
    try:
        yield building
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    kill_point(f"{stage}.building")
    final = runs / run_id
    os.replace(building, final)
    kill_point(f"{stage}.renamed")
    link = ws.stage_dir(stage) / "current"
    tmp_link = link.with_name(f".current.{uuid.uuid4().hex[:8]}")
    os.symlink(Path("runs") / run_id, tmp_link)
    os.replace(tmp_link, link)
    kill_point(f"{stage}.linked")
    _prune(runs, keep=final.name)


def clean_stage(ws: Workspace, stage: str, run_id: str | None = None) -> list[str]:
    """Remove what killed runs of a stage left; returns the paths removed, relative to the stage folder.

    That is `runs/.<id>.building` folders, stray `.current.*` links, and run folders that were renamed into `runs/`
    but never linked: those sorting after the one `current` names (all of them before a first `current`). A new run
    whose sequence number (the digits before the first '-') a folder already has takes that number over: the folder
    was never published, so it is removed, and run numbers stay unique without the caller renumbering (its id is
    inside its outputs). The current run is never removed; a new run reusing its number is refused.
    """
    top = ws.stage_dir(stage)
    runs = top / "runs"
    link = top / "current"
    current = Path(os.readlink(link)).name if link.is_symlink() else None
    number = _sequence(run_id) if run_id is not None else None
    if number is not None and current is not None and _sequence(current) == number:
        raise ValueError(f"{top}: run {run_id} reuses the sequence number of the published run {current}; "
                         "a new run's number must follow the current run's")
    gone = []
    for p in top.iterdir() if top.is_dir() else []:
        if p.name.startswith(".current.") and p.is_symlink():
            p.unlink()
            gone.append(p.name)
    for p in sorted(runs.iterdir()) if runs.is_dir() else []:
        if p.name.startswith("."):
            unpublished = p.name.endswith(".building")
        else:
            unpublished = p.is_dir() and p.name != current and (
                current is None or p.name > current or (number is not None and _sequence(p.name) == number))
        if unpublished:
            shutil.rmtree(p, ignore_errors=True)
            gone.append(f"runs/{p.name}")
    return gone


def _sequence(run_id: str) -> int | None:
    """The sequence number a run id starts with (`000042-20260101T000000Z` -> 42), None without one."""
    head, sep, _ = run_id.partition("-")
    return int(head) if sep and head.isdigit() else None


def _prune(runs: Path, keep: str) -> None:
    done = sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith("."))
    for old in done[:-KEEP_RUNS]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)
