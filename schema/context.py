"""The per-request (per-WebSocket-connection) context: factories only, no open session."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import strawberry
from strawberry.dataloader import DataLoader

from db import models
from db.broadcast import StatsHub
from db.errors import TallyError
from db.queries import get_many
from db.unit_of_work import Database
from schema import types
from schema.auth import Principal, TokenVerifier

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
    verifier: TokenVerifier
    hub: StatsHub
    authorization: str | None = None
    # Set by Strawberry from a WebSocket's connection_init payload.
    connection_params: dict[str, Any] | None = None
    loaders: Loaders = field(init=False)
    _principal: Principal | TallyError | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.loaders = Loaders(self.db)

    @property
    def principal(self) -> Principal:
        """The verified caller; raises UNAUTHENTICATED (the same error every time)."""
        if self._principal is None:
            header = self.authorization
            if self.connection_params is not None:
                header = self.connection_params.get("Authorization") or header
            try:
                self._principal = self.verifier.from_header(header)
            except TallyError as error:
                self._principal = error
        if isinstance(self._principal, TallyError):
            raise self._principal
        return self._principal


Info = strawberry.Info[Context, None]
