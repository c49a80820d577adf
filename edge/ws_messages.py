"""What a client may send over a GraphQL WebSocket, checked before Strawberry reads it.

Strawberry's handlers index into messages as the protocols describe them; a
message of another shape (a list, a `start` without a payload, a query that is
a number) would fail inside them as an unhandled exception, logged as an
ERROR with a traceback. Here such a message is the client's mistake: it is
refused the way each protocol refuses one, and nothing is logged.
"""

from __future__ import annotations

from typing import Any

from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler

from db.errors import BadInput

OPERATION_TYPES = {"graphql-transport-ws": "subscribe", "graphql-ws": "start"}


def problem_with(message: Any, operation_type: str) -> str | None:
    """Why this message cannot be handled, or None when it has the protocol's shape."""
    if not isinstance(message, dict):
        return "A message must be a JSON object"
    if not isinstance(message.get("type"), str):
        return "A message must have a string `type`"
    if message["type"] != operation_type:
        return None
    if not isinstance(message.get("id"), str):
        return f"A `{operation_type}` message must have a string `id`"
    payload = message.get("payload")
    if not isinstance(payload, dict):
        return f"A `{operation_type}` message must have an object `payload`"
    if not isinstance(payload.get("query"), str):
        return "The payload's `query` must be a string"
    for key, kind in (("variables", dict), ("extensions", dict), ("operationName", str)):
        if payload.get(key) is not None and not isinstance(payload[key], kind):
            return f"The payload's `{key}` must be {'a string' if kind is str else 'an object'} or null"
    return None


def coded_error(message: str) -> dict[str, Any]:
    return {"message": message, "extensions": {"code": BadInput.code}}


class CheckedTransportWSMessages(BaseGraphQLTransportWSHandler[Any, Any]):
    """graphql-transport-ws: a malformed message closes the socket with 4400, as the protocol says."""

    async def handle_message(self, message: Any) -> None:
        problem = problem_with(message, OPERATION_TYPES["graphql-transport-ws"])
        if problem is not None:
            await self.websocket.close(code=4400, reason=problem)
            return
        await super().handle_message(message)


class CheckedLegacyWSMessages(BaseGraphQLWSHandler[Any, Any]):
    """Legacy graphql-ws: a malformed message is answered with a coded `error`; the socket stays."""

    async def handle_message(self, message: Any) -> None:
        problem = problem_with(message, OPERATION_TYPES["graphql-ws"])
        if problem is not None:
            operation_id = message.get("id") if isinstance(message, dict) else None
            await self.websocket.send_json({"type": "error", "id": operation_id, "payload": coded_error(problem)})
            return
        await super().handle_message(message)
