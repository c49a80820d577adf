"""Schema extensions: error codes on every error, and per-operation statement counts."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

from graphql import GraphQLError
from strawberry.extensions import SchemaExtension

from db.engine import StatementCounter, statement_counter
from db.errors import TallyError

log = logging.getLogger("tally.graphql")


def to_client_error(error: GraphQLError) -> GraphQLError:
    """Give every error a domain.md code; hide anything unexpected behind INTERNAL."""
    original = error.original_error
    if isinstance(original, TallyError):
        extensions: dict[str, Any] = {"code": original.code}
        if original.ids is not None:
            extensions["ids"] = original.ids
        return GraphQLError(
            original.message, error.nodes, error.source, error.positions, error.path, extensions=extensions
        )
    if original is None or isinstance(original, GraphQLError):
        # Parse, validation and variable-coercion errors: the request itself is wrong.
        if error.extensions and "code" in error.extensions:
            return error
        return GraphQLError(
            error.message,
            error.nodes,
            error.source,
            error.positions,
            error.path,
            extensions={"code": "BAD_USER_INPUT"},
        )
    request_id = uuid.uuid4().hex
    log.error("internal error (request %s) at %s", request_id, error.path, exc_info=original)
    return GraphQLError(
        f"Internal error (request {request_id})",
        error.nodes,
        error.source,
        error.positions,
        error.path,
        extensions={"code": "INTERNAL", "requestId": request_id},
    )


class ErrorCodes(SchemaExtension):
    def on_operation(self) -> Iterator[None]:
        self._streamed = False
        yield
        result = self.execution_context.result
        if not self._streamed and result is not None and result.errors:
            result.errors = [to_client_error(error) for error in result.errors]

    def on_stream_result(self, result: Any) -> Iterator[None]:
        """Subscriptions: each result, before it reaches the client."""
        self._streamed = True
        if getattr(result, "errors", None):
            result.errors = [to_client_error(error) for error in result.errors]
        yield


class QueryStats(SchemaExtension):
    """Adds extensions.queryStats.statements: the SQL statements this operation ran."""

    def on_operation(self) -> Iterator[None]:
        self.counter = StatementCounter()
        statement_counter.set(self.counter)
        yield

    def get_results(self) -> dict[str, Any]:
        return {"queryStats": {"statements": self.counter.statements}}
