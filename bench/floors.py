"""Raw-driver write floors (`bench.servers:write_floor_app`, BENCH_DATABASE_URL): Tally's writes with no GraphQL,
no ORM: bare Starlette, hand-written SQL, asyncpg (a pool of 10, no reset query on release) on PostgreSQL,
sqlite3 (one connection, BEGIN IMMEDIATE) on SQLite. POST /createLoad `{"orgId"}` and /importShipments
`{"orgId", "shipments": [{"shipmentId", "loadNumber"}]}`: the rows and the org's counter upsert in one transaction."""

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
    "VALUES ($1, 0, {values}, 1, 0, ${now}) ON CONFLICT (org_id, shard) DO UPDATE SET {adds}, "
    "version = organization_stats.version + 1, updated_at = excluded.updated_at"
)
LOAD = (
    "INSERT INTO loads (org_id, status, load_type, requires_manual_review, external_source, external_id, "
    "load_number, created_at, updated_at) VALUES ($1, $2, 'UNMAPPED', false, $3, $4, $5, $6, $6) RETURNING id"
)
INVOICE = (
    "INSERT INTO invoices (org_id, load_id, status, missing_data_reason, created_at, updated_at) "
    "VALUES ($1, $2, 'MISSING_DATA', $3, $4, $4)"
)
IMPORT_ROWS = (  # PostgreSQL: every load and its invoice in one statement
    "WITH new AS (INSERT INTO loads (org_id, status, load_type, requires_manual_review, external_source, "
    "external_id, load_number, created_at, updated_at) SELECT $1, 'ASSIGNED', 'UNMAPPED', false, 'fourkites', "
    "x.id, x.number, $4, $4 FROM unnest($2::text[], $3::text[]) AS x(id, number) RETURNING id) "
    "INSERT INTO invoices (org_id, load_id, status, missing_data_reason, created_at, updated_at) "
    "SELECT $1, id, 'MISSING_DATA', $5, $4, $4 FROM new"
)


def counters_sql(*columns: str) -> str:
    adds = ", ".join(f"{c} = organization_stats.{c} + excluded.{c}" for c in columns)
    values = ", ".join(f"${k}" for k in range(2, len(columns) + 2))
    return COUNTERS.format(columns=", ".join(columns), values=values, now=len(columns) + 2, adds=adds)


CREATE_COUNTERS = counters_sql("loads_open", "type_unmapped")
IMPORT_COUNTERS = counters_sql("loads_assigned", "type_unmapped", "invoices_missing_data")


def sqlite(sql: str) -> str:
    """`$1` placeholders as SQLite's `?1`."""
    return sql.replace("$", "?")


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
            load_id = await connection.fetchval(LOAD, org_id, "OPEN", None, None, None, now)
            await connection.execute(CREATE_COUNTERS, org_id, 1, 1, now)
        return int(load_id)

    async def import_shipments(self, org_id: str, shipments: list[dict[str, Any]]) -> int:
        now = datetime.now(UTC)
        ids, numbers, n = [s["shipmentId"] for s in shipments], [s.get("loadNumber") for s in shipments], len(shipments)
        async with await self.connection() as connection, connection.transaction():
            await connection.execute(IMPORT_ROWS, org_id, ids, numbers, now, REASON_NO_LANE)
            await connection.execute(IMPORT_COUNTERS, org_id, n, n, n, now)
        return n


class SqliteWrites:
    def __init__(self, path: str) -> None:
        self.connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=30000"):
            self.connection.execute(f"PRAGMA {pragma}")

    async def create_load(self, org_id: str) -> int:
        now = datetime.now(UTC).isoformat(sep=" ")
        with self.transaction() as c:
            load_id = c.execute(sqlite(LOAD), (org_id, "OPEN", None, None, None, now)).fetchone()[0]
            c.execute(sqlite(CREATE_COUNTERS), (org_id, 1, 1, now))
        return int(load_id)

    async def import_shipments(self, org_id: str, shipments: list[dict[str, Any]]) -> int:
        now, n = datetime.now(UTC).isoformat(sep=" "), len(shipments)
        with self.transaction() as c:
            for s in shipments:
                row = (org_id, "ASSIGNED", "fourkites", s["shipmentId"], s.get("loadNumber"), now)
                load_id = c.execute(sqlite(LOAD), row).fetchone()[0]
                c.execute(sqlite(INVOICE), (org_id, load_id, REASON_NO_LANE, now))
            c.execute(sqlite(IMPORT_COUNTERS), (org_id, n, n, n, now))
        return n

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.connection:  # COMMIT, or ROLLBACK on an exception
            self.connection.execute("BEGIN IMMEDIATE")
            yield self.connection


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

    return Starlette(
        routes=[
            Route("/healthz", lambda _request: answer({})),
            Route("/createLoad", create_load, methods=["POST"]),
            Route("/importShipments", import_shipments, methods=["POST"]),
        ]
    )
