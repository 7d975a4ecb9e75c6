"""The online service end to end: one real BentoML server (a subprocess, as `persona serve` runs it) on a trained
and rescored 1,500-customer workspace, driven over HTTP.

Tests share the server but not each other's state, so they pass in any order: events go only to the personas of
`event_personas`, which the parity check leaves out; a promotion registers the same model under a new version, so
scores do not move; the locked online store gets a server of its own (a store failure leaves each worker failing fast
for a while); the metrics test makes the requests it counts.
"""

import math
import os
import sqlite3
import threading
import time

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from starlette.testclient import TestClient

from features import store as feature_store
from rules import history
from serving import process, service
from serving.online import Customer, OnlineEngine
from serving.process import running_server
from tests.serving.conftest import serving_copy
from training import tracking

pytestmark = pytest.mark.slow
KEY = "serving-test-key"


@pytest.fixture(scope="module")
def snapshot(workspace) -> pd.DataFrame:
    """The latest batch tag snapshot (read before the server changes anything)."""
    return history.read(workspace)


@pytest.fixture(scope="module")
def server(workspace, snapshot) -> str:
    with running_server(workspace.root, env={"PERSONA_API_KEY": KEY, "PERSONA_SALT": ""}) as url:
        yield url


@pytest.fixture(scope="module")
def http(server) -> httpx.Client:
    with httpx.Client(base_url=server, headers={"X-API-Key": KEY}, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def event_personas(snapshot) -> list[str]:
    """The personas the event test posts to (not hot leads, so the rule has somewhere to go); no other test reads
    their tags or scores."""
    return snapshot.loc[snapshot["hot_lead"].eq(False), "persona_id"].iloc[:10].tolist()


@pytest.fixture(scope="module")
def identities(workspace, snapshot) -> pd.DataFrame:
    """Linked identifiers (raw normalised value and salted hash) of personas in the snapshot."""
    current = workspace.require_current("integrated", "integrate first")
    table = pq.read_table(current / "identity_map.parquet").to_pandas()
    table = table[(table["status"] == "linked") & table["persona_id"].isin(set(snapshot["persona_id"]))]
    return table.astype({"id_type": str, "value": str, "value_hash": str, "persona_id": str})


def _flat(profile: dict) -> dict:
    """Scores and tags of a profile in one mapping, as the snapshot has them in columns."""
    out = dict(profile["scores"])
    for tags in profile["tags"].values():
        out.update(tags)
    return out


def _same(served, batch) -> bool:
    if batch is None or batch is pd.NA or (isinstance(batch, float) and math.isnan(batch)):
        return served is None
    if isinstance(batch, tuple):  # a list tag; the snapshot stores a missing list as an empty one
        return served == list(batch) or (served is None and batch == ())
    if isinstance(batch, (float, np.floating)):
        return served is not None and abs(served - float(batch)) <= 1e-9
    return served == (batch.item() if isinstance(batch, np.generic) else batch)


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "detail"}, body
    return body


# --- before anything changes ------------------------------------------------------------------------------------
def test_health_readiness_and_status(server, http):
    assert httpx.get(f"{server}/healthz").status_code == 200  # open without a key
    assert httpx.get(f"{server}/readyz").status_code == 200
    status = http.get("/v1/status").json()
    assert status["ready"] and set(status["models"]) == {"churn_risk", "high_value", "interest"}
    assert status["tags_as_of"] and status["tags"] > 10


def test_requests_without_the_api_key_are_401(server):
    body = _error(httpx.post(f"{server}/v1/profile", json={"persona_id": "P0000000001"}), 401)
    assert body["error"] == "unauthorized"
    assert httpx.post(f"{server}/v1/profile", json={"persona_id": "P0000000001"},
                      headers={"Authorization": f"Bearer {KEY}"}).status_code in (200, 404)
    assert httpx.get(f"{server}/metrics").status_code == 200


def test_online_scores_and_tags_equal_the_batch_snapshot(http, snapshot, event_personas):
    """/v1/score for 50 personas gives exactly what `persona rescore` wrote for them (one Scorer, two paths)."""
    untouched = snapshot[~snapshot["persona_id"].isin(event_personas)]  # whether or not the event test ran first
    sample = untouched.sample(50, random_state=1)
    answer = http.post("/v1/score", json={"customers": [{"persona_id": p} for p in sample["persona_id"]]})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    mismatches = []
    for (_, row), served in zip(sample.iterrows(), results):
        assert served.get("persona_id") == row["persona_id"], served
        flat = _flat(served)
        # opted_out_marketing is consent recorded for segment counting, not a tag the service answers with
        for column in snapshot.columns.drop(["persona_id", "opted_out_marketing"], errors="ignore"):
            if column not in flat or not _same(flat[column], row[column]):
                mismatches.append((row["persona_id"], column, flat.get(column, "<missing>"), row[column]))
    assert not mismatches, mismatches[:10]


def test_profile_by_persona_id_and_by_identifier(http, identities):
    phone = identities[identities["id_type"] == "phone"].iloc[0]
    pid = phone["persona_id"]
    by_id = http.post("/v1/profile", json={"persona_id": pid})
    assert by_id.status_code == 200
    profile = by_id.json()
    assert profile["persona_id"] == pid and set(profile["models"]) == {"churn_risk", "high_value", "interest"}
    assert {"basic", "predictive"} <= set(profile["tags"]) and len(profile["top_interests"]) == 3
    assert profile["tags"]["predictive"]["churn_risk_band"] in {"low", "medium", "high"}  # a band of a model score

    digits = phone["value"].removeprefix("+86")  # "+86 138 0013 8000", as a person types it
    spaced = f"+86 {digits[:3]} {digits[3:7]} {digits[7:]}"
    assert http.post("/v1/profile", json={"identifier": {"type": "phone", "value": spaced}}).json() == profile
    hashed = {"identifier": {"type": "phone", "value": phone["value_hash"], "hashed": True}}
    assert http.post("/v1/profile", json=hashed).json()["persona_id"] == pid

    email = identities[identities["id_type"] == "email"].iloc[0]
    shouted = {"identifier": {"type": "email", "value": f"  {email['value'].upper()} "}}
    assert http.post("/v1/profile", json=shouted).json()["persona_id"] == email["persona_id"]


def test_unknown_customers_are_404(http, identities):
    body = _error(http.post("/v1/profile", json={"persona_id": "P9999999999"}), 404)
    assert body["error"] == "not found" and "P9999999999" in body["detail"]
    phones = set(identities.loc[identities["id_type"] == "phone", "value"])
    stranger = next(f"+861390000{i:04d}" for i in range(10_000) if f"+861390000{i:04d}" not in phones)
    _error(http.post("/v1/profile", json={"identifier": {"type": "phone", "value": stranger}}), 404)
    _error(http.post("/v1/profile", json={"identifier": {"type": "email", "value": "x" * 64, "hashed": True}}), 404)
    _error(http.post("/v1/recommend", json={"persona_id": "P9999999999"}), 404)


def test_invalid_requests_are_422_naming_the_field(http):
    cases = [({"persona_id": "P1", "n": 3}, "/v1/profile", "n"),
             ({"identifier": {"type": "fax", "value": "1"}}, "/v1/profile", "identifier.type"),
             ({"customers": [{"persona_id": "P1"}, {}]}, "/v1/score", "customers.1"),
             ({"customers": [{"persona_id": "P1"}] * 1001}, "/v1/score", "customers"),
             ({"persona_id": "P1", "n": 0}, "/v1/recommend", "n"),
             ({"events": [{"persona_id": "P1", "event_type": "cart_add", "timestamp": "soon"}]}, "/v1/events",
              "events.0.timestamp")]
    for body, path, field in cases:
        answer = _error(http.post(path, json=body), 422)
        assert field in answer["fields"], (path, answer)
    answer = _error(http.post("/v1/profile", content=b"{", headers={"content-type": "application/json"}), 422)
    assert "JSON" in answer["detail"]


def test_score_mixes_found_and_not_found(http, snapshot):
    pid = snapshot["persona_id"].iloc[0]
    body = http.post("/v1/score", json={"customers": [{"persona_id": "P9999999999"}, {"persona_id": pid}]}).json()
    assert body["results"][0]["error"] == "not found" and body["results"][1]["persona_id"] == pid
    assert (body["found"], body["not_found"]) == (1, 1)


def test_recommend_leaves_out_recent_purchases(http, snapshot):
    for pid in snapshot["persona_id"].iloc[:200]:
        answer = http.post("/v1/recommend", json={"persona_id": pid, "n": 20, "exclude_days": 30}).json()
        if answer["excluded_recently_bought"]:
            break
    else:
        pytest.fail("no persona among 200 bought anything in the last 30 days")
    shown = [r["category"] for r in answer["recommendations"]]
    assert not set(shown) & set(answer["excluded_recently_bought"])
    propensities = [r["propensity"] for r in answer["recommendations"]]
    assert propensities == sorted(propensities, reverse=True)
    everything = http.post("/v1/recommend", json={"persona_id": pid, "n": 20, "exclude_days": 0}).json()
    assert everything["excluded_recently_bought"] == []
    assert set(answer["excluded_recently_bought"]) <= {r["category"] for r in everything["recommendations"]}
    top3 = http.post("/v1/recommend", json={"persona_id": pid, "n": 3}).json()["recommendations"]
    assert len(top3) == 3


ENDPOINTS = ("/v1/profile", "/v1/score", "/v1/recommend")


def test_metrics_count_requests_per_endpoint(server, http, snapshot):
    pid = snapshot["persona_id"].iloc[0]
    assert http.post("/v1/profile", json={"persona_id": pid}).status_code == 200
    assert http.post("/v1/profile", json={"persona_id": "P9999999999"}).status_code == 404
    assert http.post("/v1/score", json={"customers": [{"persona_id": pid}]}).status_code == 200
    assert http.post("/v1/recommend", json={"persona_id": pid}).status_code == 200
    expected = [f'request_total{{endpoint="{e}",http_response_code="200"' for e in ENDPOINTS]
    expected += [f'request_duration_seconds_bucket{{endpoint="{e}"' for e in ENDPOINTS]
    expected += ['endpoint="/v1/profile",http_response_code="404"', "persona_engine_batch_customers_count"]
    # a request is counted as its answer goes out, which may be just after the client has read it: wait for the count
    deadline = time.monotonic() + 60
    while missing := [m for m in expected if m not in httpx.get(f"{server}/metrics").text]:
        assert time.monotonic() < deadline, f"not in /metrics after 60 s: {missing}"
        time.sleep(0.1)


# --- changes: events, promotion, a broken store ----------------------------------------------------------------
def test_an_event_shows_in_the_profile_at_the_next_read(http, workspace, event_personas):
    cold = event_personas
    before = {p["persona_id"]: p for p in http.post("/v1/score", json={"customers": [{"persona_id": p} for p in cold]}
                                                     ).json()["results"]}
    first = {"events": [{"persona_id": p, "event_type": "cart_add", "category": "beauty"} for p in cold]}
    assert http.post("/v1/events", json=first).status_code == 200
    after_first = {p: http.post("/v1/profile", json={"persona_id": p}).json() for p in cold}

    # The very next read reflects the event (latency is bench/serving_bench.py's to measure, not a test's to assert).
    posted = time.time()  # events without a timestamp are stamped when the server receives them
    second = http.post("/v1/events", json=first)
    assert second.status_code == 200, second.text
    profile = http.post("/v1/profile", json={"persona_id": cold[0]}).json()
    assert profile["realtime"]["rt_cart_adds_1h"] == after_first[cold[0]]["realtime"]["rt_cart_adds_1h"] + 1
    assert profile["last_event_ts"] >= int(posted) - 1 > (before[cold[0]]["last_event_ts"] or 0)
    assert profile["tags"]["behaviour"]["hot_lead"] is True  # a rule on rt_cart_adds_1h, evaluated again

    # Scores are recomputed from the new features: the same engine in this process, reading the same online store,
    # gives the served numbers. (Whether they moved depends on the trees the training data grew, so it is not
    # asserted: a model may not split on the real-time features near these personas' values.)
    served = {p: http.post("/v1/profile", json={"persona_id": p}).json() for p in cold}
    local = OnlineEngine(workspace).profiles([Customer(persona_id=p) for p in cold])
    for p, mine in zip(cold, local):
        assert served[p]["scores"] == mine["scores"] and served[p]["tags"] == mine["tags"]
        assert served[p]["realtime"] == mine["realtime"] and served[p]["realtime"]["rt_cart_adds_1h"] >= 2


def test_events_for_unknown_customers_are_404(http):
    body = _error(http.post("/v1/events", json={"events": [{"persona_id": "P9999999999", "event_type": "search"}]}),
                  404)
    assert "unknown customer" in body["detail"]


def test_a_promotion_is_picked_up_without_a_failed_request(http, workspace, snapshot):
    pid = snapshot["persona_id"].iloc[3]
    client = tracking.connect(workspace, workspace.config())
    name = tracking.model_name("churn_risk")
    old = client.get_model_version_by_alias(name, tracking.CHAMPION)
    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def hammer():
        with httpx.Client(base_url=str(http.base_url), headers={"X-API-Key": KEY}, timeout=30) as c:
            while not stop.is_set():
                r = c.post("/v1/profile", json={"persona_id": pid})
                seen.append((r.status_code, r.json().get("models", {}).get("churn_risk")))

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not seen:  # the old champion has answered at least once before the new one exists
            assert thread.is_alive() and time.monotonic() < deadline, "no answer from the server within 60 s"
            time.sleep(0.05)
        new = client.create_model_version(name, old.source, run_id=old.run_id)  # same model, a new version
        client.set_registered_model_alias(name, tracking.CHAMPION, new.version)
        deadline = time.monotonic() + 60
        while not any(v == str(new.version) for _, v in seen[-5:]):
            assert time.monotonic() < deadline, f"champion v{new.version} not served within 60 s"
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join()
    assert {s for s, _ in seen} == {200}, [x for x in seen if x[0] != 200][:5]
    versions = [v for _, v in seen]
    switch = versions.index(str(new.version))
    assert set(versions[:switch]) == {str(old.version)} and set(versions[switch:]) == {str(new.version)}
    assert switch > 0


def test_a_locked_online_store_is_503_saying_so_then_recovers(rescored_base, snapshot, tmp_path):
    """On a server of its own: after a store failure each worker fails fast for `serving.store_timeout_seconds` (a
    circuit breaker), state that must not reach the tests sharing the module's server."""
    ws = serving_copy(rescored_base, tmp_path / "ws")
    pid = snapshot["persona_id"].iloc[5]
    with running_server(ws.root, env={"PERSONA_API_KEY": KEY, "PERSONA_SALT": ""}) as server, \
            httpx.Client(base_url=server, headers={"X-API-Key": KEY}, timeout=30) as http:
        assert http.post("/v1/profile", json={"persona_id": pid}).status_code == 200
        lock = sqlite3.connect(feature_store.store_dir(ws) / "online.db", timeout=10, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # another writer holding the database, as a long materialisation would
        try:
            body = _error(http.post("/v1/profile", json={"persona_id": pid}), 503)
            assert body["error"] == "service unavailable" and "online store" in body["detail"]
            assert "Traceback" not in str(body)
            assert httpx.get(f"{server}/readyz", timeout=30).status_code == 503
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        # Recovers: answers turn 200 once the breaker's interval has passed (a 503 naming the store until then), and
        # /readyz follows; waited for, not timed, since both depend on when each worker last failed.
        deadline = time.monotonic() + 60
        while (answer := http.post("/v1/profile", json={"persona_id": pid})).status_code != 200:
            assert answer.status_code == 503 and "online store" in answer.json()["detail"], answer.text
            assert time.monotonic() < deadline, f"still {answer.status_code} 60 s after the lock was released"
            time.sleep(0.1)
        while (ready := httpx.get(f"{server}/readyz", timeout=30).status_code) != 200:
            assert time.monotonic() < deadline, f"/readyz still {ready} 60 s after the lock was released"
            time.sleep(0.1)


def test_an_unreachable_model_registry_is_503_saying_so(workspace, tmp_path, monkeypatch):
    """In process (the same service code): a tracking URI whose database cannot be opened."""
    monkeypatch.setenv("BENTOML_CONFIG_OPTIONS", f"services.{process.SERVICE_NAME}.metrics.enabled=false")
    monkeypatch.setenv(process.WORKSPACE_VAR, str(workspace.root))
    monkeypatch.setenv(tracking.TRACKING_VAR, f"sqlite:///{tmp_path}")  # a directory: SQLite cannot open it
    with TestClient(service.PersonaService.to_asgi()) as c:
        deadline = time.monotonic() + 30
        while "model registry" not in (body := _error(c.post("/v1/profile", json={"persona_id": "P1"}), 503))["detail"]:
            assert time.monotonic() < deadline, body
            time.sleep(0.1)
        # the 503 names the store and its kind, never its location or credentials (those go to the log)
        assert "unreachable" in body["detail"] and "sqlite" in body["detail"] and str(tmp_path) not in body["detail"]
        assert c.get("/readyz").status_code == 503 and c.get("/healthz").status_code == 200


def test_serve_starts_the_configured_workers_without_access_log_unless_asked(workspace, tmp_path, monkeypatch):
    import yaml

    seen = []
    monkeypatch.setattr(process.bentoml, "serve", lambda *a, **k: seen.append(os.environ["BENTOML_CONFIG_OPTIONS"]))
    monkeypatch.delenv("BENTOML_CONFIG_OPTIONS", raising=False)
    for var in (process.WORKSPACE_VAR, "OMP_NUM_THREADS"):  # serve() sets them: restored after the test
        monkeypatch.setenv(var, os.environ.get(var, ""))
    cfg = yaml.safe_load((workspace.root / "persona.yaml").read_text())
    (tmp_path / "persona.yaml").write_text(yaml.safe_dump(cfg))
    process.serve(tmp_path, 3999)
    assert "services.persona.workers=2" in seen[-1] and "logging.access.enabled=false" in seen[-1]
    monkeypatch.delenv("BENTOML_CONFIG_OPTIONS")
    cfg["serving"] = {**cfg.get("serving", {}), "workers": 3, "access_log": True}
    (tmp_path / "persona.yaml").write_text(yaml.safe_dump(cfg))
    process.serve(tmp_path, 3999, workers=1)  # the command line wins over persona.yaml
    assert "services.persona.workers=1" in seen[-1] and "logging.access.enabled=true" in seen[-1]
