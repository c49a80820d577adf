"""Recovery: the service keeps answering and subscribers converge after a PostgreSQL restart.

(The Redis restart is covered in test_live_updates.py.)
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.helpers import token
from tests.live import subscription
from tests.private_postgres import PrivatePostgres, private_postgres
from tests.server import running_server

__all__ = ["private_postgres"]
pytestmark = pytest.mark.slow

ORG = "org_restart"
TOKEN = token(ORG, "admin")
CREATE = 'mutation { createLoad(input: {orgId: "org_restart"}) { id } }'


async def post(client: httpx.AsyncClient, base: str, query: str) -> dict:
    response = await client.post(f"{base}/graphql", json={"query": query}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    return response.json()


async def test_service_recovers_after_postgres_restarts(private_postgres: PrivatePostgres) -> None:
    with running_server({"TALLY_DATABASE_URL": private_postgres.url}) as base:
        async with httpx.AsyncClient(timeout=10) as client, subscription(base, TOKEN, ORG) as sub:
            assert (await sub.next())["version"] == 0
            assert "errors" not in await post(client, base, CREATE)
            assert (await sub.next())["version"] == 1

            private_postgres.stop()
            down = await post(client, base, CREATE)  # answered, with a coded error, not a hang or a 5xx
            assert down["errors"][0]["extensions"]["code"] == "INTERNAL"
            assert "Traceback" not in str(down) and "asyncpg" not in str(down)
            assert (await client.get(f"{base}/healthz")).status_code == 200
            private_postgres.start()

            for _ in range(50):  # the first requests after the restart may still find dead pooled connections
                body = await post(client, base, CREATE)
                if "errors" not in body:
                    break
                await asyncio.sleep(0.1)
            assert "errors" not in body, body
            assert (await sub.next(timeout=5))["version"] == 2
            stats = await post(client, base, '{ organizationStats(orgId: "org_restart") { version loads { open } } }')
            assert stats["data"]["organizationStats"] == {"version": 2, "loads": {"open": 2}}
