"""Sockets that never authenticate are bounded: capped while they wait, closed when they time out.

On each subprotocol, 2,000 WebSockets are opened from four loopback addresses and never
send `connection_init`. Meanwhile an honest client (another address) connects,
subscribes and receives the events of new commits, and HTTP count queries keep their
p50 within 2x of the p50 measured before. The server admits at most its per-address
cap from each address (the rest are refused at the handshake), and closes every admitted
one with 4408 once `TALLY_WS_INIT_TIMEOUT_SECONDS` has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from tests.helpers import token
from tests.live import subscription, ws_url
from tests.server import ServerUrl, running_server

ORG = "org_idle"
INIT_TIMEOUT = 3
PER_ADDRESS = 32
ATTACKERS = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
SOCKETS = 2000
COUNT = {"query": '{ countLoadsByStatus(orgId: "org_idle") { total } }'}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerUrl]:
    database = tmp_path_factory.mktemp("idle") / "tally.db"
    env = {
        "TALLY_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "TALLY_WS_INIT_TIMEOUT_SECONDS": str(INIT_TIMEOUT),
        "TALLY_MAX_PENDING_SOCKETS_PER_ADDRESS": str(PER_ADDRESS),
    }
    with running_server(env) as base:
        yield base


async def count_query_p50(base: str, requests: int = 150) -> float:
    headers = {"Authorization": f"Bearer {token(ORG)}"}
    timings = []
    async with httpx.AsyncClient(base_url=base, headers=headers) as client:
        for _ in range(requests):
            started = time.perf_counter()
            response = await client.post("/graphql", json=COUNT)
            timings.append(time.perf_counter() - started)
            assert response.status_code == 200
    return statistics.median(timings)


async def idle_socket(base: str, protocol: str, address: str) -> Any | None:
    """A WebSocket that never sends connection_init; None when the server refused it."""
    try:
        return await websockets.connect(
            ws_url(base),
            subprotocols=[websockets.Subprotocol(protocol)],
            local_addr=(address, 0),
            open_timeout=20,
            ping_interval=None,
        )
    except websockets.InvalidStatus as refused:
        assert refused.response.status_code == 403
        return None


async def closed_by_server(ws: Any) -> int | None:
    with contextlib.suppress(websockets.ConnectionClosed, TimeoutError):
        while True:
            await asyncio.wait_for(ws.recv(), INIT_TIMEOUT + 5)
    return ws.close_code


@pytest.mark.parametrize("protocol", ["graphql-transport-ws", "graphql-ws"])
async def test_idle_sockets_are_capped_and_closed_while_honest_clients_are_served(
    server: ServerUrl, protocol: str
) -> None:
    baseline = await count_query_p50(server)
    opened = await asyncio.gather(*(idle_socket(server, protocol, ATTACKERS[i % 4]) for i in range(SOCKETS)))
    admitted = [ws for ws in opened if ws is not None]
    assert len(admitted) == PER_ADDRESS * len(ATTACKERS), "each address gets its cap, no more"

    async with subscription(server, token(ORG), ORG) as subscriber:
        first = await subscriber.next()
        async with httpx.AsyncClient(base_url=server, headers={"Authorization": f"Bearer {token(ORG)}"}) as client:
            created = await client.post(
                "/graphql", json={"query": f'mutation {{ createLoad(input: {{orgId: "{ORG}"}}) {{ id }} }}'}
            )
            assert not created.json().get("errors")
        assert (await subscriber.next())["version"] == first["version"] + 1
        during = await count_query_p50(server)
    print(f"{protocol}: {len(admitted)} of {SOCKETS} admitted; count p50 {baseline * 1e3:.2f} -> {during * 1e3:.2f} ms")
    assert during <= 2 * baseline, f"count query p50 {during * 1000:.2f} ms under attack vs {baseline * 1000:.2f} ms"

    started = time.monotonic()
    codes = await asyncio.gather(*(closed_by_server(ws) for ws in admitted))
    assert set(codes) == {4408}, codes
    assert time.monotonic() - started <= INIT_TIMEOUT + 2

    again = await idle_socket(server, protocol, ATTACKERS[0])
    assert again is not None, "closed sockets no longer count as pending"
    await again.close()
