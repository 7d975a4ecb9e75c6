"""The online engine behind the HTTP service: resolve a customer, read online features, score, answer.

Everything here is plain Python, so the BentoML service (`serving.service`) stays a thin HTTP layer and tests can
drive the engine directly. Scoring goes through `serving.scoring.Scorer.score_columns`: the model and rule functions
the batch job calls (`model_outputs`, `Scorer.rule_tags`).

State that can change while serving — the champion models, the tag set, the rule statistics of the last batch
run — lives in one immutable `Scorer`; `refresh()` builds a new one and swaps the reference, so a request in flight
keeps the scorer it started with and no request ever sees half a promotion.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from feature_repo import definitions as defs
from features import eventlog
from features import store as feature_store
from persona.workspace import Workspace
from rules import catalog, history
from serving import scoring
from serving.identity import IdentityIndex, UnknownIdentifierType
from training import tracking

logger = logging.getLogger("persona.serving")

# Behaviour events that move real-time features: (feature of the last hour, of the last day).
EVENT_COUNTERS = {"product_view": ("rt_views_1h", "rt_views_24h"), "cart_add": ("rt_cart_adds_1h", "rt_cart_adds_24h")}
EVENT_TYPES = ("product_view", "cart_add", "search", "session_start", "purchase")


class NotFound(LookupError):
    """No persona matches the request."""


class Gone(NotFound):
    """The persona id asked for was retired: its persona dissolved (the reason is the message)."""


class Unavailable(RuntimeError):
    """A backing store (online store, model registry) cannot be reached or is not ready; says which."""


class BadRequest(ValueError):
    """The request is well-formed JSON but names something invalid (an unknown identifier type...)."""


@dataclass(frozen=True)
class Customer:
    """What a request names: a persona id, or an identifier of a type, raw or already hashed."""

    persona_id: str | None = None
    id_type: str | None = None
    value: str | None = None
    hashed: bool = False


@dataclass(frozen=True)
class Live:
    """What a request scores with: the scorer and the catalog of its tag set, swapped together by `refresh`."""

    scorer: scoring.Scorer
    catalog: dict[str, dict]
    reader: feature_store.OnlineReader  # the views registered when the scorer was built


def redact(uri: str) -> str:
    """A URI fit for the log: the password of `scheme://user:password@host` replaced by ***. Answers to clients
    name only the kind of store (`store_kind`): user, host, port and database stay in the log."""
    return re.sub(r"(://[^/:@]*:)[^/@]*@", r"\1***@", uri)


def store_kind(uri: str) -> str:
    """`postgresql`, `sqlite`, ...: what a client may be told about a backend."""
    return uri.split(":", 1)[0].split("+", 1)[0]


def ping_registry(uri: str, *, timeout: float = 5.0) -> None:
    """Raise Unavailable naming the registry unless its database answers `SELECT 1` now.

    MLflow retries a database it cannot open for about 100 s before it raises; this check answers at once, so the
    service can say which backend is down instead of hanging. Non-database URIs (an MLflow server) are not checked.
    """
    scheme = uri.split(":", 1)[0].split("+", 1)[0]
    if scheme not in ("sqlite", "postgresql", "mysql", "mssql"):
        return
    import sqlalchemy

    args = {"connect_timeout": int(timeout)} if scheme in ("postgresql", "mysql") else {"timeout": timeout}
    try:
        engine = sqlalchemy.create_engine(uri, connect_args=args, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as exc:  # the driver's own error types (sqlite3, psycopg, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        logger.error("model registry %s unreachable: %s: %s", redact(uri), type(exc).__name__, first)
        raise Unavailable(f"model registry ({scheme}) unreachable ({type(exc).__name__})") from None


def _tolist(values) -> list:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _plain(v):
    if isinstance(v, (tuple, list, np.ndarray)):
        return [_plain(x) for x in v]
    if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


def _epoch(v) -> int | None:
    """Epoch seconds (read as float64 with the other features) as the integer they are stored as."""
    v = _plain(v)
    return None if v is None else int(v)


class OnlineEngine:
    """Loads the workspace's identity index, online store, champions, tag set and rule statistics once."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.cfg = ws.config()
        self.identity = IdentityIndex.load(ws, self.cfg)
        self._identity_stamp = self._identity_source()
        self.store = feature_store.open_store(ws, self.cfg, serving=True)
        feature_store.fail_fast(self.store)
        self.store_name = f"online store ({self.store.config.online_store.type})"
        self._expected = self._expected_marker()
        self._store_problem: str | None = None  # "empty" / "stale" while the online store needs a rebuild
        self._events: eventlog.EventLog | None = None
        self._down_until = 0.0  # monotonic time until which the online store counts as down (see features)
        self.registry_uri = tracking.tracking_uri(ws, self.cfg)
        ping_registry(self.registry_uri)
        try:
            self.client = tracking.connect(ws, self.cfg)
        except Exception as exc:  # MLflow wraps the database driver's errors in its own types
            logger.error("model registry %s: %s: %s", redact(self.registry_uri), type(exc).__name__, exc)
            raise Unavailable(f"model registry ({store_kind(self.registry_uri)}): {type(exc).__name__}") from None
        self.loader = scoring.ChampionLoader(self.client)
        self._lock = threading.Lock()
        self._checked = 0.0
        self._live: Live | None = None
        # Any persona will do for the readiness probe: a read of one key exercises the store end to end.
        self._probe_id = str(self.identity.personas_known[0]) if len(self.identity.personas_known) else "__probe__"
        self.refresh(force=True)

    @property
    def scorer(self) -> scoring.Scorer | None:
        live = self._live
        return live.scorer if live else None

    @property
    def catalog(self) -> dict[str, dict]:
        live = self._live
        return live.catalog if live else {}

    # --- state -----------------------------------------------------------------------------------------------
    def refresh(self, *, force: bool = False) -> bool:
        """Pick up a new champion or a new batch snapshot; returns True when the scorer changed.

        Called by a background loop every `serving.reload_seconds`; cheap when nothing moved (one alias query per
        model tag and one folder listing).
        """
        self._expected = self._expected_marker()
        stamp = self._identity_source()
        if stamp != self._identity_stamp:  # a new integration run, or an erasure: resolve against it from now on
            self.identity = IdentityIndex.load(self.ws, self.cfg)
            self._identity_stamp = stamp
        if self._store_problem is not None and self.cfg.serving.auto_rebuild:
            self._rebuild()
            force = True
        with self._lock:
            versions = self.loader.champion_versions()
            if not versions:
                # alias lookups swallow MLflow errors (a missing alias is one), so tell "down" from "no champion"
                ping_registry(self.registry_uri)
            date = history.latest_date(self.ws)
            old = self.scorer
            self._checked = time.monotonic()
            if not force and old is not None and old.models.versions() == versions and old.as_of == date:
                return False
            if not versions:
                raise Unavailable("model registry: no champion model (run `persona train --promote`)")
            if date is None:
                raise Unavailable(f"tag snapshots: none in {history.root(self.ws)} (run `persona rescore`)")
            meta = history.read_meta(self.ws, date)
            try:
                models = self.loader.load(versions)
            except Exception as exc:  # an artifact missing or unreadable: keep serving the current models
                logger.error("cannot load champion versions %s: %s: %s", versions, type(exc).__name__, exc)
                raise Unavailable(f"model registry: cannot load champion versions {versions} "
                                  f"({type(exc).__name__})") from None
            reader = feature_store.OnlineReader(self.store)
            tagset = catalog.load_rules(self.ws, self.cfg, [*reader.columns, *models.outputs()])
            scorer = scoring.Scorer(models, tagset, meta.get("stats", {}), as_of=date)
            # One assignment: a request reads either the old (scorer, catalog, reader) or the new, never a mix.
            self._live = Live(scorer, {c["id"]: c for c in tagset.catalog()}, reader)
            return True

    def _identity_source(self) -> tuple:
        """What the identity index was loaded from: the published integration run and the erasure log."""
        current = self.ws.current("integrated")
        erasures = self.ws.state / "erasures.jsonl"
        return (str(current), erasures.stat().st_mtime_ns if erasures.exists() else None)

    def _expected_marker(self) -> dict | None:
        from persona.workspace import read_json

        return read_json(self.ws.state / feature_store.ONLINE_STATE, None)

    def _rebuild(self) -> None:
        """Load the online store again from the workspace (another worker may have done it already: then this
        only checks the marker). Called from the refresh thread, never from a request."""
        from serving import recovery

        problem = self._store_problem
        logger.warning("%s is %s: rebuilding it from the offline snapshot, the tags and the event log",
                       self.store_name, problem)
        try:
            done = recovery.rebuild_online(self.ws, self.cfg, force=False)
        except Exception as exc:
            logger.error("rebuilding the %s failed: %s: %s", self.store_name, type(exc).__name__, exc)
            raise Unavailable(f"{self.store_name} is {problem}; the rebuild failed ({type(exc).__name__})") from None
        self._expected = self._expected_marker()
        self._store_problem = None
        logger.warning("%s rebuilt: %s", self.store_name,
                       {k: done.get(k) for k in ("rebuilt", "replayed_events", "seconds")})

    def ready(self) -> dict:
        live = self._live
        s = live.scorer if live else None
        return {"ready": s is not None, "models": s.models.versions() if s else {}, "tags_as_of": s.as_of if s else None,
                "tags": len(live.catalog) if live else 0}

    def probe(self) -> None:
        """Raise Unavailable unless the online store answers a read now (the readiness check)."""
        live = self._live
        if live is None:
            raise Unavailable("not ready: no scorer loaded")
        self.features(live.reader, [self._probe_id])

    # --- resolution ----------------------------------------------------------------------------------------
    def resolve(self, customers: Sequence[Customer]) -> list[str | None]:
        """The current persona of each customer (None where unknown); identifiers are grouped by type."""
        out: list[str | None] = [None] * len(customers)
        by_type: dict[str, list[int]] = {}
        for i, c in enumerate(customers):
            if c.persona_id is not None:
                out[i] = self.identity.resolve_persona(c.persona_id)
            else:
                by_type.setdefault(str(c.id_type), []).append(i)
        for id_type, idx in by_type.items():
            try:
                hashes = self.identity.hash_values(id_type, [str(customers[i].value) for i in idx],
                                                   [customers[i].hashed for i in idx])
            except UnknownIdentifierType as exc:
                raise BadRequest(str(exc)) from None
            for i, pid in zip(idx, self.identity.lookup(id_type, hashes)):
                out[i] = pid
        return out

    # --- scoring -------------------------------------------------------------------------------------------
    def features(self, reader: feature_store.OnlineReader, persona_ids: Sequence[str]
                 ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """({feature: float64 values (NaN = no value)}, found: bool per persona the online store holds)."""
        # A circuit breaker: after a call timed out or failed, calls fail at once until one timeout has passed, so
        # requests queued behind a frozen store are not each held for the full timeout (one trial per interval).
        if time.monotonic() < self._down_until:
            raise Unavailable(f"{self.store_name} unreachable (recent failure; retrying shortly)")
        try:
            marker = reader.marker()
            matrix, found = reader.read(persona_ids)
        except Exception as exc:  # the online store's client raises its own error types (sqlite3, redis...)
            self._down_until = time.monotonic() + self.cfg.serving.store_timeout_seconds
            logger.error("%s: %s: %s", self.store_name, type(exc).__name__, exc)
            raise Unavailable(f"{self.store_name} unreachable ({type(exc).__name__})") from None
        # A store without the workspace's last load (Redis restarted empty, an old copy) would answer "unknown"
        # for everyone and scores from missing features: refuse until it is rebuilt (see refresh).
        state = feature_store.classify_marker(marker, self._expected)
        if state != "ok":
            self._store_problem = state
            raise Unavailable(f"{self.store_name} is {state} (it does not hold the last load of the features); "
                              + ("rebuilding it" if self.cfg.serving.auto_rebuild else
                                 "run `persona features --reload-online`"))
        self._store_problem = None
        return scoring.MatrixColumns(matrix, reader.columns), found

    def score_frame(self, persona_ids: Sequence[str]) -> tuple[dict, np.ndarray, dict, Live]:
        """(features, found, scores and tags, the state used) of personas, from the online store, with the current
        scorer: the columns `Scorer.score` would give for the same features, by name."""
        live = self._live
        if live is None:
            raise Unavailable("not ready: no scorer loaded")
        feats, found = self.features(live.reader, persona_ids)
        return feats, found, live.scorer.score_columns(feats, len(persona_ids)), live

    def _profile_of(self, pid: str, realtime: Mapping, scored: Mapping, live: Live) -> dict:
        scorer = live.scorer
        scores = {o: _plain(scored.get(o)) for o in scorer.models.outputs()}
        tags: dict[str, dict] = {}
        for tag_id, meta in live.catalog.items():
            if tag_id not in scored:
                continue
            if meta["kind"] == "score":  # a score tag (predicted_value = high_value...) is reported with the scores
                scores.setdefault(tag_id, _plain(scored[tag_id]))
                continue
            tags.setdefault(meta["category"], {})[tag_id] = _plain(scored[tag_id])
        interests = sorted(((o.removeprefix("interest_"), scores[o]) for o in scorer.models.outputs()
                            if o.startswith("interest_") and scores[o] is not None), key=lambda kv: -kv[1])
        return {
            "persona_id": pid,
            "scores": scores,
            "tags": tags,
            "top_interests": [{"category": c, "propensity": round(float(p), 6)} for c, p in interests[:3]],
            "models": scorer.models.versions(),
            "rules_as_of": scorer.as_of,
            "last_event_ts": _epoch(realtime.get("rt_last_event_ts")),
            "realtime": {k: _epoch(v) if k == "rt_last_event_ts" else _plain(v) for k, v in realtime.items()},
        }

    def profiles(self, customers: Sequence[Customer]) -> list[dict | None]:
        """Profiles (tags, scores, top interests, model versions) of customers; None for an unknown one."""
        pids = self.resolve(customers)
        known = [p for p in pids if p is not None]
        if not known:
            return [None] * len(pids)
        feats, has, scored, live = self.score_frame(known)
        # Rows as dicts from whole columns: `tolist()` per column boxes the values once (categories as str, missing
        # as nan or pd.NA), far cheaper than a DataFrame row per persona.
        names = list(scored)
        rows = [dict(zip(names, values)) for values in zip(*(_tolist(scored[c]) for c in names))]
        rt = [c for c in feats if c.startswith(defs.GROUPS[defs.REALTIME])]
        realtime = [dict(zip(rt, values)) for values in zip(*(feats[c].tolist() for c in rt))] if rt else \
            [{}] * len(known)
        found = {}
        for j, pid in enumerate(known):
            if has[j]:
                found[pid] = self._profile_of(pid, realtime[j], rows[j], live)
        return [found.get(p) if p is not None else None for p in pids]

    def recommend(self, customer: Customer, *, n: int = 5, exclude_days: int | None = None) -> dict:
        """Top-n categories by propensity, leaving out those bought in the last `exclude_days` days."""
        (pid,) = self.resolve([customer])
        if pid is None:
            raise NotFound("unknown customer")
        feats, has, scored, live = self.score_frame([pid])
        scorer = live.scorer
        if not has[0]:
            raise NotFound(f"persona {pid} has no features online")
        days = self.cfg.serving.recommend_exclude_days if exclude_days is None else exclude_days
        row = {out: scored[out][0] for out in scorer.models.outputs()}
        f = {name: values[0] for name, values in feats.items()}
        items, excluded = [], []
        for out in scorer.models.outputs():
            if not out.startswith("interest_"):
                continue
            cat = out.removeprefix("interest_")
            if days > 0 and _bought_within(f, cat, days):
                excluded.append(cat)
                continue
            items.append({"category": cat, "propensity": _plain(row[out])})
        items.sort(key=lambda d: -(d["propensity"] or 0))
        return {"persona_id": pid, "recommendations": items[:n], "excluded_recently_bought": sorted(excluded),
                "exclude_days": days, "models": scorer.models.versions()}

    # --- events --------------------------------------------------------------------------------------------
    def ingest_events(self, events: Sequence[Mapping]) -> dict:
        """Apply behaviour events to the real-time features online; returns what changed per persona.

        In one transaction of the event log (`features.eventlog`): the personas are locked across workers and
        servers, their current real-time features read from the online store, the events applied, the result
        pushed online, and the events and new state appended to the log; the call returns (and the service answers
        200) only after that commit. Concurrent calls for one persona therefore apply one after the other: no
        update is lost, and a lost online store is rebuilt from the log.

        Counters are windowed by the last event time: a window whose last event is older than the window starts
        again from zero, otherwise the event adds to it. That is exact whenever a customer's activity has gaps
        longer than the window, and an upper bound otherwise; the nightly snapshot recomputes the exact values
        (the logged events are part of its input).
        """
        customers = [Customer(e.get("persona_id"), e.get("id_type"), e.get("value"), e.get("hashed", False))
                     for e in events]
        pids = self.resolve(customers)
        unknown = [i for i, p in enumerate(pids) if p is None]
        if unknown:
            raise NotFound(f"unknown customer in event(s) {unknown[:10]}")
        now = pd.Timestamp.now(tz="UTC")
        ts = [pd.Timestamp(e["timestamp"]) if e.get("timestamp") else now for e in events]
        ts = [t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC") for t in ts]
        live = self._live
        if live is None:
            raise Unavailable("not ready: no scorer loaded")
        names = next((names for view, names, _ in live.reader.views if view.name == defs.REALTIME), [])
        if not names:
            raise Unavailable("online store: no realtime feature view (run `persona features`)")
        order = np.argsort(np.array([t.value for t in ts]), kind="stable")

        def apply(unique: list[str], states: dict) -> dict:
            current, _ = self.features(live.reader, unique)  # read under the persona locks
            rows = {pid: {n: (None if np.isnan(current[n][i]) else float(current[n][i])) for n in names}
                    for i, pid in enumerate(unique)}
            for i in order:
                _apply_event(rows[pids[i]], names, events[i]["event_type"], ts[i])
            out = {}
            for pid in unique:
                # Strictly later than this persona's last push: Redis keeps a row only if it is newer than the
                # one it holds, and two servers' clocks may disagree by a little.
                previous = states.get(pid)
                when = max(now, max(t for p, t in zip(pids, ts) if p == pid))
                if previous is not None and pd.Timestamp(previous.pushed) >= when:
                    when = pd.Timestamp(previous.pushed) + pd.Timedelta(microseconds=1)
                out[pid] = eventlog.State(rows[pid], when.to_pydatetime())
            push = pd.DataFrame([{defs.JOIN_KEY: pid, defs.TIMESTAMP: st.pushed, **st.values}
                                 for pid, st in out.items()])
            try:
                feature_store.push_realtime(self.store, push)
            except (KeyError, ValueError):
                raise
            except Exception as exc:
                logger.error("%s: push failed: %s: %s", self.store_name, type(exc).__name__, exc)
                raise Unavailable(f"{self.store_name} unreachable ({type(exc).__name__})") from None
            return out

        logged = [{"persona_id": p, "ts": t.to_pydatetime(), "event_type": e["event_type"],
                   "category": e.get("category")} for p, t, e in zip(pids, ts, events)]
        log = self._event_log()
        try:
            states = log.record(logged, apply)
        except eventlog.EventLogUnavailable as exc:
            logger.error("%s", exc.__cause__ or exc)
            raise Unavailable(str(exc)) from None
        unique = list(dict.fromkeys(pids))
        return {"accepted": len(events), "personas": unique, "realtime": {p: states[p].values for p in unique}}

    def _event_log(self) -> eventlog.EventLog:
        if self._events is None:
            self._events = eventlog.open_log(self.ws, self.cfg)
        return self._events


def _apply_event(row: dict, names: Sequence[str], event_type: str, t: pd.Timestamp) -> None:
    """One event on a persona's real-time features (see `OnlineEngine.ingest_events`), in place."""
    last = row.get("rt_last_event_ts")
    gap = None if last is None else t.timestamp() - last
    counters = EVENT_COUNTERS.get(event_type, ())
    for name, window in zip(("1h", "24h"), (3600, 86400)):
        for col in [c for c in names if c.endswith(f"_{name}")]:
            if gap is not None and gap > window:
                row[col] = 0.0
            elif row.get(col) is None:
                row[col] = 0.0
        for col in counters:
            if col.endswith(f"_{name}") and col in row:
                row[col] = (row[col] or 0.0) + 1.0
    if last is None or t.timestamp() >= last:
        row["rt_last_event_ts"] = float(int(t.timestamp()))


def _bought_within(features: Mapping, category: str, days: int) -> bool:
    """Did the customer buy in the category within `days` days? From the affinity windows (90 / 365 days) and
    recency: exact for 90- and 365-day horizons, conservative (treated as bought) for shorter ones."""
    for window in (90, 365):
        if days <= window:
            value = features.get(f"aff_buy_{category}_{window}d")
            return bool(value is not None and not pd.isna(value) and value > 0)
    return False
