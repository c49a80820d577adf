"""A direct operation's answer rendered by a function written for its selection (edge/direct_operations.py).

A selection is known once its plan is made, so the code that completes it can be too: one function
per selected object, a dict display with one entry per selected field, each read as an attribute and
serialized by its GraphQL type. A value of the exact type a serializer hands back unchanged (a str for
String, ID and Money, an int in range for Int, a bool for Boolean) is kept as it is, with no call;
anything else, None included, goes to a function that serializes it, or says null is not allowed
where the type says so, as the executor would. An aging answer renders ~170 values: this takes 17 µs
where a closure per field took 62 (docs/benchmarks-money.md).

The generated source names only attributes that are Python identifiers (the schema's own field
names) and numbered constants; response keys, serializers and messages are constants, so nothing of
a client's document (an alias, say) becomes code.
"""

from __future__ import annotations

import keyword
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from graphql.type.scalars import serialize_boolean, serialize_id, serialize_int, serialize_string

if TYPE_CHECKING:
    from edge.direct_operations import Selected

Render = Callable[[Any], dict[str, Any]]

# The serializers that hand a value of this exact type back unchanged (Money's is `str`).
_KEPT_AS_IS = {serialize_string: "str", serialize_id: "str", str: "str", serialize_boolean: "bool"}
_INT_RANGE = "-2147483648 <= x <= 2147483647"  # GraphQL's Int: 32 bits


def renderer(fields: tuple[Selected, ...]) -> Render:
    """A function from a resolver's value to the dict of `fields` selected of it."""
    return _Writer().compiled(fields)


class _Writer:
    def __init__(self) -> None:
        self.constants: dict[str, Any] = {}
        self.functions: list[str] = []

    def compiled(self, fields: tuple[Selected, ...]) -> Render:
        top = self.function(fields)
        namespace = dict(self.constants)
        exec(compile("\n".join(self.functions), "<direct operation renderer>", "exec"), namespace)
        return namespace[top]

    def constant(self, value: Any) -> str:
        name = f"c{len(self.constants)}"
        self.constants[name] = value
        return name

    def function(self, fields: tuple[Selected, ...]) -> str:
        """A function rendering one object's `fields`; its name."""
        index = len(self.functions)
        name = f"render_{index}"
        self.functions.append("")  # its place: the functions of the objects below it come after
        entries = []
        for selected in fields:
            if selected.attribute is None:  # __typename
                entries.append(f"{self.constant(selected.key)}: {self.constant(selected.serialize(None))}")
            else:
                entries.append(f"{self.constant(selected.key)}: {self.value(selected)}")
        self.functions[index] = f"def {name}(v):\n    return {{{', '.join(entries)}}}\n"
        return name

    def value(self, selected: Selected) -> str:
        """An expression of `v`, the parent: the selected field's value, rendered."""
        attribute = selected.attribute
        assert attribute is not None
        read = f"v.{attribute}" if attribute.isidentifier() and not keyword.iskeyword(attribute) else (
            f"getattr(v, {self.constant(attribute)})"
        )  # fmt: skip
        if selected.many:
            each = self.constant(selected.serialize) if selected.fields is None else self.function(selected.fields)
            no_item = self.constant(_refuse_null(f"a non-null item of {selected.key}"))
            items = f"[{each}(y) if y is not None else {no_item}(y) for y in x]"
            return f"({items} if (x := {read}) is not None else {self.null(selected)}(x))"
        if selected.fields is not None:
            return f"({self.function(selected.fields)}(x) if (x := {read}) is not None else {self.null(selected)}(x))"
        kept = _KEPT_AS_IS.get(selected.serialize)
        if kept is not None:
            return f"(x if type(x := {read}) is {kept} else {self.serialized(selected)}(x))"
        if selected.serialize is serialize_int:
            return f"(x if type(x := {read}) is int and {_INT_RANGE} else {self.serialized(selected)}(x))"
        return f"{self.serialized(selected)}({read})"

    def null(self, selected: Selected) -> str:
        """A function for the field's None: None where the field is nullable, else an error."""
        return self.constant(_none if selected.nullable else _refuse_null(f"non-nullable field {selected.key}"))

    def serialized(self, selected: Selected) -> str:
        """A function serializing any value of the field, None as `null` would."""
        serialize, null = selected.serialize, self.constants[self.null(selected)]

        def serialized(value: Any) -> Any:
            return null(value) if value is None else serialize(value)

        return self.constant(serialized)


def _none(_value: None) -> None:
    return None


def _refuse_null(where: str) -> Callable[[Any], Any]:
    def refuse(_value: None) -> Any:
        raise RuntimeError(f"Cannot return null for {where}")  # stored values never are; the executor says the same

    return refuse
