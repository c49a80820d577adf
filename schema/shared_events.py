"""Subscription events executed and encoded once per distinct operation, not once per subscriber.

A commit wakes every subscriber of the org with the same snapshot. graphql-core
would execute each subscriber's selection set over it separately and
Strawberry would encode each result again (about 0.5 ms per subscriber: half a
second for 1,000). Here the subscription resolver yields one `SharedEvent` per
snapshot, shared by all its subscribers, and `SharedEventExecutor` (the
schema's executor class) executes an operation with given variables once per
SharedEvent, and encodes its `next` payload once; every subscriber that asked
the same gets the same result. The result can depend on nothing else: the one
subscription field is authorized when subscribing, and the stats types below
it are plain data (no resolvers, no permissions, no context).

After a subscription's first event, the graphql-transport-ws handler
(schema/live_transport.py) takes over through a `Handoff`: it waits on the
resolver's mailbox itself and sends each shared payload.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from graphql import ExecutionResult
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from db.aggregates import StatsSnapshot
from db.broadcast import LatestSnapshot

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

    def of(self, source: object, value: Callable[[], Any]) -> SharedEvent:
        known = self._events.get(id(source))
        if known is None or known[0] is not source:
            known = (source, SharedEvent(value()))
            self._events[id(source)] = known
            if len(self._events) > self.size:
                self._events.popitem(last=False)
        return known[1]


@dataclass
class Handoff:
    """What a subscription's transport needs to carry on without its resolver.

    The resolver fills it in before each event it yields (its mailbox, the version
    it yielded, how a snapshot becomes a SharedEvent); the executor, when it runs
    the first event.
    """

    mailbox: LatestSnapshot | None = None
    version: int = 0
    event_of: Callable[[StatsSnapshot], SharedEvent] | None = None
    executor: SharedEventExecutor | None = None

    def follow(self, mailbox: LatestSnapshot, version: int, event_of: Callable[[StatsSnapshot], SharedEvent]) -> None:
        self.mailbox, self.version, self.event_of = mailbox, version, event_of

    @property
    def ready(self) -> bool:
        return self.mailbox is not None and self.event_of is not None and self.executor is not None


# Set by the graphql-transport-ws handler around a subscription's first event.
HANDOFF: ContextVar[Handoff | None] = ContextVar("tally_handoff", default=None)


class _Executed:
    """What graphql-core asks of a per-event executor, answered from a shared result."""

    def __init__(self, result: Any) -> None:
        self.result = result

    def execute_operation(self, _serially: bool | None = None) -> Any:
        return self.result


class SharedEventExecutor(StrawberryGraphQLCoreExecutionContext):
    def build_per_event_executor(self, payload: Any) -> Any:
        if not isinstance(payload, SharedEvent):
            return super().build_per_event_executor(payload)
        handoff = HANDOFF.get()
        if handoff is not None and handoff.executor is None:
            handoff.executor = self
        return _Executed(self.result_of(payload))

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
