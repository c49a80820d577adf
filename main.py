"""Tally composed: the app factory (every part built from settings) and the command line. `python main.py --help`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

import web
from api.root import build_schema
from db import recalculation as recalc
from db.broadcast import StatsHub
from db.money import format_cents
from db.scheduler import RecalculationScheduler
from db.unit_of_work import Database
from edge.count_cache import CountCache
from edge.direct_operations import DirectOperations
from edge.guards import BodySizeLimit
from edge.metrics import Metrics
from edge.shared_events import SharedEventExecutor
from edge.tokens import JwksKeys, TokenVerifier
from edge.view import TallyGraphQL
from schema.limits import Limits
from schema.principal import ROLES
from settings import DEV_SECRET, Settings, dev_login_enabled
from web import graphiql

log = logging.getLogger("tally")


def verifier_of(settings: Settings) -> TokenVerifier:
    jwks = None
    if settings.jwks_url:
        jwks = JwksKeys(settings.jwks_url, min_refresh_seconds=settings.jwks_min_refresh_seconds)
    return TokenVerifier(settings.signing_secret, settings.jwt_issuer, jwks)


def tune_gc(young_threshold: int) -> None:
    """Python's cyclic GC for a server. A request's objects are mostly freed by reference
    counting, yet every 700 net allocations the GC walks the young ones, and now and then every
    object alive, most of them the modules, schema and app built at startup. So, once per
    process, those are frozen out of every collection, and the youngest generation waits for
    `young_threshold`. Count queries at 32 clients on PostgreSQL: ~10 % less CPU each with the
    count cache, ~16 % without (README, *The GC*). 0 leaves the GC as it is."""
    if young_threshold <= 0:
        return
    if gc.get_freeze_count() == 0:  # not again: an app started anew (tests) would freeze its predecessor's cycles
        gc.collect()
        gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)


def dev_login_token(verifier: TokenVerifier, org_id: str) -> str:
    return verifier.issue(org_id=org_id, role="admin", subject="dev-login", ttl_seconds=web.DEV_LOGIN_TTL_SECONDS)


def create_app(settings: Settings | None = None, *, schema_factory: Callable[..., Any] = build_schema) -> Starlette:
    settings = settings or Settings()
    verifier = verifier_of(settings)
    if settings.dev_login and not dev_login_enabled(settings):
        log.warning("TALLY_DEV_LOGIN is ignored: it only works with a SQLite database")
    elif dev_login_enabled(settings):
        log.warning("TALLY_DEV_LOGIN is on: anyone who can reach this server can sign in as an admin")
    db = Database(
        settings.database_url,
        pool_size=settings.db_pool_size,
        stats_shards=settings.stats_shards,
        sqlite_fast_paths=settings.sqlite_fast_paths,
        postgres_read_pool=settings.db_read_pool_size if settings.postgres_fast_paths else 0,
        driver_row_writes=settings.fast_paths,
    )
    hub = StatsHub(settings.broadcast_url, db.read_stats, database_url=settings.database_url)
    db.after_commit.append(hub.publish)
    db.after_commit.wanted = hub.hears_of
    scheduler = RecalculationScheduler(db, settings.recalc_interval_seconds)
    metrics = Metrics(db, hub)
    schema = schema_factory(
        settings.limits,
        query_stats=settings.query_stats,
        execution_context_class=SharedEventExecutor if settings.shared_events else None,
        observe_operation=metrics.count_operation,
    )
    direct = settings.direct_operations and not settings.query_stats
    graphql = TallyGraphQL(
        db,
        verifier,
        hub,
        settings.limits,
        schema=schema,
        direct_operations=DirectOperations(schema, metrics.count_operation) if direct else None,
        ide_page=graphiql.page_response,
        shared_events=settings.shared_events,
        graphql_ide="graphiql",
        keep_alive=True,
    )

    cors = cors_middleware(settings.cors_origin_list)
    cache_entries = 0 if settings.query_stats else settings.count_cache_entries
    count_cache = CountCache(db, verifier, cache_entries, cors=bool(cors)) if cache_entries > 0 else None
    metrics.watch_count_cache(count_cache)

    async def healthz(_request: Request) -> Response:
        """Liveness only: the figures are on /metrics."""
        return JSONResponse({"status": "ok"})

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if settings.signing_secret == DEV_SECRET:
            log.warning("TALLY_JWT_SECRET is not set: using the development secret")
        await hub.start()
        scheduler.start()
        tune_gc(settings.gc_young_threshold)
        try:
            yield
        finally:
            await scheduler.stop()
            await hub.stop()
            await db.dispose()

    graphql_methods = ["GET", "POST", "OPTIONS"] if cors else ["GET", "POST"]
    app = Starlette(
        routes=[
            Route("/graphql", graphql, methods=graphql_methods, middleware=cors),
            WebSocketRoute("/graphql", graphql),
            Route("/healthz", healthz),
            Route("/metrics", metrics.endpoint),
            *web.routes(dev_login_enabled(settings), lambda org: dev_login_token(verifier, org)),
            *graphiql.routes(),
        ],
        lifespan=lifespan,
        middleware=[
            Middleware(BodySizeLimit, limit=settings.max_body_bytes),
            *([Middleware(count_cache.in_front_of)] if count_cache else []),
        ],
    )
    app.state.count_cache = count_cache
    app.state.db = db
    app.state.graphql = graphql
    app.state.hub = hub
    app.state.metrics = metrics
    app.state.scheduler = scheduler
    app.state.settings = settings
    return app


def cors_middleware(origins: list[str]) -> list[Middleware]:
    """CORS for these origins' pages (none: no CORS at all); it answers their preflights.

    Tally takes bearer tokens, never cookies, so credentials stay off.
    """
    if not origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    ]


def raise_open_files_limit() -> None:
    """Every socket is a file: take the hard limit, so the socket caps bind before descriptors run out."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    if soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def serve(settings: Settings) -> None:
    import uvicorn

    from db.migrate import upgrade

    upgrade(settings.database_url)
    raise_open_files_limit()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=settings.access_log,
        # uvicorn's sans-I/O websockets protocol: a send is one frame written to the
        # transport, without the legacy protocol's drain lock and per-send futures
        # (it halved the server's CPU per delivered event in bench.live).
        ws="websockets-sansio",
        ws_ping_interval=20,
        ws_ping_timeout=20,
        # Events are a few hundred bytes: deflating each one for each subscriber costs
        # more CPU than the bytes it saves.
        ws_per_message_deflate=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="main.py", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="migrate the database, then serve /graphql (the default)")
    commands.add_parser("migrate", help="upgrade the database to the newest schema")
    commands.add_parser("schema", help="print the GraphQL schema (what schema.graphql holds)")
    commands.add_parser("vacuum", help="rewrite an older SQLite file with 1 KB pages (stop the server first)")
    token = commands.add_parser("token", help="print a token signed with TALLY_JWT_SECRET")
    token.add_argument("--org", help="the org_id claim (omit for a service token)")
    token.add_argument("--role", choices=ROLES, default="admin")
    token.add_argument("--sub", default="cli")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    for name, text in (
        ("recalc", "recalculate stats (every org, or --org) and record the run"),
        ("check-drift", "report stored counters that differ from a recount; exit 1 on drift"),
        ("runs", "list the newest recalculation runs"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("--json", action="store_true", help="machine-readable output")
        if name != "runs":
            command.add_argument("--org", help="only this organization")
    args = parser.parse_args(argv)
    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    if args.command == "token":
        if args.role != "service" and not args.org:
            parser.error("--org is required unless --role service")
        print(verifier_of(settings).issue(org_id=args.org, role=args.role, subject=args.sub, ttl_seconds=args.ttl))
    elif args.command == "schema":
        print(build_schema(Limits()).as_str())
    elif args.command == "migrate":
        from db.migrate import upgrade

        upgrade(settings.database_url)
        print("database is at the newest revision")
    elif args.command == "vacuum":
        return vacuum(settings.database_url)
    elif args.command in ("recalc", "check-drift", "runs"):
        try:
            return asyncio.run(operate(settings, args.command, getattr(args, "org", None), args.json))
        except DBAPIError as error:  # an operator's command: one line, not a traceback
            reason = str(error.orig).splitlines()[0] if error.orig else type(error).__name__
            missing = "no such table" in reason or "does not exist" in reason
            hint = " (the database has no Tally tables: run `python main.py migrate` first)" if missing else ""
            print(f"{args.command}: database error: {reason}{hint}", file=sys.stderr)
            return 2
    else:
        serve(settings)
    return 0


def vacuum(url: str) -> int:
    """Rewrite the SQLite file with Tally's page size (db/sqlite/page_size.py); 2 if it cannot."""
    import sqlite3

    from db.migrate import sqlite_file_lock
    from db.sqlite.page_size import Unchanged, rewrite_pages

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        print("vacuum: only an SQLite file has a page size to change", file=sys.stderr)
        return 2
    path = cast(str, parsed.database)
    if not Path(path).is_file():
        print(f"vacuum: no database at {path}", file=sys.stderr)
        return 2
    try:
        with sqlite_file_lock(url):
            before, after = rewrite_pages(path)
    except Unchanged as error:
        print(f"vacuum: {path} is unchanged: {error}; stop every process using it first", file=sys.stderr)
        return 2
    except sqlite3.Error as error:  # not a database, unreadable: one line, not a traceback
        print(f"vacuum: {path}: {error}", file=sys.stderr)
        return 2
    print(f"{path}: pages of {after} bytes" + ("" if before == after else f" (were {before})"))
    return 0


async def operate(settings: Settings, command: str, org: str | None, as_json: bool) -> int:
    """The operator commands: rows out as a table (or JSON); 1 when drift was found."""
    db = Database(
        settings.database_url, sqlite_fast_paths=settings.sqlite_fast_paths, driver_row_writes=settings.fast_paths
    )
    hub = StatsHub(settings.broadcast_url, db.read_stats)
    db.after_commit.append(hub.publish)  # corrections reach live subscribers (redis/postgres)
    await hub.start()
    try:
        orgs = [org] if org else None
        if command == "recalc":
            results = await recalc.recalculate(db, orgs, "cli")
            rows = [
                {"org": r.org_id, "counter": d.counter, "stored": d.stored, "actual": d.actual}
                for r in results
                for d in r.corrected
            ]
            summary = f"{len(results)} org(s) recalculated, {len(rows)} correction(s)"
        elif command == "check-drift":
            checked = orgs if orgs is not None else await db.read(recalc.all_org_ids)
            drifts = [await recalc.drift_report(db, o) for o in checked]
            rows = [
                {"org": d.org_id, "counter": c.counter, "stored": shown(c, c.stored), "actual": shown(c, c.actual)}
                for d in drifts
                for c in d.counters
            ]
            summary = f"{len(drifts)} org(s) checked, {len(rows)} drifting counter(s)"
        else:
            rows = [
                {k: str(v) if v is not None else "" for k, v in run.items()}
                for run in await recalc.recent_runs(db, limit=20)
            ]
            summary = f"{len(rows)} run(s)"
    finally:
        await hub.stop()
        await db.dispose()
    if as_json:
        print(json.dumps({"summary": summary, "rows": rows}, indent=2, default=str))
    else:
        print(format_table(rows))
        print(summary)
    return 1 if command == "check-drift" and rows else 0


def shown(drift: recalc.CounterDrift, value: int) -> int | str:
    """A drifting value as check-drift prints it: an amount as money ("12.50"), a count as it is."""
    return format_cents(value) if drift.money else value


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)"
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
