"""Writing the files: CSV lines, atomic writes, rows bound for a file, truth records, persona.yaml, the summary.

Every file is written under a temporary name and moved into place, so an interrupted run never leaves half a file
that a later integration would read as data; month files that an earlier run with another span left behind are
removed for the same reason. ``Rows`` carries formatted columns with the person behind each row and a sort key,
because a month's file also receives rows from the month before (late orders, returns dated next month).
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from features.generate.config import default_config
from features.generate.strings import concat

_QUOTE_RE = r'[",\r\n]'


def csv_lines(columns: list[pa.Array], truncate: np.ndarray | None = None) -> pa.Array:
    """One CSV line (with its newline) per row. Rows with ``truncate`` > 0 keep only that many fields."""
    cols = []
    for col in columns:
        col = pc.fill_null(col, "") if col.null_count else col
        needs = pc.match_substring_regex(col, _QUOTE_RE)
        if pc.any(needs).as_py():
            quoted = concat('"', pc.replace_substring(col, '"', '""'), '"')
            col = pc.if_else(needs, quoted, col)
        cols.append(col)
    line = pc.binary_join_element_wise(*cols, ",")
    if truncate is not None and truncate.any():
        for k in np.unique(truncate[truncate > 0]):
            short = pc.binary_join_element_wise(*cols[:int(k)], ",") if k > 1 else cols[0]
            line = pc.if_else(pa.array(truncate == k), short, line)
    return concat(line, "\n")


def string_bytes(arr: pa.Array) -> memoryview:
    """The values' bytes back to back, without a copy (``csv_lines`` output is a file body as it stands)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    if n == 0:
        return memoryview(b"")
    off = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=n + 1, offset=arr.offset * 4)
    return memoryview(arr.buffers()[2])[int(off[0]):int(off[-1])]


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_atomic(path: Path, parts: Iterable[bytes | memoryview]) -> None:
    """``path`` made of ``parts``, written under a temporary name and moved into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as fh:
            for part in parts:
                fh.write(part)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_parquet(path: Path, table: pa.Table) -> None:
    """``table`` as zstd Parquet, written under a temporary name and moved into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class CsvStream:
    """A CSV written chunk by chunk under a temporary name and moved into place on close."""

    def __init__(self, path: Path, header: list[str]):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = _tmp_path(path)
        self.fh = open(self.tmp, "wb")
        self.fh.write((",".join(header) + "\n").encode())
        self.rows = 0
        self.pids: list[np.ndarray] = []

    def write(self, columns: list[pa.Array], pid: np.ndarray) -> None:
        if len(pid):
            self.fh.write(string_bytes(csv_lines(columns)))
            self.rows += len(pid)
            self.pids.append(pid)

    def close(self) -> None:
        self.fh.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if not self.fh.closed:
            self.fh.close()
        if self.tmp.exists():
            self.tmp.unlink()


# ----------------------------------------------------------------------------------------------------------------
# chunks of formatted rows (a month's file may receive late rows from the previous month)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Rows:
    """Formatted columns bound for one file, the person behind each row, and each row's place in the file."""

    cols: list[pa.Array]
    pid: np.ndarray
    key: np.ndarray         # sort key within the file

    def take(self, idx: np.ndarray) -> Rows:
        ia = pa.array(idx.astype(np.int64))
        return Rows([c.take(ia) for c in self.cols], self.pid[idx], self.key[idx])

    @staticmethod
    def concat(parts: list[Rows | None]) -> Rows:
        """The parts one after the other (None parts, such as an empty carry-over, are skipped)."""
        given = [q for q in parts if q is not None]
        full = [q for q in given if len(q.pid)]
        if not full:
            return given[0]
        if len(full) == 1:
            return full[0]
        cols = [pa.concat_arrays([q.cols[j] for q in full]) for j in range(len(full[0].cols))]
        return Rows(cols, np.concatenate([q.pid for q in full]), np.concatenate([q.key for q in full]))

    def sorted(self) -> Rows:
        return self.take(np.argsort(self.key, kind="stable"))


def write_csv_rows(ws: Path, rel: str, header: list[str], rows: Rows, truncate: np.ndarray | None = None,
                   written: dict | None = None) -> int:
    """A CSV file (header + rows) and its truth records."""
    n = len(rows.pid)
    body = string_bytes(csv_lines(rows.cols, truncate)) if n else b""
    write_atomic(ws / rel, [(",".join(header) + "\n").encode(), body])
    write_truth(ws, rel, rows.pid)
    if written is not None:
        written[rel] = n
    return n


def write_truth(ws: Path, rel: str, pid: np.ndarray) -> None:
    """truth/records/``rel``.parquet: the person behind each data row of the file ``rel`` (rows 1-based)."""
    table = pa.table({"row": pa.array(np.arange(1, pid.size + 1, dtype=np.int64)),
                      "person_id": pa.array(pid.astype(np.int64))})
    write_parquet(ws / "truth" / "records" / (rel + ".parquet"), table)


# ----------------------------------------------------------------------------------------------------------------
# the workspace around the data: stale month files, persona.yaml and secrets.env, the summary
# ----------------------------------------------------------------------------------------------------------------

_MONTH_FILE = re.compile(r"^\d{4}-\d{2}\.(csv|parquet)(\.parquet)?$")


def remove_stale(ws: Path, written: dict) -> None:
    """Month files of an earlier run with another span would be read as data: remove the ones not written now."""
    for folder in ("raw/online_orders", "raw/pos", "raw/app_events"):
        for base, suffix in ((ws / folder, ""), (ws / "truth/records" / folder, ".parquet")):
            if not base.is_dir():
                continue
            for f in base.iterdir():
                rel = f"{folder}/{f.name[:-len(suffix)] if suffix else f.name}"
                if f.is_file() and _MONTH_FILE.match(f.name) and rel not in written:
                    f.unlink()


def write_config(ws: Path) -> None:
    """persona.yaml, rewritten every run (it must match the files), and secrets.env with a random salt, written only
    when missing: a new salt would no longer match the one the workspace's identifiers were hashed with."""
    write_atomic(ws / "persona.yaml",
                 [yaml.safe_dump(default_config(), allow_unicode=True, sort_keys=False).encode("utf-8")])
    env = ws / "secrets.env"
    if not env.exists():
        write_atomic(env, [f"PERSONA_SALT={secrets.token_hex(16)}\n".encode()])


def summary(customers: int, written: dict[str, int], seconds: float) -> dict:
    """What generate() returns: every file with its data rows, and the rows of each source (month files summed)."""

    def total(prefix: str) -> int:
        return sum(v for k, v in written.items() if k.startswith(prefix))

    return {
        "customers": customers,
        "files": dict(sorted(written.items())),
        "rows": {
            "crm_members": written["raw/crm_members.csv"],
            "online_orders": total("raw/online_orders/"),
            "store_pos": total("raw/pos/"),
            "app_events": total("raw/app_events/"),
            "social": written["raw/social_interactions.csv"],
            "vendor": written["external/vendor_profiles.csv"],
            "partner": written["external/partner_spend.csv"],
            "city_stats": written["external/city_stats.csv"],
        },
        "seconds": seconds,
    }
