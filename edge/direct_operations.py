"""Fast path: the few operations that clients repeat, run without the GraphQL executor.

Scripts send the same mutation over and over
(`mutation($id: ID!, $s: LoadStatus!) { updateLoadStatus(id: $id, status: $s) { id status } }`),
screens the same count query; through Strawberry's execution such a request costs
more CPU than its database work. A POST whose document

- is one query or mutation selecting one field marked `DIRECT` in api/root.py (one
  read, or one transaction on one row), with no directives or fragments,
- selects below it only stored values (no field resolver): scalars, enums,
  objects of them and lists of non-null ones, each maybe aliased, and `__typename`,
- and which this process already answered once through GraphQL without an error (so the
  document parses and passes every validation rule and limit),

is served here, step by step as the executor would: graphql-core coerces the
variables and the arguments, Strawberry converts them (unless each is a scalar or an
enum, which it would hand on unchanged, or an input object with its own `from_input`,
which builds it as the conversion would), the field's permission
classes and its resolver run, and each selected value is serialized by its
GraphQL type. An error is coded as on the ordinary path (`to_client_error`), and
the operation is reported to the same observer (metrics). Anything else,
including variables that do not coerce, takes the ordinary path, which answers it.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from graphql import (
    FieldNode,
    GraphQLEnumType,
    GraphQLError,
    GraphQLField,
    GraphQLList,
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
from strawberry.permission import BasePermission, PermissionExtension
from strawberry.relay import GlobalID
from strawberry.scalars import is_scalar
from strawberry.types import ExecutionResult
from strawberry.types.arguments import InputContext, convert_arguments
from strawberry.types.base import StrawberryMaybe, StrawberryOptional, has_object_definition
from strawberry.types.enum import StrawberryEnumDefinition, has_enum_definition
from strawberry.types.field import StrawberryField

from api.extensions import ObserveOperation, outcome_of, to_client_error
from api.root import DIRECT
from edge.renderers import Render, renderer
from schema.context import Context

MAX_QUERY_CHARS = 4096
MAX_BODY_BYTES = 16_384  # a direct operation's variables are a few ids and values: an import's body is not parsed here
KNOWN_DOCUMENTS = 1024


@dataclass(frozen=True)
class Selected:
    """One selected field of an object: its response key, how its value is read, and how it is
    rendered (serialized by its type, or, for an object, as the fields selected of it)."""

    key: str
    attribute: str | None  # None: __typename
    serialize: Callable[[Any], Any]
    nullable: bool = False
    fields: tuple[Selected, ...] | None = None
    many: bool = False  # a list of non-null values


@dataclass(frozen=True)
class Plan:
    operation: OperationDefinitionNode
    node: FieldNode
    definition: GraphQLField
    field: StrawberryField
    permissions: tuple[BasePermission, ...]
    info_parameter: str
    selected: tuple[Selected, ...]
    # GraphQL name -> (Python name, what builds an input object's value; None: a scalar or an enum,
    # handed on as coerced), if every argument is one of those; None: Strawberry's conversion
    argument_builders: dict[str, tuple[str, Callable[[Any], Any] | None]] | None
    many: bool = False  # the field returns a list of objects

    @functools.cached_property
    def render(self) -> Render:
        """An object's selected fields, as a dict. Written and compiled when the plan first runs, so
        only for a document GraphQL has answered without an error (its caller authenticated, its
        aliases and depth within the limits), not for every document a request carries."""
        return renderer(self.selected)

    @property
    def key(self) -> str:
        return self.node.alias.value if self.node.alias else self.node.name.value


@dataclass(frozen=True)
class Call:
    """A request this fast path may serve: its plan, its variables, and whether the plan is known good."""

    plan: Plan
    variables: dict[str, Any]
    known: bool
    query: str


@dataclass(frozen=True)
class _Info:
    """What the resolvers and permissions of the `DIRECT` fields read of Strawberry's Info."""

    context: Context


class DirectOperations:
    def __init__(self, schema: Schema, observe: ObserveOperation | None = None) -> None:
        self.schema = schema
        self.observe = observe
        # documents answered without an error, the most recent last (an operationName that
        # names the document's one operation, or none, asks for the same operation)
        self.known: OrderedDict[str, None] = OrderedDict()
        self.plan_of = functools.lru_cache(maxsize=256)(self._plan)

    def call_of(self, body: bytes) -> Call | None:
        """The request as a Call, or None when it is not one this fast path serves."""
        if len(body) > MAX_BODY_BYTES:
            return None
        try:
            request = json.loads(body)
        except (ValueError, RecursionError):
            return None
        if not isinstance(request, dict) or not request.keys() <= {"query", "variables", "operationName", "extensions"}:
            return None
        if request.get("extensions"):  # what a request extension asks for is the ordinary path's to honour
            return None
        query, name, variables = request.get("query"), request.get("operationName"), request.get("variables")
        if not isinstance(query, str) or not isinstance(name, str | None) or not isinstance(variables, dict | None):
            return None
        plan = self.plan_of(query, name)
        if plan is None:
            return None
        known = query in self.known
        if known:
            self.known.move_to_end(query)
        return Call(plan, variables or {}, known, query)

    def learn(self, call: Call, status: int, body: bytes) -> None:
        """The ordinary path answered this call: its document is known good if nothing failed."""
        if status == 200 and "errors" not in json.loads(body):
            self.known[call.query] = None
            while len(self.known) > KNOWN_DOCUMENTS:
                self.known.popitem(last=False)

    async def execute(self, call: Call, context: Context) -> ExecutionResult | None:
        """The operation's result; None when its variables or arguments do not coerce, or a
        permission says no without raising (the ordinary path answers those)."""
        plan = call.plan
        variables = get_variable_values(self.schema._schema, plan.operation.variable_definitions or (), call.variables)
        if isinstance(variables, list):
            return None
        try:
            arguments = get_argument_values(plan.definition, plan.node, variables)
        except GraphQLError:
            return None
        info = cast(Any, _Info(context))
        resolver = plan.field.base_resolver
        assert resolver is not None
        try:
            kwargs = self.resolver_arguments(plan, arguments)
            for permission in plan.permissions:
                allowed = permission.has_permission(None, info, **kwargs)
                if not (await allowed if inspect.isawaitable(allowed) else allowed):
                    return None
            value = await resolver(**{plan.info_parameter: info}, **kwargs)
            data = [plan.render(item) for item in value] if plan.many else plan.render(value)
            result = ExecutionResult(data={plan.key: data}, errors=None)
        except Exception as error:
            coded = to_client_error(located_error(error, [plan.node], [plan.key]))
            result = ExecutionResult(data=None, errors=[coded])
        if self.observe is not None:
            self.observe(plan.operation.operation.value, plan.node.name.value, outcome_of(result.errors))
        return result

    def resolver_arguments(self, plan: Plan, arguments: dict[str, Any]) -> dict[str, Any]:
        """The resolver's keyword arguments from graphql-core's coerced ones, as Strawberry's conversion makes them."""
        if plan.argument_builders is None:
            return convert_arguments(
                arguments,
                plan.field.arguments,
                scalar_registry=self.schema.schema_converter.scalar_registry,
                config=self.schema.config,
            )
        kwargs = {}
        for name, value in arguments.items():
            python_name, build = plan.argument_builders[name]
            kwargs[python_name] = value if build is None or value is None else build(value)
        return kwargs

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
        if not isinstance(operation, OperationDefinitionNode) or operation.directives:
            return None
        name = operation.name.value if operation.name else None
        if operation_name not in (None, name) or len(operation.selection_set.selections) != 1:
            return None
        node = operation.selection_set.selections[0]
        if not isinstance(node, FieldNode) or node.directives or node.selection_set is None:
            return None
        schema = self.schema._schema
        root = {OperationType.QUERY: schema.query_type, OperationType.MUTATION: schema.mutation_type}.get(
            operation.operation
        )
        definition = root.fields.get(node.name.value) if root else None
        field = self.schema.get_field_for_type(node.name.value, root.name) if root else None
        if definition is None or field is None or field.metadata != DIRECT or not _plainly_guarded(field):
            return None
        info = field.base_resolver.info_parameter if field.base_resolver else None
        element = _element(definition.type)
        if info is None or not isinstance(definition.type, GraphQLNonNull) or element is None:
            return None
        result_type, many = element
        if not isinstance(result_type, GraphQLObjectType):
            return None
        selected = self._selected(result_type, node.selection_set.selections)
        if selected is None:
            return None
        permissions = tuple(permission() for permission in field.permission_classes)
        builders = self._argument_builders(field)
        return Plan(operation, node, definition, field, permissions, info.name, selected, builders, many)

    def _argument_builders(self, field: StrawberryField) -> dict[str, tuple[str, Callable[[Any], Any] | None]] | None:
        """Each argument's GraphQL name, Python name, and how the resolver's value is made of the
        coerced one, if every argument is a scalar or an enum (maybe optional), which Strawberry's
        conversion hands on as graphql-core coerced it (14 µs of an aging read's, for three
        arguments), or an input object built by its own `from_input` (schema/inputs.py; 5.7 -> 1.5
        µs a createLoad's). None for anything else: a list, a GlobalID, a Maybe."""
        names: dict[str, tuple[str, Callable[[Any], Any] | None]] = {}
        for argument in field.arguments:
            type_ = argument.type
            if isinstance(type_, StrawberryOptional) and not isinstance(type_, StrawberryMaybe):
                type_ = type_.of_type
            scalar = is_scalar(type_, self.schema.schema_converter.scalar_registry) and type_ is not GlobalID
            enum = isinstance(type_, StrawberryEnumDefinition) or has_enum_definition(type_)
            name = self.schema.config.name_converter.from_argument(argument)
            if argument.python_name is None:
                return None
            if scalar or enum:
                names[name] = (argument.python_name, None)
            elif has_object_definition(type_) and type_.__strawberry_definition__.from_input is not None:
                names[name] = (argument.python_name, self._builder(type_, name))
            else:
                return None
        return names

    def _builder(self, input_type: Any, name: str) -> Callable[[Mapping[str, Any]], Any]:
        """What builds argument `name`'s input object, as Strawberry's conversion does: its type's `from_input`."""
        from_input = input_type.__strawberry_definition__.from_input
        context = InputContext(
            info=None, config=self.schema.config, scalar_registry=self.schema.schema_converter.scalar_registry,
            path=(name,),
        )  # fmt: skip
        return lambda value: from_input(input_type, value, context)

    def _selected(self, parent: GraphQLObjectType, selections: Any) -> tuple[Selected, ...] | None:
        """The fields selected of `parent`, if each is a stored value selected plainly; else None.
        Fields under one response key are merged, as the executor merges them."""
        by_key: dict[str, list[FieldNode]] = {}
        for selection in selections:
            if not isinstance(selection, FieldNode) or selection.arguments or selection.directives:
                return None
            by_key.setdefault(selection.alias.value if selection.alias else selection.name.value, []).append(selection)
        chosen: list[Selected] = []
        for key, nodes in by_key.items():
            name, below = nodes[0].name.value, [node.selection_set for node in nodes]
            if name == "__typename":
                if any(below):
                    return None
                chosen.append(Selected(key, None, _constant(parent.name)))
                continue
            definition = parent.fields.get(name)
            field = self.schema.get_field_for_type(name, parent.name)
            if definition is None or field is None or field.base_resolver is not None:
                return None
            element = _element(definition.type)
            if element is None:
                return None  # a list of nullable items, or of lists
            value_type, many = element
            nullable = not isinstance(definition.type, GraphQLNonNull)
            if isinstance(value_type, GraphQLScalarType | GraphQLEnumType) and not any(below):
                chosen.append(Selected(key, field.python_name, value_type.serialize, nullable, many=many))
            elif isinstance(value_type, GraphQLObjectType) and all(below):
                fields = self._selected(value_type, [s for part in below if part for s in part.selections])
                if fields is None:
                    return None
                chosen.append(Selected(key, field.python_name, dict, nullable, fields, many))
            else:
                return None  # a selection that does not fit its type
        return tuple(chosen)


def _plainly_guarded(field: StrawberryField) -> bool:
    """A resolver behind permission classes and nothing else that runs around it: the direct path
    runs exactly those permissions, then the resolver."""
    return (
        field.base_resolver is not None
        and bool(field.permission_classes)
        and all(isinstance(extension, PermissionExtension) for extension in field.extensions)
        and not field.directives
    )


def _constant(value: str) -> Callable[[Any], str]:
    return lambda _parent: value


def _named(type_: Any) -> Any:
    """The type under a non-null."""
    return type_.of_type if isinstance(type_, GraphQLNonNull) else type_


def _element(type_: Any) -> tuple[Any, bool] | None:
    """A field's object, scalar or enum type and whether it is a list of non-null ones (T, T!,
    [T!] or [T!]!); None for anything else (nullable items, lists of lists)."""
    inner = _named(type_)
    if not isinstance(inner, GraphQLList):
        return inner, False
    if not isinstance(inner.of_type, GraphQLNonNull) or isinstance(inner.of_type.of_type, GraphQLList):
        return None
    return inner.of_type.of_type, True
