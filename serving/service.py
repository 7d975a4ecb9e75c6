"""The online service of persona: BentoML 1.4 serving the engine of `serving.online` over HTTP.

    POST /v1/profile    {"persona_id": ...} | {"identifier": {"type", "value", "hashed"?}}  -> one profile
                        (+ "explain": true, "factors"?: each model score's top factors, in `explanations`)
    POST /v1/score      {"customers": [...]}                      -> a profile (or {"error": "not found"}) each
    POST /v1/recommend  {customer, "n"?, "exclude_days"?}         -> top-n categories not bought recently
    POST /v1/events     {"events": [{customer, "event_type", "category"?, "timestamp"?}]} -> real-time features
    GET  /v1/status     what is loaded, the last refresh and its error
    GET  /v1/docs       interactive API docs (`serving.docs`; /docs redirects there), /v1/openapi.json the schema
    GET  /healthz, /readyz, /metrics (BentoML's own; open without an API key)

Why a FastAPI app mounted on the BentoML service (`@bentoml.asgi_app`) rather than `@bentoml.api` methods: the issue
fixes status codes and bodies that BentoML's API wrapper does not let a service choose. It answers a pydantic
validation error with 400 (not 422 naming the field), and it replaces the body of every 401/403 and 5xx answer with
a generic message (BentoML reserves those codes), so neither "401: send X-API-Key" nor "503: the online store is
down" could be said. Mounted routes still run inside BentoML's server, workers, lifecycle, /readyz (`__is_ready__`)
and its Prometheus middleware, which labels request counts and latencies by path, so /v1/profile shows in /metrics.
The one `@bentoml.api` left, /v1/noop, is the floor the benchmark measures against.

The parts: the request and answer bodies and their limits are `serving.api_models`; the ASGI layers (API key, body
limit, unknown paths, the catch-all 500) and the mapping of errors to JSON answers are `serving.middleware`; the
coalescing of concurrent /v1/profile and /v1/score requests into shared engine calls is `serving.coalescer`; starting
a server (`persona serve`, `python -m serving.service`, `running_server`) is `serving.process`. Here: the service
class, its routes, the checks that need the loaded engine (identifier types, event categories) and its metrics.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import bentoml
from bentoml import get_current_service
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from persona.workspace import Workspace
from serving.api_models import (CustomerRef, Event, EventsRequest, ProfileRequest, RecommendRequest, ScoreRequest,
                                as_utc, responses)
from serving.coalescer import COALESCE_MAX, COALESCE_WINDOW_S, Coalescer
from serving.middleware import (STATIC, ApiKeyAuth, CatchAll, KnownPaths, RequestLimits, UnknownPaths, describe,
                                http_error, invalid, json_answer, log_api_key, public_message, scrub, serving_config,
                                validation_error)
from serving.online import BadRequest, Customer, Gone, NotFound, OnlineEngine, Unavailable
from serving.process import SERVICE_NAME, WORKSPACE_VAR

PROBE_TIMEOUT_S = 2.0  # /readyz: an online store that does not answer a one-persona read in this time is not ready

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
    key = f"persona_engine_seconds:{call}"  # the labelled series, looked up once (`labels` costs as much as observe)
    if key not in _METRICS:
        _METRICS[key] = _metric("Histogram", "persona_engine_seconds",
                                "seconds per engine call (feature read, models, rules)", labelnames=["call"],
                                buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
                                ).labels(call=call)
    return _METRICS[key]


def _refreshes(outcome: str):
    return _metric("Counter", "persona_refresh_total", "background refreshes by outcome",
                   labelnames=["outcome"]).labels(outcome=outcome)


def _observe_batch(size: int) -> None:
    """What the service's Coalescer reports of each batch."""
    _batch_size().observe(size)


class _Service(bentoml.Service):
    """BentoML's service class, whose ASGI app is wrapped in `KnownPaths` (the worker and the tests both build the app
    through `to_asgi`), with /docs redirecting to the API docs."""

    __slots__ = ()

    def to_asgi(self, is_main: bool = True) -> Any:
        app = super().to_asgi(is_main=is_main)
        docs = serving_config().docs
        if docs:
            app.router.routes.append(Route("/docs", _to_docs, methods=["GET"], include_in_schema=False))
        return KnownPaths(app, hidden=frozenset() if docs else frozenset({"/"}))  # "/": BentoML's own Swagger UI


def _to_docs(_: Request) -> Response:
    return RedirectResponse("/v1/docs")


app = FastAPI(title="persona online service", version="1", openapi_url="/openapi.json", docs_url=None,
              redoc_url=None, exception_handlers={RequestValidationError: validation_error,
                                                  StarletteHTTPException: http_error},
              description="Profiles, scores, recommendations and real-time events of the persona platform. Every "
                          "error answers JSON {error, detail} (a 422 adds the offending `fields`). When the server "
                          "sets an API key, send it as `X-API-Key` or `Authorization: Bearer`.")
app.add_middleware(CatchAll)


def _openapi() -> dict:
    """FastAPI's schema plus the API key schemes (declared always; enforced only when the server sets a key)."""
    schema = FastAPI.openapi(app)
    # /v1/profile reads its body itself (see `profile`), so FastAPI does not list its model among the schemas
    profile_body = ProfileRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, sub in profile_body.pop("$defs", {}).items():
        schemas.setdefault(name, sub)
    schemas["ProfileRequest"] = profile_body
    schema["components"]["securitySchemes"] = {
        "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        "Bearer": {"type": "http", "scheme": "bearer"}}
    schema["security"] = [{"ApiKey": []}, {"Bearer": []}]
    return schema


app.openapi = _openapi  # type: ignore[method-assign]


# --- the service ------------------------------------------------------------------------------------------------
@bentoml.service(name=SERVICE_NAME, workers=1, traffic={"timeout": 60}, service_class=_Service)
@bentoml.asgi_app(app, path="/v1")
class PersonaService:
    """Loads the workspace named by $PERSONA_WORKSPACE: the engine is built before the worker takes requests (retried
    in a background thread if that fails) and refreshed in that thread."""

    def __init__(self) -> None:
        if logging.getLogger("persona").level == logging.NOTSET:
            # BentoML's server logging passes other libraries' WARNING and above: the service's start-up lines are INFO
            logging.getLogger("persona").setLevel(logging.INFO)
        log_api_key()
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
        self._logged: dict[str, float] = {}  # 503 causes logged recently (see _log_unavailable)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="persona-engine")
        # profiles on the event loop (see serving.coalescer: a thread costs more than the read); events,
        # recommendations and the readiness probe on the engine thread
        self._profiles = Coalescer(self._run_profiles, None, COALESCE_MAX, window_s=COALESCE_WINDOW_S,
                                   observe=_observe_batch)
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
            self.error = describe(exc)
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
                self.refresh_error = describe(exc)
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

    def _missing(self, ref: CustomerRef) -> NotFound:
        """Why a customer was not found: a retired persona id (410, with its retirement's reason) or unknown (404)."""
        engine = self.engine
        if ref.persona_id is not None and engine is not None:
            reason = engine.identity.retirement(ref.persona_id)
            if reason is not None:
                return Gone(f"persona {ref.persona_id!r} was retired: its persona dissolved ({reason}); look the "
                            "customer up by an identifier")
        return NotFound(_who(ref))

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
        detail = "; ".join(f"{f}: unknown identifier type {t!r}" for f, (_, t) in zip(fields[:10], bad))
        return invalid(fields, f"{detail} (known: {', '.join(sorted(types))})")

    def _check_categories(self, events: Sequence[Event]) -> JSONResponse | None:
        """A 422 naming each event category the loaded interest model does not know (none checked without one)."""
        known = _categories(self._engine())
        bad = [(i, e.category) for i, e in enumerate(events) if known and e.category is not None
               and e.category not in known]
        if not bad:
            return None
        fields = [f"events.{i}.category" for i, _ in bad]
        detail = "; ".join(f"{f}: unknown category {c!r}" for f, (_, c) in zip(fields[:10], bad))
        return invalid(fields, f"{detail} (known: {', '.join(sorted(known))})")

    async def _answer(self, work: Awaitable[Response]) -> Response:
        """The engine's exceptions as JSON answers: 404 unknown customer, 422 invalid request, 503 a backend is down
        (naming it; its address and the driver's message go to the log only)."""
        try:
            return await work
        except Gone as exc:
            return json_answer(410, {"error": "gone", "detail": str(exc)})
        except NotFound as exc:
            return json_answer(404, {"error": "not found", "detail": str(exc)})
        except BadRequest as exc:
            return invalid([], str(exc))
        except Unavailable as exc:
            self._log_unavailable(str(exc))
            component, detail = public_message(str(exc))
            return json_answer(503, {"error": "service unavailable", "component": component, "detail": detail},
                         headers={"Retry-After": "5"})

    def _log_unavailable(self, message: str) -> None:
        """Log the cause of a 503 once per 30 s per distinct cause, not once per request of an outage."""
        now = time.monotonic()
        if now - self._logged.get(message, -60.0) < 30:
            return
        if len(self._logged) > 100:
            self._logged.clear()
        self._logged[message] = now
        logger.warning("answering 503: %s", message)

    # --- what the routes do (the routes: module functions below) -------------------------------------------------
    async def profile(self, body: ProfileRequest) -> Response:
        """Rule tags, model tags with scores and bands, top interests and model versions of one customer; with
        `explain`, each model score's top factors."""
        return await self._answer(self._profile(body))

    async def _profile(self, body: ProfileRequest) -> Response:
        if bad := self._check_types([("", body)]):
            return bad
        (found,) = await self._profiles([body.customer()])
        if found is None:
            raise self._missing(body)
        if body.explain:  # on the engine thread, apart from the coalesced profiles: without it nothing changes
            engine = self._engine()
            pid = found["persona_id"]
            (why,) = await self._call("explain", lambda: engine.explain([pid], body.factors))
            found = {**found, "explanations": why}
        return json_answer(200, found)

    async def score(self, body: ScoreRequest) -> Response:
        """Profiles of many customers at once; an unknown one gets {"error": "not found"} in its place."""
        return await self._answer(self._score(body))

    async def _score(self, body: ScoreRequest) -> Response:
        if bad := self._check_types([(f"customers.{i}.", c) for i, c in enumerate(body.customers)]):
            return bad
        found = await self._profiles([c.customer() for c in body.customers])
        missing = {i: self._missing(c) for i, (p, c) in enumerate(zip(found, body.customers)) if p is None}
        results = [p if p is not None else {"error": "gone" if isinstance(missing[i], Gone) else "not found",
                                            "detail": str(missing[i])}
                   for i, p in enumerate(found)]
        n = sum(p is not None for p in found)
        return json_answer(200, {"results": results, "found": n, "not_found": len(found) - n})

    async def recommend(self, body: RecommendRequest) -> Response:
        """Top-n categories by propensity, leaving out those bought in the last `exclude_days` days."""
        return await self._answer(self._recommend(body))

    async def _recommend(self, body: RecommendRequest) -> Response:
        if bad := self._check_types([("", body)]):
            return bad
        engine = self._engine()
        try:
            out = await self._call("recommend", lambda: engine.recommend(body.customer(), n=body.n,
                                                                         exclude_days=body.exclude_days))
        except NotFound:
            raise self._missing(body) from None
        return json_answer(200, out)

    async def events(self, body: EventsRequest) -> Response:
        """Apply behaviour events to the real-time features online (the next profile read sees them). Timestamps
        must lie within serving.event_max_age_days before now and serving.event_future_seconds after it."""
        return await self._answer(self._events(body))

    async def _events(self, body: EventsRequest) -> Response:
        if bad := self._check_types([(f"events.{i}.", e) for i, e in enumerate(body.events)]):
            return bad
        if bad := self._check_categories(body.events):
            return bad
        rows = []
        for e in body.events:
            c = e.customer()
            rows.append({"persona_id": c.persona_id, "id_type": c.id_type, "value": c.value, "hashed": c.hashed,
                         "event_type": e.event_type, "category": e.category,
                         "timestamp": as_utc(e.timestamp).isoformat() if e.timestamp else None})
        engine = self._engine()
        out = await self._call("events", lambda: engine.ingest_events(rows))
        return json_answer(200, out)

    async def status(self) -> Response:
        """What this worker serves: models, tag snapshot, last refresh and errors (which backend failed: the log has
        the driver's message and the store's address)."""
        engine = self.engine
        body = {"ready": engine is not None and engine.scorer is not None,
                "error": public_message(self.error)[1] if self.error else None,
                "refresh_error": public_message(self.refresh_error)[1] if self.refresh_error else None,
                "refreshed_at": self.refreshed_at, "started": self.started,
                "reload_seconds": self.cfg.serving.reload_seconds, "workspace": str(self.ws.root),
                "pid": os.getpid(), **(engine.ready() if engine else {})}
        return json_answer(200, scrub(body))

    async def docs(self, request: Request) -> Response:
        """Swagger UI over /v1/openapi.json, with the Swagger UI files BentoML ships (no CDN needed)."""
        if not self.cfg.serving.docs:
            return json_answer(404, {"error": "not found", "detail": "the API docs are off (serving.docs: false)"})
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - API docs",
                                   swagger_js_url=f"{STATIC}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{STATIC}/swagger-ui.css",
                                   swagger_favicon_url=f"{STATIC}/favicon-light-32x32.png",
                                   swagger_ui_parameters={"persistAuthorization": True})

    # --- BentoML hooks -------------------------------------------------------------------------------------------
    async def __is_ready__(self) -> bool:
        """Ready when models and tag statistics are loaded and the online store answers a read."""
        engine = self.engine
        if engine is None or engine.scorer is None:
            return False
        try:
            await asyncio.wait_for(self._call("probe", engine.probe), PROBE_TIMEOUT_S)
        except (Unavailable, asyncio.TimeoutError) as exc:
            logger.warning("not ready: %s", describe(exc) if isinstance(exc, Unavailable) else
                           f"online store did not answer within {PROBE_TIMEOUT_S} s")
            return False
        return True

    @bentoml.api(route="/v1/noop")
    async def noop(self) -> dict:
        """Does nothing: the floor of any endpoint (HTTP, routing, JSON) that the benchmark compares against."""
        return {}


# Outermost first, all inside BentoML's metrics middleware (KnownPaths is outside it): the key before anything is
# read, unknown paths answered, then the body limit.
PersonaService.add_asgi_middleware(ApiKeyAuth)
PersonaService.add_asgi_middleware(UnknownPaths)
PersonaService.add_asgi_middleware(RequestLimits)


# --- routes -------------------------------------------------------------------------------------------------------
# Functions of the FastAPI app calling the service instance, rather than methods of the class: BentoML would inject
# `self` into a method route through a plain-function FastAPI dependency, which FastAPI runs on its thread pool (a
# thread hop per request, measured at a fifth of a profile request's CPU).
def _service() -> PersonaService:
    return get_current_service()


# /v1/profile, the call recommendation services make per request, reads its body itself: pydantic parses and validates
# the bytes in one pass (FastAPI would decode the JSON to Python objects, solve the route's dependencies, then
# validate those), with the same errors, answered by the same handler; the schema documents the same body.
_PROFILE_BODY = {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/ProfileRequest"}}}}


@app.post("/profile", responses=responses(404, 410, 413, 422, 503), openapi_extra={"requestBody": _PROFILE_BODY})
async def profile(request: Request) -> Response:
    """Rule tags, model tags with scores and bands, top interests and model versions of one customer; with
    `"explain": true`, `explanations`: per model output its top factors (feature, value, signed contribution) and the
    scale they are in (log-odds or log for LightGBM's own contributions; score for the occlusion of a classical
    champion)."""
    try:
        body = ProfileRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    return await _service().profile(body)


@app.post("/score", responses=responses(413, 422, 503))
async def score(body: ScoreRequest) -> Response:
    """Profiles of many customers at once; an unknown one gets {"error": "not found"} in its place."""
    return await _service().score(body)


@app.post("/recommend", responses=responses(404, 410, 413, 422, 503))
async def recommend(body: RecommendRequest) -> Response:
    """Top-n categories by propensity, leaving out those bought in the last `exclude_days` days."""
    return await _service().recommend(body)


@app.post("/events", responses=responses(404, 413, 422, 503))
async def events(body: EventsRequest) -> Response:
    """Apply behaviour events to the real-time features online (the next profile read sees them). Timestamps
    must lie within serving.event_max_age_days before now and serving.event_future_seconds after it."""
    return await _service().events(body)


@app.get("/status", responses=responses())
async def status() -> Response:
    """What this worker serves: models, tag snapshot, last refresh and errors (which backend failed: the log has
    the driver's message and the store's address)."""
    return await _service().status()


@app.get("/docs", include_in_schema=False)
async def docs(request: Request) -> Response:
    """Swagger UI over /v1/openapi.json, with the Swagger UI files BentoML ships (no CDN needed)."""
    return await _service().docs(request)


def _freeze_heap() -> None:
    """Exclude what is loaded now (libraries, models, the identity index) from the cyclic garbage collector.

    Python's full collection walks every object: with MLflow, Feast, pandas and the models loaded that is ~400k
    objects and a 185 ms pause, measured here, landing on whichever request is running. Frozen objects are still
    freed by reference counting; only cycles among them (an old model set after a promotion, rarely) stay.
    """
    gc.collect()
    gc.freeze()


def _categories(engine: OnlineEngine) -> frozenset[str]:
    """The event categories the loaded interest model knows (its outputs interest_<category>); empty when none."""
    models = getattr(engine.scorer, "models", None)  # no scorer while the engine starts
    if models is None:
        return frozenset()
    return frozenset(o.removeprefix("interest_") for o in models.outputs() if o.startswith("interest_"))


def _who(ref: CustomerRef) -> str:
    if ref.persona_id is not None:
        return f"unknown customer: no persona {ref.persona_id!r}"
    kind = "hashed " if ref.identifier.hashed else ""
    return f"unknown customer: no persona has the {kind}{ref.identifier.type} given"


if __name__ == "__main__":
    # `python -m serving.service` (what running_server starts). BentoML imports the service again by its module path
    # (`serving.process.SERVICE`), which `__main__` is not: the class defined here serves nothing.
    from serving.process import main

    main()
