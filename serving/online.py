"""The online engine behind the HTTP service: resolve a customer, read what batch computed, recompute what moved.

Everything here is plain Python, so the BentoML service (`serving.service`) stays a thin HTTP layer and tests can
drive the engine directly.

Serving on precomputed tags. `persona rescore` scores everyone and pushes every persona's scores and tags to the
online store's `tags` view, each row stamped with the snapshot date and the run (`scored_at`). A profile request
reads, in one round trip, that row, the persona's real-time (`rt_*`) features and the row time of every feature
view, then:
- a row of the batch run the engine has loaded, with every feature view still as the batch saw it (the view's row
  time is the snapshot date): served as is, nothing computed;
- features written since the batch (an event moved the real-time features: their row is newer than the snapshot;
  or a newer snapshot was loaded): the models that read a changed feature and the rule tags that depend on a changed
  feature or on those models' outputs, directly or through other tags, are computed again (`Scorer.plan`), through
  the same functions as the batch (`model_outputs`, the tag set's evaluation), from all the persona's features; the
  rest is the batch's;
- no usable row (the tags view missing or empty, a persona new since the batch, a row of another run: right after
  `persona features` or a crash before the push finished): everything computed, as the batch would.
A champion promoted since the batch: the batch's scores of that model are of an older version, so the model is run
again for every request, with the rules that read its outputs, until the next rescore pushes the new version's
scores. A production user expects the scores of the model the profile names (`models`: the champions), never a mix
of versions; the cost is the model's, for a while. Likewise rules edited since the batch (another rules hash) are
all evaluated again. Each profile says what it holds: `computed.batch` (the snapshot date and run of what came from
the batch, null when nothing did), `computed.realtime` (the time of real-time features newer than the batch, else
null) and `computed.recomputed` (the outputs and tag ids computed for this request). The parity with batch holds
either way: a value served from the batch is the batch's, a value computed again is what the batch would give on
the same features.

State that can change while serving — the champion models, the tag set, the rule statistics of the last batch
run — lives in one immutable `Live`; `refresh()` builds a new one and swaps the reference, so a request in flight
keeps the state it started with and no request ever sees half a promotion.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from feature_repo import definitions as defs
from features import eventlog, feature_log
from features import store as feature_store
from features import online_reader
from persona.workspace import Workspace
from rules import catalog, history
from serving import explaining, scoring
from serving.identity import IdentityIndex, UnknownIdentifierType
from training import tracking

logger = logging.getLogger("persona.serving")

# Behaviour events that move real-time features: (feature of the last hour, of the last day).
EVENT_COUNTERS = {"product_view": ("rt_views_1h", "rt_views_24h"), "cart_add": ("rt_cart_adds_1h", "rt_cart_adds_24h")}
EVENT_TYPES = ("product_view", "cart_add", "search", "session_start", "purchase")
AFFINITY = "affinity"  # the feature view recommendations read besides the scores (recent purchases per category)


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
    """What a request scores with: the scorer, the catalog of its tag set and the batch run, swapped together."""

    scorer: scoring.Scorer
    catalog: dict[str, dict]
    reader: online_reader.OnlineReader  # the views registered when the scorer was built
    batch: scoring.Batch = scoring.Batch(None, None)
    references: explaining.References | None = None  # what explanations occlude features with (explain: true)

    @functools.cached_property
    def shape(self) -> tuple:
        """How a profile is laid out, worked out once: (model outputs, score tags reported with the scores,
        (category, its tag ids) in catalog order, the model versions)."""
        scores = tuple(t for t, m in self.catalog.items() if m["kind"] == "score")
        groups: dict[str, list[str]] = {}
        for t, m in self.catalog.items():
            if m["kind"] != "score":
                groups.setdefault(m["category"], []).append(t)
        return (tuple(self.scorer.models.outputs()), scores, tuple((c, tuple(ids)) for c, ids in groups.items()),
                self.scorer.models.versions())


@dataclass(frozen=True)
class Scored:
    """Personas as one engine call answers them: per persona its values (output or tag id -> plain value), what
    computed them, and the features read (`rows`: the views asked for, with the tag rows and row times)."""

    rows: object  # features.online_reader.OnlineRows
    values: list[dict | None]  # None: the store holds nothing of the persona
    computed: list[dict | None]
    live: Live


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


def _epoch(v) -> int | None:
    """Epoch seconds (read as float64 with the other features) as the integer they are stored as."""
    v = scoring.plain(v)
    return None if v is None else int(v)


class OnlineEngine:
    """Loads the workspace's identity index, online store, champions, tag set and rule statistics once."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.cfg = ws.config()
        self.identity = IdentityIndex.load(ws, self.cfg)
        self._identity_stamp = self._identity_source()
        self.store = feature_store.open_store(ws, self.cfg, serving=True)
        online_reader.fail_fast(self.store)
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
        # Served features logged through Feast for skew checks (serving.feature_log_sample_rate; 0 = off): the
        # request only queues ids, the refresh thread writes them.
        self.feature_log = feature_log.FeatureLogger(
            self.store, [self.store.get_feature_service(s) for s in self._logged_services()],
            self.cfg.serving.feature_log_sample_rate)
        self._lock = threading.Lock()
        self._checked = 0.0
        self._live: Live | None = None
        # Any persona will do for the readiness probe: a read of one key exercises the store end to end.
        self._probe_id = str(self.identity.personas_known[0]) if len(self.identity.personas_known) else "__probe__"
        self.refresh(force=True)

    def _logged_services(self) -> list[str]:
        if self.cfg.serving.feature_log_sample_rate <= 0:
            return []
        try:
            return [s.name for s in self.store.list_feature_services() if s.logging_config is not None]
        except Exception as exc:  # a registry that cannot list: serve without logging, say so
            logger.warning("feature logging off: cannot list feature services (%s)", type(exc).__name__)
            return []

    def _flush_feature_log(self) -> None:
        """Write the served features queued since the last refresh; a failure is logged, never raised (logging
        must not take serving down)."""
        try:
            self.feature_log.flush()
        except Exception as exc:
            logger.error("feature logging: %s: %s", type(exc).__name__, exc)

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
        self._flush_feature_log()
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
            meta = history.read_meta(self.ws, date) if date is not None else {}
            live = self._live
            self._checked = time.monotonic()
            if not force and live is not None and live.scorer.models.versions() == versions and \
                    live.scorer.as_of == date and live.batch.scored_at == meta.get("created"):
                return False
            if not versions:
                raise Unavailable("model registry: no champion model (run `persona train --promote`)")
            if date is None:
                raise Unavailable(f"tag snapshots: none in {history.root(self.ws)} (run `persona rescore`)")
            try:
                models = self.loader.load(versions)
            except Exception as exc:  # an artifact missing or unreadable: keep serving the current models
                logger.error("cannot load champion versions %s: %s: %s", versions, type(exc).__name__, exc)
                raise Unavailable(f"model registry: cannot load champion versions {versions} "
                                  f"({type(exc).__name__})") from None
            reader = online_reader.OnlineReader(self.store)
            tagset = catalog.load_rules(self.ws, self.cfg, [*reader.columns, *models.outputs()])
            scorer = scoring.Scorer(models, tagset, meta.get("stats", {}), as_of=date)
            catalog_ = {c["id"]: c for c in tagset.catalog()}
            # One assignment: a request reads either the old (scorer, catalog, reader) or the new, never a mix.
            refs = explaining.References(self.ws, meta.get("as_of"), models.features(),
                                         explaining.needs_reference(models))
            self._live = Live(scorer, catalog_, reader, scoring.Batch.of(meta, scorer, catalog_), refs)
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
        self._fetch(live.reader, [self._probe_id], (defs.REALTIME,), tags=(scoring.SCORED_AT,))

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
    def _fetch(self, reader: online_reader.OnlineReader, persona_ids: Sequence[str], views: Sequence[str] | None,
               *, tags: bool = False):
        """One read of the online store (`OnlineReader.fetch`) behind a circuit breaker, refused unless the store
        holds the workspace's last load."""
        # A circuit breaker: after a call timed out or failed, calls fail at once until one timeout has passed, so
        # requests queued behind a frozen store are not each held for the full timeout (one trial per interval).
        if time.monotonic() < self._down_until:
            raise Unavailable(f"{self.store_name} unreachable (recent failure; retrying shortly)")
        try:
            rows = reader.fetch(persona_ids, views, tags=tags, marker=True)
        except Exception as exc:  # the online store's client raises its own error types (sqlite3, redis...)
            self._down_until = time.monotonic() + self.cfg.serving.store_timeout_seconds
            logger.error("%s: %s: %s", self.store_name, type(exc).__name__, exc)
            raise Unavailable(f"{self.store_name} unreachable ({type(exc).__name__})") from None
        # A store without the workspace's last load (Redis restarted empty, an old copy) would answer "unknown"
        # for everyone and scores from missing features: refuse until it is rebuilt (see refresh).
        state = feature_store.classify_marker(rows.marker, self._expected)
        if state != "ok":
            self._store_problem = state
            raise Unavailable(f"{self.store_name} is {state} (it does not hold the last load of the features); "
                              + ("rebuilding it" if self.cfg.serving.auto_rebuild else
                                 "run `persona features --reload-online`"))
        self._store_problem = None
        return rows

    def features(self, reader: online_reader.OnlineReader, persona_ids: Sequence[str],
                 views: Sequence[str] | None = None) -> tuple[scoring.MatrixColumns, np.ndarray]:
        """({feature: float64 values (NaN = no value)} of `views` (default all), found: bool per persona)."""
        rows = self._fetch(reader, persona_ids, views)
        return scoring.MatrixColumns(rows.matrix, rows.columns), rows.found

    def score(self, persona_ids: Sequence[str], views: Sequence[str] = (defs.REALTIME,)) -> Scored:
        """Scores and tags of personas: the batch's where their inputs did not move, computed again where they did
        (see the module). `views`: the feature views whose values the caller needs besides."""
        live = self._live
        if live is None:
            raise Unavailable("not ready: no scorer loaded")
        rows = self._fetch(live.reader, persona_ids, views, tags=(scoring.SCORED_AT, scoring.PACKED))

        def read_all(ids: list[int]) -> scoring.MatrixColumns:  # every feature of the personas to compute again
            feats = self._fetch(live.reader, [persona_ids[j] for j in ids], None)
            return scoring.MatrixColumns(feats.matrix, feats.columns)

        views_ = [(v.name, names) for v, names, _ in live.reader.views]
        values, computed = scoring.serve(live.scorer, live.batch, live.catalog, views_, rows, read_all)
        return Scored(rows, values, computed, live)

    @staticmethod
    def _profile_of(pid: str, realtime: Mapping, values: Mapping, computed: dict, live: Live) -> dict:
        outputs, score_tags, groups, versions = live.shape
        scores = {o: values.get(o) for o in outputs}
        for t in score_tags:  # a score tag (predicted_value = high_value...) is reported with the scores
            if t in values and t not in scores:
                scores[t] = values[t]
        tags = {}
        for category, ids in groups:
            found = {t: values[t] for t in ids if t in values}
            if found:
                tags[category] = found
        interests = sorted(((o[9:], scores[o]) for o in outputs if o.startswith("interest_") and scores[o] is not None),
                           key=lambda kv: -kv[1])
        return {
            "persona_id": pid,
            "scores": scores,
            "tags": tags,
            "top_interests": [{"category": c, "propensity": round(float(p), 6)} for c, p in interests[:3]],
            "models": dict(versions),
            "rules_as_of": live.scorer.as_of,
            "computed": computed,
            "last_event_ts": _epoch(realtime.get("rt_last_event_ts")),
            # NaN (no value) as None; the event time as the integer it is stored as
            "realtime": {k: None if v != v else (int(v) if k == "rt_last_event_ts" else v) for k, v in realtime.items()},
        }

    def profiles(self, customers: Sequence[Customer]) -> list[dict | None]:
        """Profiles (tags, scores, top interests, model versions, what computed them) of customers; None for an
        unknown one."""
        pids = self.resolve(customers)
        known = [p for p in pids if p is not None]
        if not known:
            return [None] * len(pids)
        scored = self.score(known)
        self.feature_log.offer(known)
        rows = scored.rows
        rt = [c for c in rows.columns if c.startswith(defs.GROUPS[defs.REALTIME])]
        matrix = rows.matrix[:, [rows.columns.index(c) for c in rt]].tolist()
        found = {}
        for j, pid in enumerate(known):
            if scored.values[j] is not None:
                realtime = dict(zip(rt, matrix[j]))
                found[pid] = self._profile_of(pid, realtime, scored.values[j], scored.computed[j], scored.live)
        return [found.get(p) if p is not None else None for p in pids]

    def explain(self, persona_ids: Sequence[str], k: int = explaining.DEFAULT_FACTORS) -> list[dict | None]:
        """Per persona {output: its top `k` factors} of every champion output (`serving.explaining`), from the
        features the online store holds now (those its profile is scored from); None for a persona it lacks."""
        live = self._live
        if live is None:
            raise Unavailable("not ready: no scorer loaded")
        columns, found = self.features(live.reader, persona_ids)
        try:
            refs = live.references.get() if live.references is not None else None
        except FileNotFoundError as exc:
            raise Unavailable(f"feature store: the offline snapshot explanations take reference values from cannot "
                              f"be read: {exc}") from None
        factors = explaining.explain_columns(columns, len(persona_ids), live.scorer.models, refs, k)
        return [row if ok else None for row, ok in zip(explaining.per_row(factors, len(persona_ids)), found.tolist())]

    def recommend(self, customer: Customer, *, n: int = 5, exclude_days: int | None = None) -> dict:
        """Top-n categories by propensity, leaving out those bought in the last `exclude_days` days."""
        (pid,) = self.resolve([customer])
        if pid is None:
            raise NotFound("unknown customer")
        scored = self.score([pid], views=(defs.REALTIME, AFFINITY))
        scorer = scored.live.scorer
        if scored.values[0] is None:
            raise NotFound(f"persona {pid} has no features online")
        days = self.cfg.serving.recommend_exclude_days if exclude_days is None else exclude_days
        row = scored.values[0]
        f = dict(zip(scored.rows.columns, scored.rows.matrix[0].tolist()))
        items, excluded = [], []
        for out in scorer.models.outputs():
            if not out.startswith("interest_"):
                continue
            cat = out.removeprefix("interest_")
            if days > 0 and _bought_within(f, cat, days):
                excluded.append(cat)
                continue
            items.append({"category": cat, "propensity": scoring.plain(row[out])})
        items.sort(key=lambda d: -(d["propensity"] or 0))
        return {"persona_id": pid, "recommendations": items[:n], "excluded_recently_bought": sorted(excluded),
                "exclude_days": days, "models": scorer.models.versions(), "computed": scored.computed[0]}

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
            current, _ = self.features(live.reader, unique, (defs.REALTIME,))  # under the persona locks
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

