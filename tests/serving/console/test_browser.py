"""The console in a real browser: `persona console` serves the console workspace in a subprocess and Playwright
drives Debian's Chromium through it, as a marketer would. A customer looked up by phone through the form shows the
tags `/v1/profile` answers for that phone; a segment typed into the builder shows the count `persona segment count`
gives, and its export holds that many rows; a model page draws its charts; the language switch turns the chrome
English and back; every page renders without a console error. Each step writes a screenshot (full page) to
$PERSONA_SCREENSHOTS when set, else to a temporary folder of the test run (named in the log); none is committed.

Chromium is Debian's (`make browser` installs it: `playwright install` cannot download browsers here). Without it,
or without Playwright, the module skips and says why; with $PERSONA_REQUIRE_BROWSER=1 (CI) it fails instead.
No test sleeps: each waits on what the page shows (Playwright's auto-waiting), with timeouts generous enough for a
loaded machine."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from persona.workspace import Workspace
from serving.process import ROOT, free_port
from tests.serving.console.conftest import CAMPAIGN

pytestmark = pytest.mark.slow

REQUIRE_BROWSER_VAR = "PERSONA_REQUIRE_BROWSER"
SCREENSHOTS_VAR = "PERSONA_SCREENSHOTS"
CHROMIUM_VAR = "PERSONA_CHROMIUM"  # another Chromium than the one on PATH (optional)
TIMEOUT_MS = 120_000  # what one wait may take on a loaded two-core machine (a first page loads the workspace)
START_TIMEOUT_S = 300.0
SEGMENT = "churn_risk >= 0.5"
MODEL = "churn_risk"


# --- the browser, or the reason there is none ----------------------------------------------------------------------
def _chromium() -> str | None:
    given = os.environ.get(CHROMIUM_VAR)
    if given:
        return given if Path(given).is_file() and os.access(given, os.X_OK) else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"Playwright is not installed ({exc}); `make setup` installs it"
    if _chromium() is None:
        where = f"${CHROMIUM_VAR}={os.environ[CHROMIUM_VAR]!r} is not an executable" if os.environ.get(CHROMIUM_VAR) \
            else "no chromium on PATH"
        return f"{where}; `make browser` installs Debian's chromium (as root)"
    return None


def _skip_or_fail(reason: str) -> None:
    if os.environ.get(REQUIRE_BROWSER_VAR) == "1":
        pytest.fail(f"{reason} (${REQUIRE_BROWSER_VAR}=1 makes the browser tests mandatory)", pytrace=False)
    pytest.skip(f"{reason} (or set ${REQUIRE_BROWSER_VAR}=1 to fail instead of skipping)")


@pytest.fixture(scope="module", autouse=True)
def _browser_available() -> None:
    """Checked before anything else of the module is built (the workspace takes minutes)."""
    reason = _missing()
    if reason:
        _skip_or_fail(reason)


@pytest.fixture(scope="module")
def browser(_browser_available):
    from playwright.sync_api import Error, expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as p:
        try:
            # --no-sandbox: Chromium refuses to start sandboxed as root (containers, CI)
            chromium = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        except Error as exc:
            _skip_or_fail(f"Chromium at {_chromium()} does not start under Playwright: {exc}")
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ[SCREENSHOTS_VAR]) if os.environ.get(SCREENSHOTS_VAR) else \
        tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"console screenshots in {folder}")
    return folder


# --- the console, served as users start it -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def console_url(console_workspace, tmp_path_factory) -> str:
    """`persona console -w WS --port N` in a subprocess; its base URL once /healthz answers; stopped at the end."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("console-log") / "console.log"
    key_env = Workspace.open(console_workspace).config().serving.api_key_env  # no key: pages open as they are
    env = {k: v for k, v in os.environ.items() if k != key_env}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "persona.cli", "console", "-w", str(console_workspace),
                                 "--port", str(port)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        _wait_healthy(proc, base, log)
        yield base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # uvicorn's graceful stop
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


def _wait_healthy(proc: subprocess.Popen, base: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(base_url=base, timeout=5) as client:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"`persona console` exited with code {proc.returncode}:\n{_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/healthz").status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"`persona console` did not answer /healthz in {START_TIMEOUT_S:.0f} s:\n"
                                   f"{_tail(log)}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.5)  # still importing: ask again soon, or stop at once if it died


def _tail(log: Path, n: int = 4000) -> str:
    return log.read_text(encoding="utf-8", errors="replace")[-n:] if log.exists() else "(no output)"


def _favicon(url: str) -> bool:
    return url.split("?")[0].endswith("/favicon.ico")


class Watched:
    """A page and what went wrong on it: console errors, uncaught exceptions, failed requests (4xx/5xx)."""

    def __init__(self, page) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"uncaught: {exc}"))
        page.on("response", lambda r: self.problems.append(f"HTTP {r.status} for {r.url}")
                if r.status >= 400 and not _favicon(r.url) else None)

    def _console(self, message) -> None:
        if message.type == "error" and not _favicon(message.location.get("url", "")):  # the console has no icon
            self.problems.append(f"console.error: {message.text} (at {message.location.get('url')})")

    def clean(self) -> None:
        if self.problems:
            pytest.fail(f"on {self.page.url}:\n" + "\n".join(self.problems))


@pytest.fixture
def watched(browser, console_url):
    context = browser.new_context(base_url=console_url, locale="en-US", viewport={"width": 1366, "height": 900},
                                  accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    page = context.new_page()
    try:
        yield Watched(page)
    finally:
        context.close()


def _settled(watched: Watched) -> None:
    """After a navigation: wait until the page's own requests are done (its scripts, the saved segments' counts),
    stop there if anything failed (a chart waits in vain for a script that did not load), then until every chart is
    drawn."""
    from playwright.sync_api import expect

    watched.page.wait_for_load_state("networkidle")
    watched.clean()
    expect(watched.page.locator('[data-chart]:not([data-drawn="1"])')).to_have_count(0)


def _shoot(page, shots: Path, name: str) -> None:
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


# --- what the tests compare with -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_count(console_workspace) -> int:
    """What `persona segment count SEGMENT --json` says (the same engine the builder must use)."""
    from typer.testing import CliRunner

    from persona.cli import app

    r = CliRunner().invoke(app, ["segment", "count", SEGMENT, "-w", str(console_workspace), "--json"])
    assert r.exit_code == 0, r.output
    n = json.loads(r.stdout)["count"]
    assert n > 0, f"{SEGMENT!r} selects no one on the test workspace: the comparisons would prove little"
    return n


def _shown(value: object) -> str:
    """A tag value as the profile page prints it (the console's one formatting of values)."""
    from serving.console.data import display

    return display(value)


def _flat(tags: dict[str, dict]) -> dict[str, object]:
    """{tag: value} from /v1/profile's tags ({category: {tag: value}})."""
    return {tag: value for group in tags.values() for tag, value in group.items()}


def _digits_of(n: int) -> re.Pattern:
    """The count as any locale may format it: its digits, in order, with at most one separator between two."""
    return re.compile("^" + r"[^\d]?".join(str(n)) + "$")


# --- the tests -----------------------------------------------------------------------------------------------------
def test_a_phone_looked_up_in_the_form_shows_the_tags_of_v1_profile(console_workspace, watched, phone_of, shots):
    from playwright.sync_api import expect

    from serving.process import running_server

    pid, phone = phone_of
    with running_server(console_workspace, timeout=START_TIMEOUT_S) as api:
        r = httpx.post(f"{api}/v1/profile", json={"identifier": {"type": "phone", "value": phone}}, timeout=120)
    assert r.status_code == 200, r.text
    answered = r.json()
    assert answered.get("persona_id", pid) == pid
    expected = {tag: _shown(v) for tag, v in _flat(answered["tags"]).items()}
    assert expected

    page = watched.page
    page.goto("/profile")
    page.select_option("#lookup-type", "phone")
    page.fill("#lookup-q", phone)
    page.click("#lookup-go")
    page.wait_for_url(f"**/profile/{pid}")
    expect(page.locator("#persona-id")).to_have_text(pid)
    rows = page.locator("tr[data-tag]")
    expect(rows).to_have_count(len(expected))
    shown = {row.get_attribute("data-tag"): row.locator(".tag-value").text_content()
             for row in rows.all()}
    assert shown == expected  # tag for tag, value for value
    assert phone not in page.content()  # identifiers are shown masked
    _settled(watched)
    _shoot(page, shots, "profile-by-phone")
    watched.clean()


def test_a_segment_typed_in_the_builder_counts_as_the_cli(watched, cli_count, shots):
    from playwright.sync_api import expect

    page = watched.page
    page.goto("/segments")
    expr = page.locator("#expr")
    expr.press_sequentially(SEGMENT, delay=30)  # key by key: each keystroke asks for a count, the last one wins
    expect(page.locator("#expr-error")).to_have_text("")
    expect(page.locator("#count")).to_have_text(_digits_of(cli_count))
    expect(page.locator("#count-detail")).to_contain_text("%")
    expect(page.locator("#export")).to_have_attribute("href", re.compile(r"/segments/export\?expr=churn_risk"))
    _settled(watched)
    profile = page.locator('#chart-profile[data-drawn="1"]')  # the over / under-index chart follows the count
    expect(profile.locator(".main-svg").first).to_be_attached()
    _shoot(page, shots, "segment-builder")
    # a misspelt name says what was meant, and the count clears
    expr.fill("churn_rsk >= 0.5")
    expect(page.locator("#expr-error")).to_contain_text("churn_risk")
    expect(page.locator("#count")).to_have_text("-")
    _shoot(page, shots, "segment-builder-error")
    watched.problems = [p for p in watched.problems if "/api/segments/" not in p]  # the 400 asked for just now
    watched.clean()


def test_a_segment_exported_from_the_builder_has_as_many_rows_as_its_count(watched, cli_count, shots, tmp_path):
    from playwright.sync_api import expect

    page = watched.page
    page.goto("/segments?expr=" + quote(SEGMENT))  # the builder opened on an expression counts it at once
    expect(page.locator("#expr")).to_have_value(SEGMENT)
    expect(page.locator("#count")).to_have_text(_digits_of(cli_count))
    _settled(watched)
    _shoot(page, shots, "segment-export")
    with page.expect_download() as info:
        page.click("#export")
    download = info.value
    assert download.suggested_filename.endswith(".csv")
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    with open(saved, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == cli_count
    assert "persona_id" in rows[0] and len({r["persona_id"] for r in rows}) == cli_count
    watched.clean()


def test_a_model_page_draws_its_charts(watched, shots):
    from playwright.sync_api import expect

    page = watched.page
    response = page.goto(f"/models/{MODEL}")
    assert response is not None and response.status == 200, response and response.text()[:2000]
    charts = page.locator("[data-chart]")
    figures = page.locator(f'img[src*="/models/{MODEL}/figure/"]')
    expect(charts.or_(figures).first).to_be_attached()
    _settled(watched)  # every chart drawn
    drawn = page.locator('[data-chart][data-drawn="1"]')
    assert drawn.count() == charts.count()
    for chart in drawn.all():  # Plotly drew into it: an SVG with something plotted
        expect(chart.locator(".main-svg").first).to_be_attached()
    for img in figures.all():  # a figure's PNG loaded
        img.scroll_into_view_if_needed()
        expect(img).to_have_js_property("complete", True)
        assert img.evaluate("el => el.naturalWidth") > 0, img.get_attribute("src")
    assert drawn.count() + figures.count() > 0
    _shoot(page, shots, f"model-{MODEL}")
    watched.clean()


def test_the_language_switch_turns_the_console_english_and_back(watched, shots):
    from playwright.sync_api import expect

    page = watched.page
    nav = page.locator("header nav")
    page.goto("/")
    expect(page.locator("html")).to_have_attribute("lang", "zh")
    expect(nav).to_contain_text("概览")
    page.click("#lang-switch")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(nav).to_contain_text("Overview")
    expect(nav).to_contain_text("Segments")
    expect(page.locator("h1")).to_have_text("Overview")
    _shoot(page, shots, "overview-en")
    nav.get_by_role("link", name="Tag catalog").click()  # the choice is kept (a cookie) on the next page
    page.wait_for_url("**/catalog")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(nav).to_contain_text("Overview")
    page.click("#lang-switch")
    expect(page.locator("html")).to_have_attribute("lang", "zh")
    expect(nav).to_contain_text("概览")
    expect(nav).not_to_contain_text("Overview")
    page.goto("/")
    expect(page.locator("h1")).to_have_text("概览")
    watched.clean()


PAGES = {
    "overview": "/", "profile": "/profile", "profile-persona": "/profile/{pid}", "catalog": "/catalog",
    "catalog-gender": "/catalog/gender", "segments": "/segments", "models": "/models", "model": f"/models/{MODEL}",
    "campaigns": "/campaigns", "campaign": f"/campaigns/{CAMPAIGN}",
}


@pytest.mark.parametrize("lang", ["zh", "en"])
@pytest.mark.parametrize("name", list(PAGES))
def test_every_page_renders_without_a_console_error(watched, phone_of, shots, name, lang):
    from playwright.sync_api import expect

    page = watched.page
    path = PAGES[name].format(pid=phone_of[0])
    response = page.goto(f"{path}?lang={lang}")
    assert response is not None and response.status == 200, (path, response and response.text()[:2000])
    expect(page.locator("html")).to_have_attribute("lang", lang)
    expect(page.locator("main h1")).not_to_be_empty()
    _settled(watched)
    if name == "segments":  # each saved segment's count has come back, a number ("!" when the count failed)
        counts = page.locator("td.seg-count")
        expect(counts).to_have_text([re.compile(r"^\d[\d,]*$")] * counts.count())
    _shoot(page, shots, f"{name}-{lang}")
    watched.clean()
