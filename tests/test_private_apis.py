"""The library internals Tally builds on are still there, shaped as Tally uses them.

Tally subclasses private classes of strawberry-graphql (and graphql-core's
executor under it), SQLAlchemy's aiosqlite adapter, aiosqlite and broadcaster,
and pyproject.toml pins each to the minor version this code was written
against (`~=`). Before raising a pin, run this file: each failure names the
library, the internal that changed and the Tally code that depends on it.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import threading
import typing
from collections.abc import AsyncGenerator, Callable
from datetime import date
from typing import Any

import aiosqlite
import graphql
import pytest
import strawberry
import uvicorn.config
from broadcaster import Broadcast
from broadcaster._backends.redis import RedisBackend
from sqlalchemy.connectors.asyncio import AsyncAdapt_dbapi_connection, AsyncAdapt_dbapi_cursor
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from strawberry.asgi import ASGIWebSocketAdapter, GraphQL
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler, Operation
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.types.arguments import convert_argument, convert_arguments

from api.root import schema as tally_schema
from db.counters import LoadStatus

STRAWBERRY = "strawberry-graphql"
GRAPHQL_CORE = "graphql-core"
SQLALCHEMY = "SQLAlchemy"
AIOSQLITE = "aiosqlite"
BROADCASTER = "broadcaster"
UVICORN = "uvicorn"

LIVE_TRANSPORT = "edge/live_transport.py (TallyTransportWSHandler)"
WS_MESSAGES = "edge/ws_messages.py (CheckedTransportWSMessages, CheckedLegacyWSMessages)"
SHARED_EVENTS = "edge/shared_events.py (SharedEventExecutor)"
VIEW = "edge/view.py (TallyGraphQL)"
DIRECT_OPERATIONS = "edge/direct_operations.py (DirectOperations)"
SQLITE_DRIVER = "Tally's one-trip SQLite driver (OneTripDbapi)"
BROADCAST = "db/broadcast.py (_RedisBackend, _Broadcast)"
SERVE = "main.py's serve (uvicorn.run(ws=...))"


def expect(condition: object, library: str, api: str, user: str, detail: str = "") -> None:
    if not condition:
        pytest.fail(f"{library} changed {api}: update {user}{f' ({detail})' if detail else ''}", pytrace=False)


def parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


def calls(function: Callable[..., Any], name: str) -> bool:
    """Whether the function's code refers to the attribute `name` (e.g. calls self.<name>)."""
    return name in inspect.unwrap(function).__code__.co_names


# (library, owner, method, its parameters, coroutine function?, Tally code that overrides or calls it)
METHODS: list[tuple[str, type, str, list[str], bool, str]] = [
    (STRAWBERRY, BaseGraphQLTransportWSHandler, "_send_result_stream",
     ["self", "operation", "result_source"], True, LIVE_TRANSPORT),
    (STRAWBERRY, BaseGraphQLTransportWSHandler, "_handle_pre_execution_error",
     ["self", "operation", "result"], True, LIVE_TRANSPORT),
    (STRAWBERRY, BaseGraphQLTransportWSHandler, "_reject_incremental_delivery", ["self", "operation"], True, LIVE_TRANSPORT),
    (STRAWBERRY, BaseGraphQLTransportWSHandler, "handle_message", ["self", "message"], True, WS_MESSAGES),
    (STRAWBERRY, BaseGraphQLWSHandler, "handle_message", ["self", "message"], True, WS_MESSAGES),
    (STRAWBERRY, Operation, "send_next", ["self", "execution_result"], True, LIVE_TRANSPORT),
    (STRAWBERRY, GraphQL, "get_sub_response", ["self", "request"], True, VIEW),
    (STRAWBERRY, GraphQL, "process_result", ["self", "request", "result"], True, VIEW),
    (STRAWBERRY, GraphQL, "create_response", ["self", "response_data", "sub_response"], False, VIEW),
    (STRAWBERRY, GraphQL, "render_graphql_ide", ["self", "request"], True, VIEW),
    (STRAWBERRY, StrawberryGraphQLCoreExecutionContext, "build_per_event_executor", ["self", "payload"], False, SHARED_EVENTS),
    (GRAPHQL_CORE, graphql.Executor, "build_per_event_executor", ["self", "payload"], False, SHARED_EVENTS),
    (GRAPHQL_CORE, graphql.Executor, "execute_operation", ["self", "serially"], False, SHARED_EVENTS),
    (SQLALCHEMY, AsyncAdapt_aiosqlite_cursor, "__init__", ["self", "adapt_connection"], False, SQLITE_DRIVER),
    (SQLALCHEMY, AsyncAdapt_aiosqlite_cursor, "_make_new_cursor", ["self", "connection"], False, SQLITE_DRIVER),
    (SQLALCHEMY, AsyncAdapt_aiosqlite_cursor, "_aenter_cursor", ["self", "cursor"], False, SQLITE_DRIVER),
    (SQLALCHEMY, AsyncAdapt_aiosqlite_cursor, "_async_soft_close", ["self"], True, SQLITE_DRIVER),
    (SQLALCHEMY, AsyncAdapt_aiosqlite_cursor, "_execute_async", ["self", "operation", "parameters"], True, SQLITE_DRIVER),
    (SQLALCHEMY, AsyncAdapt_aiosqlite_cursor, "_executemany_async",
     ["self", "operation", "seq_of_parameters"], True, SQLITE_DRIVER),
    (SQLALCHEMY, AsyncAdapt_aiosqlite_dbapi, "__init__", ["self", "aiosqlite", "sqlite"], False, SQLITE_DRIVER),
    (SQLALCHEMY, AsyncAdapt_aiosqlite_dbapi, "connect", ["self", "arg", "kw"], False, SQLITE_DRIVER),
    (AIOSQLITE, aiosqlite.Connection, "_execute", ["self", "fn", "args", "kwargs"], True, SQLITE_DRIVER),
    (BROADCASTER, RedisBackend, "__init__", ["self", "url"], False, BROADCAST),
    (BROADCASTER, RedisBackend, "connect", ["self"], True, BROADCAST),
    (BROADCASTER, RedisBackend, "disconnect", ["self"], True, BROADCAST),
    (BROADCASTER, RedisBackend, "subscribe", ["self", "channel"], True, BROADCAST),
    (BROADCASTER, RedisBackend, "_pubsub_listener", ["self"], True, BROADCAST),
    (BROADCASTER, Broadcast, "__init__", ["self", "url", "backend"], False, BROADCAST),
    (BROADCASTER, Broadcast, "disconnect", ["self"], True, BROADCAST),
]  # fmt: skip


@pytest.mark.parametrize(
    ("library", "owner", "name", "expected", "is_async", "user"),
    METHODS,
    ids=[f"{owner.__name__}.{name}" for _, owner, name, *_ in METHODS],
)
def test_the_methods_tally_overrides_or_calls_keep_their_signatures(
    library: str, owner: type, name: str, expected: list[str], is_async: bool, user: str
) -> None:
    api = f"{owner.__name__}.{name}"
    method = getattr(owner, name, None)
    expect(callable(method), library, api, user, "it is gone")
    assert method is not None
    expect(parameters(method) == expected, library, api, user, f"parameters {parameters(method)}, expected {expected}")
    expect(
        inspect.iscoroutinefunction(method) == is_async,
        library,
        api,
        user,
        "expected a coroutine function" if is_async else "expected a plain function",
    )


# (library, class, method, the attribute it must still refer to, Tally code relying on that call)
HOOKS: list[tuple[str, type, str, str, str]] = [
    (STRAWBERRY, BaseGraphQLTransportWSHandler, "run_operation", "_send_result_stream", LIVE_TRANSPORT),
    (STRAWBERRY, BaseGraphQLTransportWSHandler, "handle", "handle_message", WS_MESSAGES),
    (STRAWBERRY, BaseGraphQLWSHandler, "handle", "handle_message", WS_MESSAGES),
    (SQLALCHEMY, AsyncAdapt_dbapi_cursor, "__init__", "_make_new_cursor", SQLITE_DRIVER),
    (SQLALCHEMY, AsyncAdapt_dbapi_cursor, "__init__", "_aenter_cursor", SQLITE_DRIVER),
    (SQLALCHEMY, AsyncAdapt_dbapi_cursor, "execute", "_execute_async", SQLITE_DRIVER),
    (SQLALCHEMY, AsyncAdapt_dbapi_cursor, "executemany", "_executemany_async", SQLITE_DRIVER),
    (SQLALCHEMY, AsyncAdapt_dbapi_cursor, "fetchall", "_rows", SQLITE_DRIVER),
    (SQLALCHEMY, AsyncAdapt_dbapi_connection, "cursor", "_cursor_cls", SQLITE_DRIVER),
    (BROADCASTER, Broadcast, "connect", "_listener_task", BROADCAST),
    (BROADCASTER, Broadcast, "connect", "_backend", BROADCAST),
]


@pytest.mark.parametrize(
    ("library", "owner", "caller", "hook", "user"),
    HOOKS,
    ids=[f"{owner.__name__}.{caller}->{hook}" for _, owner, caller, hook, _ in HOOKS],
)
def test_the_library_still_goes_through_the_hooks_tally_overrides(
    library: str, owner: type, caller: str, hook: str, user: str
) -> None:
    expect(
        calls(getattr(owner, caller), hook),
        library,
        f"{owner.__name__}.{caller}",
        user,
        f"it no longer refers to {hook}",
    )


def test_strawberry_websocket_classes_keep_the_attributes_tally_reads() -> None:
    for handler in (BaseGraphQLTransportWSHandler, BaseGraphQLWSHandler):
        expect(
            "websocket" in parameters(handler.__init__),
            STRAWBERRY,
            f"{handler.__name__}.websocket",
            WS_MESSAGES,
        )
    for slot in ("id", "completed"):
        expect(slot in Operation.__slots__, STRAWBERRY, f"Operation.{slot}", LIVE_TRANSPORT)
    sentinel = object()
    adapter = ASGIWebSocketAdapter(None, None, sentinel)  # type: ignore[arg-type]
    expect(getattr(adapter, "ws", None) is sentinel, STRAWBERRY, "ASGIWebSocketAdapter.ws", LIVE_TRANSPORT)
    for attribute, base in (
        ("graphql_transport_ws_handler_class", BaseGraphQLTransportWSHandler),
        ("graphql_ws_handler_class", BaseGraphQLWSHandler),
    ):
        default = getattr(GraphQL, attribute, None)
        default = typing.get_origin(default) or default
        expect(isinstance(default, type) and issubclass(default, base), STRAWBERRY, f"GraphQL.{attribute}", VIEW)
        expect(calls(GraphQL.run, attribute), STRAWBERRY, f"GraphQL.run reading {attribute}", VIEW)


async def test_strawberry_executes_every_subscription_event_through_the_schema_s_executor_class() -> None:
    """What SharedEventExecutor relies on: each event is built with build_per_event_executor
    of the schema's execution context class, whose execute_operation result is the event's
    result; the executor knows its operation and coerced variables."""
    built: list[tuple[Any, object, dict[str, Any]]] = []

    class Canned:
        def execute_operation(self, _serially: bool | None = None) -> Any:
            return graphql.ExecutionResult(data={"tick": -1})

    class Recording(StrawberryGraphQLCoreExecutionContext):
        def build_per_event_executor(self, payload: Any) -> Any:
            built.append((payload, self.operation, self.variable_values.coerced))
            return Canned() if payload == 2 else super().build_per_event_executor(payload)

    @strawberry.type
    class Query:
        ok: bool = True

    @strawberry.type
    class Subscription:
        @strawberry.subscription
        async def tick(self, upto: int) -> AsyncGenerator[int, None]:
            for value in range(1, upto + 1):
                yield value

    schema = strawberry.Schema(Query, subscription=Subscription, execution_context_class=Recording)
    stream = await schema.subscribe("subscription($n: Int!) { tick(upto: $n) }", variable_values={"n": 2})
    api = "StrawberryGraphQLCoreExecutionContext.build_per_event_executor"
    expect(inspect.isasyncgen(stream) or hasattr(stream, "__anext__"), STRAWBERRY, "Schema.subscribe", SHARED_EVENTS)
    assert not isinstance(stream, graphql.ExecutionResult)
    results = [result async for result in stream]
    expect([payload for payload, *_ in built] == [1, 2], STRAWBERRY, api, SHARED_EVENTS, f"built for {built}")
    expect(
        [result.data for result in results] == [{"tick": 1}, {"tick": -1}],
        GRAPHQL_CORE,
        "Executor.execute_operation of a per-event executor",
        SHARED_EVENTS,
        f"results {[result.data for result in results]}",
    )
    operation, variables = built[0][1], built[0][2]
    expect(
        isinstance(operation, graphql.OperationDefinitionNode),
        GRAPHQL_CORE,
        "Executor.operation",
        SHARED_EVENTS,
    )
    expect(variables == {"n": 2}, GRAPHQL_CORE, "Executor.variable_values.coerced", SHARED_EVENTS, repr(variables))


def test_sqlalchemy_s_aiosqlite_adapter_keeps_the_slots_tally_fills() -> None:
    for name in ("_adapt_connection", "_connection", "_rows"):
        expect(
            hasattr(AsyncAdapt_aiosqlite_cursor, name), SQLALCHEMY, f"AsyncAdapt_aiosqlite_cursor.{name}", SQLITE_DRIVER
        )
    for name in ("description", "rowcount", "lastrowid"):
        expect(
            isinstance(inspect.getattr_static(AsyncAdapt_aiosqlite_cursor, name, None), property),
            SQLALCHEMY,
            f"AsyncAdapt_aiosqlite_cursor.{name}",
            SQLITE_DRIVER,
            "expected a property",
        )
    expect(
        getattr(AsyncAdapt_aiosqlite_connection, "_cursor_cls", None) is AsyncAdapt_aiosqlite_cursor,
        SQLALCHEMY,
        "AsyncAdapt_aiosqlite_connection._cursor_cls",
        SQLITE_DRIVER,
    )
    for name in ("_execute_mutex", "_connection"):
        expect(
            hasattr(AsyncAdapt_aiosqlite_connection, name),
            SQLALCHEMY,
            f"AsyncAdapt_aiosqlite_connection.{name}",
            SQLITE_DRIVER,
        )
    from sqlalchemy.util import concurrency

    expect(
        callable(getattr(concurrency, "await_", None)), SQLALCHEMY, "sqlalchemy.util.concurrency.await_", SQLITE_DRIVER
    )


def test_a_cursor_without_a_driver_cursor_serves_the_rows_it_is_given() -> None:
    """The driver's cursor makes no aiosqlite cursor and hands SQLAlchemy its rows in `_rows`."""

    class Stub:
        _connection = object()

    class RowsOnly(AsyncAdapt_aiosqlite_cursor):
        __slots__ = ()

        def _make_new_cursor(self, connection: Any) -> Any:
            return None

        def _aenter_cursor(self, cursor: Any) -> Any:
            return cursor

    cursor = RowsOnly(Stub())  # type: ignore[arg-type]
    expect(cursor._connection is Stub._connection, SQLALCHEMY, "AsyncAdapt_dbapi_cursor._connection", SQLITE_DRIVER)
    cursor._rows = collections.deque([(1,), (2,), (3,)])
    served = [cursor.fetchone(), *cursor.fetchall()]
    expect(served == [(1,), (2,), (3,)], SQLALCHEMY, "AsyncAdapt_dbapi_cursor._rows", SQLITE_DRIVER, repr(served))
    cursor.close()  # with no driver cursor there is nothing to await


async def test_aiosqlite_runs_a_function_on_its_thread_with_the_sqlite3_connection() -> None:
    connection = aiosqlite.connect(":memory:")
    expect(
        isinstance(getattr(connection, "_thread", None), threading.Thread),
        AIOSQLITE,
        "Connection._thread",
        SQLITE_DRIVER,
    )
    connection._thread.daemon = True  # before the thread starts, as the driver does
    expect(
        isinstance(inspect.getattr_static(aiosqlite.Connection, "_conn", None), property),
        AIOSQLITE,
        "Connection._conn",
        SQLITE_DRIVER,
    )
    async with connection:

        def on_worker() -> tuple[Any, bool]:
            rows = connection._conn.execute("SELECT 41 + 1").fetchall()
            return rows, threading.current_thread() is connection._thread

        rows, on_its_thread = await connection._execute(on_worker)
    expect(rows == [(42,)] and on_its_thread, AIOSQLITE, "Connection._execute", SQLITE_DRIVER, repr(rows))


def test_broadcaster_s_redis_backend_keeps_the_attributes_tally_takes_over() -> None:
    backend = RedisBackend("redis://127.0.0.1:1")  # builds a client; connects to nothing
    for name in ("_conn", "_pubsub", "_ready", "_listener"):
        expect(hasattr(backend, name), BROADCASTER, f"RedisBackend.{name}", BROADCAST)
    expect(isinstance(backend._ready, asyncio.Event), BROADCASTER, "RedisBackend._ready", BROADCAST)
    expect(backend._listener is None, BROADCASTER, "RedisBackend._listener", BROADCAST, "None until connect")
    for name in ("connect", "subscribe", "aclose"):
        expect(callable(getattr(backend._pubsub, name, None)), "redis", f"PubSub.{name}", BROADCAST)
    expect(callable(getattr(backend._conn, "aclose", None)), "redis", "Redis.aclose", BROADCAST)


async def test_broadcaster_s_broadcast_keeps_its_backend_and_listener_task() -> None:
    broadcast = Broadcast("memory://")
    expect(hasattr(broadcast, "_backend"), BROADCASTER, "Broadcast._backend", BROADCAST)
    await broadcast.connect()
    try:
        task = getattr(broadcast, "_listener_task", None)
        expect(isinstance(task, asyncio.Task), BROADCASTER, "Broadcast._listener_task", BROADCAST)
    finally:
        await broadcast.disconnect()
    if isinstance(task, asyncio.Task):
        await asyncio.gather(task, return_exceptions=True)


def test_uvicorn_offers_the_sans_io_websockets_protocol() -> None:
    expect("websockets-sansio" in uvicorn.config.WS_PROTOCOLS, UVICORN, "the ws='websockets-sansio' option", SERVE)


def test_strawberry_keeps_what_the_direct_path_reads() -> None:
    """The direct path runs a field as Strawberry would, from Strawberry's own parts."""
    field = tally_schema.get_field_for_type("updateLoadStatus", "Mutation")
    expect(
        field is not None and field.base_resolver is not None,
        STRAWBERRY,
        "Schema.get_field_for_type",
        DIRECT_OPERATIONS,
    )
    assert field is not None and field.base_resolver is not None
    expect(
        field.base_resolver.info_parameter is not None,
        STRAWBERRY,
        "StrawberryResolver.info_parameter",
        DIRECT_OPERATIONS,
    )
    expect(field.permission_classes, STRAWBERRY, "StrawberryField.permission_classes", DIRECT_OPERATIONS)
    expect(hasattr(tally_schema, "_schema"), STRAWBERRY, "Schema._schema (the graphql-core schema)", DIRECT_OPERATIONS)
    expect(hasattr(tally_schema.schema_converter, "scalar_registry"), STRAWBERRY, "scalar_registry", DIRECT_OPERATIONS)
    expect(
        {"value", "arguments", "scalar_registry", "config"} <= set(parameters(convert_arguments)),
        STRAWBERRY,
        "strawberry.types.arguments.convert_arguments",
        DIRECT_OPERATIONS,
    )
    for name, value in (("receivablesAging", date(2026, 3, 31)), ("updateLoadStatus", LoadStatus.OPEN)):
        arguments = {argument.python_name: argument for argument in fields_of(name)}
        kind = "as_of" if name == "receivablesAging" else "status"
        expect(
            convert_argument(value, arguments[kind].type, tally_schema.schema_converter.scalar_registry,
                             tally_schema.config) is value,
            STRAWBERRY,
            "convert_argument (a scalar's or an enum's value handed on as it is)",
            DIRECT_OPERATIONS + ": its plain arguments skip the conversion",
        )  # fmt: skip


def fields_of(name: str) -> list[Any]:
    field = tally_schema.get_field_for_type(name, "Query" if name == "receivablesAging" else "Mutation")
    assert field is not None
    return list(field.arguments)
