"""GraphiQL at /graphql works offline: every file it needs is served by Tally.

In Chromium, every request to another origin is blocked (and recorded): the page
must render, run a query with the token typed into its headers pane, open the
documentation and the explorer, and stream a subscription over the WebSocket.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, WebSocket, expect

from main import create_app
from settings import Settings
from tests.browser import launched_chromium
from tests.helpers import token
from tests.server import running_server
from tests.test_dashboard import ARTIFACTS, SERVER_START_TIMEOUT, create_load

ORG = "org_demo"
STATS_QUERY = 'query Stats { organizationStats(orgId: "org_demo") { version loads { open total } } }'
LIVE_QUERY = 'subscription Live { organizationStatsChanged(orgId: "org_demo") { version loads { open } } }'


# ------------------------------------------------------------------ the page and its assets (no browser)


async def test_page_and_assets_come_from_tally_only() -> None:
    settings = Settings(database_url="sqlite+aiosqlite:///./graphiql-never-opened.db")
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://tally") as client:
        page = await client.get("/graphql", headers={"accept": "text/html"})
        assert page.status_code == 200 and "<title>Tally · GraphiQL</title>" in page.text
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert len(assets) == 9, assets  # the empty data: icon, 2 stylesheets, 6 scripts
        for asset in assets:
            if asset.startswith("data:"):
                continue
            assert asset.startswith(("/graphiql/static/", "/static/")), asset
            response = await client.get(asset)
            assert response.status_code == 200, asset
            assert response.headers["content-type"].split(";")[0] in ("text/css", "text/javascript"), asset
        assert (await client.get("/graphiql/static/no-such-file.js")).status_code == 404


# ------------------------------------------------------------------ GraphiQL in Chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launched_chromium() as launched:
        yield launched


class OfflinePage:
    """A GraphiQL tab that may reach its own server only; what it tried otherwise is kept."""

    def __init__(self, browser: Browser, base: str) -> None:
        self.base = base
        self.context = browser.new_context(viewport={"width": 1400, "height": 900}, locale="en-US")
        self.blocked: list[str] = []
        self.errors: list[str] = []
        self.sockets: list[str] = []
        self.closed_sockets: list[str] = []
        self.graphql_posts: list[dict[str, Any]] = []
        self.context.route("**/*", self._only_own_origin)
        self.page = self.context.new_page()
        self.page.set_default_timeout(10_000)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("websocket", self._record_socket)
        self.page.on("request", self._record_post)

    def _only_own_origin(self, route: Route) -> None:
        if route.request.url.startswith(f"{self.base}/"):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort("blockedbyclient")

    def _record_socket(self, socket: WebSocket) -> None:
        self.sockets.append(socket.url)
        socket.on("close", lambda closed: self.closed_sockets.append(closed.url))

    def wait_until_sockets_closed(self, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while len(self.closed_sockets) < len(self.sockets):
            assert time.monotonic() < deadline, f"still open: {self.sockets} (closed: {self.closed_sockets})"
            self.page.wait_for_timeout(50)

    def _record_post(self, request: Any) -> None:
        if request.method == "POST" and request.url == f"{self.base}/graphql":
            body = json.loads(request.post_data or "{}")
            self.graphql_posts.append({"operation": body.get("operationName"), "headers": request.headers})

    def close(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        try:
            self.page.screenshot(path=Path(ARTIFACTS) / f"{name}.png")
        finally:
            self.context.close()


@pytest.fixture
def offline_page(browser: Browser) -> Iterator[Any]:
    opened: list[OfflinePage] = []

    def open_page(base: str) -> OfflinePage:
        opened.append(OfflinePage(browser, base))
        return opened[-1]

    yield open_page
    for tab in opened:
        tab.close("graphiql-last")


def replace_editor_text(page: Page, editor: str, text: str) -> None:
    """Type into a CodeMirror editor as a user pasting would (no auto-closed brackets)."""
    page.locator(f"{editor} .CodeMirror >> visible=true").click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(text)


@pytest.mark.slow
def test_graphiql_runs_offline_with_the_token_from_its_headers_pane(offline_page: Any, tmp_path: Path) -> None:
    env = {
        "TALLY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'graphiql.db'}",
        "TALLY_RECALC_INTERVAL_SECONDS": "0",
    }
    admin = token(ORG, "admin")
    with running_server(env, timeout=SERVER_START_TIMEOUT) as base:
        create_load(base, admin, "OPEN", "SPOT")
        tab = offline_page(base)
        page = tab.page
        page.goto(f"{base}/graphql")
        expect(page.locator(".graphiql-container")).to_be_visible()
        expect(page.get_by_role("button", name="Execute query (Ctrl-Enter)")).to_be_visible()

        # The query runs with the Authorization header typed into the headers pane.
        replace_editor_text(page, ".graphiql-query-editor", STATS_QUERY)
        page.get_by_role("button", name="Headers", exact=True).click()
        replace_editor_text(page, ".graphiql-editor-tool", json.dumps({"Authorization": f"Bearer {admin}"}))
        page.get_by_role("button", name="Execute query (Ctrl-Enter)").click()
        response = page.locator(".graphiql-response")
        expect(response).to_contain_text('"organizationStats"')
        expect(response).to_contain_text('"open": 1')
        assert "errors" not in response.inner_text()
        sent = [post for post in tab.graphql_posts if post["operation"] == "Stats"]
        assert sent and sent[-1]["headers"]["authorization"] == f"Bearer {admin}"

        # The documentation explorer opens on the schema's root types.
        page.get_by_role("button", name="Show Documentation Explorer").click()
        docs = page.locator(".graphiql-doc-explorer")
        expect(docs).to_contain_text("Root Types")
        docs.locator("a.graphiql-doc-explorer-type-name").filter(has_text=re.compile(r"^Query$")).click()
        expect(docs.locator(".graphiql-doc-explorer-title")).to_have_text("Query")
        expect(docs).to_contain_text("organizationStats")
        # So does the query builder (the explorer plugin), listing the same fields.
        page.get_by_role("button", name="Show GraphiQL Explorer").click()
        expect(page.locator(".graphiql-explorer-root")).to_contain_text("organizationStats")

        # A subscription streams over the WebSocket, authenticated by the same headers.
        replace_editor_text(page, ".graphiql-query-editor", LIVE_QUERY)
        expect(page.get_by_role("textbox", name="Subscription Name")).to_have_value("Live")  # parsed
        page.get_by_role("button", name="Execute query (Ctrl-Enter)").click()
        expect(response).to_contain_text('"open": 1')
        create_load(base, admin, "OPEN", "CONTRACT")
        expect(response).to_contain_text('"open": 2')
        page.locator(".graphiql-execute-button").click()  # now the stop button
        expect(page.get_by_role("button", name="Execute query (Ctrl-Enter)")).to_be_visible()
        tab.wait_until_sockets_closed()  # stopping the subscription closes its connection
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "graphiql.png")

        assert tab.blocked == [], tab.blocked
        assert tab.errors == [], tab.errors
        assert tab.sockets == [base.replace("http://", "ws://") + "/graphql"], tab.sockets
        # The token stays in this tab's session storage, never in local storage.
        assert admin not in page.evaluate("JSON.stringify(Object.entries(localStorage))")
