"""The event log: every behaviour event the online service accepts, kept durably before it answers 200.

Why a log beside Feast's online store: the online store is a cache that can be lost (Redis restarted empty) and is
not transactional across workers. Here, in one database transaction per call:

    lock the personas (cross-process, cross-server) -> read their real-time state -> compute the new counters
    (the caller's function, which also pushes them online) -> append the events -> save the new state -> commit

so concurrent writers never lose an update (each sees the previous one's result), an event is acknowledged only
once it is on disk, and the online store can be rebuilt from the offline snapshot plus the saved states
(`states_since`). `persona features` exports the events (`export`) so the next batch snapshot counts them.

Backends: SQLite in `<ws>/events/events.db` (embedded; `BEGIN IMMEDIATE` serialises the workers of one machine) or
PostgreSQL (production; `serving.event_log_url`, $PERSONA_EVENT_LOG_URL, default the registry's database;
per-persona advisory locks, so writers of different personas do not wait for each other). Tables are namespaced
by the Feast project.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from persona.config import PersonaConfig
from persona.workspace import Workspace, write_parquet_atomic

URL_VAR = "PERSONA_EVENT_LOG_URL"
DIRNAME = "events"
EXPORT = "logged_events.parquet"  # <ws>/events/: what `persona features` reads beside the integrated events
TIMEOUT_S = 2.0
SCHEMA = pa.schema([("persona_id", pa.string()), ("ts", pa.timestamp("us", tz="UTC")), ("event_type", pa.string()),
                    ("category", pa.string()), ("channel", pa.string()), ("source", pa.string())])


class EventLogUnavailable(RuntimeError):
    """The event log's database cannot be reached or did not answer in time (the message names it, not its
    credentials)."""


@dataclass(frozen=True)
class State:
    """A persona's real-time features after its last logged event, and the timestamp they were pushed with."""

    values: dict
    pushed: datetime


Apply = Callable[[list[str], dict[str, State | None]], dict[str, State]]


def default_url(ws: Workspace, cfg: PersonaConfig) -> str:
    """$PERSONA_EVENT_LOG_URL, else serving.event_log_url, else SQLite in the workspace (embedded) or the
    registry's PostgreSQL database (production)."""
    url = os.environ.get(URL_VAR) or cfg.serving.event_log_url
    if url:
        return url
    if cfg.store.profile == "production":
        return os.environ.get("PERSONA_REGISTRY_URL") or cfg.store.registry_url
    return f"sqlite:///{ws.root / DIRNAME / 'events.db'}"


def open_log(ws: Workspace, cfg: PersonaConfig) -> EventLog:
    url = default_url(ws, cfg)
    table = f"persona_{cfg.store.project}"
    if url.startswith("sqlite:///"):
        return SqliteLog(Path(url.removeprefix("sqlite:///")), table)
    if url.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres"):
        return PostgresLog(url, table)
    raise ValueError(f"serving.event_log_url: {url.split(':', 1)[0]!r} is not supported (sqlite:/// or postgresql://)")


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


class EventLog:
    """Common behaviour; the backends supply the connection, locking and SQL dialect."""

    name = "event log"

    def record(self, events: Sequence[Mapping], apply: Apply) -> dict[str, State]:
        """Log `events` (persona_id, ts, event_type, category) and the personas' new states atomically.

        `apply(persona_ids, current states)` runs while the personas are locked and returns their new states (and
        pushes them online); if it raises, nothing is logged."""
        pids = sorted({str(e["persona_id"]) for e in events})
        with self._transaction(pids) as tx:
            states = tx.states(pids)
            new = apply(pids, states)
            tx.append(events)
            tx.save(new)
        return new

    # subclasses: _transaction(pids) -> context manager yielding an object with states/append/save
    def _transaction(self, pids: list[str]):  # pragma: no cover - abstract
        raise NotImplementedError

    def states_since(self, since: datetime | None) -> list[tuple[str, State]]:
        raise NotImplementedError

    def events(self) -> pa.Table:
        raise NotImplementedError

    def forget(self, persona_ids: Sequence[str]) -> int:
        raise NotImplementedError

    def export(self, path: Path) -> int:
        """Write every logged event to `path` (Parquet, atomically) for the feature snapshots; returns the rows."""
        table = self.events()
        write_parquet_atomic(path, table)
        return table.num_rows

    def close(self) -> None:
        """Close this thread's connection (each backend keeps one per thread in `self._local`)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _rows_table(rows: list[tuple]) -> pa.Table:
    cols = list(zip(*rows)) if rows else [[] for _ in range(4)]
    ts = pa.array([_utc(t) if isinstance(t, datetime) else datetime.fromisoformat(t) for t in cols[1]],
                  type=pa.timestamp("us", tz="UTC"))
    n = len(rows)
    return pa.Table.from_arrays(
        [pa.array(cols[0], type=pa.string()), ts, pa.array(cols[2], type=pa.string()),
         pa.array(cols[3], type=pa.string()), pa.array(["api"] * n, type=pa.string()),
         pa.array(["event_log"] * n, type=pa.string())], schema=SCHEMA)


# --- SQLite (embedded) -----------------------------------------------------------------------------------------------
class SqliteLog(EventLog):
    def __init__(self, path: Path, table: str) -> None:
        self.path = Path(path)
        self.name = "event log (sqlite)"
        self.events_table, self.state_table = f"{table}_events", f"{table}_rt_state"
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # the 200 promises the event is on disk
            conn.execute(f"""CREATE TABLE IF NOT EXISTS {self.events_table} (
                seq INTEGER PRIMARY KEY AUTOINCREMENT, persona_id TEXT NOT NULL, ts TEXT NOT NULL,
                event_type TEXT NOT NULL, category TEXT, received TEXT NOT NULL)""")
            conn.execute(f"CREATE INDEX IF NOT EXISTS {self.events_table}_pid ON {self.events_table} (persona_id)")
            conn.execute(f"""CREATE TABLE IF NOT EXISTS {self.state_table} (
                persona_id TEXT PRIMARY KEY, state TEXT NOT NULL, pushed TEXT NOT NULL)""")
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _transaction(self, pids: list[str]) -> Iterator:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")  # the write lock now: every writer of this file waits here, in turn
        try:
            yield _SqliteTx(self, conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def states_since(self, since: datetime | None) -> list[tuple[str, State]]:
        conn = self._conn()
        rows = conn.execute(f"SELECT persona_id, state, pushed FROM {self.state_table}"
                            + (" WHERE pushed >= ?" if since else ""), (_utc(since).isoformat(),) if since else ()
                            ).fetchall()
        return [(p, State(json.loads(s), datetime.fromisoformat(t))) for p, s, t in rows]

    def events(self) -> pa.Table:
        rows = self._conn().execute(
            f"SELECT persona_id, ts, event_type, category FROM {self.events_table} ORDER BY seq").fetchall()
        return _rows_table(rows)

    def count(self) -> int:
        return int(self._conn().execute(f"SELECT count(*) FROM {self.events_table}").fetchone()[0])

    def forget(self, persona_ids: Sequence[str]) -> int:
        if not self.path.exists():
            return 0
        conn = self._conn()
        marks = ",".join("?" * len(persona_ids))
        with self._transaction(list(persona_ids)):
            n = conn.execute(f"DELETE FROM {self.events_table} WHERE persona_id IN ({marks})", list(persona_ids)).rowcount
            conn.execute(f"DELETE FROM {self.state_table} WHERE persona_id IN ({marks})", list(persona_ids))
        conn.execute("VACUUM")  # deleted rows must not linger in free pages of the file
        return int(n)



class _SqliteTx:
    def __init__(self, log: SqliteLog, conn: sqlite3.Connection) -> None:
        self.log, self.conn = log, conn

    def states(self, pids: list[str]) -> dict[str, State | None]:
        marks = ",".join("?" * len(pids))
        rows = self.conn.execute(f"SELECT persona_id, state, pushed FROM {self.log.state_table} "
                                 f"WHERE persona_id IN ({marks})", pids).fetchall()
        found = {p: State(json.loads(s), datetime.fromisoformat(t)) for p, s, t in rows}
        return {p: found.get(p) for p in pids}

    def append(self, events: Sequence[Mapping]) -> None:
        now = datetime.now(timezone.utc).isoformat()
        self.conn.executemany(
            f"INSERT INTO {self.log.events_table} (persona_id, ts, event_type, category, received) "
            "VALUES (?, ?, ?, ?, ?)",
            [(str(e["persona_id"]), _utc(e["ts"]).isoformat(), e["event_type"], e.get("category"), now)
             for e in events])

    def save(self, states: Mapping[str, State]) -> None:
        self.conn.executemany(
            f"INSERT OR REPLACE INTO {self.log.state_table} (persona_id, state, pushed) VALUES (?, ?, ?)",
            [(p, json.dumps(s.values), _utc(s.pushed).isoformat()) for p, s in states.items()])


# --- PostgreSQL (production) -----------------------------------------------------------------------------------------
class PostgresLog(EventLog):
    def __init__(self, url: str, table: str) -> None:
        # SQLAlchemy-style URLs (postgresql+psycopg://) name the driver; psycopg takes the plain form
        self.url = "postgresql://" + url.split("://", 1)[1]
        self.name = "event log (postgresql)"
        self.events_table, self.state_table = f"{table}_events", f"{table}_rt_state"
        self._local = threading.local()
        self._ready = False

    def _conn(self):
        import psycopg

        conn = getattr(self._local, "conn", None)
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        try:
            conn = psycopg.connect(self.url, connect_timeout=max(1, int(TIMEOUT_S)),
                                   options=f"-c statement_timeout={int(TIMEOUT_S * 1000)} "
                                           f"-c lock_timeout={int(TIMEOUT_S * 1000)}")
        except Exception as exc:
            raise EventLogUnavailable(f"{self.name} unreachable: {type(exc).__name__}") from exc
        if not self._ready:
            with conn.transaction():
                # two workers creating the tables at once: the advisory lock makes the second wait, then no-op
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.events_table,))
                conn.execute(f"""CREATE TABLE IF NOT EXISTS {self.events_table} (
                    seq BIGSERIAL PRIMARY KEY, persona_id TEXT NOT NULL, ts TIMESTAMPTZ NOT NULL,
                    event_type TEXT NOT NULL, category TEXT, received TIMESTAMPTZ NOT NULL DEFAULT now())""")
                conn.execute(f"CREATE INDEX IF NOT EXISTS {self.events_table}_pid ON {self.events_table} (persona_id)")
                conn.execute(f"""CREATE TABLE IF NOT EXISTS {self.state_table} (
                    persona_id TEXT PRIMARY KEY, state JSONB NOT NULL, pushed TIMESTAMPTZ NOT NULL)""")
            self._ready = True
        self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _transaction(self, pids: list[str]) -> Iterator:
        conn = self._conn()
        try:
            with conn.transaction():
                # one lock per persona, taken in sorted order (no deadlock between two multi-persona calls)
                for p in pids:
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (p,))
                yield _PostgresTx(self, conn)
        except EventLogUnavailable:
            raise
        except Exception as exc:
            import psycopg

            if isinstance(exc, psycopg.Error):
                with contextlib.suppress(Exception):
                    conn.close()
                raise EventLogUnavailable(f"{self.name}: {type(exc).__name__}") from exc
            raise

    def states_since(self, since: datetime | None) -> list[tuple[str, State]]:
        conn = self._conn()
        with conn.transaction():
            rows = conn.execute(f"SELECT persona_id, state, pushed FROM {self.state_table}"
                                + (" WHERE pushed >= %s" if since else ""), (since,) if since else ()).fetchall()
        return [(p, State(s, _utc(t))) for p, s, t in rows]

    def events(self) -> pa.Table:
        conn = self._conn()
        with conn.transaction():
            rows = conn.execute(f"SELECT persona_id, ts, event_type, category FROM {self.events_table} "
                                "ORDER BY seq").fetchall()
        return _rows_table(rows)

    def count(self) -> int:
        conn = self._conn()
        with conn.transaction():
            return int(conn.execute(f"SELECT count(*) FROM {self.events_table}").fetchone()[0])

    def forget(self, persona_ids: Sequence[str]) -> int:
        conn = self._conn()
        with conn.transaction():
            n = conn.execute(f"DELETE FROM {self.events_table} WHERE persona_id = ANY(%s)", (list(persona_ids),)
                             ).rowcount
            conn.execute(f"DELETE FROM {self.state_table} WHERE persona_id = ANY(%s)", (list(persona_ids),))
        return int(n)

    def drop(self) -> None:
        """Remove this project's tables (tests)."""
        conn = self._conn()
        with conn.transaction():
            conn.execute(f"DROP TABLE IF EXISTS {self.events_table}")
            conn.execute(f"DROP TABLE IF EXISTS {self.state_table}")
        self._ready = False



class _PostgresTx:
    def __init__(self, log: PostgresLog, conn) -> None:
        self.log, self.conn = log, conn

    def states(self, pids: list[str]) -> dict[str, State | None]:
        rows = self.conn.execute(f"SELECT persona_id, state, pushed FROM {self.log.state_table} "
                                 "WHERE persona_id = ANY(%s)", (pids,)).fetchall()
        found = {p: State(s, _utc(t)) for p, s, t in rows}
        return {p: found.get(p) for p in pids}

    def append(self, events: Sequence[Mapping]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {self.log.events_table} (persona_id, ts, event_type, category) "
                            "VALUES (%s, %s, %s, %s)",
                            [(str(e["persona_id"]), _utc(e["ts"]), e["event_type"], e.get("category"))
                             for e in events])

    def save(self, states: Mapping[str, State]) -> None:
        from psycopg.types.json import Jsonb

        with self.conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {self.log.state_table} (persona_id, state, pushed) VALUES (%s, %s, %s) "
                "ON CONFLICT (persona_id) DO UPDATE SET state = EXCLUDED.state, pushed = EXCLUDED.pushed",
                [(p, Jsonb(s.values), _utc(s.pushed)) for p, s in states.items()])


def forget(ws: Workspace, cfg: PersonaConfig, persona_ids: Sequence[str]) -> int:
    """Remove these personas' logged events and real-time state, and their rows of the exported events."""
    log = open_log(ws, cfg)
    try:
        n = log.forget(list(persona_ids)) if persona_ids else 0
        export = ws.root / DIRNAME / EXPORT
        if export.exists():
            log.export(export)
    finally:
        log.close()
    return n


def export(ws: Workspace, cfg: PersonaConfig) -> Path | None:
    """Export the logged events for the next feature snapshots; None when nothing was ever logged."""
    url = default_url(ws, cfg)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return None
    log = open_log(ws, cfg)
    try:
        path = ws.root / DIRNAME / EXPORT
        log.export(path)
    finally:
        log.close()
    return path
