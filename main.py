"""Tally: settings, the app factory and the command line. `python main.py --help`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

import web
from db import recalculation as recalc
from db.broadcast import StatsHub
from db.scheduler import RecalculationScheduler
from db.unit_of_work import Database
from schema.auth import ROLES, JwksKeys, TokenVerifier
from schema.limits import BodySizeLimit, Limits
from schema.root import build_schema
from schema.view import TallyGraphQL
from web import graphiql

DEV_SECRET = "tally-dev-secret-not-for-production"
log = logging.getLogger("tally")


class Settings(BaseSettings):
    """Every setting comes from a TALLY_* environment variable (or a .env file)."""

    model_config = SettingsConfigDict(env_prefix="TALLY_", env_file=".env", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///./tally.db"
    broadcast_url: str = "memory://"
    host: str = "127.0.0.1"
    port: int = 8000
    jwt_secret: str | None = None
    jwks_url: str | None = None
    jwks_min_refresh_seconds: float = 30
    jwt_issuer: str | None = None
    recalc_interval_seconds: int = 86400
    query_stats: bool = False
    # Count-query responses kept per stats row (schema/count_cache.py); 0 = off.
    # TALLY_QUERY_STATS=1 turns it off: each response then reports its own statements.
    count_cache_entries: int = 1024
    db_pool_size: int = 10
    stats_shards: int = 1
    log_level: str = "INFO"
    dev_login: bool = False  # TALLY_DEV_LOGIN=1: the dashboard's one-click sign-in (SQLite only)
    max_query_depth: int = Limits.query_depth
    max_query_tokens: int = Limits.query_tokens
    max_aliases: int = Limits.aliases
    max_bulk_ids: int = Limits.bulk_ids
    max_batch_shipments: int = Limits.batch_shipments
    max_body_bytes: int = Limits.body_bytes
    max_subscriptions_per_connection: int = Limits.subscriptions_per_connection
    max_connections_per_token: int = Limits.connections_per_token
    ws_init_timeout_seconds: float = Limits.ws_init_timeout_seconds
    max_pending_sockets: int = Limits.pending_sockets
    max_pending_sockets_per_address: int = Limits.pending_sockets_per_address
    cors_origins: str = ""  # comma-separated origins whose pages may call /graphql

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip().rstrip("/") for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def signing_secret(self) -> str | None:
        """The HS256 secret; the development one only while no JWKS is configured."""
        return self.jwt_secret or (None if self.jwks_url else DEV_SECRET)

    def verifier(self) -> TokenVerifier:
        jwks = JwksKeys(self.jwks_url, min_refresh_seconds=self.jwks_min_refresh_seconds) if self.jwks_url else None
        return TokenVerifier(self.signing_secret, self.jwt_issuer, jwks)

    @property
    def limits(self) -> Limits:
        return Limits(
            query_depth=self.max_query_depth,
            query_tokens=self.max_query_tokens,
            aliases=self.max_aliases,
            bulk_ids=self.max_bulk_ids,
            batch_shipments=self.max_batch_shipments,
            body_bytes=self.max_body_bytes,
            subscriptions_per_connection=self.max_subscriptions_per_connection,
            connections_per_token=self.max_connections_per_token,
            ws_init_timeout_seconds=self.ws_init_timeout_seconds,
            pending_sockets=self.max_pending_sockets,
            pending_sockets_per_address=self.max_pending_sockets_per_address,
        )


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings()
    db = Database(settings.database_url, pool_size=settings.db_pool_size, stats_shards=settings.stats_shards)
    hub = StatsHub(settings.broadcast_url, db.read_stats, database_url=settings.database_url)
    db.after_commit.append(hub.publish)
    scheduler = RecalculationScheduler(db, settings.recalc_interval_seconds)
    graphql = TallyGraphQL(
        db,
        settings.verifier(),
        hub,
        settings.limits,
        schema=build_schema(settings.limits, query_stats=settings.query_stats),
        count_cache_entries=0 if settings.query_stats else settings.count_cache_entries,
        graphql_ide="graphiql",
        keep_alive=True,
    )

    async def healthz(_request: Request) -> Response:
        cache = graphql.count_cache
        counts = {"hits": cache.hits, "misses": cache.misses} if cache is not None else None
        live = hub.snapshot_metrics()
        return JSONResponse({"status": "ok", "fanOut": hub.fan_out, "live": live, "countCache": counts})

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if settings.signing_secret == DEV_SECRET:
            log.warning("TALLY_JWT_SECRET is not set: using the development secret")
        await hub.start()
        scheduler.start()
        try:
            yield
        finally:
            await scheduler.stop()
            await hub.stop()
            await db.dispose()

    cors = cors_middleware(settings.cors_origin_list)
    graphql_methods = ["GET", "POST", "OPTIONS"] if cors else ["GET", "POST"]
    app = Starlette(
        routes=[
            Route("/graphql", graphql, methods=graphql_methods, middleware=cors),
            WebSocketRoute("/graphql", graphql),
            Route("/healthz", healthz),
            *web.routes(settings),
            *graphiql.routes(),
        ],
        lifespan=lifespan,
        middleware=[Middleware(BodySizeLimit, limit=settings.max_body_bytes)],
    )
    app.state.db = db
    app.state.graphql = graphql
    app.state.hub = hub
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
        print(settings.verifier().issue(org_id=args.org, role=args.role, subject=args.sub, ttl_seconds=args.ttl))
    elif args.command == "schema":
        print(build_schema(Limits()).as_str())
    elif args.command == "migrate":
        from db.migrate import upgrade

        upgrade(settings.database_url)
        print("database is at the newest revision")
    elif args.command in ("recalc", "check-drift", "runs"):
        return asyncio.run(operate(settings, args.command, getattr(args, "org", None), args.json))
    else:
        serve(settings)
    return 0


async def operate(settings: Settings, command: str, org: str | None, as_json: bool) -> int:
    """The operator commands: rows out as a table (or JSON); 1 when drift was found."""
    db = Database(settings.database_url)
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
                {"org": d.org_id, "counter": c.counter, "stored": c.stored, "actual": c.actual}
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
