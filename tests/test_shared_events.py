"""The live fast path (edge/shared_events.py): one execution per operation and snapshot, not per subscriber.

A real uvicorn runs in this process, so the test can look at what the edge kept for
a snapshot: with TALLY_SHARED_EVENTS on, the subscribers woken by one commit share one
execution (and one encoded payload) per distinct operation; with it off, the edge keeps
nothing and every subscriber still gets the same events through Strawberry's own path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from main import create_app
from settings import Settings
from tests.helpers import token
from tests.live import subscription
from tests.server import free_port

ORG = "org_shared"
NARROW = (
    "subscription($org: ID!, $since: Int) { organizationStatsChanged(orgId: $org, sinceVersion: $since) { version } }"
)


@pytest.fixture(params=[True, False], ids=["shared", "plain"])
async def server(request: pytest.FixtureRequest, database_url: str) -> AsyncIterator[tuple[str, Starlette]]:
    settings = Settings(database_url=database_url, recalc_interval_seconds=0, shared_events=request.param)
    port = free_port()
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, ws="websockets-sansio", log_level="warning")
    uvicorn_server = uvicorn.Server(config)
    task = asyncio.create_task(uvicorn_server.serve())
    while not uvicorn_server.started:
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}", app
    uvicorn_server.should_exit = True
    await task


def kept_for(app: Starlette, version: int) -> list[Any]:
    """The shared events the edge holds for the org's snapshot of this version."""
    events = app.state.graphql.shared_events
    if events is None:
        return []
    return [
        event for snapshot, event in events._events.values() if snapshot.org_id == ORG and snapshot.version == version
    ]


async def test_one_commit_is_executed_once_per_distinct_operation(server: tuple[str, Starlette]) -> None:
    base, app = server
    async with (
        subscription(base, token(ORG), ORG) as full_1,
        subscription(base, token(ORG), ORG) as full_2,
        subscription(base, token(ORG), ORG) as full_3,
        subscription(base, token(ORG), ORG, document=NARROW) as narrow,
    ):
        for subscriber in (full_1, full_2, full_3, narrow):
            assert (await subscriber.next())["version"] == 0
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token(ORG)}"}) as client:
            for _ in range(2):
                await client.post(
                    "/graphql", json={"query": f'mutation {{ createLoad(input: {{orgId: "{ORG}"}}) {{ id }} }}'}
                )
        for version in (1, 2):
            events = [await subscriber.next() for subscriber in (full_1, full_2, full_3)]
            assert events[0] == events[1] == events[2] and events[0]["version"] == version
            assert await narrow.next() == {"version": version}
    if app.state.settings.shared_events:
        (event,) = kept_for(app, 2)
        assert len(event.results) == 2 and len(event.payloads) == 2, (
            "three subscribers of one operation, one of another"
        )
    else:
        assert kept_for(app, 2) == []
