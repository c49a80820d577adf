"""Core statements compiled once for a driver called without SQLAlchemy: SQL text, positional
values from a dict, and rows back as named tuples with SQLAlchemy's type processing."""

from __future__ import annotations

import functools
import operator
from collections import namedtuple
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import ColumnCollection, Table
from sqlalchemy.dialects.postgresql import asyncpg
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement, Executable
from sqlalchemy.sql.compiler import SQLCompiler

DIALECTS: dict[str, Dialect] = {
    "sqlite": sqlite_dialect(paramstyle="qmark"),  # what sqlite3 takes
    "postgresql": asyncpg.dialect(),  # $1, $2, ...: what asyncpg takes
}


class Prepared:
    """`statement` compiled for `dialect` ("sqlite" or "postgresql"). `keys`: the columns an
    INSERT or UPDATE sets, every one (the statement's VALUES or SET list follows them; no
    column default is added for the caller). `returns`: the table whose every column the
    statement returns, in order (or the columns themselves)."""

    def __init__(
        self,
        statement: ClauseElement,
        dialect: str,
        keys: Sequence[str] | None = None,
        returns: Table | ColumnCollection[Any, Any] | None = None,
    ) -> None:
        self.statement = statement
        self.dialect = dialect_ = DIALECTS[dialect]
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect_, column_keys=keys))
        if "POSTCOMPILE" in compiled.string:  # an expanding IN: SQLAlchemy would rewrite it per execution
            raise ValueError("a prepared statement cannot take an expanding parameter (a list of values)")
        self.sql = compiled.string
        binds = [compiled.binds[name] for name in compiled.positiontup or ()]
        # (name given by the caller, or None for a literal of the statement; its value or literal; processor)
        self._order = [
            (bind.key if bind.required else None, bind.value,
             bind.type.dialect_impl(dialect_).bind_processor(dialect_))
            for bind in binds
        ]  # fmt: skip
        # The caller's values taken in one C call and processed once per name (a name may recur: the
        # aging statement binds its three dates at ten positions), then the literals, processed here, put in.
        names = [name for name, _, _ in self._order if name is not None]
        self._take: Any = operator.itemgetter(*names) if names else lambda _parameters: ()
        self._one = len(names) == 1  # itemgetter answers one value bare, not in a tuple
        # (the positions among the caller's values of a name that has a processor, the processor)
        self._processed: list[tuple[list[int], Any]] = []
        for name, process in {name: process for name, _, process in self._order if name is not None}.items():
            if process is not None:
                self._processed.append(([k for k, other in enumerate(names) if other == name], process))
        self._literals = [
            (k, literal if process is None or literal is None else process(literal))
            for k, (name, literal, process) in enumerate(self._order)
            if name is None
        ]
        self.row_type: Any = None
        if returns is not None:
            columns = returns.c if isinstance(returns, Table) else returns
            name = returns.name if isinstance(returns, Table) else "row"
            self.row_type = namedtuple(name, [column.key for column in columns])  # type: ignore[misc]
            processors = [column.type.dialect_impl(dialect_).result_processor(dialect_, None) for column in columns]
            self._results = [(k, process) for k, process in enumerate(processors) if process is not None]

    def values(self, parameters: Mapping[str, Any]) -> tuple[Any, ...]:
        taken = self._take(parameters)
        if self._one:
            taken = (taken,)
        if not self._literals and not self._processed:
            return cast(tuple[Any, ...], taken)
        values = list(taken)
        for positions, process in self._processed:
            if (value := values[positions[0]]) is not None:
                value = process(value)
                for k in positions:
                    values[k] = value
        for k, literal in self._literals:  # in order of position
            values.insert(k, literal)
        return tuple(values)

    def row(self, values: Sequence[Any] | None) -> Any:
        """The driver's row as a named tuple of Python values (None stays None; so does a
        row of a statement built without `returns`)."""
        if values is None or self.row_type is None:
            return None
        if self._results:
            values = list(values)
            for k, process in self._results:
                if values[k] is not None:
                    values[k] = process(values[k])
        return self.row_type._make(values)


@functools.cache
def prepared(statement: Executable, dialect: str) -> Prepared:
    """`statement` (built once, at import: cached by identity) prepared for `dialect`,
    answering the columns it returns or selects, if any."""
    return Prepared(cast(ClauseElement, statement), dialect, returns=returned_columns(statement))


def returned_columns(statement: Executable) -> ColumnCollection[Any, Any] | None:
    """The columns `statement` selects or returns (RETURNING), None if it returns no rows."""
    return getattr(statement, "exported_columns", None) or None
