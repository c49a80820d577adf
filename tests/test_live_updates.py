"""organizationStatsChanged through real uvicorn processes and real WebSocket clients."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gql.transport.exceptions import TransportQueryError

from tests.databases import PG_SERVER, make_databases
from tests.helpers import VERIFIER, token
from tests.live import RedisServer, redis_server, subscription, wait_live_subscribers
from tests.scrape import live
from tests.server import running_server

__all__ = ["redis_server"]  # the fixture, re-exported for pytest
pytestmark = pytest.mark.slow

ORG = "org_live"
TOKEN = token(ORG, "admin")


async def call(base: str, query: str, **variables: Any) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{base}/graphql",
            json={"query": query, "variables": variables},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    return response.json()


async def create_load(base: str, status: str = "OPEN") -> str:
    body = await call(
        base,
        "mutation($o: ID!, $s: LoadStatus) { createLoad(input: {orgId: $o, status: $s}) { id } }",
        o=ORG,
        s=status,
    )
    return str(body["data"]["createLoad"]["id"])


def env_for(database_url: str, **extra: str) -> dict[str, str]:
    return {"TALLY_DATABASE_URL": database_url, **extra}


@pytest.fixture
def server(database_url: str) -> Iterator[str]:
    with running_server(env_for(database_url)) as base:
        yield base


async def test_snapshot_then_one_event_per_commit(server: str) -> None:
    async with subscription(server, TOKEN, ORG) as sub:
        first = await sub.next()
        assert first["version"] == 0 and first["loads"]["total"] == 0
        await create_load(server)
        assert (await sub.next())["version"] == 1
        load_id = await create_load(server)
        event = await sub.next()
        assert event["version"] == 2 and event["loads"]["open"] == 2
        await call(server, "mutation($id: ID!) { updateLoadStatus(id: $id, status: ASSIGNED) { id } }", id=load_id)
        event = await sub.next()
        assert event["version"] == 3 and event["loads"] == {
            "open": 1,
            "assigned": 1,
            "completed": 0,
            "canceled": 0,
            "total": 2,
        }


async def test_subscribers_woken_by_one_commit_each_get_their_own_selection(server: str) -> None:
    """One event is executed once per distinct operation and shared (edge/shared_events.py):
    different selections and variables must still get their own answers."""
    other = "org_other"
    narrow = (
        "subscription($org: ID!, $since: Int) { organizationStatsChanged(orgId: $org, sinceVersion: $since) "
        "{ v: version loads { total } } }"
    )
    service = token(None, "service")
    async with (
        subscription(server, TOKEN, ORG) as full_1,
        subscription(server, TOKEN, ORG) as full_2,
        subscription(server, TOKEN, ORG, document=narrow) as slim,
        subscription(server, service, other) as elsewhere,
    ):
        for sub in (full_1, full_2, slim, elsewhere):
            await sub.next()  # the snapshots
        await create_load(server)
        first, second, narrow_event = await full_1.next(), await full_2.next(), await slim.next()
        assert first == second
        assert first["version"] == 1 and first["loads"]["open"] == 1 and first["invoices"]["total"] == 0
        assert narrow_event == {"v": 1, "loads": {"total": 1}}
        assert await elsewhere.nothing_within(0.3)


async def test_since_version_resumes_without_repeating(server: str) -> None:
    await create_load(server)
    await create_load(server)
    async with subscription(server, TOKEN, ORG, since=2) as current:
        assert await current.nothing_within(0.5)
        async with subscription(server, TOKEN, ORG, since=1) as behind:
            assert (await behind.next())["version"] == 2
            await create_load(server)
            assert (await behind.next())["version"] == 3
            assert (await current.next())["version"] == 3


async def test_bulk_void_is_one_event_and_a_refusal_is_none(server: str) -> None:
    ids = []
    for _ in range(5):
        load_id = await create_load(server)
        body = await call(server, "mutation($id: ID!) { createInvoice(input: {loadId: $id}) { id } }", id=load_id)
        ids.append(body["data"]["createInvoice"]["id"])
    async with subscription(server, TOKEN, ORG) as sub:
        assert (await sub.next())["version"] == 10
        result = await call(server, "mutation($ids: [ID!]!) { bulkVoidInvoices(ids: $ids) { updated } }", ids=ids)
        assert result["data"]["bulkVoidInvoices"]["updated"] == 5
        event = await sub.next()
        assert event["version"] == 11 and event["invoices"]["void"] == 5
        assert await sub.nothing_within(0.5)
        refused = await call(
            server, "mutation($id: ID!) { updateInvoiceStatus(id: $id, status: PAID) { id } }", id=ids[0]
        )
        assert refused["errors"][0]["extensions"]["code"] == "INVALID_TRANSITION"
        assert await sub.nothing_within(0.5)


async def test_legacy_graphql_ws_protocol(server: str) -> None:
    async with subscription(server, TOKEN, ORG, protocol="graphql-ws") as sub:
        assert (await sub.next())["version"] == 0
        await create_load(server)
        assert (await sub.next())["version"] == 1


async def test_foreign_org_gets_an_error_and_nothing_else(server: str) -> None:
    async with subscription(server, token("org_other", "admin"), ORG) as sub:
        with pytest.raises(TransportQueryError) as refused:
            await sub.next(timeout=3)
        assert refused.value.errors and refused.value.errors[0]["extensions"]["code"] == "FORBIDDEN"
        assert await sub.nothing_within(0.3)
    assert await wait_live_subscribers(server, 0) == 0


async def test_subscribers_leave_nothing_behind(server: str) -> None:
    """1,000 subscribe/disconnect cycles: live subscribers back at zero."""
    tokens = [VERIFIER.issue(org_id=ORG, role="member", subject=f"client-{i}", ttl_seconds=600) for i in range(20)]

    async def client(bearer: str) -> None:
        for _ in range(50):
            async with subscription(server, bearer, ORG) as sub:
                await sub.next()

    await asyncio.gather(*(client(bearer) for bearer in tokens))
    assert await wait_live_subscribers(server, 0) == 0
    assert (await live(server))["channels"] == 0


@pytest.mark.parametrize("backend", ["redis", "postgres"])
async def test_two_processes_share_one_channel(database_url: str, redis_server: RedisServer, backend: str) -> None:
    """Redis pub/sub, or PostgreSQL LISTEN/NOTIFY (TALLY_BROADCAST_URL=postgres://...)."""
    if backend == "redis":
        broadcast = redis_server.url
    else:
        make_databases("postgresql", Path("."))  # skips locally / fails in CI without PostgreSQL
        broadcast = PG_SERVER.replace("postgresql://", "postgres://") + "/postgres"
    env = env_for(database_url, TALLY_BROADCAST_URL=broadcast)
    with running_server(env) as first, running_server(env) as second:
        async with subscription(second, TOKEN, ORG) as sub:
            assert (await sub.next())["version"] == 0
            await create_load(first)
            event = await sub.next()
            assert event["version"] == 1 and event["loads"]["open"] == 1


async def test_subscriber_converges_after_redis_restarts(database_url: str, redis_server: RedisServer) -> None:
    env = env_for(database_url, TALLY_BROADCAST_URL=redis_server.url)
    with running_server(env) as writer, running_server(env) as reader:
        async with subscription(reader, TOKEN, ORG) as sub:
            assert (await sub.next())["version"] == 0
            redis_server.stop()
            # The writer's publishes fail, yet its mutations commit; the reader misses them.
            assert await create_load(writer) and await create_load(writer)
            assert (await live(writer))["publish_failures"] >= 1
            redis_server.start()
            restarted = time.monotonic()
            event = await sub.next(timeout=5)
            while event["version"] < 2:
                event = await sub.next(timeout=5 - (time.monotonic() - restarted))
            print(f"converged {time.monotonic() - restarted:.2f} s after Redis restarted")
            assert event["version"] == 2 and event["loads"]["open"] == 2
            await create_load(writer)
            assert (await sub.next(timeout=5))["version"] == 3


MONEY_CHANGED = """
subscription($org: ID!, $since: Int) {
  organizationStatsChanged(orgId: $org, sinceVersion: $since) { version money { invoiced collected outstanding } }
}
"""


async def test_every_event_carries_the_money_totals(server: str) -> None:
    """gql over a real socket: billing and a payment each publish one event with the new totals;
    pricing a DRAFT invoice changes no count and no money value, so it publishes nothing."""
    load_id = await create_load(server)
    body = await call(server, "mutation($id: ID!) { createInvoice(input: {loadId: $id}) { id } }", id=load_id)
    invoice = body["data"]["createInvoice"]["id"]
    async with subscription(server, TOKEN, ORG, document=MONEY_CHANGED) as sub:
        first = await sub.next()
        assert first["money"] == {"invoiced": "0.00", "collected": "0.00", "outstanding": "0.00"}
        await call(server, 'mutation($id: ID!) { setInvoiceAmount(id: $id, amount: "120.5") { id } }', id=invoice)
        assert await sub.nothing_within(0.5)
        await call(server, "mutation($id: ID!) { updateInvoiceStatus(id: $id, status: BILLED) { id } }", id=invoice)
        billed = await sub.next()
        assert billed["version"] == first["version"] + 1
        assert billed["money"] == {"invoiced": "120.50", "collected": "0.00", "outstanding": "120.50"}
        await call(server, 'mutation($id: ID!) { recordPayment(invoiceId: $id, amount: "20.5") { id } }', id=invoice)
        paid = await sub.next()
        assert paid["version"] == billed["version"] + 1
        assert paid["money"] == {"invoiced": "120.50", "collected": "20.50", "outstanding": "100.00"}
