"""Fast path: the single-row mutations that scripts repeat, run without the GraphQL executor.

A script sends the same few documents over and over, such as
`mutation($id: ID!, $s: LoadStatus!) { updateLoadStatus(id: $id, status: $s) { id status } }`.
Through Strawberry's execution such a request costs more CPU than the write itself.
A POST whose document

- is one mutation selecting one field marked `DIRECT` in api/root.py (its resolver is
  one transaction on one row), with no directives or fragments,
- selects only fields of the result that are stored values of a scalar or enum type
  (and `__typename`),
- and which this process already answered once through GraphQL without an error (so the
  document parses and passes every validation rule and limit),

is served here, step by step as the executor would: graphql-core coerces the
variables and the arguments, Strawberry converts them, the field's permission
classes and its resolver run, and each selected value is serialized by its
GraphQL type. An error is coded as on the ordinary path (`to_client_error`), and
the operation is reported to the same observer (metrics). Anything else,
including variables that do not coerce, takes the ordinary path, which answers it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from graphql import (
    FieldNode,
    GraphQLEnumType,
    GraphQLError,
    GraphQLField,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    OperationDefinitionNode,
    OperationType,
    get_argument_values,
    get_variable_values,
    located_error,
    parse,
)
from strawberry import Schema
from strawberry.types import ExecutionResult
from strawberry.types.arguments import convert_arguments
from strawberry.types.field import StrawberryField

from api.extensions import ObserveOperation, outcome_of, to_client_error
from api.root import DIRECT
from schema.context import Context

MAX_QUERY_CHARS = 4096


@dataclass(frozen=True)
class Leaf:
    """One selected value of the result: its response key, and how it is read and serialized."""

    key: str
    attribute: str | None  # None: __typename
    serialize: Callable[[Any], Any]

    def of(self, value: Any) -> Any:
        if self.attribute is None:
            return self.serialize(value)
        found = getattr(value, self.attribute)
        return None if found is None else self.serialize(found)


@dataclass(frozen=True)
class Plan:
    operation: OperationDefinitionNode
    node: FieldNode
    definition: GraphQLField
    field: StrawberryField
    leaves: tuple[Leaf, ...]

    @property
    def key(self) -> str:
        return self.node.alias.value if self.node.alias else self.node.name.value


@dataclass(frozen=True)
class Call:
    """A request this fast path may serve: its plan, its variables, and whether the plan is known good."""

    plan: Plan
    variables: dict[str, Any]
    known: bool
    request_key: tuple[str, str | None]


@dataclass(frozen=True)
class _Info:
    """What the resolvers and permissions of DIRECT_FIELDS read of Strawberry's Info."""

    context: Context


class DirectMutations:
    def __init__(self, schema: Schema, observe: ObserveOperation | None = None) -> None:
        self.schema = schema
        self.observe = observe
        self.known: set[tuple[str, str | None]] = set()  # (query, operationName) answered without an error
        self.plan_of = functools.lru_cache(maxsize=256)(self._plan)

    def call_of(self, body: bytes) -> Call | None:
        """The request as a Call, or None when it is not one this fast path serves."""
        try:
            request = json.loads(body)
        except (ValueError, RecursionError):
            return None
        if not isinstance(request, dict) or not request.keys() <= {"query", "variables", "operationName"}:
            return None
        query, name, variables = request.get("query"), request.get("operationName"), request.get("variables")
        if not isinstance(query, str) or not isinstance(name, str | None) or not isinstance(variables, dict | None):
            return None
        plan = self.plan_of(query, name)
        if plan is None:
            return None
        return Call(plan, variables or {}, (query, name) in self.known, (query, name))

    def learn(self, call: Call, status: int, body: bytes) -> None:
        """The ordinary path answered this call: its document is known good if nothing failed."""
        if status == 200 and "errors" not in json.loads(body):
            self.known.add(call.request_key)

    async def execute(self, call: Call, context: Context) -> ExecutionResult | None:
        """The mutation's result; None when its variables or arguments do not coerce."""
        plan = call.plan
        variables = get_variable_values(self.schema._schema, plan.operation.variable_definitions or (), call.variables)
        if isinstance(variables, list):
            return None
        try:
            arguments = get_argument_values(plan.definition, plan.node, variables)
        except GraphQLError:
            return None
        kwargs = convert_arguments(
            arguments,
            plan.field.arguments,
            scalar_registry=self.schema.schema_converter.scalar_registry,
            config=self.schema.config,
        )
        info = cast(Any, _Info(context))
        resolver = plan.field.base_resolver
        assert resolver is not None
        try:
            for permission in plan.field.permission_classes:
                if not cast(Any, permission)().has_permission(None, info, **kwargs):
                    return None  # the ordinary path words the refusal
            value = await resolver(info, **kwargs)
            result = ExecutionResult(data={plan.key: {leaf.key: leaf.of(value) for leaf in plan.leaves}}, errors=None)
        except Exception as error:
            coded = to_client_error(located_error(error, [plan.node], [plan.key]))
            result = ExecutionResult(data=None, errors=[coded])
        if self.observe is not None:
            self.observe("mutation", plan.node.name.value, outcome_of(result.errors))
        return result

    def _plan(self, query: str, operation_name: str | None) -> Plan | None:
        if len(query) > MAX_QUERY_CHARS:
            return None
        try:
            document = parse(query)
        except GraphQLError:
            return None
        if len(document.definitions) != 1:
            return None
        operation = document.definitions[0]
        if not isinstance(operation, OperationDefinitionNode) or operation.operation != OperationType.MUTATION:
            return None
        name = operation.name.value if operation.name else None
        if operation.directives or operation_name not in (None, name) or len(operation.selection_set.selections) != 1:
            return None
        node = operation.selection_set.selections[0]
        if not isinstance(node, FieldNode) or node.directives or node.selection_set is None:
            return None
        mutation = self.schema._schema.mutation_type
        definition = mutation.fields.get(node.name.value) if mutation else None
        field = self.schema.get_field_for_type(node.name.value, mutation.name) if mutation else None
        if definition is None or field is None or field.base_resolver is None or field.metadata != DIRECT:
            return None
        result_type = _named(definition.type)
        if not isinstance(result_type, GraphQLObjectType):
            return None
        leaves = [self._leaf(result_type, selection) for selection in node.selection_set.selections]
        if any(leaf is None for leaf in leaves):
            return None
        return Plan(operation, node, definition, field, tuple(cast(list[Leaf], leaves)))

    def _leaf(self, parent: GraphQLObjectType, selection: Any) -> Leaf | None:
        """A plain value of `parent` selected without arguments, directives or sub-selection; else None."""
        if not isinstance(selection, FieldNode) or selection.arguments or selection.directives:
            return None
        if selection.selection_set is not None:
            return None
        name = selection.name.value
        key = selection.alias.value if selection.alias else name
        if name == "__typename":
            return Leaf(key, None, lambda _value: parent.name)
        definition = parent.fields.get(name)
        field = self.schema.get_field_for_type(name, parent.name)
        if definition is None or field is None or field.base_resolver is not None:
            return None
        value_type = _named(definition.type)
        if not isinstance(value_type, GraphQLScalarType | GraphQLEnumType):
            return None
        return Leaf(key, field.python_name, value_type.serialize)


def _named(type_: Any) -> Any:
    return type_.of_type if isinstance(type_, GraphQLNonNull) else type_
