"""Every setting of Tally: TALLY_* environment variables (or a .env file)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

from schema.limits import Limits

DEV_SECRET = "tally-dev-secret-not-for-production"


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
    # Count-query responses kept per stats row (edge/count_cache.py); 0 = off.
    # TALLY_QUERY_STATS=1 turns it off: each response then reports its own statements.
    count_cache_entries: int = 1024
    # PostgreSQL connections per process: db_pool_size for transactions (no overflow: a steady
    # load opens no sessions) + db_read_pool_size for count reads (fast path) + 1 to LISTEN
    # with a postgres:// broadcast. 10 + 4 + 1 = 15: six processes fit max_connections = 100.
    db_pool_size: int = 10
    db_read_pool_size: int = 4
    stats_shards: int = 1
    log_level: str = "INFO"
    # Python's cyclic GC: its youngest generation collected every this many net allocations, not 700,
    # and what is alive at startup frozen out of every collection (main.tune_gc); 0 leaves it as it is.
    gc_young_threshold: int = 20_000
    access_log: bool = False  # uvicorn's line per request (at INFO); a load balancer's log costs this process nothing
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
    # The edge's fast paths (edge/): each can be turned off; CI runs the suite once more with all off.
    direct_operations: bool = True  # known count queries, createLoad and status changes run without the executor
    shared_events: bool = True  # a subscription event executed and encoded once per operation, not per subscriber
    # SQLite: one-trip driver, inline count reads, recount thread (db/sqlite/), one-row writes in one trip
    sqlite_fast_paths: bool = True
    # PostgreSQL: count reads (db/postgres/) and one-row writes (db/row_writes.py) straight through asyncpg
    postgres_fast_paths: bool = True

    @property
    def fast_paths(self) -> bool:
        """The fast paths of the configured database (SQLite's or PostgreSQL's)."""
        return self.sqlite_fast_paths if self.database_url.startswith("sqlite") else self.postgres_fast_paths

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip().rstrip("/") for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def signing_secret(self) -> str | None:
        """The HS256 secret; the development one only while no JWKS is configured."""
        return self.jwt_secret or (None if self.jwks_url else DEV_SECRET)

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


def dev_login_enabled(settings: Settings) -> bool:
    """Only when asked for, and only on SQLite: never on a shared (PostgreSQL) deployment."""
    return settings.dev_login and settings.database_url.startswith("sqlite")
