"""The live dashboard at `/`: its routes, and the page itself in headless Chromium.

The browser tests drive Debian's chromium (`apt-get install -y chromium`) through
Playwright with its executable path; no browser is downloaded. Without chromium
they skip locally and fail in CI (CI=true). Screenshots go to artifacts/.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jwt
import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from main import create_app
from settings import Settings
from tests.browser import launched_chromium
from tests.databases import Databases
from tests.helpers import token
from tests.server import ROOT, free_port, running_server

ORG = "org_demo"
SERVER_START_TIMEOUT = 60  # seconds: generous, for a busy 2-core machine
ARTIFACTS = ROOT / "artifacts"
GROUPS = {
    "loads": ["open", "assigned", "completed", "canceled", "total"],
    "loadTypes": ["contract", "spot", "unmapped", "total"],
    "invoices": ["missingData", "draft", "billed", "pendingPayment", "paid", "void", "total"],
}
SELECTION = " ".join(f"{group} {{ {' '.join(fields)} }}" for group, fields in GROUPS.items())
STATS = f"query($o: ID!) {{ organizationStats(orgId: $o) {{ version {SELECTION} }} }}"
# Records every text the version shows, to check it never goes back.
RECORD_VERSIONS = """
window.__versions = [];
document.addEventListener("DOMContentLoaded", () => {
  const node = document.getElementById("version");
  new MutationObserver(() => window.__versions.push(node.textContent))
    .observe(node, { childList: true, characterData: true, subtree: true });
});
"""


# ------------------------------------------------------------------ routes (no browser)


SECRET = "dashboard-test-secret-of-32-bytes-or-more"


def client_for(database_url: str, *, dev_login: bool) -> httpx.AsyncClient:
    settings = Settings(database_url=database_url, dev_login=dev_login, jwt_secret=SECRET)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(settings)), base_url="http://tally")


SQLITE = "sqlite+aiosqlite:///./dashboard-routes-never-opened.db"
POSTGRES = "postgresql+asyncpg://nobody@127.0.0.1:1/never-opened"


@pytest.mark.parametrize(
    ("url", "flag", "exists"),
    [(SQLITE, False, False), (POSTGRES, True, False), (POSTGRES, False, False), (SQLITE, True, True)],
)
async def test_dev_login_exists_only_when_asked_for_on_sqlite(url: str, flag: bool, exists: bool) -> None:
    async with client_for(url, dev_login=flag) as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert ('name="tally-dev-login"' in page.text) is exists
        response = await client.post("/dev-login", json={})
        assert response.status_code == (200 if exists else 404)


async def test_dev_login_signs_a_short_lived_admin_token() -> None:
    async with client_for(SQLITE, dev_login=True) as client:
        default = (await client.post("/dev-login", json={})).json()
        claims = jwt.decode(default["token"], SECRET, algorithms=["HS256"])
        assert (claims["org_id"], claims["role"], default["orgId"]) == ("org_demo", "admin", "org_demo")
        assert 0 < claims["exp"] - time.time() <= 3600
        other = await client.post("/dev-login", data={"orgId": "org_other"})
        assert other.headers["cache-control"] == "no-store"
        assert jwt.decode(other.json()["token"], SECRET, algorithms=["HS256"])["org_id"] == "org_other"
        for bad in ("../etc", "a" * 65, " ", "org demo"):
            assert (await client.post("/dev-login", json={"orgId": bad})).status_code == 400, bad
        broken = await client.post("/dev-login", content=b"{not json", headers={"content-type": "application/json"})
        assert broken.status_code == 400


async def test_page_and_modules_are_served_from_the_package_only() -> None:
    async with client_for(SQLITE, dev_login=False) as client:
        await check_page_and_modules(client)


async def check_page_and_modules(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/static/dashboard.js" in assets and "/static/dashboard.css" in assets
    for asset in assets:
        assert asset.startswith(("/static/", "#", "data:")), f"{asset} is not served by Tally"
    for module in ("dashboard.js", "graphql-ws.js", "session.js"):
        response = await client.get(f"/static/{module}")
        assert response.status_code == 200
        assert "javascript" in response.headers["content-type"]
        for imported in re.findall(r'from "([^"]+)"', response.text):
            assert imported.startswith("./"), f"{module} imports {imported}"
    assert (await client.get("/static/dashboard.css")).status_code == 200
    graphiql = await client.get("/graphql", headers={"accept": "text/html"})
    assert graphiql.status_code == 200 and "graphiql" in graphiql.text.lower()  # still there


# ------------------------------------------------------------------ the page in Chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launched_chromium() as launched:
        yield launched


class Watched:
    """A page plus everything it logged, failed on and requested."""

    def __init__(self, browser: Browser, base: str, name: str) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
        self.page = self.context.new_page()
        self.page.set_default_timeout(10_000)
        self.name = name
        self.console: list[str] = []
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda message: self.console.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.add_init_script(RECORD_VERSIONS)
        self.page.goto(f"{base}/")

    def close(self) -> None:
        """The last screen, whatever happened: the artifact to look at when a test failed."""
        ARTIFACTS.mkdir(exist_ok=True)
        try:
            self.page.screenshot(path=ARTIFACTS / f"{self.name}-last.png", full_page=True)
        finally:
            self.context.close()

    def check_hygiene(self, base: str, secret: str) -> None:
        """No script error; nothing fetched from elsewhere; the token in no URL and no log line."""
        assert not self.errors, self.errors
        ws = base.replace("http://", "ws://")
        assert all(url.startswith((base, ws, "data:")) for url in self.requests), self.requests
        assert not any(secret in url for url in self.requests)
        assert not any(secret in line for line in self.console)
        assert secret not in self.page.url


@pytest.fixture
def watch(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Any]:
    opened: list[Watched] = []

    def open_page(base: str) -> Page:
        name = request.node.name.replace("[", "-").rstrip("]")
        watched = Watched(browser, base, f"{name}-tab{len(opened) + 1}")
        opened.append(watched)
        return watched.page

    open_page.opened = opened  # type: ignore[attr-defined]
    yield open_page
    for watched in opened:
        watched.close()


def gql(base: str, bearer: str, query: str, **variables: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{base}/graphql",
        json={"query": query, "variables": variables},
        headers={"Authorization": f"Bearer {bearer}"},
        timeout=10,
    )
    body = response.json()
    assert not body.get("errors"), body["errors"]
    return dict(body["data"])


def create_load(base: str, bearer: str, status: str = "OPEN", load_type: str = "UNMAPPED") -> str:
    query = "mutation($o: ID!, $s: LoadStatus, $t: LoadType) { createLoad(input: {orgId: $o, status: $s, loadType: $t}) { id } }"
    return str(gql(base, bearer, query, o=ORG, s=status, t=load_type)["createLoad"]["id"])


def create_invoice(base: str, bearer: str, load_id: str, status: str) -> None:
    query = "mutation($l: ID!, $s: InvoiceStatus, $r: String) { createInvoice(input: {loadId: $l, status: $s, missingDataReason: $r}) { id } }"
    gql(base, bearer, query, l=load_id, s=status, r="no rate confirmation" if status == "MISSING_DATA" else None)


def seed(base: str, bearer: str) -> None:
    """A realistic mix, so every tile and bar has something to show."""
    loads = [
        ("OPEN", "CONTRACT", None), ("OPEN", "SPOT", None), ("OPEN", "UNMAPPED", None),
        ("OPEN", "CONTRACT", None), ("ASSIGNED", "CONTRACT", "DRAFT"), ("ASSIGNED", "SPOT", "MISSING_DATA"),
        ("ASSIGNED", "CONTRACT", "DRAFT"), ("COMPLETED", "CONTRACT", "BILLED"), ("COMPLETED", "CONTRACT", "PAID"),
        ("COMPLETED", "SPOT", "PENDING_PAYMENT"), ("COMPLETED", "CONTRACT", "PAID"), ("COMPLETED", "UNMAPPED", "BILLED"),
        ("COMPLETED", "CONTRACT", "PAID"), ("CANCELED", "SPOT", "VOID"), ("COMPLETED", "CONTRACT", "PENDING_PAYMENT"),
    ]  # fmt: skip
    for status, load_type, invoice in loads:
        load_id = create_load(base, bearer, status, load_type)
        if invoice:
            create_invoice(base, bearer, load_id, invoice)


def server_stats(base: str, bearer: str) -> dict[str, Any]:
    return dict(gql(base, bearer, STATS, o=ORG)["organizationStats"])


def page_stats(page: Page) -> dict[str, Any]:
    """What the tiles and the version show, in the shape of organizationStats."""
    shown: dict[str, Any] = page.evaluate(
        """groups => {
          const number = id => Number(document.querySelector(`#${id} .tile-value`).textContent.replace(/[^0-9]/g, ""));
          const result = { version: Number(document.getElementById("version").textContent) };
          for (const [group, fields] of Object.entries(groups)) {
            result[group] = Object.fromEntries(fields.map(f => [f, number(`tile-${group}-${f}`)]));
          }
          return result;
        }""",
        GROUPS,
    )
    return shown


def expect_page_shows(page: Page, expected: dict[str, Any], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (shown := page_stats(page)) != expected:
        if time.monotonic() > deadline:
            assert shown == expected
        page.wait_for_timeout(50)


def shown_versions(page: Page) -> list[int]:
    texts: list[str] = page.evaluate("window.__versions")
    return [int(t) for t in texts if t.isdigit()]


def run_sql(database_url: str, sql: str) -> None:
    """Corrupt the stats row behind the aggregate's back, as a bug would (own thread and loop)."""

    async def work() -> None:
        engine = create_async_engine(database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text(sql))
        finally:
            await engine.dispose()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, work()).result()


@pytest.mark.slow
def test_dashboard_signs_in_updates_live_and_survives_a_restart(
    watch: Any, databases: Databases, database_url: str
) -> None:
    sqlite = databases.backend == "sqlite"
    env = {"TALLY_DATABASE_URL": database_url, "TALLY_RECALC_INTERVAL_SECONDS": "0"}
    if sqlite:
        env["TALLY_DEV_LOGIN"] = "1"
    port = free_port()
    admin = token(ORG, "admin")

    with running_server(env, port=port, timeout=SERVER_START_TIMEOUT) as base:
        seed(base, admin)
        page = watch(base)
        expect(page.locator("#sign-in")).to_be_visible()
        expect(page.locator("#connection")).to_have_attribute("data-state", "signed-out")

        # Sign in: one click in development (SQLite), else by pasting a token.
        if sqlite:
            expect(page.locator("#dev-form")).to_be_visible()
            page.get_by_label("Organization", exact=True).fill(ORG)
            page.get_by_role("button", name="Sign in as admin (development)").click()
        else:
            expect(page.locator("#dev-form")).to_be_hidden()
            page.get_by_label("Bearer token").fill(admin)
            page.get_by_role("button", name="Sign in", exact=True).click()
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        expect(page.locator("#org-name")).to_have_text(ORG)
        expect_page_shows(page, server_stats(base, admin))
        stored = page.evaluate("[sessionStorage.getItem('tally.token'), localStorage.length]")
        assert stored[0] and stored[1] == 0  # the session's token, nothing kept beyond it
        signed_in_with = str(stored[0])

        # An admin sees the drift indicator; injected drift shows, and "Recalculate" repairs it.
        expect(page.locator("#admin")).to_be_visible()
        expect(page.locator("#drift")).to_have_attribute("data-state", "ok")
        version = server_stats(base, admin)["version"]
        run_sql(database_url, f"UPDATE organization_stats SET loads_open = loads_open + 3 WHERE org_id = '{ORG}'")
        page.get_by_role("button", name="Check drift").click()
        expect(page.locator("#drift")).to_have_attribute("data-state", "drift")
        expect(page.locator("#drift-list")).to_contain_text("loads_open: stored 7, recount 4")
        page.get_by_role("button", name="Recalculate").click()
        expect(page.locator("#drift")).to_have_attribute("data-state", "ok")
        expect(page.locator("#drift-text")).to_contain_text("1 counter corrected")
        expect(page.locator("#version")).to_have_text(str(version + 1))
        expect_page_shows(page, server_stats(base, admin))

        # A change through the HTTP API reaches the tile within a second, highlighted.
        tile = page.locator("#tile-loads-open")
        before = page_stats(page)["loads"]["open"]
        create_load(base, admin, "OPEN", "SPOT")
        changed = time.monotonic()
        expect(tile.locator(".tile-value")).to_have_text(str(before + 1), timeout=1000)
        latency = time.monotonic() - changed
        assert latency < 1, latency
        highlighted = page.evaluate(
            """ids => ids.map(id => {
              const tile = document.getElementById(id);
              return [id, tile.classList.contains("changed"), tile.querySelector(".tile-delta").textContent];
            })""",
            [
                "tile-loads-open",
                "tile-loadTypes-spot",
                "tile-loads-total",
                "tile-loads-assigned",
                "tile-invoices-total",
            ],
        )
        assert highlighted == [
            ["tile-loads-open", True, "+1"],
            ["tile-loadTypes-spot", True, "+1"],
            ["tile-loads-total", True, "+1"],
            ["tile-loads-assigned", False, ""],
            ["tile-invoices-total", False, ""],
        ]
        ARTIFACTS.mkdir(exist_ok=True)
        name = "dashboard" if sqlite else f"dashboard-{databases.backend}"
        page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True, animations="disabled")
        # ... for a moment only.
        expect(tile).not_to_have_class(re.compile(r"\bchanged\b"), timeout=5000)
        expect_page_shows(page, server_stats(base, admin))

        # The browser loses the network: the page says so, and catches up when it is back.
        page.context.set_offline(True)
        expect(page.locator("#connection")).to_have_attribute("data-state", "offline")
        expect(page.locator("#connection-text")).to_contain_text("no network")
        create_load(base, admin, "COMPLETED", "CONTRACT")
        page.context.set_offline(False)
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        expect_page_shows(page, server_stats(base, admin))

        check_member_and_bad_tokens(watch, base, server_stats(base, admin))

    # The server is gone: the page says so and keeps the counts it had.
    expect(page.locator("#connection")).to_have_attribute("data-state", "offline")
    expect(page.locator("#connection-text")).to_contain_text("Offline")
    shown_while_offline = page_stats(page)
    page.screenshot(path=ARTIFACTS / f"{name}-offline.png", full_page=True)

    with running_server(env, port=port, timeout=SERVER_START_TIMEOUT) as base:
        # A change right after the restart: seen whether it lands before or after the reconnection.
        load_id = create_load(base, admin, "ASSIGNED", "CONTRACT")
        create_invoice(base, admin, load_id, "DRAFT")
        expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=30_000)
        expected = server_stats(base, admin)
        assert expected["version"] == shown_while_offline["version"] + 2
        expect_page_shows(page, expected)
        page.screenshot(path=ARTIFACTS / f"{name}-reconnected.png", full_page=True)

        versions = shown_versions(page)
        assert versions == sorted(versions) and versions[-1] == expected["version"], versions
        watch.opened[0].check_hygiene(base, signed_in_with)


def check_member_and_bad_tokens(watch: Any, base: str, shown: dict[str, Any]) -> None:
    """In a second tab: tokens that cannot work are refused; a member sees no admin tools."""
    page = watch(base)
    field = page.get_by_label("Bearer token")
    sign_in = page.get_by_role("button", name="Sign in", exact=True)
    field.fill("not a token")
    sign_in.click()
    expect(page.get_by_role("alert")).to_have_text(re.compile("not a JWT"))
    field.fill(token(ORG, "member", ttl=-10))
    sign_in.click()
    expect(page.get_by_role("alert")).to_have_text(re.compile("expired"))

    member = token(ORG, "member")
    field.fill(f"Bearer {member}")
    sign_in.focus()  # the keyboard works: Enter on the focused button signs in
    page.keyboard.press("Enter")
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    expect(page.locator("#role-name")).to_have_text("member")
    expect_page_shows(page, shown)
    expect(page.locator("#admin")).to_be_hidden()

    # The session survives a reload of the tab, and signing out forgets it.
    page.reload()
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    expect_page_shows(page, shown)
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#sign-in")).to_be_visible()
    expect(page.locator("#connection")).to_have_attribute("data-state", "signed-out")
    assert page.evaluate("sessionStorage.length") == 0
    watch.opened[-1].check_hygiene(base, member)


def bill(base: str, bearer: str, customer: str | None, amount: str, day: str, paid: str | None = None) -> str:
    """A priced invoice of a new load (of `customer`), billed on `day`, maybe partly paid."""
    load = gql(
        base, bearer, "mutation($i: CreateLoadInput!) { createLoad(input: $i) { id } }",
        i={"orgId": ORG, **({"customerId": customer} if customer else {})},
    )["createLoad"]["id"]  # fmt: skip
    made = gql(
        base, bearer, "mutation($i: CreateInvoiceInput!) { createInvoice(input: $i) { id } }",
        i={"loadId": load, "status": "DRAFT", "amount": amount},
    )["createInvoice"]["id"]  # fmt: skip
    gql(
        base,
        bearer,
        "mutation($id: ID!, $d: Date) { updateInvoiceStatus(id: $id, status: BILLED, invoiceDate: $d) { id } }",
        id=made,
        d=day,
    )
    if paid:
        pay(base, bearer, made, paid)
    return str(made)


def pay(base: str, bearer: str, invoice: str, amount: str) -> None:
    gql(
        base,
        bearer,
        "mutation($id: ID!, $a: Money!) { recordPayment(invoiceId: $id, amount: $a) { id } }",
        id=invoice,
        a=amount,
    )


@pytest.mark.slow
def test_receivables_panel_shows_money_and_refreshes_when_it_changes(
    watch: Any, databases: Databases, database_url: str
) -> None:
    """Invoiced / collected / outstanding from the live event; the aging bar, top customers and the
    last 12 months of revenue read again whenever a money value changes."""
    env = {"TALLY_DATABASE_URL": database_url, "TALLY_RECALC_INTERVAL_SECONDS": "0"}
    admin = token(ORG, "admin")
    today = time.strftime("%Y-%m-%d", time.gmtime())
    month = today[:7]
    with running_server(env, port=free_port(), timeout=SERVER_START_TIMEOUT) as base:
        customers = {}
        for name in ("Acme Freight", "Globex Logistics"):
            made = gql(
                base,
                admin,
                "mutation($o: ID!, $n: String!) { createCustomer(orgId: $o, name: $n) { id } }",
                o=ORG,
                n=name,
            )
            customers[name] = made["createCustomer"]["id"]
        bill(base, admin, customers["Acme Freight"], "1250.50", today)
        bill(base, admin, customers["Acme Freight"], "800", "2025-01-15", paid="300")
        globex = bill(base, admin, customers["Globex Logistics"], "2400", today, paid="400")
        bill(base, admin, None, "99.99", today, paid="99.99")

        page = watch(base)
        page.get_by_label("Bearer token").fill(admin)
        page.get_by_role("button", name="Sign in", exact=True).click()
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        expect(page.locator("#receivables")).to_be_visible()
        expect(page.locator("#tile-money-invoiced .tile-value")).to_have_text("4,550.49")
        expect(page.locator("#tile-money-collected .tile-value")).to_have_text("799.99")
        expect(page.locator("#tile-money-outstanding .tile-value")).to_have_text("3,750.50")
        expect(page.locator("#age-current")).to_have_text("0\u201330 days: 3,250.50")
        expect(page.locator("#age-over90")).to_have_text("Over 90 days: 500.00")
        rows = page.locator("#customers tr")
        expect(rows).to_have_count(2)
        expect(rows.nth(0)).to_have_text(re.compile(r"Globex Logistics\s*1\s*2,000\.00"))
        expect(rows.nth(1)).to_have_text(re.compile(r"Acme Freight\s*2\s*1,750\.50"))
        expect(page.locator("#revenue")).to_have_attribute("aria-label", re.compile(rf"{month} 3,750\.49"))
        page.screenshot(path=ARTIFACTS.joinpath("dashboard-receivables.png"), full_page=True, animations="disabled")

        # A payment elsewhere: the tiles change with the event, the panel with its next read.
        pay(base, admin, globex, "1500")
        expect(page.locator("#tile-money-collected .tile-value")).to_have_text("2,299.99")
        expect(page.locator("#tile-money-outstanding .tile-value")).to_have_text("2,250.50")
        expect(rows.nth(0)).to_have_text(re.compile(r"Acme Freight\s*2\s*1,750\.50"))
        expect(rows.nth(1)).to_have_text(re.compile(r"Globex Logistics\s*1\s*500\.00"))
        expect(page.locator("#age-current")).to_have_text("0\u201330 days: 1,750.50")
        watch.opened[0].check_hygiene(base, admin)
