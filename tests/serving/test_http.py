"""The HTTP layer of the service, in process (BentoML's ASGI app + Starlette's TestClient) over a stand-in engine:
how requests are validated, how the engine's answers and errors map to status codes and bodies, the API key, the
catch-all that never leaks a traceback, and the batching of concurrent lookups. Fast: no workspace is built."""

import asyncio
import concurrent.futures
import shutil
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from serving import service
from serving.online import BadRequest, NotFound, Unavailable

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "persona.example.yaml"
KNOWN = {"P1": {"persona_id": "P1", "scores": {"churn_risk": 0.25}, "tags": {"basic": {"gender": "female"}}}}


class FakeEngine:
    """What the service needs of `serving.online.OnlineEngine`; its behaviour is set per test."""

    fail_with: Exception | None = None
    calls: list[int] = []

    def __init__(self, ws) -> None:
        self.identity = type("Index", (), {"types": ["email", "phone"]})()
        self.scorer = object()

    def ready(self) -> dict:
        return {"ready": True, "models": {"churn_risk": "1"}, "tags_as_of": "2026-01-01", "tags": 1}

    def probe(self) -> None:
        if self.fail_with is not None:
            raise self.fail_with

    def profiles(self, customers):
        FakeEngine.calls.append(len(customers))
        if self.fail_with is not None:
            raise self.fail_with
        time.sleep(0.02)  # long enough for concurrent requests to queue behind a batch
        return [KNOWN.get(c.persona_id) for c in customers]

    def recommend(self, customer, *, n, exclude_days):
        if customer.persona_id not in KNOWN:
            raise NotFound("unknown customer")
        return {"persona_id": customer.persona_id, "recommendations": [{"category": "beauty", "propensity": 0.4}][:n]}

    def ingest_events(self, events):
        if self.fail_with is not None:
            raise self.fail_with
        return {"accepted": len(events), "personas": sorted({e["persona_id"] for e in events})}


@pytest.fixture(autouse=True)
def _no_prometheus(monkeypatch):
    # BentoML registers its request metrics each time it builds the app, and Prometheus refuses a second metric of
    # a name in one process: the in-process apps here go without (test_service.py checks /metrics on a server).
    monkeypatch.setenv("BENTOML_CONFIG_OPTIONS", f"services.{service.SERVICE_NAME}.metrics.enabled=false")


@pytest.fixture
def client(tmp_path, monkeypatch):
    """The service on a stand-in engine; `client.engine_fails(exc)` makes every engine call raise `exc`."""
    shutil.copy(EXAMPLE, tmp_path / "persona.yaml")
    monkeypatch.setenv(service.WORKSPACE_VAR, str(tmp_path))
    monkeypatch.delenv("PERSONA_API_KEY", raising=False)
    monkeypatch.setattr(service, "OnlineEngine", FakeEngine)
    monkeypatch.setattr(FakeEngine, "fail_with", None)
    monkeypatch.setattr(FakeEngine, "calls", [])
    yield from _serve()


def _serve():
    with TestClient(service.PersonaService.to_asgi(), raise_server_exceptions=False) as c:
        deadline = time.monotonic() + 10
        while c.get("/readyz").status_code != 200:  # the engine is built by a background thread
            assert time.monotonic() < deadline, "the service never became ready"
            time.sleep(0.02)
        c.engine_fails = lambda exc: setattr(FakeEngine, "fail_with", exc)
        yield c


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "detail"}, body
    return body


# --- answers ----------------------------------------------------------------------------------------------------
def test_profile_found_and_unknown(client):
    assert client.post("/v1/profile", json={"persona_id": "P1"}).json() == KNOWN["P1"]
    body = _error(client.post("/v1/profile", json={"persona_id": "P404"}), 404)
    assert body["error"] == "not found" and "P404" in body["detail"]
    body = _error(client.post("/v1/profile", json={"identifier": {"type": "email", "value": "x@y.cn"}}), 404)
    assert "email" in body["detail"] and "x@y.cn" not in body["detail"]  # an identifier value is never echoed


def test_score_answers_each_customer_in_order(client):
    r = client.post("/v1/score", json={"customers": [{"persona_id": "P404"}, {"persona_id": "P1"}]})
    assert r.status_code == 200
    body = r.json()
    assert body["results"][0]["error"] == "not found" and body["results"][1] == KNOWN["P1"]
    assert (body["found"], body["not_found"]) == (1, 1)


def test_recommend_and_events(client):
    assert client.post("/v1/recommend", json={"persona_id": "P1", "n": 1}).json()["recommendations"][0]["category"] \
        == "beauty"
    _error(client.post("/v1/recommend", json={"persona_id": "P404"}), 404)
    r = client.post("/v1/events", json={"events": [{"persona_id": "P1", "event_type": "cart_add",
                                                    "category": "beauty", "timestamp": "2026-01-01T10:00:00+08:00"}]})
    assert r.status_code == 200 and r.json()["accepted"] == 1


# --- invalid requests: 422 naming the field -------------------------------------------------------------------
@pytest.mark.parametrize("path, body, field", [
    ("/v1/profile", {}, "(body)"),
    ("/v1/profile", {"persona_id": "P1", "identifier": {"type": "email", "value": "a@b.cn"}}, "(body)"),
    ("/v1/profile", {"persona": "P1"}, "persona"),
    ("/v1/profile", {"identifier": {"type": "email"}}, "identifier.value"),
    ("/v1/profile", {"identifier": {"type": "fax", "value": "1"}}, "identifier.type"),
    ("/v1/profile", {"persona_id": 7}, "persona_id"),
    ("/v1/score", {"customers": []}, "customers"),
    ("/v1/score", {"customers": [{"persona_id": "P1"}, {"identifier": {"type": "fax", "value": "1"}}]},
     "customers.1.identifier.type"),
    ("/v1/recommend", {"persona_id": "P1", "n": "five"}, "n"),
    ("/v1/recommend", {"persona_id": "P1", "exclude_days": -1}, "exclude_days"),
    ("/v1/events", {"events": [{"persona_id": "P1", "event_type": "dance"}]}, "events.0.event_type"),
    ("/v1/events", {"events": [{"persona_id": "P1", "event_type": "cart_add", "timestamp": "yesterday"}]},
     "events.0.timestamp"),
    ("/v1/events", {"events": [{"persona_id": "P1", "event_type": "cart_add", "timestamp": "2999-01-01T00:00:00Z"}]},
     "events.0.timestamp"),
])
def test_invalid_request_is_422_naming_the_field(client, path, body, field):
    answer = _error(client.post(path, json=body), 422)
    assert answer["error"] == "invalid request" and field in answer["fields"], answer
    assert field in answer["detail"]


def test_malformed_json_and_too_many_customers(client):
    broken = client.post("/v1/profile", content=b'{"persona_id": ', headers={"content-type": "application/json"})
    answer = _error(broken, 422)
    assert "JSON" in answer["detail"]
    limit = 1000  # serving.max_batch default
    answer = _error(client.post("/v1/score", json={"customers": [{"persona_id": "P1"}] * (limit + 1)}), 422)
    assert answer["fields"] == ["customers"] and str(limit) in answer["detail"]


# --- backend errors and the catch-all --------------------------------------------------------------------------
def test_engine_errors_map_to_status_codes(client):
    client.engine_fails(Unavailable("online store (embedded): OperationalError: database is locked"))
    body = _error(client.post("/v1/profile", json={"persona_id": "P1"}), 503)
    assert "online store" in body["detail"]
    assert client.get("/readyz").status_code == 503
    client.engine_fails(BadRequest("identifier type 'fax' is not declared"))
    assert _error(client.post("/v1/profile", json={"persona_id": "P1"}), 422)["detail"].startswith("identifier type")


def test_an_unexpected_error_is_a_json_500_without_a_traceback(client):
    client.engine_fails(KeyError("secret internals"))
    for path, body in [("/v1/profile", {"persona_id": "P1"}), ("/v1/score", {"customers": [{"persona_id": "P1"}]}),
                       ("/v1/events", {"events": [{"persona_id": "P1", "event_type": "search"}]})]:
        r = client.post(path, json=body)
        answer = _error(r, 500)
        assert answer["error"] == "internal error"
        assert "Traceback" not in r.text and "secret" not in r.text and "KeyError" not in r.text
    client.engine_fails(None)
    assert client.post("/v1/profile", json={"persona_id": "P1"}).status_code == 200  # the service carries on


def test_not_ready_while_the_engine_cannot_load(tmp_path, monkeypatch):
    def down(ws):
        raise Unavailable("model registry (sqlite:///x) unreachable: OperationalError: unable to open database file")

    shutil.copy(EXAMPLE, tmp_path / "persona.yaml")
    monkeypatch.setenv(service.WORKSPACE_VAR, str(tmp_path))
    monkeypatch.setattr(service, "OnlineEngine", down)
    with TestClient(service.PersonaService.to_asgi()) as c:
        assert c.get("/healthz").status_code == 200  # alive: it answers, and keeps retrying in the background
        assert c.get("/readyz").status_code == 503
        deadline = time.monotonic() + 10
        while "model registry" not in (body := _error(c.post("/v1/profile", json={"persona_id": "P1"}), 503))["detail"]:
            assert time.monotonic() < deadline, body  # "starting" until the first attempt has failed
            time.sleep(0.02)
        assert "model registry" in c.get("/v1/status").json()["error"]


# --- API key ------------------------------------------------------------------------------------------------------
def test_api_key_guards_v1_but_not_health(tmp_path, monkeypatch):
    shutil.copy(EXAMPLE, tmp_path / "persona.yaml")
    monkeypatch.setenv(service.WORKSPACE_VAR, str(tmp_path))
    monkeypatch.setenv("PERSONA_API_KEY", "s3cret")
    monkeypatch.setattr(service, "OnlineEngine", FakeEngine)
    for c in _serve():
        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            body = _error(c.post("/v1/profile", json={"persona_id": "P1"}, headers=headers), 401)
            assert "X-API-Key" in body["detail"]
        for headers in ({"X-API-Key": "s3cret"}, {"Authorization": "Bearer s3cret"}):
            assert c.post("/v1/profile", json={"persona_id": "P1"}, headers=headers).status_code == 200
        for path in ("/healthz", "/readyz"):
            assert c.get(path).status_code == 200, path


# --- batching -----------------------------------------------------------------------------------------------------
def test_concurrent_lookups_share_engine_calls(client):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: client.post("/v1/profile", json={"persona_id": "P1"}), range(24)))
    assert all(a.status_code == 200 for a in answers)
    assert sum(FakeEngine.calls) == 24 and len(FakeEngine.calls) < 24, FakeEngine.calls


def test_coalescer_keeps_each_callers_items_and_errors():
    def run(items):
        if "boom" in items:
            raise Unavailable("down")
        time.sleep(0.01)
        return [i * 2 for i in items]

    async def main():
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            batcher = service.Coalescer(run, pool, max_items=4)
            ok = await asyncio.gather(*(batcher([i, i + 1]) for i in range(0, 10, 2)))
            failed = await asyncio.gather(batcher(["boom"]), return_exceptions=True)
            return ok, failed

    ok, failed = asyncio.run(main())
    assert ok == [[0, 2], [4, 6], [8, 10], [12, 14], [16, 18]]
    assert isinstance(failed[0], Unavailable)


def test_api_key_is_read_from_the_configured_variable(tmp_path, monkeypatch):
    text = EXAMPLE.read_text(encoding="utf-8") + "\nserving:\n  api_key_env: SHOP_KEY\n"
    (tmp_path / "persona.yaml").write_text(text, encoding="utf-8")
    monkeypatch.setenv(service.WORKSPACE_VAR, str(tmp_path))
    monkeypatch.setenv("SHOP_KEY", "k")
    monkeypatch.delenv("PERSONA_API_KEY", raising=False)
    assert service._api_key() == b"k"


@pytest.mark.slow
def test_running_server_reports_a_server_that_cannot_start(tmp_path):
    (tmp_path / "persona.yaml").write_text("version: 1\nsources: {}\n", encoding="utf-8")  # invalid: no source
    with pytest.raises(RuntimeError, match="exited"):
        with service.running_server(tmp_path, timeout=60):
            pass
