"""Count queries answered from the response last rendered for the same stats row.

Every page of the dashboard asks the same few count queries. Their answer is a
pure function of the operation and the org's stats row, so a POST whose query
selects only `organizationStats` / `countLoadsByStatus` /
`countInvoicesByStatus` of one org, from a caller allowed to read that org, is
served like this:

1. read the org's stats row (the one statement every count query runs);
2. if the response cached for this exact request body was rendered from an
   equal row, send its bytes as they are;
3. otherwise run GraphQL as usual, with the row of step 1 pinned in the context
   so the resolvers render exactly that row, and cache the response if it has
   no errors.

Every answer therefore reflects the row as committed at the moment of the
read, whichever way it is served. Anything else (other fields, fragments at the
top level, directives, GET, mutations, a token that may not read the org, an
error) takes the ordinary path and is never cached.
"""

from __future__ import annotations

import functools
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from graphql import (
    FieldNode,
    GraphQLError,
    OperationDefinitionNode,
    OperationType,
    StringValueNode,
    VariableNode,
    parse,
)
from starlette.types import Message, Receive, Scope, Send

from db.aggregates import StatsSnapshot
from db.errors import TallyError
from db.unit_of_work import Database
from edge.tokens import TokenVerifier

PATH = "/graphql"
PINNED = "tally.pinned_stats"  # ASGI scope key read by the view's get_context
STATS_FIELDS = frozenset({"organizationStats", "countLoadsByStatus", "countInvoicesByStatus"})
STATS_FIELD_BYTES = tuple(name.encode() for name in STATS_FIELDS)
MAX_QUERY_CHARS = 4096
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class Shape:
    """A count-only query: its operation name and where its one orgId comes from."""

    operation_name: str | None
    org_literal: str | None = None
    org_variable: str | None = None

    def org_id(self, variables: Any) -> str | None:
        if self.org_literal is not None:
            return self.org_literal
        value = variables.get(self.org_variable) if isinstance(variables, dict) else None
        return value if isinstance(value, str) else None


@functools.lru_cache(maxsize=1024)
def count_query_shape(query: str) -> Shape | None:
    """The Shape of a query that selects only stats fields of one org, else None."""
    if len(query) > MAX_QUERY_CHARS:
        return None
    try:
        document = parse(query, no_location=True)
    except GraphQLError:
        return None
    if len(document.definitions) != 1:
        return None
    operation = document.definitions[0]
    if not isinstance(operation, OperationDefinitionNode) or operation.operation != OperationType.QUERY:
        return None
    if operation.directives:
        return None
    sources: set[tuple[str, str]] = set()
    for selection in operation.selection_set.selections:
        if not isinstance(selection, FieldNode) or selection.directives or selection.name.value not in STATS_FIELDS:
            return None
        arguments = selection.arguments or ()
        if len(arguments) != 1 or arguments[0].name.value != "orgId":
            return None
        value = arguments[0].value
        if isinstance(value, StringValueNode):
            sources.add(("literal", value.value))
        elif isinstance(value, VariableNode):
            sources.add(("variable", value.name.value))
        else:
            return None
    if len(sources) != 1:
        return None
    kind, source = sources.pop()
    name = operation.name.value if operation.name else None
    return Shape(name, org_literal=source) if kind == "literal" else Shape(name, org_variable=source)


@dataclass(frozen=True)
class Rendered:
    snapshot: StatsSnapshot
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class CountCache:
    def __init__(self, db: Database, verifier: TokenVerifier, entries: int, *, cors: bool = False) -> None:
        """`cors`: requests with an Origin take the ordinary path, where CORS is answered."""
        self.db = db
        self.verifier = verifier
        self.entries = entries
        self.cors = cors
        self._rendered: OrderedDict[tuple[bytes, bytes], Rendered] = OrderedDict()
        # (Authorization, body) -> (org, token expiry) of count queries already decided
        self._decided: dict[tuple[bytes | None, bytes], tuple[str, float]] = {}
        self.hits = 0
        self.misses = 0

    def in_front_of(self, app: ASGIApp) -> ASGIApp:
        """ASGI middleware: POST /graphql meets the cache before the router and the view."""

        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == PATH:
                await self(scope, receive, send, app)
            else:
                await app(scope, receive, send)

        return middleware

    async def __call__(self, scope: Scope, receive: Receive, send: Send, graphql: ASGIApp) -> None:
        """Serve one POST /graphql, through `graphql` unless it is a count query."""
        body = await _read_body(receive)
        if body is None:
            return
        replay = _replaying(body, receive)
        headers = dict(scope["headers"])
        org_id = None if self.cors and b"origin" in headers else await self._readable_org(scope, headers, body)
        if org_id is None:
            await graphql(scope, replay, send)
            return
        try:
            snapshot = await self.db.read_stats(org_id)
        except Exception:
            await graphql(scope, replay, send)  # which answers the failure as a coded error
            return
        key = (headers.get(b"accept", b""), body)
        cached = self._rendered.get(key)
        if cached is not None and cached.snapshot == snapshot:
            self.hits += 1
            self._rendered.move_to_end(key)
            await send({"type": "http.response.start", "status": cached.status, "headers": cached.headers})
            await send({"type": "http.response.body", "body": cached.body})
            return
        self.misses += 1
        scope[PINNED] = {org_id: snapshot}
        sent: list[Message] = []

        async def capture(message: Message) -> None:
            sent.append(message)
            await send(message)

        await graphql(scope, replay, capture)
        rendered = _rendered_from(snapshot, sent)
        if rendered is not None:
            self._rendered[key] = rendered
            self._rendered.move_to_end(key)
            while len(self._rendered) > self.entries:
                self._rendered.popitem(last=False)

    async def _readable_org(self, scope: Scope, headers: dict[bytes, bytes], body: bytes) -> str | None:
        """The org of a count-only query the caller may read; None for anything else."""
        if scope.get("query_string") or not headers.get(b"content-type", b"").startswith(b"application/json"):
            return None
        authorization = headers.get(b"authorization")
        decided = self._decided.get((authorization, body))
        if decided is not None and decided[1] > time.time():
            return decided[0]  # the same request from the same caller, decided while its token is valid
        org_id, expires_at = await self._decide(headers, body)
        if org_id is not None:
            if len(self._decided) >= self.entries:
                self._decided.pop(next(iter(self._decided)))  # the oldest
            self._decided[(authorization, body)] = (org_id, expires_at)
        return org_id

    async def _decide(self, headers: dict[bytes, bytes], body: bytes) -> tuple[str | None, float]:
        """(org, until when the caller's token is valid) of a count-only query the caller may read."""
        nothing = None, 0.0
        if not any(name in body for name in STATS_FIELD_BYTES):
            return nothing  # a mutation, say: not worth decoding (a name spelled with JSON escapes misses the cache)
        try:
            request = json.loads(body)
        except (ValueError, RecursionError):
            return nothing  # the ordinary path refuses it
        if not isinstance(request, dict) or not set(request) <= {"query", "variables", "operationName"}:
            return nothing
        query = request.get("query")
        shape = count_query_shape(query) if isinstance(query, str) else None
        if shape is None or request.get("operationName") not in (None, shape.operation_name):
            return nothing
        org_id = shape.org_id(request.get("variables"))
        authorization = headers.get(b"authorization")
        if org_id is None or authorization is None:
            return nothing
        try:
            principal = await self.verifier.authenticate(authorization.decode("latin-1"))
            principal.authorize_org(org_id)
        except TallyError:
            return nothing  # the ordinary path answers with the error
        return org_id, principal.expires_at


def _rendered_from(snapshot: StatsSnapshot, sent: list[Message]) -> Rendered | None:
    """The response just sent, if it is complete and error-free (worth caching)."""
    if len(sent) != 2 or sent[0]["type"] != "http.response.start" or sent[0]["status"] != 200:
        return None
    body = sent[1].get("body", b"")
    if sent[1].get("more_body") or "errors" in json.loads(body):
        return None
    return Rendered(snapshot, 200, list(sent[0].get("headers", [])), body)


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body; None if the client went away first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that hands out the already-read body first."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay
