"""The console over HTTP (Starlette's TestClient, in process): every page renders in both languages, lookups answer
as the API does, the segment builder counts as the CLI does and refuses bad input with the reason, saved segments
become rule files, the API key is enforced. The browser tests (test_browser.py) drive the same pages in Chromium."""

from __future__ import annotations

import base64
import csv
import io
import shutil

import pytest
from fastapi.testclient import TestClient

from persona.workspace import Workspace
from serving.console.app import create_app
from tests.serving.console.conftest import CAMPAIGN

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(console_workspace) -> TestClient:
    return TestClient(create_app(Workspace.open(console_workspace)))


PAGES = ["/", "/profile", "/catalog", "/segments", "/models", "/campaigns", f"/campaigns/{CAMPAIGN}"]


@pytest.mark.parametrize("lang, word", [("zh", "概览"), ("en", "Overview")])
def test_every_page_renders_in_both_languages(client, lang, word):
    r = client.get(f"/?lang={lang}")
    assert r.status_code == 200 and word in r.text
    assert r.cookies.get("persona_lang") == lang or client.cookies.get("persona_lang") == lang
    for path in PAGES:
        r = client.get(path)
        assert r.status_code == 200, (path, r.text[:500])
        assert f'<html lang="{lang}">' in r.text


def test_a_tag_page_and_a_model_page(client):
    catalog = client.get("/catalog?lang=en").text
    assert 'href="/catalog/gender"' in catalog
    r = client.get("/catalog/gender")
    assert r.status_code == 200 and 'id="chart-distribution"' in r.text and "Female" in r.text
    r = client.get("/models/churn_risk")
    assert r.status_code == 200, r.text[:500]
    assert client.get("/catalog/no_such_tag").status_code == 404
    assert client.get("/models/no_such_model").status_code == 404


def test_lookup_by_phone_finds_the_persona_the_api_finds(client, phone_of, console_workspace):
    from serving.online import Customer, OnlineEngine

    pid, phone = phone_of
    r = client.get("/profile", params={"type": "phone", "q": phone}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/profile/{pid}"
    page = client.get(f"/profile/{pid}")
    assert page.status_code == 200 and pid in page.text
    shown = client.get(f"/api/profile/{pid}").json()
    (expected,) = OnlineEngine(Workspace.open(console_workspace)).profiles([Customer(id_type="phone", value=phone)])
    assert shown["profile"]["tags"] == expected["tags"]  # what /v1/profile answers, tag for tag
    assert shown["identifiers"] and all("*" in i["value"] for i in shown["identifiers"] if i["type"] == "phone")
    assert shown["explanations"] and all(v["factors"] for v in shown["explanations"].values())


@pytest.mark.parametrize("params, status, text", [
    ({"type": "phone", "q": "13900000000"}, 404, "no customer"),
    ({"type": "phone", "q": "not a phone"}, 404, "not a valid phone"),
    ({"type": "fax", "q": "123"}, 404, "unknown identifier type"),
    ({"type": "persona_id", "q": "P" + "9" * 5000}, 404, "no customer"),
])
def test_lookups_that_find_no_one_say_why(client, params, status, text):
    r = client.get("/profile", params=params)
    assert r.status_code == status and text in r.text


def test_segment_count_matches_the_cli_and_bad_expressions_say_why(client, console_workspace):
    from typer.testing import CliRunner

    from persona.cli import app

    expr = "churn_risk >= 0.5"
    r = client.get("/api/segments/count", params={"expr": expr})
    assert r.status_code == 200
    cli = CliRunner().invoke(app, ["segment", "count", expr, "-w", str(console_workspace), "--json"])
    assert r.json()["count"] == __import__("json").loads(cli.stdout)["count"]
    bad = client.get("/api/segments/count", params={"expr": "churn_rsk >= 0.5"})
    assert bad.status_code == 400 and "did you mean 'churn_risk'" in bad.json()["error"]
    assert client.get("/api/segments/count", params={"expr": "churn_risk >="}).status_code == 400
    assert client.get("/api/segments/count", params={"expr": "x" * 5000}).status_code == 400
    assert client.get("/api/segments/count", params={"expr": ""}).status_code == 400
    prof = client.get("/api/segments/profile", params={"expr": expr})
    assert prof.status_code == 200 and prof.json()["size"] == r.json()["count"]
    ov = client.get("/api/segments/overlap", params={"names": "win_back,vip_at_risk"})
    assert ov.status_code == 200 and ov.json()["pairs"]


def test_export_gives_the_members_as_csv(client):
    expr = "churn_risk >= 0.5"
    n = client.get("/api/segments/count", params={"expr": expr}).json()["count"]
    r = client.get("/segments/export", params={"expr": expr})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == n and "persona_id" in rows[0] and "phone" not in rows[0]  # hashed identifiers only


def test_a_saved_segment_becomes_a_rule_file_and_can_be_used(console_workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(console_workspace, root, symlinks=True)
    c = TestClient(create_app(Workspace.open(root)))
    r = c.post("/segments/save", data={"segment_id": "risky_now", "expr": "churn_risk >= 0.7", "en": "Risky"})
    assert r.status_code == 200, r.text
    assert (root / "rules" / "console_segments.yaml").exists()
    assert "risky_now" in c.get("/segments").text
    both = c.get("/api/segments/count", params={"expr": "risky_now and churn_risk >= 0.8"})
    assert both.status_code == 200
    refused = c.post("/segments/save", data={"segment_id": "win_back", "expr": "churn_risk >= 0.1"})
    assert refused.status_code == 400 and "already defined" in refused.json()["error"]
    bad = c.post("/segments/save", data={"segment_id": "Bad Id", "expr": "churn_risk >= 0.1"})
    assert bad.status_code == 400


def test_the_campaign_page_shows_the_lift_with_its_interval(client):
    r = client.get(f"/campaigns/{CAMPAIGN}?lang=en")
    assert r.status_code == 200 and 'id="lift-conversion"' in r.text and 'id="chart-by-tag"' in r.text
    assert client.get("/campaigns/nope").status_code == 404


def test_the_api_key_is_required_when_set(console_workspace, monkeypatch):
    monkeypatch.setenv("PERSONA_API_KEY", "s3cret")
    c = TestClient(create_app(Workspace.open(console_workspace)))
    assert c.get("/").status_code == 401
    assert c.get("/", headers={"X-API-Key": "wrong"}).status_code == 401
    auth = "Basic " + base64.b64encode(b"anyone:s3cret").decode()
    assert c.get("/", headers={"Authorization": auth}).status_code == 200
    assert c.get("/static/console.css").status_code == 200  # assets carry nothing secret


def test_the_engine_looks_for_new_models_at_most_every_reload_seconds(console_workspace, monkeypatch):
    """Pages ask for the online engine on every request; the registry is asked for new champions once per
    `serving.reload_seconds`, as the service's own loop does, not once per page."""
    from serving.console.data import ConsoleData
    from serving.online import OnlineEngine

    calls = []
    refresh = OnlineEngine.refresh
    monkeypatch.setattr(OnlineEngine, "refresh", lambda self, **kw: calls.append(kw) or refresh(self, **kw))
    data = ConsoleData(Workspace.open(console_workspace))
    now = [100.0]
    data._clock = lambda: now[0]
    engine = data.engine()
    assert engine is not None and calls == [{"force": True}]  # the engine's first load
    wait = engine.cfg.serving.reload_seconds
    for _ in range(5):
        assert data.engine() is engine
    assert len(calls) == 1
    now[0] += wait
    assert data.engine() is engine and len(calls) == 2
    now[0] += wait / 2
    data.engine()
    assert len(calls) == 2
