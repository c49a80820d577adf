"""The per-request (per-WebSocket-connection) context: factories only, no open session.

Over a WebSocket one context serves every operation of the connection, so
nothing that caches rows lives in it: data loaders belong to one operation
(`OperationLoaders` starts them in the operation's task, and every resolver
task of that operation inherits them)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable, Iterator
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol, TypeVar

import strawberry
from starlette.websockets import WebSocket
from strawberry.dataloader import DataLoader
from strawberry.extensions import SchemaExtension

from db import models
from db.aggregates import StatsSnapshot
from db.broadcast import LatestSnapshot
from db.errors import TallyError, Unauthenticated
from db.queries import get_many
from db.unit_of_work import Database
from schema import types
from schema.limits import Limits
from schema.principal import Principal

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
    """One operation's loaders, each made on first use: a subscription, which lives as
    long as its socket and never loads rows, carries none."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @cached_property
    def customer(self) -> Callable[[Any], Awaitable[types.Customer | None]]:
        return _loader(self.db, models.Customer, models.Customer.id, types.Customer.of)

    @cached_property
    def lane(self) -> Callable[[Any], Awaitable[types.Lane | None]]:
        return _loader(self.db, models.Lane, models.Lane.id, types.Lane.of)

    @cached_property
    def load(self) -> Callable[[Any], Awaitable[types.Load | None]]:
        return _loader(self.db, models.Load, models.Load.id, types.Load.of)

    @cached_property
    def invoice_of_load(self) -> Callable[[Any], Awaitable[types.Invoice | None]]:
        return _loader(self.db, models.Invoice, models.Invoice.load_id, types.Invoice.of)


class Hub(Protocol):
    """Where subscriptions wait for an org's committed snapshots (db/broadcast.py)."""

    def subscribe(self, org_id: str) -> AbstractAsyncContextManager[LatestSnapshot]: ...


@dataclass
class Context:
    db: Database
    hub: Hub
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

    @property
    def loaders(self) -> Loaders:
        """This operation's data loaders."""
        loaders = _operation_loaders.get()
        if loaders is None or loaders.db is not self.db:
            loaders = Loaders(self.db)
            _operation_loaders.set(loaders)
        return loaders

    @property
    def principal(self) -> Principal:
        """The verified caller; raises UNAUTHENTICATED otherwise."""
        if isinstance(self.auth, TallyError):
            raise self.auth
        if self.auth.expires_at <= time.time():
            raise Unauthenticated("Token expired")
        return self.auth


_operation_loaders: ContextVar[Loaders | None] = ContextVar("tally_operation_loaders", default=None)


class OperationLoaders(SchemaExtension):
    """Fresh data loaders for every operation, set before any of its resolvers runs."""

    def on_operation(self) -> Iterator[None]:
        context = self.execution_context.context
        _operation_loaders.set(Loaders(context.db) if isinstance(context, Context) else None)
        yield


Info = strawberry.Info[Context, None]
