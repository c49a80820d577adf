"""WebSocket subscribers (gql over websockets) and Redis servers for live-update tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from gql import Client, GraphQLRequest
from gql.transport.websockets import WebsocketsTransport

from db.tasks import finish
from tests.scrape import live
from tests.server import free_port

STATS_CHANGED = """
subscription($org: ID!, $since: Int) {
  organizationStatsChanged(orgId: $org, sinceVersion: $since) {
    orgId version loads { open assigned completed canceled total } invoices { draft void total }
  }
}
"""


class Subscriber:
    """Collects every event of one subscription into a queue."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()
        self.ready = asyncio.Event()

    async def next(self, timeout: float = 5) -> dict[str, Any]:
        """The next event; raises what ended the subscription, if it ended."""
        event = await asyncio.wait_for(self.events.get(), timeout)
        if isinstance(event, BaseException):
            raise event
        return event

    async def nothing_within(self, seconds: float) -> bool:
        try:
            event = await asyncio.wait_for(self.events.get(), seconds)
        except TimeoutError:
            return True
        raise AssertionError(f"unexpected event {event}")


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/graphql"


@contextlib.asynccontextmanager
async def subscription(
    base: str,
    token: str,
    org: str,
    since: int | None = None,
    protocol: str = "graphql-transport-ws",
    document: str = STATS_CHANGED,
) -> AsyncIterator[Subscriber]:
    subscriber = Subscriber()
    transport = WebsocketsTransport(
        url=ws_url(base), init_payload={"Authorization": f"Bearer {token}"}, subprotocols=[protocol]
    )
    request = GraphQLRequest(document, variable_values={"org": org, "since": since})

    async def run() -> None:
        try:
            async with Client(transport=transport, fetch_schema_from_transport=False) as session:
                subscriber.ready.set()
                async for result in session.subscribe(request):
                    await subscriber.events.put(result["organizationStatsChanged"])
        except Exception as error:
            subscriber.ready.set()
            await subscriber.events.put(error)

    task = asyncio.create_task(run())
    try:
        await asyncio.wait_for(subscriber.ready.wait(), 10)
        yield subscriber
    finally:
        await finish([task], at_most=10, grace=5)  # gql closes its socket as it stops


async def wait_live_subscribers(base: str, expected: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while True:
        count = (await live(base))["subscribers"]
        if count == expected or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.05)


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI")
        pytest.skip(f"{name} is not installed")
    return path


class RedisServer:
    """A throwaway redis-server on a spare loopback port that can be stopped and restarted."""

    def __init__(self) -> None:
        self.binary = require_binary("redis-server")
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                import socket

                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
