"""Core statements compiled once for a driver called without SQLAlchemy: SQL text, positional
values from a dict, and rows back as named tuples with SQLAlchemy's type processing."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import asyncpg
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

DIALECTS: dict[str, Dialect] = {
    "sqlite": sqlite_dialect(paramstyle="qmark"),  # what sqlite3 takes
    "postgresql": asyncpg.dialect(),  # $1, $2, ...: what asyncpg takes
}


class Prepared:
    """`statement` compiled for `dialect` ("sqlite" or "postgresql"). `keys`: the columns an
    INSERT or UPDATE sets, every one (the statement's VALUES or SET list follows them; no
    column default is added for the caller). `returns`: the table whose every column the
    statement returns, in order."""

    def __init__(
        self, statement: ClauseElement, dialect: str, keys: Sequence[str] | None = None, returns: Table | None = None
    ) -> None:
        self.dialect = dialect_ = DIALECTS[dialect]
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect_, column_keys=keys))
        self.sql = compiled.string
        binds = [compiled.binds[name] for name in compiled.positiontup or ()]
        # (name given by the caller, or None for a literal of the statement; its value or literal; processor)
        self._order = [
            (bind.key if bind.required else None, bind.value,
             bind.type.dialect_impl(dialect_).bind_processor(dialect_))
            for bind in binds
        ]  # fmt: skip
        self.row_type: Any = None
        if returns is not None:
            self.row_type = namedtuple(returns.name, [column.key for column in returns.c])  # type: ignore[misc]
            self._results = [
                column.type.dialect_impl(dialect_).result_processor(dialect_, None) for column in returns.c
            ]

    def values(self, parameters: Mapping[str, Any]) -> tuple[Any, ...]:
        out = []
        for name, literal, process in self._order:
            value = literal if name is None else parameters[name]
            out.append(value if process is None or value is None else process(value))
        return tuple(out)

    def row(self, values: Sequence[Any] | None) -> Any:
        """The driver's row as a named tuple of Python values (None stays None)."""
        if values is None:
            return None
        pairs = zip(values, self._results, strict=True)
        return self.row_type(*(v if process is None or v is None else process(v) for v, process in pairs))
