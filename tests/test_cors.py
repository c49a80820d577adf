"""CORS on /graphql: off by default; TALLY_CORS_ORIGINS lets those origins' pages call it.

The browser test serves a page from other origins (plain HTTP servers on other
ports) and lets Chromium decide whether its fetch() may read Tally's answer.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect

from main import create_app
from settings import Settings
from tests.browser import launched_chromium
from tests.helpers import token
from tests.server import running_server
from tests.test_dashboard import SERVER_START_TIMEOUT

LISTED = "http://app.example"
QUERY = {"query": "{ __typename }"}
PREFLIGHT = {"access-control-request-method": "POST", "access-control-request-headers": "authorization,content-type"}


@asynccontextmanager
async def tally(cors_origins: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(database_url="sqlite+aiosqlite:///./cors-never-opened.db", cors_origins=cors_origins)
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://tally") as client:
        yield client


def test_origins_are_a_comma_separated_list() -> None:
    settings = Settings(cors_origins=" http://a.example , https://b.example:8443/,,")
    assert settings.cors_origin_list == ["http://a.example", "https://b.example:8443"]
    assert Settings().cors_origin_list == []


async def test_no_cors_by_default() -> None:
    async with tally("") as client:
        preflight = await client.options("/graphql", headers={"origin": LISTED, **PREFLIGHT})
        assert preflight.status_code == 405
        assert not [name for name in preflight.headers if name.startswith("access-control-")]
        answer = await client.post("/graphql", json=QUERY, headers={"origin": LISTED})
        assert "access-control-allow-origin" not in answer.headers


async def test_listed_origin_may_send_a_bearer_token_without_credentials() -> None:
    async with tally(f"{LISTED},http://other.example") as client:
        preflight = await client.options("/graphql", headers={"origin": LISTED, **PREFLIGHT})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == LISTED
        allowed = {h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "content-type"} <= allowed
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "access-control-allow-credentials" not in preflight.headers

        refused = await client.options("/graphql", headers={"origin": "http://evil.example", **PREFLIGHT})
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers

        # The request itself: its answer names the origin.
        answer = await client.post("/graphql", json=QUERY, headers={"origin": LISTED})
        assert answer.json() == {"data": {"__typename": "Query"}}
        assert answer.headers["access-control-allow-origin"] == LISTED
        assert "access-control-allow-credentials" not in answer.headers
        other = await client.post("/graphql", json=QUERY, headers={"origin": "http://x.example"})
        assert "access-control-allow-origin" not in other.headers

        # The rest of the app is not opened to other origins.
        health = await client.get("/healthz", headers={"origin": LISTED})
        assert "access-control-allow-origin" not in health.headers


# ------------------------------------------------------------------ a page on another origin, in Chromium

CALLER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>caller</title></head>
<body><output id="result">pending</output>
<script>
  // The Tally URL and token arrive in the fragment, which never leaves the browser.
  const [tally, bearer] = decodeURIComponent(location.hash.slice(1)).split(" ");
  fetch(tally + "/graphql", {
    method: "POST",
    headers: { "Authorization": "Bearer " + bearer, "Content-Type": "application/json" },
    body: JSON.stringify({ query: '{ organizationStats(orgId: "org_demo") { version } }' }),
  })
    .then((response) => response.json())
    .then((body) => { document.getElementById("result").textContent = "ok " + JSON.stringify(body); })
    .catch((error) => { document.getElementById("result").textContent = "failed " + error; });
</script>
</body></html>
"""


class CallerPage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = CALLER_PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


@contextmanager
def caller_origin() -> Iterator[str]:
    """A plain HTTP server on its own port (so its own origin) serving the caller page."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), CallerPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launched_chromium() as launched:
        yield launched


def call_from(browser: Browser, origin: str, base: str, bearer: str) -> tuple[str, list[str]]:
    """What the caller page on `origin` got from Tally, and what Chromium logged."""
    context = browser.new_context()
    try:
        page = context.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        page.goto(f"{origin}/#{base} {bearer}")
        result = page.locator("#result")
        expect(result).not_to_have_text("pending", timeout=10_000)
        return result.inner_text(), console
    finally:
        context.close()


@pytest.mark.slow
def test_a_page_on_a_listed_origin_calls_tally_and_others_cannot(browser: Browser, tmp_path: Path) -> None:
    admin = token("org_demo", "admin")
    with caller_origin() as listed, caller_origin() as unlisted:
        env = {
            "TALLY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cors.db'}",
            "TALLY_RECALC_INTERVAL_SECONDS": "0",
            "TALLY_CORS_ORIGINS": f"http://app.example, {listed}",
        }
        with running_server(env, timeout=SERVER_START_TIMEOUT) as base:
            result, _ = call_from(browser, listed, base, admin)
            assert result == 'ok {"data":{"organizationStats":{"version":0}}}'
            result, console = call_from(browser, unlisted, base, admin)
            assert result == "failed TypeError: Failed to fetch"
            assert any("blocked by CORS policy" in line for line in console), console
