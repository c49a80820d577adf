"""Raw-driver write floors (`uvicorn --factory bench.floors:write_floor_app`, BENCH_DATABASE_URL): what
Tally's writes cost with no GraphQL, no ORM, no SQLAlchemy. Bare Starlette, hand-written SQL, asyncpg
(a pool of 10, no reset query on release) on PostgreSQL, sqlite3 (one connection, BEGIN IMMEDIATE) on SQLite.

- POST /createLoad `{"orgId"}`: one transaction: the load's INSERT and the org's counter upsert
  (+1 OPEN, +1 UNMAPPED, version +1); answers `{"data": {"createLoad": {"id", "status"}}}`.
- POST /importShipments `{"orgId", "shipments": [{"shipmentId", "loadNumber"}]}`: one transaction:
  each shipment's load (ASSIGNED, UNMAPPED) and its invoice (MISSING_DATA), then one counter upsert.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from db.rules import REASON_NO_LANE

COUNTERS = (  # parameters: org_id, each named counter's increment, now; version +1
    "INSERT INTO organization_stats (org_id, shard, {columns}, version, corrections, updated_at) "
    "VALUES (?, 0, {values}, 1, 0, ?) ON CONFLICT (org_id, shard) DO UPDATE SET {adds}, "
    "version = organization_stats.version + 1, updated_at = excluded.updated_at"
)
LOAD = (
    "INSERT INTO loads (org_id, status, load_type, requires_manual_review, external_source, external_id, "
    "load_number, created_at, updated_at) VALUES (?, ?, 'UNMAPPED', false, ?, ?, ?, ?, ?) RETURNING id"
)
INVOICE = (
    "INSERT INTO invoices (org_id, load_id, status, missing_data_reason, created_at, updated_at) "
    "VALUES (?, ?, 'MISSING_DATA', ?, ?, ?)"
)
IMPORT_ROWS = (  # PostgreSQL: every load and its invoice in one statement
    "WITH new AS (INSERT INTO loads (org_id, status, load_type, requires_manual_review, external_source, "
    "external_id, load_number, created_at, updated_at) SELECT $1, 'ASSIGNED', 'UNMAPPED', false, 'fourkites', "
    "x.id, x.number, $4, $4 FROM unnest($2::text[], $3::text[]) AS x(id, number) RETURNING id) "
    "INSERT INTO invoices (org_id, load_id, status, missing_data_reason, created_at, updated_at) "
    "SELECT $1, id, 'MISSING_DATA', $5, $4, $4 FROM new"
)


def counters_sql(columns: tuple[str, ...]) -> str:
    adds = ", ".join(f"{c} = organization_stats.{c} + excluded.{c}" for c in columns)
    return COUNTERS.format(columns=", ".join(columns), values=", ".join("?" for _ in columns), adds=adds)


def numbered(sql: str) -> str:
    """`?` placeholders as asyncpg's $1, $2, ..."""
    parts = sql.split("?")
    return "".join(part + (f"${i}" if i < len(parts) else "") for i, part in enumerate(parts, start=1))


CREATE_COUNTERS = counters_sql(("loads_open", "type_unmapped"))
IMPORT_COUNTERS = counters_sql(("loads_assigned", "type_unmapped", "invoices_missing_data"))
PG = {sql: numbered(sql) for sql in (LOAD, CREATE_COUNTERS, IMPORT_COUNTERS)}


def answer(data: dict[str, Any]) -> Response:
    return Response(json.dumps({"data": data}, separators=(",", ":")), media_type="application/json")


async def no_reset(_connection: asyncpg.Connection) -> None:
    """No reset query on release: each request's transaction leaves nothing behind."""


class PostgresWrites:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.pool: asyncpg.Pool | None = None

    async def connection(self) -> Any:
        self.pool = self.pool or await asyncpg.create_pool(self.dsn, min_size=10, max_size=10, reset=no_reset)
        return self.pool.acquire()

    async def create_load(self, org_id: str) -> int:
        now = datetime.now(UTC)
        async with await self.connection() as connection, connection.transaction():
            load_id = await connection.fetchval(PG[LOAD], org_id, "OPEN", None, None, None, now, now)
            await connection.execute(PG[CREATE_COUNTERS], org_id, 1, 1, now)
        return int(load_id)

    async def import_shipments(self, org_id: str, shipments: list[dict[str, Any]]) -> int:
        now = datetime.now(UTC)
        ids, numbers = [s["shipmentId"] for s in shipments], [s.get("loadNumber") for s in shipments]
        n = len(shipments)
        async with await self.connection() as connection, connection.transaction():
            await connection.execute(IMPORT_ROWS, org_id, ids, numbers, now, REASON_NO_LANE)
            await connection.execute(PG[IMPORT_COUNTERS], org_id, n, n, n, now)
        return n


class SqliteWrites:
    def __init__(self, path: str) -> None:
        self.connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=30000"):
            self.connection.execute(f"PRAGMA {pragma}")

    async def create_load(self, org_id: str) -> int:
        now = datetime.now(UTC).isoformat(sep=" ")
        with self.transaction() as c:
            load_id = c.execute(LOAD, (org_id, "OPEN", None, None, None, now, now)).fetchone()[0]
            c.execute(CREATE_COUNTERS, (org_id, 1, 1, now))
        return int(load_id)

    async def import_shipments(self, org_id: str, shipments: list[dict[str, Any]]) -> int:
        now = datetime.now(UTC).isoformat(sep=" ")
        with self.transaction() as c:
            for s in shipments:
                load_id = c.execute(
                    LOAD, (org_id, "ASSIGNED", "fourkites", s["shipmentId"], s.get("loadNumber"), now, now)
                ).fetchone()[0]
                c.execute(INVOICE, (org_id, load_id, REASON_NO_LANE, now, now))
            n = len(shipments)
            c.execute(IMPORT_COUNTERS, (org_id, n, n, n, now))
        return len(shipments)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.connection.execute("BEGIN IMMEDIATE")
        try:
            yield self.connection
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise
        self.connection.execute("COMMIT")


def write_floor_app() -> Starlette:
    url = make_url(os.environ["BENCH_DATABASE_URL"])
    if url.get_backend_name() == "sqlite":
        writes: Any = SqliteWrites(str(url.database))
    else:
        writes = PostgresWrites(url.set(drivername="postgresql").render_as_string(hide_password=False))

    async def create_load(request: Request) -> Response:
        body = await request.json()
        load_id = await writes.create_load(body["orgId"])
        return answer({"createLoad": {"id": str(load_id), "status": "OPEN"}})

    async def import_shipments(request: Request) -> Response:
        body = await request.json()
        created = await writes.import_shipments(body["orgId"], body["shipments"])
        return answer({"importShipments": {"created": created}})

    async def healthz(_request: Request) -> Response:
        return answer({})

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/createLoad", create_load, methods=["POST"]),
            Route("/importShipments", import_shipments, methods=["POST"]),
        ]
    )
