"""Hostile input, in process (BentoML's ASGI app + Starlette's TestClient over a stand-in engine): every case gets a
clear 4xx naming the limit or the field before the engine does any work, unknown paths cannot grow /metrics, the docs
and schema sit behind the API key, the schema describes the real error bodies, and a 503 never carries a store's
credentials. Timings belong to bench/hostile_bench.py, not here: these tests assert statuses, bodies and memory."""

import asyncio
import base64
import datetime as dt
import json
import logging
import re
import time
import tracemalloc
import uuid
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from persona.config import ServingConfig
from serving import middleware, process, service
from serving.identity import IdentityIndex
from serving.online import NotFound, Unavailable

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "persona.example.yaml"
KEY = "hostile-test-key"
LIMIT = 1_048_576  # serving.max_body_bytes default
CATEGORIES = ("beauty", "sports")
CREDENTIALED = ("postgresql+psycopg://persona:s3cr3t-pw@db.internal.example:6543/persona_features")


class StubEngine:
    """What the service needs of `serving.online.OnlineEngine`; records every call that reaches it."""

    fail_with: Exception | None = None
    calls: list[str] = []

    def __init__(self, ws) -> None:
        outputs = ["churn_risk", *(f"interest_{c}" for c in CATEGORIES)]
        retired = {"P-dissolved": "its only device turned out to be shared"}
        self.identity = type("Index", (), {"types": ["email", "phone"],
                                           "retirement": lambda self, pid: retired.get(pid)})()
        self.scorer = type("Scorer", (), {"models": type("Models", (), {"outputs": lambda self: outputs})()})()

    def ready(self) -> dict:
        return {"ready": True, "models": {"churn_risk": "1"}, "tags_as_of": "2026-01-01", "tags": 1}

    def refresh(self) -> bool:
        return False

    def probe(self) -> None:
        if self.fail_with is not None:
            raise self.fail_with

    def profiles(self, customers):
        StubEngine.calls.append("profiles")
        if self.fail_with is not None:
            raise self.fail_with
        return [None for _ in customers]

    def recommend(self, customer, *, n, exclude_days):
        StubEngine.calls.append("recommend")
        raise NotFound("unknown customer")

    def ingest_events(self, events):
        StubEngine.calls.append("events")
        if self.fail_with is not None:
            raise self.fail_with
        return {"accepted": len(events), "personas": sorted({e["persona_id"] for e in events})}


def _workspace(tmp_path: Path, serving: str = "") -> Path:
    (tmp_path / "persona.yaml").write_text(EXAMPLE.read_text(encoding="utf-8") + serving, encoding="utf-8")
    return tmp_path


def _serve(metrics: bool = False):
    with TestClient(service.PersonaService.to_asgi(), raise_server_exceptions=False) as c:
        deadline = time.monotonic() + 10
        while c.get("/readyz").status_code != 200:  # the engine is built by a background thread
            assert time.monotonic() < deadline, "the service never became ready"
            time.sleep(0.02)
        yield c


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A workspace with the example config, the stand-in engine, no API key and BentoML's metrics off (Prometheus
    refuses a second registration of its metrics in one process: only the metrics test turns them on)."""
    monkeypatch.setenv("BENTOML_CONFIG_OPTIONS", f"services.{process.SERVICE_NAME}.metrics.enabled=false")
    monkeypatch.setenv(process.WORKSPACE_VAR, str(_workspace(tmp_path)))
    monkeypatch.delenv("PERSONA_API_KEY", raising=False)
    monkeypatch.setattr(service, "OnlineEngine", StubEngine)
    monkeypatch.setattr(StubEngine, "fail_with", None)
    monkeypatch.setattr(StubEngine, "calls", [])
    return monkeypatch


@pytest.fixture
def client(env):
    yield from _serve()


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "detail"}, body
    return body


def _event(**fields) -> dict:
    return {"events": [{"persona_id": "P1", "event_type": "cart_add", **fields}]}


# --- ids and strings: a 422 naming the field, before any work --------------------------------------------------
@pytest.mark.parametrize("path, body, field", [
    ("/v1/profile", {"persona_id": "P" * 100_000}, "persona_id"),
    ("/v1/profile", {"identifier": {"type": "email", "value": "x" * 100_000 + "@example.com"}}, "identifier.value"),
    ("/v1/score", {"customers": [{"persona_id": "P1"}, {"persona_id": "P" * 100_000}]}, "customers.1.persona_id"),
    ("/v1/recommend", {"persona_id": "P" * 129}, "persona_id"),
    ("/v1/events", _event(persona_id="P" * 100_000), "events.0.persona_id"),
])
def test_a_huge_id_is_422_naming_the_field_and_never_reaches_the_engine(client, path, body, field):
    r = client.post(path, json=body)
    answer = _error(r, 422)
    assert answer["fields"] == [field] and "serving.max_id_length" in answer["detail"] and "128" in answer["detail"]
    assert len(r.content) < 1000  # the id is not echoed
    assert StubEngine.calls == []


def test_an_id_at_the_limit_is_looked_up(client):
    _error(client.post("/v1/profile", json={"persona_id": "P" * 128}), 404)
    assert StubEngine.calls == ["profiles"]


def test_a_retired_persona_id_is_410_with_the_reason_and_an_unknown_one_404(client):
    answer = _error(client.post("/v1/profile", json={"persona_id": "P-dissolved"}), 410)
    assert "retired" in answer["detail"] and "shared" in answer["detail"]
    _error(client.post("/v1/recommend", json={"persona_id": "P-dissolved"}), 410)
    _error(client.post("/v1/profile", json={"persona_id": "P-never"}), 404)
    r = client.post("/v1/score", json={"customers": [{"persona_id": "P-dissolved"}, {"persona_id": "P-never"}]})
    assert r.status_code == 200
    assert [x["error"] for x in r.json()["results"]] == ["gone", "not found"]


def test_the_id_limit_comes_from_the_workspace(env, tmp_path):
    _workspace(tmp_path, "\nserving:\n  max_id_length: 16\n")
    for c in _serve():
        answer = _error(c.post("/v1/profile", json={"persona_id": "P" * 17}), 422)
        assert "at most 16" in answer["detail"]
        _error(c.post("/v1/profile", json={"persona_id": "P" * 16}), 404)


def test_a_huge_identifier_type_and_too_many_customers_are_422(client):
    answer = _error(client.post("/v1/profile", json={"identifier": {"type": "t" * 100_000, "value": "1"}}), 422)
    assert answer["fields"] == ["identifier.type"] and len(answer["detail"]) < 500
    answer = _error(client.post("/v1/score", json={"customers": [{"persona_id": "P1"}] * 20_000}), 422)
    assert answer["fields"] == ["customers"] and "20000 given, at most 1000" in answer["detail"]
    answer = _error(client.post("/v1/events", json={"events": _event()["events"] * 1001}), 422)
    assert answer["fields"] == ["events"] and "serving.max_batch" in answer["detail"]
    assert StubEngine.calls == []


def test_thousands_of_unknown_keys_are_named_in_a_bounded_answer(client):
    body = {"persona_id": "P1", **{f"{'k' * 200}{i}": 1 for i in range(3000)}}
    r = client.post("/v1/profile", json=body)
    answer = _error(r, 422)
    assert len(answer["fields"]) == middleware.MAX_REPORTED and "more)" in answer["detail"]
    assert len(r.content) < 10_000


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, b'{"persona_id": "P1", "n": ' + b"9" * 5000 + b"}"])
def test_json_python_cannot_read_is_422_for_the_body(client, body):
    r = client.post("/v1/recommend", content=body, headers={"content-type": "application/json"})
    assert _error(r, 422)["fields"] == ["(body)"]


def test_a_huge_id_costs_the_identity_index_nothing():
    """The cause of the 4 GiB: np.searchsorted casts the fixed-width id array to the width of the key."""
    known = np.sort(np.asarray([f"P{i:010d}" for i in range(2000)], dtype=object).astype(str))  # <U11, as loaded
    index = IdentityIndex(types=["email"], normalisers={"email": "email"}, keys=np.array([], dtype=np.uint64),
                          hashes=np.array([], dtype=object), personas=np.array([], dtype=object),
                          personas_known=known, alias_from=np.array([], dtype=object),
                          alias_to=np.array([], dtype=object), salt="s", region="CN")
    assert index.resolve_persona("P0000000007") == "P0000000007"
    tracemalloc.start()
    try:
        assert index.resolve_persona("P" * 100_000) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, peak  # was 2,000 ids x 100,000 characters x 4 bytes = 800 MB
    assert index.hash_values("email", ["a" * 100_000 + "@example.com"]) == [None]


# --- body size --------------------------------------------------------------------------------------------------
def test_a_10_mb_body_is_413_naming_the_limit(client):
    r = client.post("/v1/profile", json={"persona_id": "P" * 10_000_000})
    answer = _error(r, 413)
    assert answer["limit_bytes"] == LIMIT and "serving.max_body_bytes" in answer["detail"]
    assert str(LIMIT) in answer["detail"] and r.headers["connection"] == "close"
    assert StubEngine.calls == []


def test_a_chunked_body_over_the_limit_is_413(client):
    def chunks():
        yield b'{"persona_id": "'
        for _ in range(40):
            yield b"P" * 65_536
        yield b'"}'

    r = client.post("/v1/profile", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers  # streamed: only counting can catch it
    assert _error(r, 413)["limit_bytes"] == LIMIT
    assert StubEngine.calls == []


def test_the_body_limit_stops_reading_at_the_limit():
    """Driven directly: a client streaming 64 KiB chunks without end is cut off once past the limit."""
    read, sent, reached = [], [], []

    async def endless() -> dict:
        read.append(1)
        return {"type": "http.request", "body": b"x" * 65_536, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    async def app(scope, receive, send) -> None:
        reached.append(1)

    cfg = ServingConfig(max_body_bytes=200_000)
    asyncio.run(middleware.RequestLimits(app, cfg)({"type": "http", "headers": []}, endless, send))
    assert sent[0]["status"] == 413 and not reached
    assert len(read) == 4  # 3 chunks (196,608 bytes) held, the 4th passes the limit and is not kept


def test_a_body_under_the_limit_reaches_the_route_whole(client):
    """Chunks are gathered up to the limit and handed on as one body."""
    def chunks():
        yield b'{"persona_id": '
        yield b'"P1"}'

    r = client.post("/v1/profile", content=chunks(), headers={"content-type": "application/json"})
    _error(r, 404)
    assert StubEngine.calls == ["profiles"]


# --- events: timestamps and categories --------------------------------------------------------------------------
def _ago(**delta) -> str:
    return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(**delta)).isoformat()


@pytest.mark.parametrize("timestamp, says", [
    ("0001-01-01T00:00:00", "older than 7 days"),
    ("0001-01-01T00:00:00+08:00", "out of range"),  # before year 1 in UTC
    ("9999-12-31T23:59:59Z", "in the future"),
    ("9999-12-31T23:59:59-05:00", "out of range"),  # after year 9999 in UTC
    ("10000-01-01T00:00:00Z", "events.0.timestamp"),
    ("yesterday", "events.0.timestamp"),
    ("2026-13-45T25:61:00Z", "events.0.timestamp"),
    (lambda: _ago(days=8), "serving.event_max_age_days"),  # computed when the test runs
    (lambda: _ago(minutes=-10), "serving.event_future_seconds"),
    (-62135596800, "older than"),  # year 1 as epoch seconds
])
def test_an_event_timestamp_outside_the_window_is_422(client, timestamp, says):
    timestamp = timestamp() if callable(timestamp) else timestamp
    answer = _error(client.post("/v1/events", json=_event(timestamp=timestamp)), 422)
    assert answer["fields"] == ["events.0.timestamp"] and says in answer["detail"], answer
    assert StubEngine.calls == []


def test_an_event_timestamp_inside_the_window_is_accepted(client):
    for ts in (_ago(days=6, hours=23), _ago(minutes=-4), _ago(seconds=0), None):
        assert client.post("/v1/events", json=_event(timestamp=ts)).status_code == 200


@pytest.mark.parametrize("category", ["Beauty", "beauty products", "x" * 65, "", "../etc", "日用"])
def test_a_malformed_category_is_422(client, category):
    answer = _error(client.post("/v1/events", json=_event(category=category)), 422)
    assert answer["fields"] == ["events.0.category"]
    assert StubEngine.calls == []


def test_an_unknown_category_is_422_naming_the_known_ones(client):
    body = {"events": [{"persona_id": "P1", "event_type": "product_view", "category": "beauty"},
                       {"persona_id": "P1", "event_type": "product_view", "category": "garden"}]}
    answer = _error(client.post("/v1/events", json=body), 422)
    assert answer["fields"] == ["events.1.category"] and "'garden'" in answer["detail"]
    assert "known: beauty, sports" in answer["detail"]
    assert client.post("/v1/events", json=body | {"events": body["events"][:1]}).status_code == 200


# --- unknown paths and /metrics ---------------------------------------------------------------------------------
def test_an_unknown_path_is_a_json_404(client):
    for method, path in [("GET", "/nope"), ("POST", "/v1/nope"), ("GET", "/v1/profile/x"), ("GET", "/" + "a" * 5000),
                         ("GET", "/static_content/not-a-file.js")]:
        answer = _error(client.request(method, path), 404)
        assert answer["error"] == "not found" and "/v1/docs" in answer["detail"] and len(answer["detail"]) < 200
    assert client.get("/v1/profile").status_code == 405  # a known path, another method
    assert client.get("/static_content/swagger-ui.css").status_code == 200


def _series(client) -> set[str]:
    """The request metrics' series (names and labels, without values) BentoML's /metrics lists."""
    text = client.get("/metrics").text
    return {line.rsplit(" ", 1)[0] for line in text.splitlines()
            if line.startswith("bentoml_") and not line.startswith("#")}


@pytest.mark.slow
def test_3000_random_unknown_paths_add_no_metrics_series(env):
    env.setenv("BENTOML_CONFIG_OPTIONS", "")  # metrics on: the one app of this process that registers them
    for c in _serve():
        c.post("/v1/profile", json={"persona_id": "P1"})
        for i in range(30):
            c.request("POST" if i % 2 else "GET", f"/{uuid.uuid4().hex}/{i}")
        after_30 = _series(c)
        for i in range(2970):
            assert c.request("POST" if i % 2 else "GET", f"/v1/{uuid.uuid4().hex}").status_code == 404
        after_3000 = _series(c)
        assert after_3000 == after_30
        assert any('endpoint="/(unknown)"' in s for s in after_3000)
        assert any('endpoint="/v1/profile"' in s for s in after_3000)
        assert not any(re.search(r'endpoint="/v1/[0-9a-f]{32}"', s) for s in after_3000)


# --- docs, schema and the API key -------------------------------------------------------------------------------
def test_docs_are_served(client):
    page = client.get("/v1/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text and "/v1/openapi.json" in page.text
    assert "cdn." not in page.text  # Swagger UI from BentoML's own files: the docs work without Internet
    assert client.get("/docs", follow_redirects=False).headers["location"] == "/v1/docs"
    assert client.get("/static_content/swagger-ui-bundle.js").status_code == 200


def test_docs_are_off_when_the_workspace_says_so(env, tmp_path):
    _workspace(tmp_path, "\nserving:\n  docs: false\n")
    for c in _serve():
        for path in ("/v1/docs", "/docs", "/"):
            _error(c.get(path), 404)
        assert c.get("/v1/openapi.json").status_code == 200  # the schema is the contract: always published


def test_docs_schema_and_unknown_paths_are_behind_the_key(env):
    env.setenv("PERSONA_API_KEY", KEY)
    for c in _serve():
        for path in ("/v1/docs", "/v1/openapi.json", "/docs", "/docs.json", "/", "/schema.json", "/nope", "/v1/nope"):
            r = c.get(path, follow_redirects=False)
            assert _error(r, 401)["error"] == "unauthorized", path
        assert c.get("/v1/docs").headers["www-authenticate"].startswith("Basic")  # a browser asks for the key
        basic = "Basic " + base64.b64encode(f"me:{KEY}".encode()).decode()
        wrong = "Basic " + base64.b64encode(b"me:wrong").decode()
        assert c.get("/v1/docs", headers={"X-API-Key": KEY}).status_code == 200
        assert c.get("/v1/docs", headers={"Authorization": basic}).status_code == 200
        assert c.get("/v1/openapi.json", headers={"Authorization": basic}).status_code == 200
        assert c.get("/v1/docs", headers={"Authorization": wrong}).status_code == 401
        assert c.post("/v1/profile", json={"persona_id": "P1"}, headers={"Authorization": basic}).status_code == 401
        _error(c.get("/nope", headers={"X-API-Key": KEY}), 404)
        for path in ("/healthz", "/livez", "/readyz", "/static_content/swagger-ui.css"):
            assert c.get(path).status_code == 200, path


def test_the_start_log_says_whether_a_key_is_enforced(env, caplog):
    caplog.set_level(logging.INFO, logger="persona.serving")
    for _ in _serve():
        pass
    assert "no API key enforced" in caplog.text and "$PERSONA_API_KEY is unset" in caplog.text
    caplog.clear()
    env.setenv("PERSONA_API_KEY", KEY)
    for _ in _serve():
        pass
    assert "API key enforced" in caplog.text and "$PERSONA_API_KEY" in caplog.text and KEY not in caplog.text


def _resolve(schema: dict, spec: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _conforms(body: dict, schema: dict, spec: dict) -> None:
    """The body has every required key of the schema, with the declared JSON type."""
    schema = _resolve(schema, spec)
    types = {"string": str, "integer": int, "array": list, "object": dict}
    assert set(schema["required"]) <= set(body), (schema["required"], body)
    for name, prop in schema["properties"].items():
        if name in body and "type" in prop:
            assert isinstance(body[name], types[prop["type"]]), (name, body)


def test_the_openapi_schema_describes_the_real_error_bodies_and_the_one_of_rule(env):
    env.setenv("PERSONA_API_KEY", KEY)
    for c in _serve():
        spec = c.get("/v1/openapi.json", headers={"X-API-Key": KEY}).json()
        for path in ("/profile", "/score", "/recommend", "/events"):
            responses = spec["paths"][path]["post"]["responses"]
            assert {"401", "413", "422", "500", "503"} <= set(responses), (path, responses)
            assert "HTTPValidationError" not in json.dumps(responses)  # FastAPI's default 422 is not what we send
        assert "ApiKey" in spec["components"]["securitySchemes"]
        customer = spec["components"]["schemas"]["CustomerRef"]
        assert [b["required"] for b in customer["oneOf"]] == [["persona_id"], ["identifier"]]
        assert "oneOf" in spec["components"]["schemas"]["Event"]

        def check(r, status: int, path: str = "/profile") -> None:
            assert r.status_code == status, r.text
            _conforms(r.json(), spec["paths"][path]["post"]["responses"][str(status)]["content"]
                      ["application/json"]["schema"], spec)

        auth = {"X-API-Key": KEY}
        check(c.post("/v1/profile", json={"persona_id": "P1"}), 401)
        check(c.post("/v1/profile", json={"persona_id": "P1"}, headers=auth), 404)
        check(c.post("/v1/profile", json={"persona_id": "P1", "identifier": {"type": "email", "value": "a"}},
                     headers=auth), 422)
        check(c.post("/v1/profile", json={"persona_id": "P" * 2_000_000}, headers=auth), 413)
        StubEngine.fail_with = Unavailable(f"online store ({CREDENTIALED}) unreachable: OperationalError")
        check(c.post("/v1/profile", json={"persona_id": "P1"}, headers=auth), 503)
        check(c.post("/v1/events", json=_event(), headers=auth), 503, "/events")
        # BentoML's own schema (/docs.json, behind BentoML's index page) carries the same error answers
        bento = c.get("/docs.json", headers=auth).json()
        assert "503" in bento["paths"]["/v1/profile"]["post"]["responses"]


# --- 503: the store named, its credentials never -----------------------------------------------------------------
SECRETS = ("s3cr3t-pw", "persona:", "db.internal", "6543", "persona_features", "10.1.2.3", "FATAL")


def test_a_503_names_the_store_but_not_its_credentials(client, caplog):
    message = (f"online store ({CREDENTIALED}) unreachable: OperationalError: connection to server at "
               '"db.internal.example" (10.1.2.3), port 6543 failed: FATAL: password authentication failed for user '
               '"persona"')
    StubEngine.fail_with = Unavailable(message)
    caplog.set_level(logging.WARNING, logger="persona.serving")
    for path, body in [("/v1/profile", {"persona_id": "P1"}), ("/v1/events", _event())]:
        r = client.post(path, json=body)
        answer = _error(r, 503)
        assert answer["component"] == "online store (postgresql)" and "unreachable" in answer["detail"]
        assert r.headers["retry-after"] == "5"
        assert not [s for s in SECRETS if s in r.text], r.text
    assert "s3cr3t-pw" in caplog.text  # the whole message is in the log (once: not once per request)
    assert caplog.text.count("answering 503") == 1


@pytest.mark.parametrize("message, component, says", [
    ("online store (embedded): OperationalError: database is locked", "online store (embedded)", "retry"),
    ("online store (redis) is empty (it does not hold the last load of the features); run "
     "`persona features --reload-online`", "online store (redis)", "run `persona features --reload-online`"),
    ("model registry: no champion model (run `persona train --promote`)", "model registry",
     "run `persona train --promote`"),
    ("model registry (mysql://root:hunter2@10.0.0.9:3306/mlflow) unreachable (OperationalError)",
     "model registry (mysql)", "unreachable"),
    ("something odd at redis://:pw@cache:6379/0", "backend", "retry"),
    ("KeyError: 'redis://:pw@cache:6379/0'", "engine", "KeyError"),
])
def test_503_details_say_what_to_do_without_addresses(message, component, says):
    named, detail = middleware.public_message(message)
    assert named == component and says in detail
    assert not re.search(r"hunter2|root|10\.0\.0\.9|3306|:pw@|cache:6379|OperationalError", detail)


def test_status_and_503_hide_the_registry_uri_when_the_engine_cannot_load(env):
    def down(ws):
        raise Unavailable(f"model registry ({CREDENTIALED}) unreachable: OperationalError: timeout")

    env.setattr(service, "OnlineEngine", down)
    with TestClient(service.PersonaService.to_asgi()) as c:
        deadline = time.monotonic() + 10
        while "model registry" not in (body := _error(c.post("/v1/profile", json={"persona_id": "P1"}), 503))["detail"]:
            assert time.monotonic() < deadline, body  # "starting" until the first attempt has failed
            time.sleep(0.02)
        status = c.get("/v1/status")
        assert "model registry (postgresql): unreachable" in status.json()["error"]
        for text in (json.dumps(body), status.text):
            assert not [s for s in SECRETS if s in text], text
