"""The online service of persona: BentoML 1.4 serving the engine of `serving.online` over HTTP.

    POST /v1/profile    {"persona_id": ...} | {"identifier": {"type", "value", "hashed"?}}  -> one profile
    POST /v1/score      {"customers": [...]}                      -> a profile (or {"error": "not found"}) each
    POST /v1/recommend  {customer, "n"?, "exclude_days"?}         -> top-n categories not bought recently
    POST /v1/events     {"events": [{customer, "event_type", "category"?, "timestamp"?}]} -> real-time features
    GET  /v1/status     what is loaded, the last refresh and its error
    GET  /healthz, /readyz, /metrics (BentoML's own; open without an API key)

Why a FastAPI app mounted on the BentoML service (`@bentoml.asgi_app`) rather than `@bentoml.api` methods: the issue
fixes status codes and bodies that BentoML's API wrapper does not let a service choose. It answers a pydantic
validation error with 400 (not 422 naming the field), and it replaces the body of every 401/403 and 5xx answer with
a generic message (BentoML reserves those codes), so neither "401: send X-API-Key" nor "503: the online store is
down" could be said. Mounted routes still run inside BentoML's server, workers, lifecycle, /readyz (`__is_ready__`)
and its Prometheus middleware, which labels request counts and latencies by path, so /v1/profile shows in /metrics.
The one `@bentoml.api` left, /v1/noop, is the floor the benchmark measures against.

Concurrency: each worker runs the engine on one thread (pandas, Feast's SQLite connection and LightGBM gain nothing
from more threads under the GIL), and concurrent /v1/profile and /v1/score requests are coalesced: while one batch
is being scored, new requests queue, and the next batch takes all of them, so they share one online-store read and
one call per model (see `Coalescer`). Batches grow with load and add no waiting when idle. This is BentoML's adaptive
batching without its HTTP round trip through a batchable API (a JSON encode and decode of every profile) and without
its 503 when a batch misses `max_latency_ms`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import contextlib
import datetime as dt
import gc
import hmac
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import bentoml
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from persona.workspace import Workspace
from serving.online import EVENT_TYPES, BadRequest, Customer, NotFound, OnlineEngine, Unavailable

WORKSPACE_VAR = "PERSONA_WORKSPACE"
SERVICE_NAME = "persona"
COALESCE_MAX = 64  # customers per engine call when requests are coalesced; bounds one batch's latency
# Under load, how long a batch may wait for the clients the previous batch answered (see Coalescer). Measured on
# 2 cores with 16 clients: 2 ms is too short for their next request to arrive, 8-30 ms all give ~495 req/s.
COALESCE_WINDOW_S = 0.010
PROBE_TIMEOUT_S = 2.0  # /readyz: an online store that does not answer a one-persona read in this time is not ready
FUTURE_SLACK = dt.timedelta(minutes=5)  # client clocks drift; an event later than this is refused

logger = logging.getLogger("persona.serving")

# Custom metrics beside BentoML's per-endpoint request counts and latencies. Created on first use (by a worker's
# service), once per process: the module may be imported twice (as __main__ and by name), and Prometheus refuses a
# second metric of the same name.
_METRICS: dict[str, object] = {}


def _metric(kind: str, name: str, documentation: str, **options: object):
    if name not in _METRICS:
        _METRICS[name] = getattr(bentoml.metrics, kind)(name=name, documentation=documentation, **options)
    return _METRICS[name]


def _batch_size():
    return _metric("Histogram", "persona_engine_batch_customers", "customers scored per coalesced engine call",
                   buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))


def _engine_seconds(call: str):
    return _metric("Histogram", "persona_engine_seconds", "seconds per engine call (feature read, models, rules)",
                   labelnames=["call"], buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
                   ).labels(call=call)


def _refreshes(outcome: str):
    return _metric("Counter", "persona_refresh_total", "background refreshes by outcome",
                   labelnames=["outcome"]).labels(outcome=outcome)


# --- request bodies --------------------------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is a 422 naming it, not silently ignored


class Identifier(_Body):
    type: str = Field(description="an identity type of the workspace: member_id, phone, email, device_id, ...")
    value: str = Field(min_length=1)
    hashed: bool = Field(False, description="value is already the salted SHA-256 of the normalised identifier")


class CustomerRef(_Body):
    """A customer: a persona id, or one identifier."""

    persona_id: str | None = Field(None, min_length=1)
    identifier: Identifier | None = None

    @model_validator(mode="after")
    def _one_of(self) -> CustomerRef:
        if (self.persona_id is None) == (self.identifier is None):
            raise ValueError("give exactly one of 'persona_id' or 'identifier': {'type': ..., 'value': ...}")
        return self

    def customer(self) -> Customer:
        if self.persona_id is not None:
            return Customer(persona_id=self.persona_id)
        ident = self.identifier
        return Customer(id_type=ident.type, value=ident.value, hashed=ident.hashed)


class ScoreRequest(_Body):
    customers: list[CustomerRef] = Field(min_length=1)


class RecommendRequest(CustomerRef):
    n: int = Field(5, ge=1, le=100)
    exclude_days: int | None = Field(None, ge=0, le=3650, description="default: serving.recommend_exclude_days")


class Event(CustomerRef):
    event_type: Literal[EVENT_TYPES]  # type: ignore[valid-type]
    category: str | None = None
    timestamp: dt.datetime | None = Field(None, description="ISO 8601; naive is UTC; default: now")


class EventsRequest(_Body):
    events: list[Event] = Field(min_length=1)


# --- answers ----------------------------------------------------------------------------------------------------
def _json(status: int, body: dict, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def _invalid(fields: list[str], detail: str) -> JSONResponse:
    return _json(422, {"error": "invalid request", "detail": detail, "fields": fields})


def _field(loc: Sequence[Any]) -> str:
    return ".".join(str(p) for p in loc if p != "body") or "(body)"


def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems, fields = [], []
    for err in exc.errors():
        name = _field(err.get("loc", ()))
        # a union or model validator reports at the model; its message says which keys to give
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "json_invalid":
            name, message = "(body)", f"not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})"
        elif err.get("type") == "extra_forbidden":
            message = "unknown field"
        fields.append(name)
        problems.append(f"{name}: {message}")
    return _invalid(fields, "; ".join(problems))


def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _json(exc.status_code, {"error": str(exc.detail).lower(), "detail": f"HTTP {exc.status_code}"},
                 headers=getattr(exc, "headers", None))


class CatchAll:
    """Any exception the routes did not map becomes a JSON 500 without its traceback (the log has it)."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            logger.exception("unexpected error in %s %s", scope.get("method"), scope.get("path"))
            if started:  # the status line is out; nothing sensible can be sent any more
                raise
            body = {"error": "internal error", "detail": "an unexpected error occurred; the server log has the details"}
            await _json(500, body)(scope, receive, send)


class ApiKeyAuth:
    """When the env var named by `serving.api_key_env` is set, /v1/* needs `X-API-Key: <key>` or a Bearer token.

    Health, readiness and metrics stay open (probes and Prometheus carry no key).
    """

    def __init__(self, app: Callable) -> None:
        self.app = app
        self.key = _api_key()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if self.key and scope["type"] == "http" and scope["path"].startswith("/v1/"):
            headers = dict(scope.get("headers") or ())
            given = headers.get(b"x-api-key", b"")
            auth = headers.get(b"authorization", b"")
            if not given and auth[:7].lower() == b"bearer ":
                given = auth[7:].strip()
            if not hmac.compare_digest(given, self.key):
                body = {"error": "unauthorized",
                        "detail": "missing or wrong API key: send header 'X-API-Key: <key>' or "
                                  "'Authorization: Bearer <key>'"}
                await _json(401, body, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _api_key() -> bytes | None:
    env = "PERSONA_API_KEY"
    root = os.environ.get(WORKSPACE_VAR)
    if root:
        with contextlib.suppress(Exception):  # a broken workspace is reported by the service, not here
            env = Workspace.open(root).config().serving.api_key_env
    value = os.environ.get(env)
    return value.encode() if value else None


app = FastAPI(title="persona online service", version="1", openapi_url="/openapi.json", docs_url=None,
              redoc_url=None, exception_handlers={RequestValidationError: _validation_error,
                                                  StarletteHTTPException: _http_error})
app.add_middleware(CatchAll)


# --- batching ---------------------------------------------------------------------------------------------------
class Coalescer:
    """Concurrent calls of `run(items)` share one call of `run` on the engine thread: see the module docstring.

    Each call's items stay together and in order; a batch holds at most `max_items` unless one call alone is larger.
    An exception of the shared call is raised in every call of the batch.

    Under load a batch waits up to `window_s` for the clients the previous batch just answered to send their next
    request, so the two halves of the traffic do not alternate in half-size batches: an engine call costs ~13 ms
    whatever its size plus ~0.8 ms per customer (measured here), so one batch of 8 costs far less than two of 4
    (16 clients on 2 workers: 330 -> 495 requests/s). An idle service (previous batch of one) never waits.
    """

    def __init__(self, run: Callable[[list], list], executor: concurrent.futures.Executor, max_items: int,
                 window_s: float = COALESCE_WINDOW_S) -> None:
        self.run = run
        self.executor = executor
        self.max_items = max_items
        self.window_s = window_s
        self._queue: collections.deque = collections.deque()
        self._task: asyncio.Task | None = None
        self._last = 0  # items in the previous batch

    async def __call__(self, items: list) -> list:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._queue.append((items, done))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        return await done

    def _queued(self) -> int:
        return sum(len(items) for items, _ in self._queue)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            if self._last > 1 and self.window_s > 0:
                expected = min(self.max_items, self._last + self._queued())
                deadline = loop.time() + self.window_s
                while self._queued() < expected and loop.time() < deadline:
                    await asyncio.sleep(self.window_s / 8)
            batch, size = [], 0
            while self._queue and (not batch or size + len(self._queue[0][0]) <= self.max_items):
                items, done = self._queue.popleft()
                if done.cancelled():  # the client went away while queued
                    continue
                batch.append((items, done))
                size += len(items)
            self._last = size
            if not batch:
                continue
            flat = [x for items, _ in batch for x in items]
            _batch_size().observe(len(flat))
            try:
                results = await loop.run_in_executor(self.executor, self.run, flat)
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            at = 0
            for items, done in batch:
                if not done.done():
                    done.set_result(results[at:at + len(items)])
                at += len(items)
        self._last = 0


# --- the service ------------------------------------------------------------------------------------------------
@bentoml.service(name=SERVICE_NAME, workers=1, traffic={"timeout": 60})
@bentoml.asgi_app(app, path="/v1")
class PersonaService:
    """Loads the workspace named by $PERSONA_WORKSPACE: the engine is built before the worker takes requests (retried
    in a background thread if that fails) and refreshed in that thread."""

    def __init__(self) -> None:
        root = os.environ.get(WORKSPACE_VAR)
        if not root:
            raise RuntimeError(f"set ${WORKSPACE_VAR} to the workspace folder to serve")
        self.ws = Workspace.open(Path(root))
        self.cfg = self.ws.config()
        self.engine: OnlineEngine | None = None
        self.error: str | None = "starting: loading the identity index, models and tag statistics"
        self.refresh_error: str | None = None
        self.refreshed_at: float | None = None
        self.started = time.time()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="persona-engine")
        self._profiles = Coalescer(self._run_profiles, self._executor, COALESCE_MAX, window_s=COALESCE_WINDOW_S)
        self._stop = threading.Event()
        # The first load happens here, before this worker takes requests: with several workers sharing the port, a
        # worker still loading would otherwise answer 503 beside one that is ready. If it fails (a store down), the
        # worker serves anyway, answering 503 with the reason, and the background thread retries.
        self._load()
        self._thread = threading.Thread(target=self._keep_fresh, name="persona-refresh", daemon=True)
        self._thread.start()

    # --- engine lifecycle -------------------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            self.engine = OnlineEngine(self.ws)
        except Exception as exc:
            self.error = _describe(exc)
            _refreshes("load_failed").inc()
            logger.error("online engine not loaded: %s", self.error)
            return
        self.error = None
        self.refreshed_at = time.time()
        _freeze_heap()
        logger.info("online engine loaded: %s", self.engine.ready())

    def _keep_fresh(self) -> None:
        """In a background thread: retry loading the engine until it loads, then refresh it, every
        `serving.reload_seconds`. A refresh that fails leaves the current models serving: the error shows in
        /v1/status and the log."""
        while not self._stop.wait(self.cfg.serving.reload_seconds):
            if self.engine is None:
                self._load()
                continue
            try:
                changed = self.engine.refresh()
            except Exception as exc:
                self.refresh_error = _describe(exc)
                _refreshes("failed").inc()
                logger.error("refresh failed, serving the loaded models: %s", self.refresh_error)
                continue
            self.refresh_error = None
            self.refreshed_at = time.time()
            _refreshes("changed" if changed else "unchanged").inc()
            if changed:
                _freeze_heap()
                logger.info("picked up new models or tag statistics: %s", self.engine.ready())

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self._stop.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _engine(self) -> OnlineEngine:
        engine = self.engine
        if engine is None:
            raise Unavailable(self.error or "starting")
        return engine

    async def _call(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        finally:
            _engine_seconds(name).observe(time.perf_counter() - t0)

    def _run_profiles(self, customers: list[Customer]) -> list[dict | None]:
        t0 = time.perf_counter()
        try:
            return self._engine().profiles(customers)
        finally:
            _engine_seconds("profiles").observe(time.perf_counter() - t0)

    def _check_types(self, refs: Sequence[tuple[str, CustomerRef]]) -> JSONResponse | None:
        """A 422 naming each identifier of a type the workspace does not declare (before a shared batch sees it)."""
        types = set(self._engine().identity.types)
        bad = [(where, r.identifier.type) for where, r in refs
               if r.identifier is not None and r.identifier.type not in types]
        if not bad:
            return None
        fields = [f"{where}identifier.type" for where, _ in bad]
        detail = "; ".join(f"{f}: unknown identifier type {t!r}" for f, (_, t) in zip(fields, bad))
        return _invalid(fields, f"{detail} (known: {', '.join(sorted(types))})")

    # --- routes --------------------------------------------------------------------------------------------------
    @app.post("/profile")
    async def profile(self, body: CustomerRef) -> Response:
        """Rule tags, model tags with scores and bands, top interests and model versions of one customer."""
        return await _answer(self._profile(body))

    async def _profile(self, body: CustomerRef) -> Response:
        if bad := self._check_types([("", body)]):
            return bad
        (found,) = await self._profiles([body.customer()])
        if found is None:
            raise NotFound(_who(body))
        return _json(200, found)

    @app.post("/score")
    async def score(self, body: ScoreRequest) -> Response:
        """Profiles of many customers at once; an unknown one gets {"error": "not found"} in its place."""
        return await _answer(self._score(body))

    async def _score(self, body: ScoreRequest) -> Response:
        limit = self.cfg.serving.max_batch
        if len(body.customers) > limit:
            return _invalid(["customers"], f"customers: {len(body.customers)} given, at most {limit} per call "
                                           "(serving.max_batch); split the request")
        if bad := self._check_types([(f"customers.{i}.", c) for i, c in enumerate(body.customers)]):
            return bad
        found = await self._profiles([c.customer() for c in body.customers])
        results = [p if p is not None else {"error": "not found", "detail": _who(c)}
                   for p, c in zip(found, body.customers)]
        n = sum(p is not None for p in found)
        return _json(200, {"results": results, "found": n, "not_found": len(found) - n})

    @app.post("/recommend")
    async def recommend(self, body: RecommendRequest) -> Response:
        """Top-n categories by propensity, leaving out those bought in the last `exclude_days` days."""
        return await _answer(self._recommend(body))

    async def _recommend(self, body: RecommendRequest) -> Response:
        if bad := self._check_types([("", body)]):
            return bad
        engine = self._engine()
        try:
            out = await self._call("recommend", lambda: engine.recommend(body.customer(), n=body.n,
                                                                         exclude_days=body.exclude_days))
        except NotFound:
            raise NotFound(_who(body)) from None
        return _json(200, out)

    @app.post("/events")
    async def events(self, body: EventsRequest) -> Response:
        """Apply behaviour events to the real-time features online (the next profile read sees them)."""
        return await _answer(self._events(body))

    async def _events(self, body: EventsRequest) -> Response:
        limit = self.cfg.serving.max_batch
        if len(body.events) > limit:
            return _invalid(["events"], f"events: {len(body.events)} given, at most {limit} per call "
                                        "(serving.max_batch)")
        if bad := self._check_types([(f"events.{i}.", e) for i, e in enumerate(body.events)]):
            return bad
        now = dt.datetime.now(dt.timezone.utc)
        late = [i for i, e in enumerate(body.events)
                if e.timestamp is not None and _utc(e.timestamp) > now + FUTURE_SLACK]
        if late:
            fields = [f"events.{i}.timestamp" for i in late]
            return _invalid(fields, "; ".join(f"{f}: in the future" for f in fields[:10])
                            + f" (now is {now.isoformat(timespec='seconds')})")
        rows = []
        for e in body.events:
            c = e.customer()
            rows.append({"persona_id": c.persona_id, "id_type": c.id_type, "value": c.value, "hashed": c.hashed,
                         "event_type": e.event_type, "category": e.category,
                         "timestamp": _utc(e.timestamp).isoformat() if e.timestamp else None})
        engine = self._engine()
        out = await self._call("events", lambda: engine.ingest_events(rows))
        return _json(200, out)

    @app.get("/status")
    async def status(self) -> Response:
        """What this worker serves: models, tag snapshot, last refresh and errors."""
        engine = self.engine
        body = {"ready": engine is not None and engine.scorer is not None, "error": self.error,
                "refresh_error": self.refresh_error, "refreshed_at": self.refreshed_at, "started": self.started,
                "reload_seconds": self.cfg.serving.reload_seconds, "workspace": str(self.ws.root),
                "pid": os.getpid(), **(engine.ready() if engine else {})}
        return _json(200, body)

    # --- BentoML hooks -------------------------------------------------------------------------------------------
    async def __is_ready__(self) -> bool:
        """Ready when models and tag statistics are loaded and the online store answers a read."""
        engine = self.engine
        if engine is None or engine.scorer is None:
            return False
        try:
            await asyncio.wait_for(self._call("probe", engine.probe), PROBE_TIMEOUT_S)
        except (Unavailable, asyncio.TimeoutError) as exc:
            logger.warning("not ready: %s", _describe(exc) if isinstance(exc, Unavailable) else
                           f"online store did not answer within {PROBE_TIMEOUT_S} s")
            return False
        return True

    @bentoml.api(route="/v1/noop")
    async def noop(self) -> dict:
        """Does nothing: the floor of any endpoint (HTTP, routing, JSON) that the benchmark compares against."""
        return {}


PersonaService.add_asgi_middleware(ApiKeyAuth)


async def _answer(work: Awaitable[Response]) -> Response:
    """The engine's exceptions as JSON answers: 404 unknown customer, 422 invalid request, 503 a backend is down."""
    try:
        return await work
    except NotFound as exc:
        return _json(404, {"error": "not found", "detail": str(exc)})
    except BadRequest as exc:
        return _invalid([], str(exc))
    except Unavailable as exc:
        return _json(503, {"error": "service unavailable", "detail": _describe(exc)}, headers={"Retry-After": "5"})


def _freeze_heap() -> None:
    """Exclude what is loaded now (libraries, models, the identity index) from the cyclic garbage collector.

    Python's full collection walks every object: with MLflow, Feast, pandas and the models loaded that is ~400k
    objects and a 185 ms pause, measured here, landing on whichever request is running. Frozen objects are still
    freed by reference counting; only cycles among them (an old model set after a promotion, rarely) stay.
    """
    gc.collect()
    gc.freeze()


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, Unavailable) else f"{type(exc).__name__}: {exc}"


def _who(ref: CustomerRef) -> str:
    if ref.persona_id is not None:
        return f"unknown customer: no persona {ref.persona_id!r}"
    kind = "hashed " if ref.identifier.hashed else ""
    return f"unknown customer: no persona has the {kind}{ref.identifier.type} given"


def _utc(ts: dt.datetime) -> dt.datetime:
    return ts.replace(tzinfo=dt.timezone.utc) if ts.tzinfo is None else ts.astimezone(dt.timezone.utc)


# --- running it -------------------------------------------------------------------------------------------------
def serve(workspace: Path, port: int, *, host: str = "127.0.0.1", workers: int | None = None) -> None:
    """Serve the workspace until interrupted (`persona serve`); `workers` processes (default: `serving.workers`)
    share the port."""
    root = Path(workspace).resolve()
    Workspace.open(root).config()  # a broken persona.yaml stops here with its message, not inside a worker
    os.environ[WORKSPACE_VAR] = str(root)
    # One OpenMP thread per worker: online batches are a few rows, and LightGBM's two threads (n_jobs=2 at training)
    # spin-wait against each other and the other worker on 2 cores, measured 2.5-4x slower per call under load.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = Workspace.open(root).config().serving
    _config_option(f"services.{SERVICE_NAME}.workers={int(workers or cfg.workers)}")
    _config_option(f"services.{SERVICE_NAME}.logging.access.enabled={str(cfg.access_log).lower()}")
    bentoml.serve(PersonaService, host=host, port=port, blocking=True,
                  working_dir=str(Path(__file__).resolve().parents[1]))


def _config_option(option: str) -> None:
    # BentoML applies $BENTOML_CONFIG_OPTIONS over the service's own config when it starts the server.
    current = os.environ.get("BENTOML_CONFIG_OPTIONS", "")
    os.environ["BENTOML_CONFIG_OPTIONS"] = f"{current} {option}".strip()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(workspace: Path, port: int | None = None, *, workers: int | None = None,
                   env: dict[str, str] | None = None, timeout: float = 180.0, wait_for: str = "/readyz",
                   log: Path | None = None) -> Iterator[str]:
    """Start the service on `workspace` in a subprocess, wait until /readyz answers 200, yield its base URL, stop it.

    `env` adds or overrides environment variables of the server (an API key, a tracking URI); `wait_for="/healthz"`
    yields as soon as it answers at all (to test a server that cannot become ready). The server's output goes to
    `log` (default: a temporary file, whose end is in the error when the server does not start).
    """
    import httpx

    host = "127.0.0.1"
    port = port or free_port(host)
    base = f"http://{host}:{port}"
    out = open(log, "wb") if log else tempfile.NamedTemporaryFile(prefix="persona-serve-", suffix=".log", delete=False)
    failed = True
    cmd = [sys.executable, "-m", "serving.service", str(Path(workspace).resolve()), "--port", str(port),
           "--host", host, *(["--workers", str(workers)] if workers else [])]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=base, timeout=5) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the server exited with code {proc.returncode} before it was ready:\n"
                                       f"{_tail(out.name)}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(wait_for).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the server at {base} was not ready within {timeout:.0f} s:\n{_tail(out.name)}")
                time.sleep(0.25)
        yield base
        failed = False
    finally:
        _stop(proc)
        out.close()
        if not log and not failed:  # a temporary log is kept only to read why a server failed
            Path(out.name).unlink(missing_ok=True)


def _stop(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the server's process group (BentoML's arbiter stops its workers), SIGKILL it after `grace` s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _tail(path: str, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    return "(no server log)"


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m serving.service WORKSPACE [--port N] [--host H] [--workers N]` (what running_server starts)."""
    parser = argparse.ArgumentParser(prog="python -m serving.service", description=main.__doc__)
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--port", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--workers", type=int)
    args = parser.parse_args(argv)
    port = args.port or Workspace.open(args.workspace).config().serving.port
    serve(args.workspace, port, host=args.host, workers=args.workers)


if __name__ == "__main__":
    # Re-imported by name: BentoML's workers import the service by its module path, which `__main__` is not.
    from serving.service import main as _main

    _main()
