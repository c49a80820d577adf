"""What a unit of work receives: read work a `ReadSession`, write work the whole session.
A `Script` is write work that receives no session: it yields its statements (db/row_writes.py).

A `ReadSession` has the session's reading methods and none that change rows
(add, delete, flush, commit), so a writing function handed to `Database.read`
is a type error instead of changes rolled back in silence.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from typing import Any, Protocol, TypeVar, TypeVarTuple, overload

from sqlalchemy.engine import Result, ScalarResult
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Executable
from sqlalchemy.sql.selectable import TypedReturnsRows

T = TypeVar("T")
O = TypeVar("O")  # noqa: E741
Ts = TypeVarTuple("Ts")
Params = Mapping[str, Any] | Sequence[Mapping[str, Any]]


class ReadSession(Protocol):
    @overload
    async def execute(self, statement: TypedReturnsRows[*Ts], params: Params | None = None) -> Result[*Ts]: ...
    @overload
    async def execute(self, statement: Executable, params: Params | None = None) -> Result[*tuple[Any, ...]]: ...

    @overload
    async def scalars(self, statement: TypedReturnsRows[T], params: Params | None = None) -> ScalarResult[T]: ...
    @overload
    async def scalars(self, statement: Executable, params: Params | None = None) -> ScalarResult[Any]: ...

    async def scalar(self, statement: Executable, params: Params | None = None) -> Any: ...

    async def get(self, entity: type[O], ident: Any) -> O | None: ...


ReadWork = Callable[[ReadSession], Awaitable[T]]
WriteWork = Callable[[AsyncSession], Awaitable[T]]
# Yields each Core statement (built once) with its parameters, gets its first row back (or
# None), and returns what it computed: `Database.write_script` runs it in one transaction.
Script = Generator[tuple[Executable, Mapping[str, Any]], Any, T]
