"""WebSocket access: token in connection_init, org fixed per connection, expiry, limits."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from tests.helpers import VERIFIER, token
from tests.live import ws_url
from tests.server import running_server

ORG = "org_ws"
SUBSCRIBE = "subscription($o: ID!) { organizationStatsChanged(orgId: $o) { version } }"

pytestmark = pytest.mark.slow  # each test talks to a real server


@pytest.fixture
def server(database_url: str) -> Iterator[str]:
    env = {
        "TALLY_DATABASE_URL": database_url,
        "TALLY_MAX_SUBSCRIPTIONS_PER_CONNECTION": "3",
        "TALLY_MAX_CONNECTIONS_PER_TOKEN": "2",
    }
    with running_server(env) as base:
        yield base


async def connect(base: str, payload: dict[str, Any] | None) -> Any:
    ws = await websockets.connect(ws_url(base), subprotocols=[websockets.Subprotocol("graphql-transport-ws")])
    await ws.send(json.dumps({"type": "connection_init", "payload": payload or {}}))
    return ws


async def subscribe(ws: Any, op_id: str, org: str = ORG) -> dict[str, Any]:
    await ws.send(
        json.dumps({"id": op_id, "type": "subscribe", "payload": {"query": SUBSCRIBE, "variables": {"o": org}}})
    )
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if message.get("id") == op_id:
            return message


async def closed_code(ws: Any, within: float) -> int | None:
    try:
        while True:
            await asyncio.wait_for(ws.recv(), within)
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
    except TimeoutError:
        return None


@pytest.mark.parametrize(
    "payload", [None, {"Authorization": "Bearer nonsense"}, {"Authorization": f"Bearer {token(ORG, 'admin', ttl=-10)}"}]
)
async def test_no_subscription_without_a_valid_token(server: str, payload: dict[str, Any] | None) -> None:
    ws = await connect(server, payload)
    assert await closed_code(ws, 5) == 4403


async def test_subscription_ends_when_its_token_expires(server: str) -> None:
    ws = await connect(
        server, {"Authorization": f"Bearer {VERIFIER.issue(org_id=ORG, role='member', subject='short', ttl_seconds=2)}"}
    )
    assert json.loads(await ws.recv())["type"] == "connection_ack"
    assert (await subscribe(ws, "1"))["type"] == "next"
    started = time.monotonic()
    assert await closed_code(ws, 5) == 4403
    assert time.monotonic() - started < 4


async def test_a_connection_cannot_switch_orgs(server: str) -> None:
    ws = await connect(server, {"Authorization": f"Bearer {token(ORG, 'admin')}"})
    assert json.loads(await ws.recv())["type"] == "connection_ack"
    refused = await subscribe(ws, "1", org="org_elsewhere")
    assert refused["type"] == "error" and refused["payload"][0]["extensions"]["code"] == "FORBIDDEN"
    # A second connection_init (to present another org's token) closes the connection.
    await ws.send(
        json.dumps(
            {"type": "connection_init", "payload": {"Authorization": f"Bearer {token('org_elsewhere', 'admin')}"}}
        )
    )
    assert await closed_code(ws, 5) == 4429
    await ws.close()


async def test_subscriptions_per_connection_and_connections_per_token_are_capped(server: str) -> None:
    bearer = token(ORG, "member")
    first = await connect(server, {"Authorization": f"Bearer {bearer}"})
    assert json.loads(await first.recv())["type"] == "connection_ack"
    for op in ("1", "2", "3"):
        assert (await subscribe(first, op))["type"] == "next"
    fourth = await subscribe(first, "4")
    assert fourth["type"] == "next" and fourth["payload"]["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", fourth
    second = await connect(server, {"Authorization": f"Bearer {bearer}"})
    assert json.loads(await second.recv())["type"] == "connection_ack"
    third = await connect(server, {"Authorization": f"Bearer {bearer}"})
    assert await closed_code(third, 5) == 4403
    await second.close()
    await first.close()
    await asyncio.sleep(0.3)
    again = await connect(server, {"Authorization": f"Bearer {bearer}"})
    assert json.loads(await again.recv())["type"] == "connection_ack"
    await again.close()
