"""Concurrency proof on PostgreSQL: two processes, 64 clients, random legal and illegal writes.

Writes include pricing and payments. Afterwards every counter equals COUNT(*) and every
money value its recount from the invoices, each process's subscriber saw strictly
increasing versions ending at the final one, no client saw a deadlock,
serialization failure or INTERNAL error, and no subscriber is left behind.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from db.unit_of_work import Database
from tests.databases import Databases
from tests.helpers import assert_exact, recount, stored, token
from tests.live import RedisServer, redis_server, subscription, wait_live_subscribers
from tests.server import running_server

__all__ = ["redis_server"]

HOT = "org_hot"
ORGS = [HOT, HOT, HOT, "org_c1", "org_c2"]  # the hot org gets most of the traffic
SERVICE = token(None, "service")
DURATION = float(os.environ.get("TALLY_CONCURRENCY_SECONDS", "20"))
CLIENTS = 64
EXPECTED_REFUSALS = {"INVALID_TRANSITION", "NOT_FOUND", "CONFLICT", "BAD_USER_INPUT"}
LOAD_STATUSES = ["OPEN", "ASSIGNED", "COMPLETED", "CANCELED"]
INVOICE_STATUSES = ["DRAFT", "BILLED", "PENDING_PAYMENT", "PAID", "VOID"]


class Workload:
    def __init__(self, bases: list[str]) -> None:
        self.bases = bases
        self.loads: dict[str, list[str]] = {org: [] for org in set(ORGS)}
        self.invoices: dict[str, list[str]] = {org: [] for org in set(ORGS)}
        self.outcomes: Counter[str] = Counter()
        self.unexpected: list[Any] = []

    async def call(self, client: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any] | None:
        response = await client.post(
            f"{random.choice(self.bases)}/graphql",
            json={"query": query, "variables": variables},
            headers={"Authorization": f"Bearer {SERVICE}"},
        )
        if response.status_code != 200:
            self.unexpected.append((response.status_code, response.text[:300]))
            return None
        body = response.json()
        for error in body.get("errors") or []:
            code = error.get("extensions", {}).get("code")
            self.outcomes[code] += 1
            if code not in EXPECTED_REFUSALS:
                self.unexpected.append(error)
        if not body.get("errors"):
            self.outcomes["ok"] += 1
        return body.get("data")

    def some(self, ids: list[str]) -> str:
        return random.choice(ids) if ids and random.random() < 0.9 else str(random.randint(10**6, 10**7))

    async def step(self, client: httpx.AsyncClient) -> None:
        org = random.choice(ORGS)
        loads, invoices = self.loads[org], self.invoices[org]
        action = random.randrange(14)
        if action == 0 or not loads:
            data = await self.call(
                client,
                "mutation($i: CreateLoadInput!) { createLoad(input: $i) { id } }",
                i={
                    "orgId": org,
                    "status": random.choice(LOAD_STATUSES),
                    "loadType": random.choice(["SPOT", "UNMAPPED", "CONTRACT"]),
                    "hcr": f"H{random.randrange(4)}",
                    "tripNumber": f"T{random.randrange(4)}",
                },
            )
            if data:
                loads.append(data["createLoad"]["id"])
        elif action == 1:
            await self.call(
                client,
                "mutation($id: ID!, $s: LoadStatus!) { updateLoadStatus(id: $id, status: $s) { id } }",
                id=self.some(loads),
                s=random.choice(LOAD_STATUSES),
            )
        elif action == 2:
            data = await self.call(
                client,
                "mutation($id: ID!) { createInvoice(input: {loadId: $id}) { id } }",
                id=self.some(loads),
            )
            if data:
                invoices.append(data["createInvoice"]["id"])
        elif action == 3:
            await self.call(
                client,
                "mutation($id: ID!, $s: InvoiceStatus!) { updateInvoiceStatus(id: $id, status: $s) { id } }",
                id=self.some(invoices),
                s=random.choice(INVOICE_STATUSES),
            )
        elif action == 4:
            ids = [self.some(invoices) for _ in range(random.randint(1, 8))]
            await self.call(
                client,
                "mutation($ids: [ID!]!, $s: InvoiceStatus!) { bulkUpdateInvoiceStatus(ids: $ids, status: $s) { updated } }",
                ids=ids,
                s=random.choice(INVOICE_STATUSES),
            )
        elif action == 5:
            ids = [self.some(invoices) for _ in range(random.randint(1, 8))]
            await self.call(
                client,
                'mutation($ids: [ID!]!) { bulkVoidInvoices(ids: $ids, reason: "load test") { updated } }',
                ids=ids,
            )
        elif action == 6:
            shipments = [
                {
                    "shipmentId": f"S{random.randrange(300)}",
                    "hcr": f"H{random.randrange(4)}",
                    "tripNumber": f"T{random.randrange(4)}",
                    "shipperName": f"Shipper {random.randrange(5)}",
                    "trackingStatus": random.choice(["IN_TRANSIT", "DELIVERED", "CANCELED"]),
                    "updatedAt": f"2026-01-01T00:{random.randrange(60):02d}:00Z",
                }
                for _ in range(random.randint(1, 5))
            ]
            data = await self.call(
                client,
                "mutation($o: ID!, $s: [ShipmentInput!]!) { importShipments(orgId: $o, shipments: $s) { outcome load { id invoice { id } } } }",
                o=org,
                s=shipments,
            )
            for result in (data or {}).get("importShipments", []):
                if result["outcome"] == "CREATED":
                    loads.append(result["load"]["id"])
                    invoices.append(result["load"]["invoice"]["id"])
        elif action == 7:
            await self.call(
                client,
                "mutation($i: CreateLaneInput!) { createLane(input: $i) { promotedLoads } }",
                i={
                    "orgId": org,
                    "hcr": f"H{random.randrange(4)}",
                    "tripNumber": random.choice(["*", "T0", "T1", "T2", "T3"]),
                },
            )
        elif action == 8:
            await self.call(client, "mutation($o: ID!) { promoteSpotLoads(orgId: $o) { promotedLoads } }", o=org)
        elif action == 9:
            await self.call(client, "mutation($id: ID!) { deleteLoad(id: $id) { id } }", id=self.some(loads))
        elif action == 11:  # money: price (refused once billed)
            await self.call(
                client,
                "mutation($id: ID!, $a: Money!) { setInvoiceAmount(id: $id, amount: $a) { id } }",
                id=self.some(invoices),
                a=random.choice(["0.01", "99.99", "1250.50", "10"]),
            )
        elif action in (12, 13):  # money: pay, partially or too much (refused unless BILLED / PENDING_PAYMENT)
            await self.call(
                client,
                "mutation($id: ID!, $a: Money!) { recordPayment(invoiceId: $id, amount: $a) { id } }",
                id=self.some(invoices),
                a=random.choice(["0.01", "5", "50", "1250.50"]),
            )
        else:
            await self.call(client, "mutation($id: ID!) { deleteInvoice(id: $id) { id } }", id=self.some(invoices))


@pytest.mark.slow
async def test_two_processes_64_clients_stay_exact(databases: Databases, redis_server: RedisServer) -> None:
    if databases.backend != "postgresql":
        pytest.skip("the concurrency proof is for PostgreSQL (SQLite serializes writers)")
    url = databases.migrated()
    env = {
        "TALLY_DATABASE_URL": url,
        "TALLY_BROADCAST_URL": redis_server.url,
        "TALLY_DB_POOL_SIZE": "20",
        "TALLY_LOG_LEVEL": "WARNING",
    }
    # The second process spreads counters over 4 shard rows: both layouts share one table.
    with running_server(env) as first, running_server({**env, "TALLY_STATS_SHARDS": "4"}) as second:
        workload = Workload([first, second])
        seen: dict[str, list[int]] = {first: [], second: []}
        async with subscription(first, SERVICE, HOT) as sub1, subscription(second, SERVICE, HOT) as sub2:

            async def watch(base: str, sub: Any) -> None:
                while True:
                    seen[base].append((await sub.next(timeout=3600))["version"])

            watchers = [asyncio.create_task(watch(first, sub1)), asyncio.create_task(watch(second, sub2))]
            deadline = time.monotonic() + DURATION
            # Idle connections are dropped before uvicorn's 5 s keep-alive closes them: reusing one
            # just as the server closes it fails the request (httpx.ReadError), not Tally.
            limits = httpx.Limits(max_connections=CLIENTS, keepalive_expiry=2)
            async with httpx.AsyncClient(limits=limits, timeout=60) as client:

                async def run_client() -> None:
                    while time.monotonic() < deadline:
                        await workload.step(client)

                await asyncio.gather(*(run_client() for _ in range(CLIENTS)))
            db = Database(url)
            try:
                _, final_version = await stored(db, HOT)
                for org in set(ORGS):
                    counts, _ = await stored(db, org)
                    assert counts == await recount(db, org), org
                    await assert_exact(db, org)  # and every money value: totals, revenue months, receivables
            finally:
                await db.dispose()
            # Each subscriber converges on the final version.
            converge_by = time.monotonic() + 10
            while any(not v or v[-1] != final_version for v in seen.values()) and time.monotonic() < converge_by:
                await asyncio.sleep(0.1)
            for watcher in watchers:
                watcher.cancel()
        print(
            f"outcomes: {dict(workload.outcomes)}; final version {final_version}; events {[len(v) for v in seen.values()]}"
        )
        assert not workload.unexpected, workload.unexpected[:5]
        assert workload.outcomes["ok"] > 150
        for versions in seen.values():
            assert versions == sorted(set(versions)), "versions must strictly increase"
            assert versions[-1] == final_version
        assert await wait_live_subscribers(first, 0) == 0
        assert await wait_live_subscribers(second, 0) == 0
