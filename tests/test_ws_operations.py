"""Queries and mutations over a long-lived WebSocket see every commit (both subprotocols)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import websockets
from gql import Client, GraphQLRequest
from gql.client import AsyncClientSession
from gql.transport.exceptions import TransportQueryError
from gql.transport.websockets import WebsocketsTransport

from tests.helpers import token
from tests.live import STATS_CHANGED, ws_url
from tests.server import ServerUrl, running_server

ORG = "org_ws_ops"
PROTOCOLS = ["graphql-transport-ws", "graphql-ws"]
LOAD_WITH_INVOICE = "query($id: ID!) { load(id: $id) { status invoice { id status } } }"
INVOICE_WITH_LOAD = "query($id: ID!) { invoice(id: $id) { status load { status } } }"

pytestmark = pytest.mark.slow  # each test talks to a real server


@pytest.fixture
def server(database_url: str) -> Iterator[ServerUrl]:
    with running_server({"TALLY_DATABASE_URL": database_url}) as base:
        yield base


@pytest.fixture(params=PROTOCOLS)
async def socket(request: pytest.FixtureRequest, server: ServerUrl) -> AsyncIterator[AsyncClientSession]:
    """One WebSocket connection, kept open for the whole test."""
    transport = WebsocketsTransport(
        url=ws_url(server),
        init_payload={"Authorization": f"Bearer {token(ORG)}"},
        subprotocols=[request.param],
    )
    async with Client(transport=transport, fetch_schema_from_transport=False) as session:
        yield session


async def over_http(base: str, query: str, **variables: Any) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{base}/graphql",
            json={"query": query, "variables": variables},
            headers={"Authorization": f"Bearer {token(ORG)}"},
        )
    body = response.json()
    assert not body.get("errors"), body
    return body["data"]


async def over_socket(session: AsyncClientSession, query: str, **variables: Any) -> dict[str, Any]:
    return await session.execute(GraphQLRequest(query, variable_values=variables))


async def new_load(base: str) -> str:
    data = await over_http(base, "mutation($o: ID!) { createLoad(input: {orgId: $o}) { id } }", o=ORG)
    return str(data["createLoad"]["id"])


async def new_invoice(base: str, load_id: str) -> str:
    data = await over_http(base, "mutation($l: ID!) { createInvoice(input: {loadId: $l}) { id } }", l=load_id)
    return str(data["createInvoice"]["id"])


async def test_load_invoice_follows_commits_made_over_http(server: ServerUrl, socket: AsyncClientSession) -> None:
    load_id = await new_load(server)
    assert (await over_socket(socket, LOAD_WITH_INVOICE, id=load_id))["load"]["invoice"] is None

    invoice_id = await new_invoice(server, load_id)
    seen = (await over_socket(socket, LOAD_WITH_INVOICE, id=load_id))["load"]["invoice"]
    assert seen == {"id": invoice_id, "status": "DRAFT"}

    await over_http(server, "mutation($i: ID!) { updateInvoiceStatus(id: $i, status: BILLED) { id } }", i=invoice_id)
    seen = (await over_socket(socket, LOAD_WITH_INVOICE, id=load_id))["load"]["invoice"]
    assert seen == {"id": invoice_id, "status": "BILLED"}


async def test_invoice_load_follows_commits_made_over_http(server: ServerUrl, socket: AsyncClientSession) -> None:
    load_id = await new_load(server)
    invoice_id = await new_invoice(server, load_id)
    assert (await over_socket(socket, INVOICE_WITH_LOAD, id=invoice_id))["invoice"]["load"] == {"status": "OPEN"}

    await over_http(server, "mutation($l: ID!) { updateLoadStatus(id: $l, status: CANCELED) { id } }", l=load_id)
    assert (await over_socket(socket, INVOICE_WITH_LOAD, id=invoice_id))["invoice"]["load"] == {"status": "CANCELED"}


async def test_a_mutation_over_the_socket_then_a_query_sees_it(server: ServerUrl, socket: AsyncClientSession) -> None:
    load_id = await new_load(server)
    invoice_id = await new_invoice(server, load_id)
    assert (await over_socket(socket, LOAD_WITH_INVOICE, id=load_id))["load"]["invoice"]["status"] == "DRAFT"

    changed = await over_socket(
        socket, "mutation($i: ID!) { updateInvoiceStatus(id: $i, status: BILLED) { status } }", i=invoice_id
    )
    assert changed == {"updateInvoiceStatus": {"status": "BILLED"}}
    assert (await over_socket(socket, LOAD_WITH_INVOICE, id=load_id))["load"]["invoice"]["status"] == "BILLED"
    assert (await over_socket(socket, INVOICE_WITH_LOAD, id=invoice_id))["invoice"]["status"] == "BILLED"


async def test_a_subscription_keeps_its_events_beside_queries_on_the_same_socket(
    server: ServerUrl, socket: AsyncClientSession
) -> None:
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def follow() -> None:
        request = GraphQLRequest(STATS_CHANGED, variable_values={"org": ORG})
        async for result in socket.subscribe(request):
            await events.put(result["organizationStatsChanged"])

    follower = asyncio.create_task(follow())
    try:
        assert (await asyncio.wait_for(events.get(), 5))["version"] == 0
        for expected_version in (1, 2, 3):
            load_id = await new_load(server)
            assert (await over_socket(socket, LOAD_WITH_INVOICE, id=load_id))["load"]["status"] == "OPEN"
            event = await asyncio.wait_for(events.get(), 5)
            assert (event["version"], event["loads"]["open"]) == (expected_version, expected_version)
    finally:
        follower.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follower


async def test_errors_over_the_socket_carry_their_codes_not_internal(
    server: ServerUrl, socket: AsyncClientSession
) -> None:
    with pytest.raises(TransportQueryError) as refused:
        await over_socket(socket, 'mutation { updateLoadStatus(id: "nope", status: COMPLETED) { id } }')
    assert [error["extensions"]["code"] for error in refused.value.errors or []] == ["NOT_FOUND"]
    with pytest.raises(TransportQueryError) as invalid:
        await over_socket(socket, "{ load(id: 1) { nonsense } }")
    assert [error["extensions"]["code"] for error in invalid.value.errors or []] == ["BAD_USER_INPUT"]
    assert "ERROR" not in server.log_path.read_text()


MALFORMED = [
    [1, 2],
    "text",
    {"type": 7},
    {"id": 1, "payload": {"query": "{ __typename }"}},
    {"id": "1"},
    {"id": "1", "payload": {}},
    {"id": "1", "payload": {"query": 5}},
    {"id": "1", "payload": {"query": "{ __typename }", "variables": "x"}},
    {"id": "1", "payload": {"query": "{ __typename }", "operationName": 3}},
]


async def opened(base: str, protocol: str) -> Any:
    ws = await websockets.connect(ws_url(base), subprotocols=[websockets.Subprotocol(protocol)])
    await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {token(ORG)}"}}))
    assert json.loads(await ws.recv())["type"] == "connection_ack"
    return ws


async def next_reply(ws: Any) -> dict[str, Any]:
    while True:
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if reply.get("type") != "ka":
            return dict(reply)


@pytest.mark.parametrize("message", MALFORMED, ids=[json.dumps(m) for m in MALFORMED])
async def test_a_malformed_message_is_refused_by_the_protocols_rules_and_logs_nothing(
    server: ServerUrl, message: Any
) -> None:
    def typed(operation: str) -> Any:
        return {"type": operation, **message} if isinstance(message, dict) and "type" not in message else message

    modern = await opened(server, "graphql-transport-ws")
    await modern.send(json.dumps(typed("subscribe")))
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(modern.recv(), 5)
    assert modern.close_code == 4400

    legacy = await opened(server, "graphql-ws")
    await legacy.send(json.dumps(typed("start")))
    reply = await next_reply(legacy)
    assert reply["type"] == "error" and reply["payload"]["extensions"]["code"] == "BAD_USER_INPUT", reply
    await legacy.send(json.dumps({"type": "start", "id": "ok", "payload": {"query": "{ __typename }"}}))
    assert await next_reply(legacy) == {"type": "data", "id": "ok", "payload": {"data": {"__typename": "Query"}}}
    await legacy.close()

    log = server.log_path.read_text()
    assert "ERROR" not in log and "Traceback" not in log, log
