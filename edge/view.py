"""The Strawberry ASGI view: authenticates each request or WebSocket, builds the context."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, cast

import orjson
from cross_web import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType

from db.broadcast import StatsHub
from db.errors import BadInput, TallyError, Unauthenticated
from db.unit_of_work import Database
from edge import responses
from edge.count_cache import PINNED
from edge.direct_operations import DirectOperations
from edge.guards import ConnectionsPerToken, PendingSockets
from edge.live_transport import TallyTransportWSHandler
from edge.shared_events import SharedEvents, TappedHub
from edge.tokens import TokenVerifier
from edge.ws_messages import CheckedLegacyWSMessages, CheckedTransportWSMessages
from schema.context import Context, Hub
from schema.limits import Limits

CLOSE_TOKEN_EXPIRED = 4403
CLOSE_INIT_TIMEOUT = 4408
CLOSE_TRY_AGAIN_LATER = 1013
CONNECTION = "tally.connection"  # ASGI scope key: per-WebSocket bookkeeping
SUB_RESPONSE = "tally.sub_response"  # ASGI scope key: the response's status and media type, before it is built


class TallyGraphQL(GraphQL[Context, None]):
    graphql_ws_handler_class = CheckedLegacyWSMessages

    def __init__(
        self,
        db: Database,
        verifier: TokenVerifier,
        hub: StatsHub,
        limits: Limits,
        *,
        ide_page: Callable[[], Response],
        shared_events: bool = True,
        direct_operations: DirectOperations | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.direct_operations = direct_operations
        self.ide_page = ide_page
        self.shared_events = SharedEvents() if shared_events else None
        if shared_events:
            self.graphql_transport_ws_handler_class = TallyTransportWSHandler
            self.context_hub: Hub = TappedHub(hub)
        else:
            self.graphql_transport_ws_handler_class = CheckedTransportWSMessages
            self.context_hub = hub
        self.db = db
        self.verifier = verifier
        self.hub = hub
        self.limits = limits
        self.connections = ConnectionsPerToken(limits.connections_per_token)
        self.pending = PendingSockets(limits.pending_sockets, limits.pending_sockets_per_address)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.serve_http(scope, receive, send)
            return
        address = str((scope.get("client") or ("unknown",))[0])
        if not self.pending.admit(address):
            await send({"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER})  # before accept: HTTP 403
            return
        connection: dict[str, Any] = {"pending": address}
        scope[CONNECTION] = connection
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._settle(connection)
            if "token" in connection:
                self.connections.release(connection["token"])
            if "expiry" in connection:
                connection["expiry"].cancel()

    def _settle(self, connection: dict[str, Any]) -> None:
        """The socket is authenticated or gone: it no longer counts as pending."""
        address = connection.pop("pending", None)
        if address is not None:
            self.pending.settle(address)
        timer = connection.pop("init_timer", None)
        if timer is not None:
            timer.cancel()

    async def serve_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One HTTP request; a refusal is a coded GraphQL error in the negotiated media type."""
        request = Request(scope, receive)
        try:
            response = await self.run_direct(request) if self.direct_operations else None
            if response is None:
                response = await self.run(request)
        except HTTPException as error:
            media_type = responses.media_type_for(request.headers.get("accept"))
            cause = error.__cause__
            if isinstance(cause, InvalidOperationTypeError) and cause.operation_type == OperationType.MUTATION:
                response = responses.error_response(error.reason, 405, media_type, {"Allow": "POST"})
            else:
                response = responses.error_response(error.reason, error.status_code, media_type)
        await response(scope, receive, send)

    async def run_direct(self, request: Request) -> Response | None:
        """A known count query or single-row mutation, served without the executor
        (edge/direct_operations.py); None for any other request."""
        assert self.direct_operations is not None
        if request.method != "POST" or request.scope.get("query_string"):
            return None
        if not request.headers.get("content-type", "").startswith("application/json"):
            return None
        call = self.direct_operations.call_of(await request.body())
        if call is None:
            return None
        if not call.known:
            response = await self.run(request)
            self.direct_operations.learn(call, response.status_code, bytes(response.body))
            return response
        result = await self.direct_operations.execute(call, await self.get_context(request))
        if result is None:
            return None
        if result.errors:
            sub_response = await self.get_sub_response(request)
            return self.create_response(await self.process_result(request, result), sub_response)
        # The answer as create_response writes it: a direct resolver sees no sub-response to set.
        response = Response(self.encode_json({"data": result.data}), media_type=responses.JSON)
        return responses.with_media_type(response, responses.media_type_for(request.headers.get("accept")))

    async def get_sub_response(self, request: Request | WebSocket) -> Response:
        sub_response = await super().get_sub_response(request)
        sub_response.media_type = responses.media_type_for(request.headers.get("accept"))
        request.scope[SUB_RESPONSE] = sub_response
        return sub_response

    async def process_result(self, request: Request, result: ExecutionResult) -> GraphQLHTTPResponse:
        response_data = await super().process_result(request, result)
        sub_response = request.scope[SUB_RESPONSE]
        if sub_response.media_type == responses.GRAPHQL_RESPONSE and responses.is_request_error(result):
            sub_response.status_code = 400
            responses.drop_data(response_data)
        return response_data

    def create_response(
        self, response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse], sub_response: Response
    ) -> Response:
        response = super().create_response(response_data, sub_response)
        return responses.with_media_type(response, sub_response.media_type or responses.JSON)

    async def render_graphql_ide(self, request: Request) -> Response:
        return self.ide_page()

    def encode_json(self, data: object) -> str:
        """orjson: an answer of a few KB (an aging list) took ~35 µs in json.dumps, ~3 here. A str,
        not bytes: Strawberry sends bytes over a WebSocket as a binary frame. What orjson refuses
        (a lone surrogate, say, echoed from a request in an error message) the standard encoder
        writes, escaped, as before."""
        try:
            return orjson.dumps(data).decode()
        except TypeError:  # orjson.JSONEncodeError
            return cast(str, super().encode_json(data))

    def parse_json(self, data: str | bytes) -> Any:
        """JSON from a request: what cannot be decoded is a 400, never a 500.

        Strawberry lets a body that is not UTF-8, nested too deeply for the decoder,
        with an integer too long to convert, or valid JSON but no object (`null`,
        `"x"`, `42`) fail as a 500. A body arrives as bytes (GET parameters, also
        parsed here, as str): it must be an object (or a list, which Strawberry
        refuses as a batch).
        """
        try:
            value = self.decode_json(data)
        except (ValueError, RecursionError) as error:  # ValueError: also not UTF-8, or an integer too long
            raise HTTPException(400, "Unable to parse request body as JSON") from error
        if isinstance(data, bytes) and not isinstance(value, dict | list):
            raise HTTPException(400, "The request body must be a JSON object")
        return value

    async def get_context(self, request: Request | WebSocket, response: Any = None) -> Context:
        auth: Any
        if isinstance(request, WebSocket):
            auth = Unauthenticated("connection_init must carry {'Authorization': 'Bearer <token>'}")
        else:
            try:
                auth = await self.verifier.authenticate(request.headers.get("authorization"))
            except TallyError as error:
                auth = error
        context = Context(db=self.db, hub=self.context_hub, auth=auth, limits=self.limits)
        context.pinned_stats = request.scope.get(PINNED, context.pinned_stats)
        if isinstance(request, WebSocket):
            context.websocket = request
            request.scope[CONNECTION]["init_timer"] = asyncio.get_running_loop().call_later(
                self.limits.ws_init_timeout_seconds,
                lambda: asyncio.ensure_future(_close(request, CLOSE_INIT_TIMEOUT, "connection_init timeout")),
            )
        return context

    async def on_ws_connect(self, context: Context) -> None:
        """No WebSocket without a valid token in connection_init; closed when it expires."""
        header = (context.connection_params or {}).get("Authorization")
        try:
            principal = await self.verifier.authenticate(header if isinstance(header, str) else None)
        except TallyError as error:
            raise ConnectionRejectionError({"code": error.code, "message": error.message}) from error
        websocket = context.websocket
        assert websocket is not None and isinstance(header, str)
        connection = websocket.scope[CONNECTION]
        if not self.connections.acquire(header):
            refusal = BadInput(f"At most {self.limits.connections_per_token} connections per token")
            raise ConnectionRejectionError({"code": refusal.code, "message": refusal.message})
        connection["token"] = header
        self._settle(connection)
        context.auth = principal
        delay = max(0.0, principal.expires_at - time.time())
        connection["expiry"] = asyncio.get_running_loop().call_later(
            min(delay, 10**7), lambda: asyncio.ensure_future(_close(websocket, CLOSE_TOKEN_EXPIRED, "token expired"))
        )


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await websocket.close(code=code, reason=reason)
