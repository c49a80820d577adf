"""graphql-transport-ws, with subscription events after the first sent directly.

Strawberry runs each event of each subscription through its result stream
(extension hooks, graphql-core's event mapping, result post-processing): tens
of microseconds per subscriber per event, which at 1,000 subscribers is most of
the time between a commit and the last client hearing of it. The first event
of a subscription goes through that stream as usual (validation, access checks,
errors all happen there); then this handler takes over (`Handoff`): it waits on
the resolver's mailbox itself and sends each snapshot's shared result
(edge/shared_events.py). The resolver stays suspended at its last yield,
keeping its channel subscription, until the operation ends.
"""

from __future__ import annotations

import inspect
import json
from typing import Any, cast

from starlette.websockets import WebSocketDisconnect
from strawberry.asgi import ASGIWebSocketAdapter
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import Operation
from strawberry.types.execution import ExecutionResult, PreExecutionError

from edge.shared_events import HANDOFF, Handoff, SharedEvents
from edge.ws_messages import CheckedTransportWSMessages
from schema.context import Context


class TallyTransportWSHandler(CheckedTransportWSMessages):
    @property
    def shared_events(self) -> SharedEvents:
        return cast(SharedEvents, self.view.shared_events)  # type: ignore[attr-defined]

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
        """Every newer snapshot of the org, as its shared payload; until cancelled."""
        mailbox, executor = handoff.mailbox, handoff.executor
        assert mailbox is not None and executor is not None
        websocket = cast(ASGIWebSocketAdapter, self.websocket).ws
        prefix = f'{{"id":{json.dumps(operation.id)},"type":"next","payload":'
        while True:
            snapshot = await mailbox.newer_than(handoff.version)
            handoff.version = snapshot.version
            event = self.shared_events.of(snapshot)
            payload = executor.payload_json(event)
            if payload is None:  # not plain data after all: Strawberry's way
                result = executor.result_of(event)
                await operation.send_next(await result if inspect.isawaitable(result) else result)
                continue
            if operation.completed:
                return
            try:
                await websocket.send_text(prefix + payload + "}")
            except WebSocketDisconnect as error:
                raise WebSocketDisconnected from error  # as Strawberry's own sends report it
