"""Several processes on one SQLite file and the default memory:// channel: every
commit reaches every subscriber on every process (each follows the database)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from db.aggregates import StatsSnapshot
from db.broadcast import StatsHub, fan_out_of
from tests.helpers import token
from tests.live import Subscriber, subscription, wait_live_subscribers
from tests.scrape import scrape_async
from tests.server import running_server

ORG = "org_follow"
TOKEN = token(ORG, "admin")
CREATE = "mutation($o: ID!) { createLoad(input: {orgId: $o}) { id } }"
WRITES_PER_PROCESS = 15
DELAY_SAMPLES = 10
MAX_DELAY_SECONDS = 0.25


async def create_load(client: httpx.AsyncClient, base: str) -> None:
    response = await client.post(
        f"{base}/graphql", json={"query": CREATE, "variables": {"o": ORG}}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert "errors" not in response.json(), response.text


async def versions_until(sub: Subscriber, final: int) -> list[int]:
    versions: list[int] = []
    while not versions or versions[-1] < final:
        versions.append((await sub.next(timeout=5))["version"])
    return versions


@pytest.mark.slow
async def test_every_subscriber_on_every_process_sees_every_commit(tmp_path: Path) -> None:
    env = {"TALLY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'tally.db'}", "TALLY_RECALC_INTERVAL_SECONDS": "0"}
    with running_server(env) as first, running_server(env) as second:
        async with (
            httpx.AsyncClient(timeout=10) as client,
            subscription(first, TOKEN, ORG) as on_first,
            subscription(second, TOKEN, ORG) as on_second,
        ):
            assert (await on_first.next())["version"] == 0 and (await on_second.next())["version"] == 0
            for base in (first, second):
                assert await wait_live_subscribers(base, 1) == 1
                samples = await scrape_async(base)
                assert samples['tally_live_fan_out{kind="sqlite-follow"}'] == 1
                assert samples["tally_live_connected"] == 1

            async def write_on(base: str) -> None:
                for _ in range(WRITES_PER_PROCESS):
                    await create_load(client, base)

            final = 2 * WRITES_PER_PROCESS
            seen = await asyncio.gather(
                write_on(first),
                write_on(second),
                versions_until(on_first, final),
                versions_until(on_second, final),
            )
            for versions in seen[2:]:
                assert versions[-1] == final
                assert all(a < b for a, b in itertools.pairwise(versions)), versions

            delays = []
            version = final
            for sample in range(DELAY_SAMPLES):
                writer, reader = (first, on_second) if sample % 2 else (second, on_first)
                started = time.perf_counter()
                await create_load(client, writer)
                version += 1
                while (await reader.next(timeout=5))["version"] < version:
                    pass
                delays.append(time.perf_counter() - started)
                for sub in (on_first, on_second):  # the writer's own subscriber heard it too
                    while not sub.events.empty():
                        await sub.next()
            print(
                f"cross-process delivery, request sent to event received: median {statistics.median(delays) * 1000:.0f} ms,"
                f" max {max(delays) * 1000:.0f} ms over {len(delays)} commits"
            )
            assert max(delays) < MAX_DELAY_SECONDS, delays
    for base in (first, second):  # stopped: the follower ended with its process, quietly
        log = base.log_path.read_text()
        assert "Traceback" not in log and "Task was destroyed" not in log, log


def test_fan_out_names_what_carries_commits_between_processes() -> None:
    sqlite = "sqlite+aiosqlite:///./tally.db"
    postgres = "postgresql+asyncpg://tally@db/tally"
    assert fan_out_of("memory://", sqlite) == "sqlite-follow"
    assert fan_out_of("memory://", "sqlite+aiosqlite:///:memory:") == "process-only"
    assert fan_out_of("memory://", postgres) == "process-only"
    assert fan_out_of("redis://cache:6379", sqlite) == "redis"
    assert fan_out_of("postgres://tally@db/tally", postgres) == "postgres"


async def test_memory_on_postgres_warns_once_at_start(caplog: pytest.LogCaptureFixture) -> None:
    async def read(org: str) -> Any:
        return StatsSnapshot.empty(org)

    hub = StatsHub("memory://", read, database_url="postgresql+asyncpg://tally@db/tally")
    with caplog.at_level(logging.WARNING, logger="tally.broadcast"):
        await hub.start()
        await hub.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "TALLY_BROADCAST_URL" in warnings[0], warnings
    assert hub.fan_out == "process-only"
