"""Crash recovery: a real server killed with SIGKILL in the middle of batch imports.

Several clients send `importShipments` batches, each with its own recognizable
shipment ids, and the server is killed while batches are in flight. Afterwards,
read straight from the database: every acknowledged batch is fully present and
every batch is fully present or fully absent. A server restarted on the same
database serves stats equal to a recount, and `check-drift` exits 0.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from sqlalchemy import select, text

from db.models import Invoice, Load
from db.unit_of_work import Database
from tests.helpers import STATS_FIELDS, counters_of, recount, token
from tests.server import ROOT, ServerUrl, running_server

ORGS = ["org_crash_a", "org_crash_b"]
ROUNDS = 3
CLIENTS = 6
BATCH = 40
HEADERS = {"Authorization": f"Bearer {token(None, 'service')}"}
IMPORT = "mutation($o: ID!, $s: [ShipmentInput!]!) { importShipments(orgId: $o, shipments: $s) { outcome } }"
STATS = f"query($o: ID!) {{ organizationStats(orgId: $o) {{ {STATS_FIELDS} }} }}"


class Ledger:
    """Every batch sent (batch id -> org) and the ones the server acknowledged."""

    def __init__(self) -> None:
        self.sent: dict[str, str] = {}
        self.acked: set[str] = set()


def shipments(batch: str) -> list[dict[str, str]]:
    """Lanes H0/T1 (exact) and H1/* (wildcard) make CONTRACT, SPOT and UNMAPPED loads."""
    return [
        {
            "shipmentId": f"{batch}-{i}",
            "hcr": f"H{i % 3}",
            "tripNumber": "T1",
            "shipperName": f"Shipper {i % 4}",
            "trackingStatus": "IN_TRANSIT",
        }
        for i in range(BATCH)
    ]


async def call(client: httpx.AsyncClient, query: str, **variables: object) -> dict:
    response = await client.post("/graphql", json={"query": query, "variables": variables})
    assert response.status_code == 200, response.text
    body = response.json()
    assert not body.get("errors"), body["errors"]
    return body["data"]


@asynccontextmanager
async def database(url: str) -> AsyncIterator[Database]:
    db = Database(url)
    try:
        yield db
    finally:
        await db.dispose()


async def create_lanes(server: ServerUrl) -> None:
    async with httpx.AsyncClient(base_url=server, headers=HEADERS, timeout=30) as client:
        for org in ORGS:
            for hcr, trip in (("H0", "T1"), ("H1", "*")):
                lane = {"orgId": org, "hcr": hcr, "tripNumber": trip}
                await call(client, "mutation($i: CreateLaneInput!) { createLane(input: $i) { promotedLoads } }", i=lane)


async def import_until_killed(server: ServerUrl, round_: int, ledger: Ledger) -> None:
    """Clients import batches until the server is SIGKILLed, a few acknowledged batches in."""
    target = len(ledger.acked) + random.randint(3, 10)
    async with httpx.AsyncClient(base_url=server, headers=HEADERS, timeout=30) as client:

        async def run(number: int) -> None:
            org = ORGS[number % len(ORGS)]
            for n in itertools.count():
                batch = f"r{round_}c{number}n{n}"
                ledger.sent[batch] = org
                try:
                    await call(client, IMPORT, o=org, s=shipments(batch))
                except httpx.TransportError:
                    return
                ledger.acked.add(batch)

        async def kill() -> None:
            deadline = time.monotonic() + 20
            while len(ledger.acked) < target:
                assert time.monotonic() < deadline, "too few batches acknowledged"
                await asyncio.sleep(0.005)
            await asyncio.sleep(random.uniform(0, 0.03))
            assert server.process is not None
            server.process.kill()

        async with asyncio.timeout(30), asyncio.TaskGroup() as group:
            for number in range(CLIENTS):
                group.create_task(run(number))
            group.create_task(kill())


async def wait_for_disconnects(db: Database) -> None:
    """On PostgreSQL, until the killed server's sessions are gone (none can still commit)."""
    if db.engine.dialect.name != "postgresql":
        return
    others = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )
    deadline = time.monotonic() + 10
    while await db.read(lambda session: session.scalar(others)):
        assert time.monotonic() < deadline, "the killed server's sessions stayed open"
        await asyncio.sleep(0.05)


async def whole_batches(db: Database, ledger: Ledger) -> set[str]:
    """The batches found in the database, after checking each is whole."""
    rows = await db.read(
        lambda session: session.execute(
            select(Load.org_id, Load.external_id, Invoice.id).outerjoin(Invoice, Invoice.load_id == Load.id)
        )
    )
    loads: Counter[tuple[str, str]] = Counter()
    invoices: Counter[tuple[str, str]] = Counter()
    for org, external_id, invoice_id in rows:
        key = (org, external_id.rsplit("-", 1)[0])
        loads[key] += 1
        invoices[key] += invoice_id is not None
    present = {batch for _, batch in loads}
    assert {(org, batch) for batch, org in ledger.sent.items() if batch in present} == set(loads)
    partial = {key: (n, invoices[key]) for key, n in loads.items() if (n, invoices[key]) != (BATCH, BATCH)}
    assert not partial, f"batches neither whole nor absent: {partial}"
    assert ledger.acked <= present, f"acknowledged batches lost: {sorted(ledger.acked - present)}"
    return present


async def assert_stats_exact(server: ServerUrl, db: Database, ledger: Ledger, present: set[str]) -> None:
    async with httpx.AsyncClient(base_url=server, headers=HEADERS, timeout=30) as client:
        for org in ORGS:
            stats = (await call(client, STATS, o=org))["organizationStats"]
            assert counters_of(stats) == await recount(db, org)
            assert stats["loads"]["total"] == BATCH * sum(ledger.sent[batch] == org for batch in present)


async def start_check_drift(url: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "main.py",
        "check-drift",
        cwd=ROOT,
        env={**os.environ, "TALLY_DATABASE_URL": url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def assert_no_drift(check: asyncio.subprocess.Process) -> None:
    output, _ = await check.communicate()
    assert check.returncode == 0, output.decode()


@pytest.mark.slow
async def test_sigkill_mid_import_keeps_batches_whole_and_counts_exact(database_url: str) -> None:
    env = {"TALLY_DATABASE_URL": database_url, "TALLY_RECALC_INTERVAL_SECONDS": "0", "TALLY_LOG_LEVEL": "WARNING"}
    ledger = Ledger()
    present: set[str] = set()
    for round_ in range(ROUNDS + 1):
        drift_check = await start_check_drift(database_url) if round_ else None  # runs while the server starts
        with running_server(env) as server:
            if drift_check is None:
                await create_lanes(server)
            else:
                await assert_no_drift(drift_check)
                async with database(database_url) as db:
                    await assert_stats_exact(server, db, ledger, present)
            if round_ == ROUNDS:
                break
            await import_until_killed(server, round_, ledger)
        async with database(database_url) as db:
            await wait_for_disconnects(db)
            present = await whole_batches(db, ledger)
    assert len(ledger.sent) > len(ledger.acked)
