"""Schema extensions: error codes on every error, per-operation statement counts, operation outcomes."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    SelectionSetNode,
)
from graphql.utilities import get_operation_ast
from strawberry.exceptions import MissingQueryError
from strawberry.extensions import SchemaExtension
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types import ExecutionContext

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


# operation type (query / mutation / subscription / unknown), root field, outcome (ok or an error code)
ObserveOperation = Callable[[str, str, str], None]
ERROR_CODES = frozenset(
    {"UNAUTHENTICATED", "FORBIDDEN", "NOT_FOUND", "BAD_USER_INPUT", "INVALID_TRANSITION", "CONFLICT", "INTERNAL"}
)
REFUSED_REQUESTS = (GraphQLError, MissingQueryError, CannotGetOperationTypeError, InvalidOperationTypeError)
SEVERAL_FIELDS = "(several)"
INTROSPECTION_FIELDS = frozenset({"__schema", "__type", "__typename"})
NO_FIELD = "(none)"


class OperationOutcomes(SchemaExtension):
    """Reports every operation once: its type, its root field and how it ended.

    The outcome is `ok` or the first error's code. A subscription is reported with
    its first result (accepted or refused), or when it ends without one. Labels stay
    bounded: the root field is a field of the schema (or introspection), else "(none)", and an
    operation selecting several is "(several)".
    """

    def __init__(self, observe: ObserveOperation) -> None:
        self.observe = observe
        self.reported = False

    def on_operation(self) -> Iterator[None]:
        try:
            yield
        except TallyError as error:
            self.report(error.code)
            raise
        except REFUSED_REQUESTS:
            self.report("BAD_USER_INPUT")
            raise
        except Exception:
            self.report("INTERNAL")
            raise
        result = self.execution_context.result
        self.report(outcome_of(getattr(result, "errors", None)))

    def on_stream_result(self, result: Any) -> Iterator[None]:
        self.report(outcome_of(getattr(result, "errors", None)))
        yield

    def report(self, outcome: str) -> None:
        if not self.reported:
            self.reported = True
            self.observe(*operation_labels(self.execution_context), outcome)


def outcome_of(errors: list[GraphQLError] | None) -> str:
    if not errors:
        return "ok"
    code = (errors[0].extensions or {}).get("code")
    return code if code in ERROR_CODES else "INTERNAL"


def operation_labels(context: ExecutionContext) -> tuple[str, str]:
    """The operation's type and the one root field it selects (see OperationOutcomes)."""
    document = context.graphql_document
    operation = get_operation_ast(document, context.operation_name) if document is not None else None
    if document is None or operation is None:
        return "unknown", NO_FIELD
    root = context.schema._schema.get_root_type(operation.operation)
    known = INTROSPECTION_FIELDS | (root.fields.keys() if root is not None else set())
    fragments = {d.name.value: d.selection_set for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    names = {name for name in _root_field_names(operation.selection_set, fragments, set()) if name in known}
    field = names.pop() if len(names) == 1 else (SEVERAL_FIELDS if names else NO_FIELD)
    return operation.operation.value, field


def _root_field_names(selections: SelectionSetNode, fragments: dict[str, Any], seen: set[str]) -> Iterator[str]:
    for selection in selections.selections:
        if isinstance(selection, FieldNode):
            yield selection.name.value
        elif isinstance(selection, InlineFragmentNode):
            yield from _root_field_names(selection.selection_set, fragments, seen)
        elif isinstance(selection, FragmentSpreadNode) and selection.name.value in fragments.keys() - seen:
            seen.add(selection.name.value)
            yield from _root_field_names(fragments[selection.name.value], fragments, seen)
