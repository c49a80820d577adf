"""graphql-transport-ws, with subscription events after the first sent directly.

Strawberry runs each event of each subscription through its result stream
(extension hooks, graphql-core's event mapping, result post-processing): tens
of microseconds per subscriber per event, which at 1,000 subscribers is most of
the time between a commit and the last client hearing of it. The first event
of a subscription goes through that stream as usual (validation, access checks,
errors all happen there); the resolver then hands off (`Handoff`), and this
handler waits on the resolver's mailbox itself and sends each snapshot's
shared result (schema/shared_events.py). The resolver stays suspended at its
last yield, keeping its channel subscription, until the operation ends.
"""

from __future__ import annotations

import inspect
from typing import Any

from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler, Operation
from strawberry.types.execution import ExecutionResult, PreExecutionError

from schema.context import Context
from schema.shared_events import HANDOFF, Handoff


class TallyTransportWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    async def _send_result_stream(self, operation: Operation[Context, None], result_source: Any) -> None:
        handoff = Handoff()
        token = HANDOFF.set(handoff)
        try:
            async for result in result_source:  # the same protocol as Strawberry's, until the handoff
                if isinstance(result, PreExecutionError):
                    await self._handle_pre_execution_error(operation, result)
                    return
                if not isinstance(result, ExecutionResult):
                    await self._reject_incremental_delivery(operation)
                    return
                await operation.send_next(result)
                if handoff.ready:
                    break
            else:
                return
        finally:
            HANDOFF.reset(token)
        await self._send_directly(operation, handoff)

    async def _send_directly(self, operation: Operation[Context, None], handoff: Handoff) -> None:
        """Every newer snapshot of the org, rendered once per event and operation; until cancelled."""
        assert handoff.mailbox is not None and handoff.event_of is not None and handoff.executor is not None
        while True:
            snapshot = await handoff.mailbox.newer_than(handoff.version)
            handoff.version = snapshot.version
            result = handoff.executor.build_per_event_executor(handoff.event_of(snapshot)).execute_operation(False)
            if inspect.isawaitable(result):
                result = await result
            await operation.send_next(result)
