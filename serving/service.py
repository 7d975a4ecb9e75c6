"""The online service of persona: BentoML 1.4 serving the engine of `serving.online` over HTTP.

    POST /v1/profile    {"persona_id": ...} | {"identifier": {"type", "value", "hashed"?}}  -> one profile
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

Concurrency: each worker runs the engine on one thread (pandas, Feast's SQLite connection and LightGBM gain nothing
from more threads under the GIL), and concurrent /v1/profile and /v1/score requests are coalesced: while one batch
is being scored, new requests queue, and the next batch takes all of them, so they share one online-store read and
one call per model (see `Coalescer`). Batches grow with load and add no waiting when idle. This is BentoML's adaptive
batching without its HTTP round trip through a batchable API (a JSON encode and decode of every profile) and without
its 503 when a batch misses `max_latency_ms`.

Hostile input gets a 4xx before any work (see "limits" below): a body over `serving.max_body_bytes` is a 413 before it
is read (or as soon as a chunked one passes the limit); ids longer than `serving.max_id_length`, lists longer than
`serving.max_batch`, event timestamps outside [now - `serving.event_max_age_days`, now +
`serving.event_future_seconds`] and unknown categories are 422s naming the field. A path no route serves is a JSON
404 counted in /metrics under one name, "/(unknown)" (see `KnownPaths`), so junk requests cannot grow /metrics. With
an API key set, everything but /healthz, /livez, /readyz and /metrics needs it, the docs (/v1/docs,
/v1/openapi.json) included. A 503 names the backend that is down, never its address: the log has the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import concurrent.futures
import contextlib
import contextvars
import datetime as dt
import gc
import hmac
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import bentoml
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Match, Mount, Route
from starlette.staticfiles import StaticFiles

from persona.config import ServingConfig
from persona.workspace import Workspace
from serving.online import EVENT_TYPES, BadRequest, Customer, Gone, NotFound, OnlineEngine, Unavailable

WORKSPACE_VAR = "PERSONA_WORKSPACE"
SERVICE_NAME = "persona"
COALESCE_MAX = 64  # customers per engine call when requests are coalesced; bounds one batch's latency
# Under load, how long a batch may wait for the clients the previous batch answered (see Coalescer). Measured on
# 2 cores with 16 clients: 2 ms is too short for their next request to arrive, 8-30 ms all give ~495 req/s.
COALESCE_WINDOW_S = 0.010
PROBE_TIMEOUT_S = 2.0  # /readyz: an online store that does not answer a one-persona read in this time is not ready
UNKNOWN_PATH = "/(unknown)"  # the path, and the /metrics label, of every request for a path no route serves
OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/metrics"})  # probes and Prometheus carry no API key
STATIC = "/static_content"  # BentoML's copy of Swagger UI's scripts and styles: no data, open without a key
DOC_PATHS = frozenset({"/", "/docs", "/docs.json", "/v1/docs", "/v1/openapi.json"})  # a browser may log in (Basic)
CATEGORY_PATTERN = r"^[a-z0-9_\-]{1,64}$"
MAX_TYPE_CHARS = 64  # an identifier type is a key of persona.yaml
MAX_REPORTED = 20  # fields a 422 names at most (a body can hold thousands of bad ones)

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


# --- limits -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    """The request limits of `serving.*` that the body models check while FastAPI validates a request."""

    max_id_length: int
    max_batch: int
    event_max_age_days: float
    event_future_seconds: float

    @classmethod
    def of(cls, cfg: ServingConfig) -> Limits:
        return cls(cfg.max_id_length, cfg.max_batch, cfg.event_max_age_days, cfg.event_future_seconds)


# Set per request by `RequestLimits` (the workspace's settings), read by the validators below: FastAPI validates a
# body before the route runs and passes no context to pydantic, and these checks must come before any work (a list of
# 50,000 customers costs ~1 s to validate item by item; the length check before it costs nothing).
_LIMITS: contextvars.ContextVar[Limits] = contextvars.ContextVar("persona_request_limits")
_DEFAULT_LIMITS = Limits.of(ServingConfig())


def _limits() -> Limits:
    return _LIMITS.get(_DEFAULT_LIMITS)


def _short_id(value: object) -> object:
    limit = _limits().max_id_length
    if isinstance(value, str) and len(value) > limit:
        raise ValueError(f"{len(value)} characters, at most {limit} (serving.max_id_length)")
    return value


def _few(items: object) -> object:
    limit = _limits().max_batch
    if isinstance(items, list) and len(items) > limit:
        raise ValueError(f"{len(items)} given, at most {limit} per call (serving.max_batch); split the request")
    return items


# --- request bodies --------------------------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is a 422 naming it, not silently ignored


class Identifier(_Body):
    type: str = Field(max_length=MAX_TYPE_CHARS,
                      description="an identity type of the workspace: member_id, phone, email, device_id, ...")
    value: str = Field(min_length=1, description="at most serving.max_id_length characters (default 128)")
    hashed: bool = Field(False, description="value is already the salted SHA-256 of the normalised identifier")

    @field_validator("value", mode="before")
    @classmethod
    def _value_length(cls, value: object) -> object:
        return _short_id(value)


# "Exactly one of persona_id or identifier" in JSON Schema: each branch requires its key with a non-null value, so a
# body with both (or neither) matches two branches (or none), as the validator below decides.
_ONE_OF = {"oneOf": [{"required": ["persona_id"], "properties": {"persona_id": {"type": "string"}}},
                     {"required": ["identifier"], "properties": {"identifier": {"type": "object"}}}]}


class CustomerRef(_Body):
    """A customer: exactly one of `persona_id` or `identifier`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_ONE_OF)

    persona_id: str | None = Field(None, min_length=1,
                                   description="at most serving.max_id_length characters (default 128)")
    identifier: Identifier | None = None

    @field_validator("persona_id", mode="before")
    @classmethod
    def _id_length(cls, value: object) -> object:
        return _short_id(value)

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
    customers: list[CustomerRef] = Field(min_length=1, description="at most serving.max_batch (default 1000)")

    @field_validator("customers", mode="before")
    @classmethod
    def _cap(cls, items: object) -> object:
        return _few(items)


class RecommendRequest(CustomerRef):
    n: int = Field(5, ge=1, le=100)
    exclude_days: int | None = Field(None, ge=0, le=3650, description="default: serving.recommend_exclude_days")


class Event(CustomerRef):
    event_type: Literal[EVENT_TYPES]  # type: ignore[valid-type]
    category: str | None = Field(None, pattern=CATEGORY_PATTERN,
                                 description="a lowercase token; when the interest model is loaded, one of its "
                                             "categories (the outputs interest_<category>)")
    timestamp: dt.datetime | None = Field(
        None, description="ISO 8601; naive is UTC; default: now. At most serving.event_max_age_days old (default 7) "
                          "and serving.event_future_seconds ahead (default 300: client clocks drift)")

    @field_validator("timestamp")
    @classmethod
    def _recent(cls, ts: dt.datetime | None) -> dt.datetime | None:
        if ts is None:
            return None
        try:
            utc = _utc(ts)  # year 1 at +08:00 is before year 1 in UTC
        except (OverflowError, ValueError):
            raise ValueError("out of range") from None
        limits = _limits()
        now = dt.datetime.now(dt.timezone.utc)
        if (utc - now).total_seconds() > limits.event_future_seconds:
            raise ValueError(f"in the future (now is {now.isoformat(timespec='seconds')}; "
                             f"serving.event_future_seconds allows {limits.event_future_seconds:g} s of clock drift)")
        if (now - utc).total_seconds() > limits.event_max_age_days * 86400:
            raise ValueError(f"older than {limits.event_max_age_days:g} days (serving.event_max_age_days); the nightly "
                             "features cover older behaviour")
        return utc


class EventsRequest(_Body):
    events: list[Event] = Field(min_length=1, description="at most serving.max_batch (default 1000)")

    @field_validator("events", mode="before")
    @classmethod
    def _cap(cls, items: object) -> object:
        return _few(items)


# --- answers ----------------------------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    """Every error answer: what went wrong and what to do about it. Never a traceback, a credential or an address."""

    error: str = Field(description="short and stable: 'invalid request', 'not found', 'unauthorized', ...")
    detail: str = Field(description="what was expected, what was found, what to do")


class InvalidBody(ErrorBody):
    fields: list[str] = Field(description="dotted paths of the offending fields, e.g. 'customers.3.persona_id' or "
                                          "'events.0.timestamp'; '(body)' for the body as a whole")


class TooLargeBody(ErrorBody):
    limit_bytes: int = Field(description="serving.max_body_bytes")


class UnavailableBody(ErrorBody):
    component: str = Field(description="the backend that is down: 'online store (embedded)', 'model registry', ... "
                                       "(its address and the driver's message are in the server log only)")


def _responses(*statuses: int) -> dict[int, dict]:
    """OpenAPI descriptions of the error answers a route gives (401, 413, 422, 500 and 503 for every /v1 route)."""
    known = {
        401: {"model": ErrorBody, "description": "API key missing or wrong (only when the server sets one)"},
        404: {"model": ErrorBody, "description": "no persona matches the customer given"},
        410: {"model": ErrorBody, "description": "the persona id was retired: its persona dissolved (the reason)"},
        413: {"model": TooLargeBody, "description": "body larger than serving.max_body_bytes"},
        422: {"model": InvalidBody, "description": "invalid request, naming the fields"},
        500: {"model": ErrorBody, "description": "unexpected error (the server log has it)"},
        503: {"model": UnavailableBody, "description": "a backend is down or the service is starting; retry",
              "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}},
    }
    return {s: known[s] for s in sorted({401, 500, *statuses})}


def _json(status: int, body: dict, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def _invalid(fields: list[str], detail: str) -> JSONResponse:
    return _json(422, {"error": "invalid request", "detail": detail, "fields": fields[:MAX_REPORTED]})


def _field(loc: Sequence[Any]) -> str:
    # an unknown key is echoed in its location: bounded, whatever the client sent
    return ".".join(_clip(str(p), 64) for p in loc if p != "body") or "(body)"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems, fields = [], []
    errors = exc.errors()
    for err in errors[:MAX_REPORTED]:
        name = _field(err.get("loc", ()))
        # a union or model validator reports at the model; its message says which keys to give
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "json_invalid":
            name, message = "(body)", f"not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})"
        elif err.get("type") == "extra_forbidden":
            message = "unknown field"
        fields.append(name)
        problems.append(f"{name}: {message}")
    more = f" (and {len(errors) - MAX_REPORTED} more)" if len(errors) > MAX_REPORTED else ""
    return _invalid(fields, "; ".join(problems) + more)


def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400:  # FastAPI's "error parsing the body": Python's JSON reader raised (not a JSON error)
        return _invalid(["(body)"], "(body): not readable as JSON (nested too deeply, or a number too long?)")
    return _json(exc.status_code, {"error": str(exc.detail).lower(), "detail": f"HTTP {exc.status_code}"},
                 headers=getattr(exc, "headers", None))


# --- ASGI layers ------------------------------------------------------------------------------------------------
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
    """When the env var named by `serving.api_key_env` is set, every path but /healthz, /livez, /readyz, /metrics
    (probes and Prometheus carry no key) and Swagger UI's static files needs `X-API-Key: <key>` or a Bearer token:
    the API, its docs and schema, BentoML's own pages, and unknown paths (a 401, so they reveal nothing).

    The docs pages also take HTTP Basic (any user name, the key as password), so that a browser can open them: their
    401 asks for it.
    """

    def __init__(self, app: Callable) -> None:
        self.app = app
        self.key = _api_key()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        path = scope.get("path", "")
        if not self.key or scope["type"] != "http" or path in OPEN_PATHS or path.startswith(f"{STATIC}/"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        given = headers.get(b"x-api-key", b"")
        auth = headers.get(b"authorization", b"")
        if not given and auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        elif not given and path in DOC_PATHS and auth[:6].lower() == b"basic ":
            given = _basic_password(auth[6:].strip())
        if hmac.compare_digest(given, self.key):
            await self.app(scope, receive, send)
            return
        body = {"error": "unauthorized", "detail": "missing or wrong API key: send header 'X-API-Key: <key>' or "
                                                   "'Authorization: Bearer <key>'"}
        challenge = 'Basic realm="persona API docs", Bearer' if path in DOC_PATHS else "Bearer"
        await _json(401, body, headers={"WWW-Authenticate": challenge})(scope, receive, send)


def _basic_password(token: bytes) -> bytes:
    with contextlib.suppress(binascii.Error, ValueError):
        return base64.b64decode(token, validate=True).partition(b":")[2]
    return b""


def _api_key_setting() -> tuple[str, bytes | None]:
    """(the name of the env var holding the API key, its value or None)."""
    env = "PERSONA_API_KEY"
    root = os.environ.get(WORKSPACE_VAR)
    if root:
        with contextlib.suppress(Exception):  # a broken workspace is reported by the service, not here
            env = Workspace.open(root).config().serving.api_key_env
    value = os.environ.get(env)
    return env, (value.encode() if value else None)


def _api_key() -> bytes | None:
    return _api_key_setting()[1]


def _log_api_key() -> None:
    """Say whether requests need an API key, and which variable holds it (never the key)."""
    env, key = _api_key_setting()
    if key:
        logger.info("API key enforced: every request but %s needs the value of $%s (header X-API-Key or "
                    "Authorization: Bearer)", ", ".join(sorted(OPEN_PATHS)), env)
    else:
        logger.warning("no API key enforced: $%s is unset, so anyone who reaches the port can call /v1/*; set it to "
                       "require one", env)


def _serving_config() -> ServingConfig:
    """`serving` of the workspace named by $PERSONA_WORKSPACE (the defaults when it cannot be read: the service
    reports a broken workspace itself)."""
    root = os.environ.get(WORKSPACE_VAR)
    if root:
        with contextlib.suppress(Exception):
            return Workspace.open(root).config().serving
    return ServingConfig()


class RequestLimits:
    """A request body larger than `serving.max_body_bytes` is a 413 naming the limit, before the body is read when its
    Content-Length says so, else as soon as a streamed (chunked) body passes it: at most the limit is ever held.
    Also publishes the other limits of `serving` to the body models (see `_LIMITS`).

    The body is read here, up to the limit, and handed on in one piece: FastAPI reads whole bodies anyway.
    """

    def __init__(self, app: Callable, cfg: ServingConfig | None = None) -> None:
        self.app = app
        cfg = cfg or _serving_config()
        self.max_bytes = cfg.max_body_bytes
        self.limits = Limits.of(cfg)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        _LIMITS.set(self.limits)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        with contextlib.suppress(ValueError):
            if declared is not None and int(declared) > self.max_bytes:
                await self._too_large(scope, receive, send, f"{int(declared)} bytes declared")
                return
        chunks: list[bytes] = []
        size = 0
        last: dict | None = None  # a disconnect while reading, handed on as it came
        while True:
            message = await receive()
            if message["type"] != "http.request":
                last = message
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send, f"more than {self.max_bytes} bytes sent")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        handed = False

        async def replay() -> dict:
            nonlocal handed
            if handed:
                return await receive()
            handed = True
            return last or {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, scope: dict, receive: Callable, send: Callable, found: str) -> None:
        body = {"error": "payload too large", "limit_bytes": self.max_bytes,
                "detail": f"request body larger than {self.max_bytes} bytes (serving.max_body_bytes): {found}; send "
                          "fewer customers or events per call"}
        # the rest of the body is never read: the connection cannot carry another request
        await _json(413, body, headers={"Connection": "close"})(scope, receive, send)


ASKED_PATH = "persona.asked_path"  # the scope key keeping the path a client asked for, when KnownPaths renamed it


class UnknownPaths:
    """The JSON 404 of a request `KnownPaths` renamed UNKNOWN_PATH (inside BentoML's metrics middleware, which counts
    it under that one name)."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or ASKED_PATH not in scope:
            await self.app(scope, receive, send)
            return
        asked = _clip(scope[ASKED_PATH], 80)
        body = {"error": "not found", "detail": f"no such path: {scope.get('method', 'GET')} {asked!r}; the API is "
                                                "under /v1/ (see /v1/docs)"}
        await _json(404, body)(scope, receive, send)


class KnownPaths:
    """The outermost ASGI layer: a request for a path no route serves continues as a request for UNKNOWN_PATH.

    BentoML's Prometheus middleware (`RunnerTrafficMetricsMiddleware` in bentoml/_internal/server/http/instruments.py)
    labels every request with its raw `scope["path"]`: 3,000 random paths made 3,000 more series of each request
    metric and a 13 MB /metrics. It is the first middleware of the app BentoML builds, ahead of the service's own
    (`add_asgi_middleware`), so the renaming wraps that whole app (see `_Service.to_asgi`); `UnknownPaths` answers.
    Known: a route of the app (any method: a wrong one is a 405), a route of the mounted FastAPI app, a file of a
    static mount. `hidden` paths count as unknown (the docs pages when `serving.docs` is off).
    """

    def __init__(self, app: Any, hidden: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.hidden = hidden
        self._files: dict[str, frozenset[str]] = {}

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and not self._known(scope):
            scope = {**scope, "path": UNKNOWN_PATH, "raw_path": UNKNOWN_PATH.encode(), ASKED_PATH: scope["path"]}
        await self.app(scope, receive, send)

    def _known(self, scope: dict) -> bool:
        if scope["path"] in self.hidden:
            return False
        for route in self.app.router.routes:
            match, _ = route.matches(scope)
            if match is Match.NONE:
                continue
            if isinstance(route, Mount) and isinstance(route.app, StaticFiles):
                return scope["path"].removeprefix(route.path).lstrip("/") in self._static(route.app)
            return True
        return False

    def _static(self, files: StaticFiles) -> frozenset[str]:
        """The relative paths of a static mount's files (listed once: BentoML's few Swagger UI assets)."""
        folder = str(files.directory)
        if folder not in self._files:
            root = Path(folder)
            self._files[folder] = frozenset(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        return self._files[folder]


class _Service(bentoml.Service):
    """BentoML's service class, whose ASGI app is wrapped in `KnownPaths` (the worker and the tests both build the app
    through `to_asgi`), with /docs redirecting to the API docs."""

    __slots__ = ()

    def to_asgi(self, is_main: bool = True) -> Any:
        app = super().to_asgi(is_main=is_main)
        docs = _serving_config().docs
        if docs:
            app.router.routes.append(Route("/docs", _to_docs, methods=["GET"], include_in_schema=False))
        return KnownPaths(app, hidden=frozenset() if docs else frozenset({"/"}))  # "/": BentoML's own Swagger UI


def _to_docs(_: Request) -> Response:
    return RedirectResponse("/v1/docs")


app = FastAPI(title="persona online service", version="1", openapi_url="/openapi.json", docs_url=None,
              redoc_url=None, exception_handlers={RequestValidationError: _validation_error,
                                                  StarletteHTTPException: _http_error},
              description="Profiles, scores, recommendations and real-time events of the persona platform. Every "
                          "error answers JSON {error, detail} (a 422 adds the offending `fields`). When the server "
                          "sets an API key, send it as `X-API-Key` or `Authorization: Bearer`.")
app.add_middleware(CatchAll)


def _openapi() -> dict:
    """FastAPI's schema plus the API key schemes (declared always; enforced only when the server sets a key)."""
    schema = FastAPI.openapi(app)
    schema.setdefault("components", {})["securitySchemes"] = {
        "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        "Bearer": {"type": "http", "scheme": "bearer"}}
    schema["security"] = [{"ApiKey": []}, {"Bearer": []}]
    return schema


app.openapi = _openapi  # type: ignore[method-assign]


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
@bentoml.service(name=SERVICE_NAME, workers=1, traffic={"timeout": 60}, service_class=_Service)
@bentoml.asgi_app(app, path="/v1")
class PersonaService:
    """Loads the workspace named by $PERSONA_WORKSPACE: the engine is built before the worker takes requests (retried
    in a background thread if that fails) and refreshed in that thread."""

    def __init__(self) -> None:
        if logging.getLogger("persona").level == logging.NOTSET:
            # BentoML's server logging passes other libraries' WARNING and above: the service's start-up lines are INFO
            logging.getLogger("persona").setLevel(logging.INFO)
        _log_api_key()
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
        return _invalid(fields, f"{detail} (known: {', '.join(sorted(types))})")

    def _check_categories(self, events: Sequence[Event]) -> JSONResponse | None:
        """A 422 naming each event category the loaded interest model does not know (none checked without one)."""
        known = _categories(self._engine())
        bad = [(i, e.category) for i, e in enumerate(events) if known and e.category is not None
               and e.category not in known]
        if not bad:
            return None
        fields = [f"events.{i}.category" for i, _ in bad]
        detail = "; ".join(f"{f}: unknown category {c!r}" for f, (_, c) in zip(fields[:10], bad))
        return _invalid(fields, f"{detail} (known: {', '.join(sorted(known))})")

    async def _answer(self, work: Awaitable[Response]) -> Response:
        """The engine's exceptions as JSON answers: 404 unknown customer, 422 invalid request, 503 a backend is down
        (naming it; its address and the driver's message go to the log only)."""
        try:
            return await work
        except Gone as exc:
            return _json(410, {"error": "gone", "detail": str(exc)})
        except NotFound as exc:
            return _json(404, {"error": "not found", "detail": str(exc)})
        except BadRequest as exc:
            return _invalid([], str(exc))
        except Unavailable as exc:
            self._log_unavailable(str(exc))
            component, detail = _public(str(exc))
            return _json(503, {"error": "service unavailable", "component": component, "detail": detail},
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

    # --- routes --------------------------------------------------------------------------------------------------
    @app.post("/profile", responses=_responses(404, 410, 413, 422, 503))
    async def profile(self, body: CustomerRef) -> Response:
        """Rule tags, model tags with scores and bands, top interests and model versions of one customer."""
        return await self._answer(self._profile(body))

    async def _profile(self, body: CustomerRef) -> Response:
        if bad := self._check_types([("", body)]):
            return bad
        (found,) = await self._profiles([body.customer()])
        if found is None:
            raise self._missing(body)
        return _json(200, found)

    @app.post("/score", responses=_responses(413, 422, 503))
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
        return _json(200, {"results": results, "found": n, "not_found": len(found) - n})

    @app.post("/recommend", responses=_responses(404, 410, 413, 422, 503))
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
        return _json(200, out)

    @app.post("/events", responses=_responses(404, 413, 422, 503))
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
                         "timestamp": _utc(e.timestamp).isoformat() if e.timestamp else None})
        engine = self._engine()
        out = await self._call("events", lambda: engine.ingest_events(rows))
        return _json(200, out)

    @app.get("/status", responses=_responses())
    async def status(self) -> Response:
        """What this worker serves: models, tag snapshot, last refresh and errors (which backend failed: the log has
        the driver's message and the store's address)."""
        engine = self.engine
        body = {"ready": engine is not None and engine.scorer is not None,
                "error": _public(self.error)[1] if self.error else None,
                "refresh_error": _public(self.refresh_error)[1] if self.refresh_error else None,
                "refreshed_at": self.refreshed_at, "started": self.started,
                "reload_seconds": self.cfg.serving.reload_seconds, "workspace": str(self.ws.root),
                "pid": os.getpid(), **(engine.ready() if engine else {})}
        return _json(200, _scrub(body))

    @app.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> Response:
        """Swagger UI over /v1/openapi.json, with the Swagger UI files BentoML ships (no CDN needed)."""
        if not self.cfg.serving.docs:
            return _json(404, {"error": "not found", "detail": "the API docs are off (serving.docs: false)"})
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
            logger.warning("not ready: %s", _describe(exc) if isinstance(exc, Unavailable) else
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



def _freeze_heap() -> None:
    """Exclude what is loaded now (libraries, models, the identity index) from the cyclic garbage collector.

    Python's full collection walks every object: with MLflow, Feast, pandas and the models loaded that is ~400k
    objects and a 185 ms pause, measured here, landing on whichever request is running. Frozen objects are still
    freed by reference counting; only cycles among them (an old model set after a promotion, rarely) stay.
    """
    gc.collect()
    gc.freeze()


def _describe(exc: BaseException) -> str:
    """The whole message of an exception, for the log only: it may name a store's address; clients get `_public`."""
    return str(exc) if isinstance(exc, Unavailable) else f"{type(exc).__name__}: {exc}"


_COMPONENT = re.compile(r"\s*(online store|model registry|tag snapshots|event log|identity index|feature store)\b"
                        r"\s*(?:\(([^)]*)\))?", re.IGNORECASE)
_SERVICE_STATE = re.compile(r"\s*(starting|not ready)\b", re.IGNORECASE)
_STATES = ("unreachable", "empty", "stale", "timed out", "locked", "no champion")  # words a client may be told
_ERROR_TYPE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:Error|Exception|Timeout|Interrupt)):")
_COMMAND = re.compile(r"`(persona [a-z][a-z \-]*)`")
_URI = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*)://[^\s'\"<>]+")


def _public(message: str) -> tuple[str, str]:
    """(component, detail) of an engine error, fit for a client: which backend failed and what to do.

    Built from the start of the message only ("online store (embedded): ...", "model registry (sqlite:///...)
    unreachable: ...") and a `persona ...` command it suggests: never the store's user, host, port or database, nor
    the driver's own text, which can hold any of them. The whole message goes to the log.
    """
    if state := _SERVICE_STATE.match(message):
        return "service", f"service {state.group(1).lower()}: the models, tag statistics and identity index are " \
                          "loading; retry in a few seconds"
    found = _COMPONENT.match(message)
    if found is None:
        if error := _ERROR_TYPE.match(message):  # `_describe` of another exception: the engine failed to load
            return "engine", f"the engine failed ({error.group(1)}); the server log has the cause"
        return "backend", "a backend is unavailable; retry in a few seconds (the server log has the cause)"
    component = found.group(1).lower()
    if kind := _kind(found.group(2)):
        component = f"{component} ({kind})"
    state = next((word for word in _STATES if word in message.lower()), "unavailable")
    command = _COMMAND.search(message)
    todo = f"run `{command.group(1)}`" if command else "retry in a few seconds"
    return component, f"{component}: {state}; {todo} (the server log has the cause)"


def _kind(inside: str | None) -> str | None:
    """What may be said of a store from its parentheses: a URI's scheme ('postgresql'), or a plain name ('redis',
    'embedded'); nothing else."""
    if not inside:
        return None
    if "://" in inside:
        scheme = inside.split("://", 1)[0].split("+", 1)[0].lower()
        return scheme if re.fullmatch(r"[a-z][a-z0-9]{0,19}", scheme) else None
    return inside if re.fullmatch(r"[A-Za-z0-9_\-]{1,32}", inside) else None


def _scrub(value: Any) -> Any:
    """A JSON-able value with every URI cut to its scheme (`postgresql://...`): no credentials in /v1/status."""
    if isinstance(value, str):
        return _URI.sub(r"\1://...", value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    return value


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
