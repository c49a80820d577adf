"""Subscription events executed and encoded once per distinct operation, not once per subscriber.

A commit wakes every subscriber of the org with the same snapshot. graphql-core
would execute each subscriber's selection set over it separately and
Strawberry would encode each result again (about 0.5 ms per subscriber: half a
second for 1,000). The subscription resolver knows nothing of this: it yields
plain `OrganizationStats`. Its first event goes through Strawberry as usual;
then the graphql-transport-ws handler (edge/live_transport.py) takes over
through a `Handoff`, which learns the resolver's mailbox from the hub the
context hands out (`TappedHub`) and the operation's executor from the first
event. For each newer snapshot the handler takes the snapshot's one
`SharedEvent`, and `SharedEventExecutor` (the schema's executor class)
executes the operation with given variables once per SharedEvent and encodes
its `next` payload once: every subscriber that asked the same gets the same
bytes. The result can depend on nothing else: the one subscription field is
authorized when subscribing, and the stats types below it are plain data (no
resolvers, no permissions, no context).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from graphql import ExecutionResult
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from db.aggregates import StatsSnapshot
from db.broadcast import LatestSnapshot, StatsHub
from schema.types import OrganizationStats

Key = tuple[int, str]


@dataclass(eq=False)
class SharedEvent:
    """One subscription event for every subscriber it wakes, with their results.

    Results are keyed by (id of the operation node, variables); the node itself is
    kept beside each result, so the id cannot be reused by another document while
    the event lives.
    """

    value: Any
    results: dict[Key, tuple[object, ExecutionResult]] = field(default_factory=dict)
    payloads: dict[Key, str] = field(default_factory=dict)


class SharedEvents:
    """The SharedEvent of each recent snapshot (by identity: the hub hands every
    subscriber of an org the same snapshot object)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._events: OrderedDict[int, tuple[object, SharedEvent]] = OrderedDict()

    def of(self, snapshot: StatsSnapshot) -> SharedEvent:
        known = self._events.get(id(snapshot))
        if known is None or known[0] is not snapshot:
            known = (snapshot, SharedEvent(OrganizationStats.of(snapshot)))
            self._events[id(snapshot)] = known
            if len(self._events) > self.size:
                self._events.popitem(last=False)
        return known[1]


@dataclass
class Handoff:
    """What a subscription's transport needs to carry on without its resolver: the
    resolver's mailbox (from `TappedHub`), and the version it last yielded and the
    operation's executor (from the executor, as it runs the first event)."""

    mailbox: LatestSnapshot | None = None
    version: int = 0
    executor: SharedEventExecutor | None = None

    @property
    def ready(self) -> bool:
        return self.mailbox is not None and self.executor is not None


# Set by the graphql-transport-ws handler around a subscription's first event.
HANDOFF: ContextVar[Handoff | None] = ContextVar("tally_handoff", default=None)


class TappedHub:
    """The hub as the context hands it to resolvers: a subscription's mailbox is
    also given to the transport that is waiting for a handoff."""

    def __init__(self, hub: StatsHub) -> None:
        self.hub = hub

    @asynccontextmanager
    async def subscribe(self, org_id: str) -> AsyncIterator[LatestSnapshot]:
        async with self.hub.subscribe(org_id) as mailbox:
            handoff = HANDOFF.get()
            if handoff is not None:
                handoff.mailbox = mailbox
            yield mailbox


class _Executed:
    """What graphql-core asks of a per-event executor, answered from a shared result."""

    def __init__(self, result: Any) -> None:
        self.result = result

    def execute_operation(self, _serially: bool | None = None) -> Any:
        return self.result


class SharedEventExecutor(StrawberryGraphQLCoreExecutionContext):
    def build_per_event_executor(self, payload: Any) -> Any:
        if isinstance(payload, SharedEvent):
            return _Executed(self.result_of(payload))
        handoff = HANDOFF.get()
        if handoff is not None and isinstance(payload, OrganizationStats):
            handoff.executor, handoff.version = self, payload.version
        return super().build_per_event_executor(payload)

    def result_of(self, event: SharedEvent) -> Any:
        """This operation's result for the event: executed by the first subscriber that asks."""
        key = self._shared_key()
        known = event.results.get(key)
        if known is not None and known[0] is self.operation:
            return known[1]
        result = super().build_per_event_executor(event.value).execute_operation(False)
        if isinstance(result, ExecutionResult):  # else not plain data after all (awaitable): not shared
            event.results[key] = (self.operation, result)
        return result

    def payload_json(self, event: SharedEvent) -> str | None:
        """The JSON of this operation's `next` payload for the event, encoded once;
        None when the result is not plain data without errors (send it the usual way)."""
        key = self._shared_key()
        payload = event.payloads.get(key)
        if payload is None:
            result = self.result_of(event)
            if not isinstance(result, ExecutionResult) or result.errors:
                return None
            payload = event.payloads[key] = json.dumps({"data": result.data})
        return payload

    def _shared_key(self) -> Key:
        """What, besides the event, the result depends on: the operation and its variables."""
        key: Key | None = getattr(self, "_key", None)
        if key is None:
            key = (id(self.operation), json.dumps(self.variable_values.coerced, sort_keys=True, default=repr))
            self._key = key
        return key
