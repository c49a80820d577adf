"""The per-request (per-WebSocket-connection) context: factories only, no open session."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import strawberry
from starlette.websockets import WebSocket
from strawberry.dataloader import DataLoader

from db import models
from db.aggregates import StatsSnapshot
from db.broadcast import StatsHub
from db.errors import TallyError, Unauthenticated
from db.queries import get_many
from db.unit_of_work import Database
from schema import types
from schema.auth import Principal
from schema.limits import Limits

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _loader(
    db: Database,
    model: type[Any],
    key: Any,
    convert: Callable[[Any], V],
) -> Callable[[Any], Awaitable[V | None]]:
    """A batched, per-context lookup by key; None for a None key."""

    async def batch(keys: list[Any]) -> list[V | None]:
        rows = await db.read(lambda session: get_many(session, model, key, keys))
        found = {getattr(row, key.key): convert(row) for row in rows}
        return [found.get(k) for k in keys]

    loader: DataLoader[Any, V | None] = DataLoader(load_fn=batch)

    async def load(value: Any) -> V | None:
        return None if value is None else await loader.load(value)

    return load


class Loaders:
    def __init__(self, db: Database) -> None:
        self.customer = _loader(db, models.Customer, models.Customer.id, types.Customer.of)
        self.lane = _loader(db, models.Lane, models.Lane.id, types.Lane.of)
        self.load = _loader(db, models.Load, models.Load.id, types.Load.of)
        self.invoice_of_load = _loader(db, models.Invoice, models.Invoice.load_id, types.Invoice.of)


@dataclass
class Context:
    db: Database
    hub: StatsHub
    # The caller, or why there is none; set before any resolver runs (HTTP: per
    # request; WebSocket: at connection_init).
    auth: Principal | TallyError
    # Set by Strawberry from a WebSocket's connection_init payload.
    connection_params: dict[str, Any] | None = None
    limits: Limits = field(default_factory=Limits)
    websocket: WebSocket | None = None
    active_subscriptions: int = 0
    # Stats already read for this request (the count cache's miss path renders from them).
    pinned_stats: dict[str, StatsSnapshot] = field(default_factory=dict)
    loaders: Loaders = field(init=False)

    def __post_init__(self) -> None:
        self.loaders = Loaders(self.db)

    @property
    def principal(self) -> Principal:
        """The verified caller; raises UNAUTHENTICATED otherwise."""
        if isinstance(self.auth, TallyError):
            raise self.auth
        if self.auth.expires_at <= time.time():
            raise Unauthenticated("Token expired")
        return self.auth


Info = strawberry.Info[Context, None]
