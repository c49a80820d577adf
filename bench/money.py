"""The money aggregates' reads and writes on SQLite and on PostgreSQL, and the issue's targets on each
(docs/benchmarks-money.md, whose Method section tells how)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from contextlib import closing
from dataclasses import replace
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.common import (
    Cell,
    Profile,
    Stream,
    alternating,
    app_servers,
    closed_loop,
    database,
    log,
    post,
    run_async,
    summarize,
    token,
)
from bench.postgres import environment, scratch_database, sql
from bench.servers import settings, write_without_aggregate
from db.aggregates import INVOICE_STATUS_COUNTERS, LOAD_STATUS_COUNTERS, LOAD_TYPE_COUNTERS
from db.engine import create_engine
from db.invoices import record_payment, set_invoice_status
from db.migrate import upgrade_async
from db.money_reads import receivables_aging, revenue_by_month
from db.recalculation import drift_report
from db.unit_of_work import Database
from main import create_app

ORG = "org_money"
CUSTOMERS = 1_000
PROFILES = {
    "full": {"sizes": [1_000, 100_000, 1_000_000], "reads": 400, "naive_reads": 15, "writes": 2_000,
             "http": {"warmup": 1.0, "duration": 2.0, "min_samples": 400, "max_duration": 10.0, "rounds": 6,
                      "write_rounds": 8, "write_duration": 2.0},
             "pool": 200},
    "quick": {"sizes": [1_000, 20_000], "reads": 50, "naive_reads": 3, "writes": 100,
              "http": {"warmup": 0.2, "duration": 0.6, "min_samples": 20, "max_duration": 1.5, "rounds": 2,
                       "write_rounds": 2, "write_duration": 0.6},
              "pool": 40},
}  # fmt: skip
# The writes over HTTP, with every aggregate and without any (bench-only mutations, bench/servers.py).
PAY = 'mutation($i: ID!) {{ {field}(invoiceId: $i, amount: "0.01") {{ id paidAmount }} }}'
TOGGLE = "mutation($i: ID!, $s: InvoiceStatus!) {{ {field}(id: $i, status: $s) {{ id status }} }}"
HTTP_WRITES = {
    "recordPayment": (PAY, ("recordPayment", "recordPaymentWithoutAggregate"), "PENDING_PAYMENT"),
    "statusChange": (TOGGLE, ("updateInvoiceStatus", "updateInvoiceStatusWithoutAggregate"), "PAID"),
}
MONTHS = ("2026-01", "2026-12")
AS_OF = "2026-12-31"
AGGREGATE_READS = ("revenueByMonth", "receivablesAging")  # the reads with targets against organizationStats
QUERIES = {
    "organizationStats": 'query { organizationStats(orgId: "org_money") { version loads { open total } '
    "invoices { billed paid total } money { invoiced collected outstanding } } }",
    "revenueByMonth": 'query { revenueByMonth(orgId: "org_money", from: "2026-01", to: "2026-12") '
    "{ month invoicedCount invoiced paidCount collected } }",
    "receivablesAging": f'query {{ receivablesAging(orgId: "org_money", asOf: "{AS_OF}", first: 20) '
    "{ buckets { current days31to60 days61to90 over90 total } customers { customer { id name } invoices "
    "buckets { current days31to60 days61to90 over90 total } } } }",
}
# The same answers from the invoices table, as a service without the aggregates would compute them (per dialect:
# the month of a date, and asOf - N days).
_NAIVE_REVENUE = (
    "SELECT {month} AS month, count(*), sum(amount_cents), "
    "sum(CASE WHEN paid_cents > 0 THEN 1 ELSE 0 END), sum(paid_cents) FROM invoices "
    "WHERE org_id = :org AND status IN ('BILLED', 'PENDING_PAYMENT', 'PAID') "
    "AND invoice_date >= '2026-01-01' AND invoice_date < '2027-01-01' GROUP BY month"
)
_NAIVE_AGING = (
    "SELECT customer_id, count(*), "
    "sum(CASE WHEN invoice_date >= {d30} THEN amount_cents - paid_cents ELSE 0 END), "
    "sum(CASE WHEN invoice_date < {d30} AND invoice_date >= {d60} THEN amount_cents - paid_cents ELSE 0 END), "
    "sum(CASE WHEN invoice_date < {d60} AND invoice_date >= {d90} THEN amount_cents - paid_cents ELSE 0 END), "
    "sum(CASE WHEN invoice_date < {d90} THEN amount_cents - paid_cents ELSE 0 END), "
    "sum(amount_cents - paid_cents) AS total FROM invoices WHERE org_id = :org "
    "AND status IN ('BILLED', 'PENDING_PAYMENT') AND amount_cents > paid_cents "
    "GROUP BY customer_id ORDER BY total DESC LIMIT 20"
)
NAIVE = {
    "sqlite": {
        "revenueByMonth": _NAIVE_REVENUE.format(month="substr(invoice_date, 1, 7)"),
        "receivablesAging": _NAIVE_AGING.format(**{f"d{n}": f"date(:as_of, '-{n} days')" for n in (30, 60, 90)}),
    },
    "postgresql": {
        "revenueByMonth": _NAIVE_REVENUE.format(month="to_char(invoice_date, 'YYYY-MM')"),
        "receivablesAging": _NAIVE_AGING.format(**{f"d{n}": f"(CAST(:as_of AS date) - {n})" for n in (30, 60, 90)}),
    },
}
# Invoice x (1-based): its status, amount (cents), paid (cents) and date (36 months, 2024-2026).
STATUS = (
    "CASE WHEN x % 10 < 3 THEN 'PAID' WHEN x % 10 < 5 THEN 'PENDING_PAYMENT' WHEN x % 10 < 8 THEN 'BILLED' "
    "WHEN x % 10 < 9 THEN 'DRAFT' ELSE 'VOID' END"
)
AMOUNT = "(10000 + (x * 7919) % 500000)"
PAID = f"CASE WHEN x % 10 < 3 THEN {AMOUNT} WHEN x % 10 < 5 THEN {AMOUNT} / 2 ELSE 0 END"
# What the seed's SQL says differently on each database: rows 1..n, names, days, booleans, months.
DIALECT = {
    "sqlite": {
        "rows": "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < :{n}) {insert} SELECT {values} FROM n",
        "name": "printf('%04d', x)", "day": "date('2024-01-01', '+' || (x % 1095) || ' days')", "false": "0",
        "month": "substr(invoice_date, 1, 7)", "stamp": ":stamp",
    },
    "postgresql": {
        "rows": "{insert} SELECT {values} FROM generate_series(1::bigint, :{n}) AS n(x)",
        "name": "lpad(x::text, 4, '0')", "day": "DATE '2024-01-01' + (x % 1095)::int", "false": "false",
        "month": "to_char(invoice_date, 'YYYY-MM')", "stamp": "CAST(:stamp AS timestamptz)",
    },
}  # fmt: skip


def _seed_sql(dialect: str) -> list[str]:
    """Customers, loads and invoices of the org (x = 1..size; customer 1 + x % CUSTOMERS)."""
    d = DIALECT[dialect]
    date_of = f"CASE WHEN x % 10 = 8 THEN NULL ELSE {d['day']} END"
    return [
        d["rows"].format(n="customers", insert="INSERT INTO customers (org_id, name)",
                         values=f":org, 'Customer ' || {d['name']}"),
        d["rows"].format(
            n="size",
            insert="INSERT INTO loads (id, org_id, status, load_type, requires_manual_review, customer_id, "
            "created_at, updated_at)",
            values=f"x, :org, 'COMPLETED', 'CONTRACT', {d['false']}, 1 + x % :customers, {d['stamp']}, {d['stamp']}",
        ),
        d["rows"].format(
            n="size",
            insert="INSERT INTO invoices (id, org_id, load_id, status, customer_id, amount_cents, paid_cents, "
            "invoice_date, created_at, updated_at)",
            values=f"x, :org, x, {STATUS}, 1 + x % :customers, {AMOUNT}, {PAID}, {date_of}, {d['stamp']}, {d['stamp']}",
        ),
    ]  # fmt: skip


def seed(path: Path, size: int) -> float:
    """A migrated SQLite file with one org of `size` invoices over CUSTOMERS customers, its aggregates
    filled the way migration 0005 fills them (a recount); the seconds it took."""
    started = time.perf_counter()
    url = f"sqlite+aiosqlite:///{path}"
    run_async(upgrade_async(url))
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO organizations VALUES (?, ?, '2026-01-01 00:00:00')", (ORG, ORG))
        params = {"org": ORG, "size": size, "customers": CUSTOMERS, "stamp": "2026-01-01 00:00:00.000000+00:00"}
        for statement in [*_seed_sql("sqlite"), *_fill_sql("sqlite")]:
            conn.execute(statement, params)
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return time.perf_counter() - started


async def seed_postgres(dsn: str, url: str, size: int) -> float:
    """The same org, customers, loads, invoices and aggregates in a migrated PostgreSQL database."""
    started = time.perf_counter()
    await upgrade_async(url)
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            stamp = datetime(2026, 1, 1, tzinfo=UTC)
            await conn.execute(
                text("INSERT INTO organizations VALUES (:org, :org, :stamp)"), {"org": ORG, "stamp": stamp}
            )
            params = {"org": ORG, "size": size, "customers": CUSTOMERS, "stamp": stamp}
            for statement in [*_seed_sql("postgresql"), *_fill_sql("postgresql")]:
                statement = statement.replace(":org", "CAST(:org AS varchar)")  # asyncpg: one type per parameter
                names = set(re.findall(r":(\w+)", statement))
                await conn.execute(text(statement), {k: v for k, v in params.items() if k in names})
    finally:
        await engine.dispose()
    await sql(dsn, "VACUUM ANALYZE")
    return time.perf_counter() - started


async def check_seeded(url: str) -> None:
    """The seeded aggregates are Tally's own: its drift report finds no value off its recount."""
    async with database(url) as db:
        drift = await drift_report(db, ORG)
    if drift.counters:
        raise AssertionError(f"the seeded aggregates drift: {drift.counters[:5]}")


def _fill_sql(dialect: str) -> list[str]:
    """The org's stats row (counters and money totals) and money rows, recounted from its rows."""
    counted = [("loads", "status", c) for c in LOAD_STATUS_COUNTERS.items()]
    counted += [("loads", "load_type", c) for c in LOAD_TYPE_COUNTERS.items()]
    counted += [("invoices", "status", c) for c in INVOICE_STATUS_COUNTERS.items()]
    counts = [f"(SELECT count(*) FROM {t} WHERE org_id = :org AND {col} = '{v}')" for t, col, (v, _) in counted]
    finalized = "org_id = :org AND status IN ('BILLED', 'PENDING_PAYMENT', 'PAID')"
    columns = ", ".join(c for _, _, (_, c) in counted)
    return [
        f"INSERT INTO organization_stats (org_id, shard, {columns}, money_invoiced, money_collected, version, "
        f"corrections, updated_at) SELECT :org, 0, {', '.join(counts)}, "
        f"(SELECT coalesce(sum(amount_cents), 0) FROM invoices WHERE {finalized}), "
        f"(SELECT coalesce(sum(paid_cents), 0) FROM invoices WHERE {finalized}), 1, 0, '2026-01-01 00:00:00'",
        f"INSERT INTO revenue_months SELECT org_id, {DIALECT[dialect]['month']} AS m, count(*), sum(amount_cents), "
        f"sum(CASE WHEN paid_cents > 0 THEN 1 ELSE 0 END), sum(paid_cents) FROM invoices WHERE {finalized} "
        "GROUP BY org_id, m",
        "INSERT INTO receivables SELECT org_id, coalesce(customer_id, 0), invoice_date, count(*), "
        "sum(amount_cents - paid_cents) FROM invoices WHERE org_id = :org AND status IN ('BILLED', 'PENDING_PAYMENT') "
        "AND amount_cents > paid_cents GROUP BY org_id, coalesce(customer_id, 0), invoice_date",
        "INSERT INTO receivable_days SELECT org_id, invoice_date, sum(invoices), sum(balance) FROM receivables "
        "WHERE org_id = :org GROUP BY org_id, invoice_date",
        "INSERT INTO customer_balances SELECT org_id, customer_key, sum(invoices), sum(balance) FROM receivables "
        "WHERE org_id = :org GROUP BY org_id, customer_key",
    ]


def _asgi_call(app: Any, body: bytes, bearer: str) -> Coroutine[Any, Any, list[dict[str, Any]]]:
    async def call() -> list[dict[str, Any]]:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/graphql", "raw_path": b"/graphql", "query_string": b"",
                 "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000), "state": {},
                 "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                             (b"authorization", f"Bearer {bearer}".encode())]}  # fmt: skip
        sent, out = False, []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)
            return {}

        async def send(message: dict[str, Any]) -> None:
            out.append(message)

        await app(scope, receive, send)
        return out

    return call()


async def _timed(call: Callable[[], Coroutine[Any, Any, Any]], n: int) -> tuple[dict[str, float], Any]:
    last = await call()  # warm
    times = []
    for _ in range(n):
        started = time.perf_counter()
        last = await call()
        times.append((time.perf_counter() - started) * 1e6)
    return summarize(times), last


async def measure_reads(url: str, profile: dict[str, Any]) -> dict[str, Any]:
    """Each query over the app (in process, count cache off), and the aggregate reads against the naive ones."""
    os.environ["BENCH_DATABASE_URL"] = url  # bench.servers.settings: the benchmarks' settings for this database
    app = create_app(settings(count_cache_entries=0))
    bearer = token(ORG, "admin")
    out: dict[str, Any] = {}
    async with app.router.lifespan_context(app):
        for name, query in QUERIES.items():
            body = json.dumps({"query": query}).encode()
            stats, answer = await _timed(lambda body=body: _asgi_call(app, body, bearer), profile["reads"])
            assert b'"errors"' not in answer[-1]["body"], answer[-1]["body"][:300]
            out[name] = stats
        db: Database = app.state.db
        direct = {
            "revenueByMonth": lambda: revenue_by_month(db, ORG, MONTHS[0], MONTHS[1]),
            "receivablesAging": lambda: receivables_aging(db, ORG, _as_of(), 20),
            "organizationStats": lambda: db.read_stats(ORG),
        }
        for name, read in direct.items():
            out[f"{name}_db"] = (await _timed(read, profile["reads"]))[0]
        dialect = db.engine.dialect.name
        as_of = AS_OF if dialect == "sqlite" else _as_of()  # asyncpg binds a date as a date
        for name, sql in NAIVE[dialect].items():
            statement = text(sql)

            async def naive(statement: Any = statement) -> Any:
                return await db.read(lambda s: s.execute(statement, {"org": ORG, "as_of": as_of}))

            out[f"{name}_naive"] = (await _timed(naive, profile["naive_reads"]))[0]
    return out


def measure_http(url: str, profile: dict[str, Any], writes: bool) -> dict[str, Any]:
    """The three queries (and, if `writes`, the two writes with and without any aggregate) over HTTP:
    one uvicorn serving Tally with the count cache off (`naive_app`, which adds the bench-only
    mutations), wrk at one client; every read's answer checked byte for byte."""
    options = profile["http"]
    http = Profile("money", (), options["warmup"], options["duration"], options["min_samples"],
                   options["max_duration"], options["rounds"], 0.0, 0.0)  # fmt: skip
    bearer = token(ORG, "admin")
    out: dict[str, Any] = {"reads": {}, "writes": {}}
    with app_servers(("money", "naive_app", {"BENCH_DATABASE_URL": url})) as (server,):
        reads: dict[str, list[Cell]] = {name: [] for name in QUERIES}
        names = list(QUERIES)
        for round_ in range(http.mutation_rounds):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:  # who goes first rotates
                body = json.dumps({"query": QUERIES[name]})
                stream = Stream(server, 1, [body], post(server + "/graphql", body, bearer))
                reads[name].append(closed_loop([stream], "tally", name, http, 1, bearer))
        out["reads"] = {name: _pooled(cells) for name, cells in reads.items()}
        for name in AGGREGATE_READS:  # each round's p50 against organizationStats'
            pairs = zip(reads[name], reads["organizationStats"], strict=True)
            ratios = [cell.stats["p50"] / stats.stats["p50"] for cell, stats in pairs]
            out["reads"][name] |= {"rounds": [f"{r:.2f}x" for r in ratios], "ratio": statistics.median(ratios)}
        if writes:
            out["writes"] = _writes_over_http(server, profile, replace(http, duration=options["write_duration"],
                                              mutation_rounds=options["write_rounds"]), url, bearer)  # fmt: skip
    return out


def _writes_over_http(server: Any, profile: dict[str, Any], http: Profile, url: str, bearer: str) -> dict[str, Any]:
    """Each write with and without the aggregates in rounds of two adjacent windows (which goes first
    alternates). The ratio is the median of the rounds' ratios of server CPU per request: this
    machine's speed moves by up to 30 % within a minute (up to half on some VMs), which two windows
    seconds apart share."""
    needed = 4 * http.mutation_rounds * profile["pool"]  # per round: two runs, each a warm-up and a window
    ids = {status: run_async(_invoice_ids(url, status, needed)) for status in ("PENDING_PAYMENT", "PAID")}
    out: dict[str, Any] = {}
    for name, (template, fields, status) in HTTP_WRITES.items():
        pool, size, cells = ids[status], profile["pool"], {True: [], False: []}
        for _, aggregate in alternating(http.mutation_rounds):
            field = fields[0] if aggregate else fields[1]
            warm, window = _streams(server, template.format(field=field), pool[: 2 * size], size)
            pool = pool[2 * size :]
            cells[aggregate].append(closed_loop([window], field, name, http, 1, bearer, warmup=[warm]))
        ratios = [w.server_cpu / wo.server_cpu for w, wo in zip(cells[True], cells[False], strict=True)]  # type: ignore[operator]
        out[name] = {
            **{side: _pooled(cells[aggregate]) for side, aggregate in (("with", True), ("without", False))},
            "rounds": [f"{r:.2f}x" for r in ratios],
            "ratio": statistics.median(ratios),
        }
    return out


def _streams(server: Any, query: str, ids: list[int], size: int) -> tuple[Stream, Stream]:
    """A warm-up and a window, each on invoices of its own: every request changes its invoice (a payment
    of 0.01, or each invoice PAID -> PENDING_PAYMENT, then each back)."""
    if len(ids) < 2 * size:
        raise RuntimeError("too few invoices for the writes over HTTP")

    def bodies(mine: list[int]) -> list[str]:
        steps = ["PENDING_PAYMENT", "PAID"] if "$s" in query else [None]
        return [
            json.dumps({"query": query, "variables": {"i": str(i), **({"s": step} if step else {})}})
            for step in steps for i in mine
        ]  # fmt: skip

    return Stream(server, 1, bodies(ids[:size])), Stream(server, 1, bodies(ids[size : 2 * size]))


def _pooled(cells: list[Cell]) -> dict[str, Any]:
    """The cells' latencies pooled; server CPU per request, the mean over the cells."""
    latencies = sorted(us for cell in cells for us in cell.latencies_us)
    cpu = [cell.server_cpu for cell in cells if cell.server_cpu is not None]
    db_cpu = [cell.also_cpu for cell in cells if cell.also_cpu is not None]  # PostgreSQL's, on PostgreSQL
    return {
        **summarize([float(us) for us in latencies]),
        "server_cpu": sum(cpu) / len(cpu) if cpu else None,
        "db_cpu": sum(db_cpu) / len(db_cpu) if db_cpu else None,
    }


async def _invoice_ids(url: str, status: str, count: int) -> list[int]:
    async with database(url) as db:
        rows = await db.read(
            lambda s: s.execute(
                text("SELECT id FROM invoices WHERE org_id = :org AND status = :s ORDER BY id DESC LIMIT :n"),
                {"org": ORG, "s": status, "n": count},
            )
        )
        return [row[0] for row in rows]


def _as_of() -> date:
    return date.fromisoformat(AS_OF)


async def measure_writes(url: str, n: int) -> dict[str, Any]:
    """recordPayment and PAID <-> PENDING_PAYMENT, through `Database.write_row` (every aggregate) and the
    same plans without any aggregate (bench.servers.write_without_aggregate), interleaved."""
    async with database(url) as db:
        paying = await db.read(lambda s: _ids(s, "PENDING_PAYMENT"))
        toggled = await db.read(lambda s: _ids(s, "PAID"))
        random.Random(7).shuffle(paying)
        out: dict[str, Any] = {}
        for name, plan_of in (
            ("recordPayment", lambda i, _k: partial(record_payment, str(i), 1, ORG)),
            (
                "statusChange",
                lambda i, k: partial(set_invoice_status, str(i), "PAID" if k % 2 else "PENDING_PAYMENT", ORG),
            ),
        ):
            ids = paying if name == "recordPayment" else toggled
            # Each side its own invoices (every change a real one: the side after the other would
            # set the status it just set), each invoice changed twice each way in a row.
            own = {"with": ids[0::2], "without": ids[1::2]}
            cpu: dict[str, list[float]] = {"with": [], "without": []}
            wall: dict[str, list[float]] = {"with": [], "without": []}
            for k in range(n):
                for side in ("with", "without"):
                    plan = plan_of(own[side][(k // 4) % len(own[side])], k)
                    started, cpu_started = time.perf_counter(), time.process_time()
                    if side == "with":
                        await db.write_row(plan)
                    else:
                        await write_without_aggregate(db, plan)
                    wall[side].append((time.perf_counter() - started) * 1e6)
                    cpu[side].append((time.process_time() - cpu_started) * 1e6)
            out[name] = {side: {"wall": summarize(wall[side]), "cpu": summarize(cpu[side])} for side in wall}
    return out


async def _ids(session: Any, status: str) -> list[int]:
    rows = await session.execute(
        text("SELECT id FROM invoices WHERE org_id = :org AND status = :s ORDER BY id LIMIT 2000"),
        {"org": ORG, "s": status},
    )
    return [row[0] for row in rows]


def _targets(database: str, sizes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets on one database, from its smallest and largest sizes."""
    largest, smallest = sizes[-1]["http"]["reads"], sizes[0]["http"]["reads"]
    naive, writes = sizes[-1]["reads"], sizes[-1]["http"]["writes"]
    size = f"{sizes[-1]['invoices']:,} invoices"
    return [
        *({"what": f"{database}: {q} p50 within 2x of organizationStats' (cache off, over HTTP; median of "
                   f"{len(largest[q]['rounds'])} rounds), {size}",
           "ratio": largest[q]["ratio"], "limit": 2.0, "above": False}
          for q in AGGREGATE_READS),
        *({"what": f"{database}: {q} flat: p50 over HTTP at {size} / at {sizes[0]['invoices']:,}",
           "ratio": largest[q]["p50"] / smallest[q]["p50"], "limit": 1.5, "above": False}
          for q in AGGREGATE_READS),
        *({"what": f"{database}: {q}: the invoices table's answer / the aggregate's (db layer), {size}",
           "ratio": naive[f"{q}_naive"]["p50"] / naive[f"{q}_db"]["p50"], "limit": 20.0, "above": True}
          for q in AGGREGATE_READS),
        *({"what": f"{database}: {w}: server CPU per request with every money aggregate / without any (over "
                   f"HTTP; median of {len(writes[w]['rounds'])} rounds)",
           "ratio": writes[w]["ratio"], "limit": 1.3,
           "above": False} for w in ("recordPayment", "statusChange")),
    ]  # fmt: skip


def run(profile: dict[str, Any], server: str) -> dict[str, Any]:
    sizes, postgres = [], []
    for size in (profile["sizes"][0], profile["sizes"][-1]):
        with scratch_database(server, "tally_bench_money") as (dsn, url):
            seconds = run_async(seed_postgres(dsn, url, size))
            log(f"PostgreSQL: seeded {size:,} invoices in {seconds:.1f} s")
            run_async(check_seeded(url))
            reads = run_async(measure_reads(url, profile))
            http = measure_http(url, profile, writes=size == profile["sizes"][-1])
            postgres.append({"invoices": size, "seed_seconds": seconds, "reads": reads, "http": http})
    with tempfile.TemporaryDirectory(prefix="tally-bench-money-") as tmp:
        for size in profile["sizes"]:
            path = Path(tmp) / f"money-{size}.db"
            seconds = seed(path, size)
            log(f"seeded {size:,} invoices in {seconds:.1f} s ({path.stat().st_size / 1e6:.0f} MB)")
            url = f"sqlite+aiosqlite:///{path}"
            run_async(check_seeded(url))
            reads = run_async(measure_reads(url, profile))
            row = {"invoices": size, "seed_seconds": seconds, "mb": path.stat().st_size / 1e6, "reads": reads}
            largest = size == profile["sizes"][-1]
            if largest:
                row["writes"] = run_async(measure_writes(url, profile["writes"]))
            row["http"] = measure_http(url, profile, writes=largest)
            sizes.append(row)
            log(f"  {size:,}: " + ", ".join(f"{k} p50 {v['p50']:.0f} us" for k, v in reads.items()))
    targets = [*_targets("SQLite", sizes), *_targets("PostgreSQL", postgres)]
    for target in targets:
        target["met"] = target["ratio"] >= target["limit"] if target["above"] else target["ratio"] <= target["limit"]
    return {
        "profile": profile,
        "sizes": sizes,
        "postgres": postgres,
        "targets": targets,
        "ok": True,
        "machine": {"SQLite": sqlite3.sqlite_version, **environment(server)},
    }
