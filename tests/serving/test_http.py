"""The HTTP layer of the service, in process (BentoML's ASGI app + Starlette's TestClient) over a stand-in engine:
how requests are validated, how the engine's answers and errors map to status codes and bodies, the API key, the
catch-all that never leaks a traceback, and the batching of concurrent lookups. Fast: no workspace is built."""

import asyncio
import concurrent.futures
import datetime as dt
import shutil
import threading
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from serving import coalescer, middleware, process, service
from serving.online import BadRequest, NotFound, Unavailable

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "persona.example.yaml"
KNOWN = {"P1": {"persona_id": "P1", "scores": {"churn_risk": 0.25}, "tags": {"basic": {"gender": "female"}}}}
FACTORS = [{"feature": f"f{i}", "value": float(i), "contribution": 0.5 / (i + 1)} for i in range(20)]


class FakeEngine:
    """What the service needs of `serving.online.OnlineEngine`; its behaviour is set per test."""

    fail_with: Exception | None = None
    calls: list[int] = []
    explained: list[tuple[list[str], int]] = []

    def __init__(self, ws) -> None:
        self.identity = type("Index", (), {"types": ["email", "phone"], "retirement": lambda self, pid: None})()
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

    def explain(self, persona_ids, k):
        FakeEngine.explained.append((list(persona_ids), k))
        return [{"churn_risk": {"scale": "log-odds", "method": "lightgbm", "base": -1.5,
                                "factors": FACTORS[:k]}} for _ in persona_ids]

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
    monkeypatch.setenv("BENTOML_CONFIG_OPTIONS", f"services.{process.SERVICE_NAME}.metrics.enabled=false")


@pytest.fixture
def client(tmp_path, monkeypatch):
    """The service on a stand-in engine; `client.engine_fails(exc)` makes every engine call raise `exc`."""
    shutil.copy(EXAMPLE, tmp_path / "persona.yaml")
    monkeypatch.setenv(process.WORKSPACE_VAR, str(tmp_path))
    monkeypatch.delenv("PERSONA_API_KEY", raising=False)
    monkeypatch.setattr(service, "OnlineEngine", FakeEngine)
    monkeypatch.setattr(FakeEngine, "fail_with", None)
    monkeypatch.setattr(FakeEngine, "calls", [])
    monkeypatch.setattr(FakeEngine, "explained", [])
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


def test_explain_adds_each_scores_factors_and_without_it_the_profile_is_as_before(client):
    for body in ({"persona_id": "P1"}, {"persona_id": "P1", "explain": False}):
        assert client.post("/v1/profile", json=body).json() == KNOWN["P1"]
    assert FakeEngine.explained == []  # nothing explained unless asked
    got = client.post("/v1/profile", json={"persona_id": "P1", "explain": True}).json()
    assert {k: v for k, v in got.items() if k != "explanations"} == KNOWN["P1"]
    assert got["explanations"]["churn_risk"]["factors"] == FACTORS[:5] and FakeEngine.explained == [(["P1"], 5)]
    got = client.post("/v1/profile", json={"persona_id": "P1", "explain": True, "factors": 2}).json()
    assert len(got["explanations"]["churn_risk"]["factors"]) == 2 and FakeEngine.explained[-1] == (["P1"], 2)
    _error(client.post("/v1/profile", json={"persona_id": "P404", "explain": True}), 404)
    spec = client.get("/v1/openapi.json").json()
    body = spec["paths"]["/profile"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = spec["components"]["schemas"][body.rsplit("/", 1)[1]]
    assert {"explain", "factors", "persona_id", "identifier"} <= set(schema["properties"])
    assert "Identifier" in spec["components"]["schemas"]


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
    # an hour ago, in a client's time zone (events older than serving.event_max_age_days are refused)
    hour_ago = (dt.datetime.now(dt.timezone(dt.timedelta(hours=8))) - dt.timedelta(hours=1)).isoformat()
    r = client.post("/v1/events", json={"events": [{"persona_id": "P1", "event_type": "cart_add",
                                                    "category": "beauty", "timestamp": hour_ago}]})
    assert r.status_code == 200 and r.json()["accepted"] == 1


# --- invalid requests: 422 naming the field -------------------------------------------------------------------
@pytest.mark.parametrize("path, body, field", [
    ("/v1/profile", {}, "(body)"),
    ("/v1/profile", {"persona_id": "P1", "identifier": {"type": "email", "value": "a@b.cn"}}, "(body)"),
    ("/v1/profile", {"persona": "P1"}, "persona"),
    ("/v1/profile", {"identifier": {"type": "email"}}, "identifier.value"),
    ("/v1/profile", {"identifier": {"type": "fax", "value": "1"}}, "identifier.type"),
    ("/v1/profile", {"persona_id": 7}, "persona_id"),
    ("/v1/profile", {"persona_id": "P1", "explain": "yes"}, "explain"),
    ("/v1/profile", {"persona_id": "P1", "explain": 1}, "explain"),
    ("/v1/profile", {"persona_id": "P1", "explain": True, "factors": 0}, "factors"),
    ("/v1/profile", {"persona_id": "P1", "explain": True, "factors": 21}, "factors"),
    ("/v1/profile", {"persona_id": "P1", "factors": 3}, "(body)"),
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
    monkeypatch.setenv(process.WORKSPACE_VAR, str(tmp_path))
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
    monkeypatch.setenv(process.WORKSPACE_VAR, str(tmp_path))
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
# How many requests share an engine call depends on timing; what a caller gets back does not. The HTTP test checks
# only the latter; the Coalescer tests drive the batching deterministically (the engine call blocks on an event the
# test sets, so what queues behind it is known) and check its invariants.
def test_concurrent_lookups_each_get_their_own_answer(client, monkeypatch):
    people = {f"P{i:03d}": {"persona_id": f"P{i:03d}", "scores": {"churn_risk": i / 100}, "tags": {}} for i in range(24)}
    for pid, profile in people.items():
        monkeypatch.setitem(KNOWN, pid, profile)
    customers = [[{"persona_id": p}] if i % 3 else [{"persona_id": p}, {"persona_id": "P404"}]
                 for i, p in enumerate(people)]

    def ask(refs):
        if len(refs) == 1:
            return client.post("/v1/profile", json=refs[0])
        return client.post("/v1/score", json={"customers": refs})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, customers))
    for refs, answer in zip(customers, answers):
        assert answer.status_code == 200, answer.text
        if len(refs) == 1:
            assert answer.json() == people[refs[0]["persona_id"]]
        else:
            body = answer.json()
            assert body["results"][0] == people[refs[0]["persona_id"]] and body["results"][1]["error"] == "not found"
    assert sum(FakeEngine.calls) == sum(len(refs) for refs in customers)  # each customer scored exactly once
    assert max(FakeEngine.calls) <= coalescer.COALESCE_MAX


class GatedRun:
    """An engine call that records its batch and blocks until the test opens the gate (then doubles each item)."""

    def __init__(self) -> None:
        self.batches: list[list] = []
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        self.entered.set()
        if not self.gate.wait(60):
            raise TimeoutError("the test never opened the gate")
        if "boom" in items:
            raise Unavailable("down")
        return [i * 2 for i in items]


async def _engine_busy(run: GatedRun) -> None:
    deadline = time.monotonic() + 60
    while not run.entered.is_set():  # the first batch is in the engine; what comes now queues behind it
        assert time.monotonic() < deadline, "the first batch never reached the engine"
        await asyncio.sleep(0.001)


def _coalesce(calls: list[list], max_items: int, window_s: float = 0.0,
              observe=None) -> tuple[list, list[list]]:
    """Run `calls` through a Coalescer: the first alone, the rest queued while it blocks the engine."""
    run = GatedRun()

    async def main():
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            batcher = coalescer.Coalescer(run, pool, max_items=max_items, window_s=window_s, observe=observe)
            try:
                first = asyncio.ensure_future(batcher(calls[0]))
                await _engine_busy(run)
                rest = [asyncio.ensure_future(batcher(items)) for items in calls[1:]]
                await asyncio.sleep(0)  # every call has queued its items
            finally:
                run.gate.set()
            return await asyncio.gather(first, *rest, return_exceptions=True)

    return asyncio.run(main()), run.batches


@pytest.mark.parametrize("window_s", [0.0, 0.010])  # no window, and one that gathers callers
def test_coalescer_gives_each_caller_its_own_results_in_order(window_s):
    calls = [[0], [1, 2], [3], [4, 5, 6], [7, 8, 9, 10, 11, 12], [13], [14, 15]]
    results, batches = _coalesce(calls, max_items=4, window_s=window_s)
    assert results == [[2 * i for i in items] for items in calls]
    # every item went to the engine once, in call order, each call's items together in one batch
    assert [i for batch in batches for i in batch] == list(range(16))
    starts = {items[0]: items for items in calls}
    for batch in batches:
        at = 0
        while at < len(batch):
            assert batch[at:at + len(starts[batch[at]])] == starts[batch[at]], batches
            at += len(starts[batch[at]])
        # at most max_items, unless one call alone is larger
        assert len(batch) <= 4 or batch in calls, batches
    # what queued while the engine was busy shared engine calls: 6 calls, 15 items, max 4 -> fewer than 6 batches
    assert batches[0] == [0] and len(batches) - 1 < len(calls) - 1, batches


def test_coalescer_raises_a_failed_batch_in_each_of_its_calls_only():
    # [1] and ["boom"] queue together behind [0]: their shared call fails; [0] before and [7] after are unaffected.
    calls = [[0], [1], ["boom"], [2, 3, 4, 5], [7]]
    sizes: list[int] = []
    results, batches = _coalesce(calls, max_items=2, observe=sizes.append)
    assert batches == [[0], [1, "boom"], [2, 3, 4, 5], [7]]
    assert sizes == [1, 2, 4, 1]  # what the service's batch-size histogram is told, the failed batch included
    assert results[0] == [0] and results[3] == [4, 6, 8, 10] and results[4] == [14]
    assert isinstance(results[1], Unavailable) and isinstance(results[2], Unavailable)


def test_api_key_is_read_from_the_configured_variable(tmp_path, monkeypatch):
    text = EXAMPLE.read_text(encoding="utf-8") + "\nserving:\n  api_key_env: SHOP_KEY\n"
    (tmp_path / "persona.yaml").write_text(text, encoding="utf-8")
    monkeypatch.setenv(process.WORKSPACE_VAR, str(tmp_path))
    monkeypatch.setenv("SHOP_KEY", "k")
    monkeypatch.delenv("PERSONA_API_KEY", raising=False)
    assert middleware.api_key() == b"k"


@pytest.mark.slow
def test_running_server_reports_a_server_that_cannot_start(tmp_path):
    (tmp_path / "persona.yaml").write_text("version: 1\nsources: {}\n", encoding="utf-8")  # invalid: no source
    with pytest.raises(RuntimeError, match="exited"):
        with process.running_server(tmp_path, timeout=60):
            pass
