"""The servers under test, uvicorn app factories (`uvicorn --factory bench.servers:NAME`) set up by BENCH_* env:
Tally's app (`tally_app`, `uncached_app`: count cache off), `naive_app` (a GROUP BY count and a status change
without the aggregate), `floor_app` (bare Starlette answering Tally's exact bytes), `write_floor_app` (bench/floors.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import strawberry
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.permissions import Authenticated
from api.root import DIRECT, Mutation, Query, build_schema
from bench.floors import write_floor_app as write_floor_app
from db import invoices, loads
from db.aggregates import COUNTERS, LOAD_STATUS_COUNTERS, StatsSnapshot, with_defaults
from db.models import Load as LoadRow
from db.money import parse_cents
from db.row_writes import DriverRowWrites, Plan, Update, Write, _Transaction
from db.unit_of_work import Database
from main import create_app
from schema.context import Info
from schema.enums import InvoiceStatus, LoadStatus
from schema.scalars import Money
from schema.types import Invoice, Load, LoadStatusCounts
from settings import Settings

T = TypeVar("T")


def settings(**changes: Any) -> Settings:
    """Tally's settings for the benchmarks: BENCH_* env, no query stats, no scheduled recalculation."""
    env = os.environ
    return Settings(
        database_url=env["BENCH_DATABASE_URL"], broadcast_url=env.get("BENCH_BROADCAST_URL", "memory://"),
        stats_shards=int(env.get("BENCH_STATS_SHARDS", "1")), query_stats=False, db_pool_size=10,
        log_level="WARNING", recalc_interval_seconds=0, **changes,
    )  # fmt: skip


def tally_app() -> Starlette:
    return create_app(settings())


def uncached_app() -> Starlette:
    return create_app(settings(count_cache_entries=0))


async def naive_count_loads_by_status(info: Info, org_id: strawberry.ID) -> LoadStatusCounts:
    query = select(LoadRow.status, func.count()).where(LoadRow.org_id == org_id).group_by(LoadRow.status)
    rows = await info.context.db.read(lambda session: session.execute(query))
    counts = dict.fromkeys(COUNTERS, 0) | {LOAD_STATUS_COUNTERS[status]: n for status, n in rows}
    return LoadStatusCounts.of(StatsSnapshot(org_id, counts, 0, None, None))


class _Uncounted(_Transaction):
    """The same statements without the aggregate: no delta computed, so no counter or money upsert."""

    def _count(self, write: Write) -> dict[str, Any]:
        return with_defaults(write.model, write.values, on_update=isinstance(write, Update))


class _UncountedRowWrites(DriverRowWrites):
    transaction_class = _Uncounted


_uncounted: dict[int, _UncountedRowWrites] = {}


async def write_without_aggregate(db: Database, plan: Callable[[], Plan]) -> Any:
    """`Database.write_row` without the aggregate: the same path (writers in flight, writer's turn, retries), engine,
    pool, inline connection, statements and commit; no delta computed, so no counter or money upsert, no org
    changed, no read after commit, no publish."""
    if (writes := _uncounted.get(id(db))) is None:
        writes = _uncounted[id(db)] = _UncountedRowWrites(db.engine, 1, db._inline_writes)
    row, _ = await db._with_snapshots(lambda: db._retried(lambda: writes.run(plan())))
    return row


async def update_load_status_without_aggregate(info: Info, id: strawberry.ID, status: LoadStatus) -> Load:
    scope = info.context.principal.scope
    load = await write_without_aggregate(info.context.db, lambda: loads.set_load_status(id, status.value, scope))
    return Load.of(load)


async def update_invoice_status_without_aggregate(info: Info, id: strawberry.ID, status: InvoiceStatus) -> Invoice:
    scope = info.context.principal.scope
    row = await write_without_aggregate(info.context.db, lambda: invoices.set_invoice_status(id, status.value, scope))
    return Invoice.of(row)


async def record_payment_without_aggregate(info: Info, invoice_id: strawberry.ID, amount: Money) -> Invoice:
    scope, cents = info.context.principal.scope, parse_cents(amount, "amount")
    row = await write_without_aggregate(info.context.db, lambda: invoices.record_payment(invoice_id, cents, scope))
    return Invoice.of(row)


@strawberry.type
class NaiveQuery(Query):
    count_loads_by_status: LoadStatusCounts = strawberry.field(
        resolver=naive_count_loads_by_status, permission_classes=[Authenticated]
    )


@strawberry.type
class BenchMutation(Mutation):
    update_load_status_without_aggregate: Load = strawberry.mutation(
        resolver=update_load_status_without_aggregate, permission_classes=[Authenticated], metadata=DIRECT
    )
    update_invoice_status_without_aggregate: Invoice = strawberry.mutation(
        resolver=update_invoice_status_without_aggregate, permission_classes=[Authenticated], metadata=DIRECT
    )
    record_payment_without_aggregate: Invoice = strawberry.mutation(
        resolver=record_payment_without_aggregate, permission_classes=[Authenticated], metadata=DIRECT
    )


def bench_schema(*args: Any, **kwargs: Any) -> strawberry.Schema:
    tally = build_schema(*args, **kwargs)
    return type(tally)(
        query=NaiveQuery, mutation=BenchMutation, subscription=tally.subscription,
        extensions=list(tally.extensions), config=tally.config,
    )  # fmt: skip


def naive_app() -> Starlette:
    return create_app(settings(count_cache_entries=0), schema_factory=bench_schema)


async def constant(body: bytes, _request: Request) -> Response:
    return Response(body, media_type="application/json")


def floor_app() -> Starlette:
    bodies: dict[str, str] = json.loads(Path(os.environ["BENCH_FLOOR_BODIES"]).read_text())
    routes = [Route(path, partial(constant, body.encode()), methods=["POST"]) for path, body in bodies.items()]
    return Starlette(routes=[*routes, Route("/healthz", partial(constant, b'{"status":"ok"}'))])
