"""Request limits: each configurable (TALLY_MAX_*), each refused with a clear error (edge/guards.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    query_depth: int = 12
    query_tokens: int = 2_000
    aliases: int = 30
    bulk_ids: int = 1_000
    batch_shipments: int = 1_000
    body_bytes: int = 1_000_000
    subscriptions_per_connection: int = 20
    connections_per_token: int = 10
    # WebSockets that have not completed connection_init: closed after this long, and capped.
    ws_init_timeout_seconds: float = 10
    pending_sockets: int = 256
    pending_sockets_per_address: int = 32
