"""The ASGI layers of the online service (`serving.service`) and how its errors become JSON answers.

Hostile input gets a 4xx before any work: a body over `serving.max_body_bytes` is a 413 before it is read (or as soon
as a chunked one passes the limit: `RequestLimits`); ids, lists, timestamps (the body models of `serving.api_models`)
and unknown categories (`serving.service`) are 422s naming the field (`validation_error`). A path no route serves is
a JSON 404 counted in /metrics under one name, "/(unknown)" (see `KnownPaths`), so junk requests cannot grow
/metrics. With an API key set, everything but /healthz, /livez, /readyz and /metrics needs it, the docs (/v1/docs,
/v1/openapi.json) included (`ApiKeyAuth`). An exception no route mapped is a JSON 500 without its traceback
(`CatchAll`). A 503 names the backend that is down, never its address (`public_message`): the log has the rest.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.routing import Match, Mount
from starlette.staticfiles import StaticFiles

from persona.config import ServingConfig
from persona.workspace import Workspace
from serving.api_models import REQUEST_LIMITS, Limits
from serving.online import Unavailable
from serving.process import WORKSPACE_VAR

UNKNOWN_PATH = "/(unknown)"  # the path, and the /metrics label, of every request for a path no route serves
OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/metrics"})  # probes and Prometheus carry no API key
STATIC = "/static_content"  # BentoML's copy of Swagger UI's scripts and styles: no data, open without a key
DOC_PATHS = frozenset({"/", "/docs", "/docs.json", "/v1/docs", "/v1/openapi.json"})  # a browser may log in (Basic)
MAX_REPORTED = 20  # fields a 422 names at most (a body can hold thousands of bad ones)

logger = logging.getLogger("persona.serving")


def json_answer(status: int, body: dict, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def invalid(fields: list[str], detail: str) -> JSONResponse:
    return json_answer(422, {"error": "invalid request", "detail": detail, "fields": fields[:MAX_REPORTED]})


def _field(loc: Sequence[Any]) -> str:
    # an unknown key is echoed in its location: bounded, whatever the client sent
    return ".".join(_clip(str(p), 64) for p in loc if p != "body") or "(body)"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
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
    return invalid(fields, "; ".join(problems) + more)


def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400:  # FastAPI's "error parsing the body": Python's JSON reader raised (not a JSON error)
        return invalid(["(body)"], "(body): not readable as JSON (nested too deeply, or a number too long?)")
    return json_answer(exc.status_code, {"error": str(exc.detail).lower(), "detail": f"HTTP {exc.status_code}"},
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
            await json_answer(500, body)(scope, receive, send)


class ApiKeyAuth:
    """When the env var named by `serving.api_key_env` is set, every path but /healthz, /livez, /readyz, /metrics
    (probes and Prometheus carry no key) and Swagger UI's static files needs `X-API-Key: <key>` or a Bearer token:
    the API, its docs and schema, BentoML's own pages, and unknown paths (a 401, so they reveal nothing).

    The docs pages also take HTTP Basic (any user name, the key as password), so that a browser can open them: their
    401 asks for it.
    """

    def __init__(self, app: Callable) -> None:
        self.app = app
        self.key = api_key()

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
        await json_answer(401, body, headers={"WWW-Authenticate": challenge})(scope, receive, send)


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


def api_key() -> bytes | None:
    return _api_key_setting()[1]


def log_api_key() -> None:
    """Say whether requests need an API key, and which variable holds it (never the key)."""
    env, key = _api_key_setting()
    if key:
        logger.info("API key enforced: every request but %s needs the value of $%s (header X-API-Key or "
                    "Authorization: Bearer)", ", ".join(sorted(OPEN_PATHS)), env)
    else:
        logger.warning("no API key enforced: $%s is unset, so anyone who reaches the port can call /v1/*; set it to "
                       "require one", env)


def serving_config() -> ServingConfig:
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
    Also publishes the other limits of `serving` to the body models (see `serving.api_models._LIMITS`).

    The body is read here, up to the limit, and handed on in one piece: FastAPI reads whole bodies anyway.
    """

    def __init__(self, app: Callable, cfg: ServingConfig | None = None) -> None:
        self.app = app
        cfg = cfg or serving_config()
        self.max_bytes = cfg.max_body_bytes
        self.limits = Limits.of(cfg)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        REQUEST_LIMITS.set(self.limits)
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
        await json_answer(413, body, headers={"Connection": "close"})(scope, receive, send)


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
        await json_answer(404, body)(scope, receive, send)


class KnownPaths:
    """The outermost ASGI layer: a request for a path no route serves continues as a request for UNKNOWN_PATH.

    BentoML's Prometheus middleware (`RunnerTrafficMetricsMiddleware` in bentoml/_internal/server/http/instruments.py)
    labels every request with its raw `scope["path"]`: 3,000 random paths made 3,000 more series of each request
    metric and a 13 MB /metrics. It is the first middleware of the app BentoML builds, ahead of the service's own
    (`add_asgi_middleware`), so the renaming wraps that whole app (see `serving.service._Service.to_asgi`);
    `UnknownPaths` answers. Known: a route of the app (any method: a wrong one is a 405), a route of the mounted
    FastAPI app, a file of a static mount. `hidden` paths count as unknown (the docs pages when `serving.docs` is off).
    """

    SEEN_MAX = 1024  # known paths remembered (the app's are a few dozen); unknown ones are never remembered

    def __init__(self, app: Any, hidden: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.hidden = hidden
        self._files: dict[str, frozenset[str]] = {}
        self._seen: set[str] = set()  # paths found known: matched once, not against every route per request

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["path"] not in self._seen and not self._known(scope):
            scope = {**scope, "path": UNKNOWN_PATH, "raw_path": UNKNOWN_PATH.encode(), ASKED_PATH: scope["path"]}
        await self.app(scope, receive, send)

    def _known(self, scope: dict) -> bool:
        known = self._match(scope)
        if known and len(self._seen) < self.SEEN_MAX:
            self._seen.add(scope["path"])
        return known

    def _match(self, scope: dict) -> bool:
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


def describe(exc: BaseException) -> str:
    """The whole message of an exception, for the log only: it may name a store's address; clients get `public_message`."""
    return str(exc) if isinstance(exc, Unavailable) else f"{type(exc).__name__}: {exc}"


_COMPONENT = re.compile(r"\s*(online store|model registry|tag snapshots|event log|identity index|feature store)\b"
                        r"\s*(?:\(([^)]*)\))?", re.IGNORECASE)
_SERVICE_STATE = re.compile(r"\s*(starting|not ready)\b", re.IGNORECASE)
_STATES = ("unreachable", "empty", "stale", "timed out", "locked", "no champion")  # words a client may be told
_ERROR_TYPE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:Error|Exception|Timeout|Interrupt)):")
_COMMAND = re.compile(r"`(persona [a-z][a-z \-]*)`")
_URI = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*)://[^\s'\"<>]+")


def public_message(message: str) -> tuple[str, str]:
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
        if error := _ERROR_TYPE.match(message):  # `describe` of another exception: the engine failed to load
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


def scrub(value: Any) -> Any:
    """A JSON-able value with every URI cut to its scheme (`postgresql://...`): no credentials in /v1/status."""
    if isinstance(value, str):
        return _URI.sub(r"\1://...", value)
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value
