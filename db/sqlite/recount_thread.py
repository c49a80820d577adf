"""Recalculation's recounts on SQLite: off the event loop, on one low-priority thread.

A drift row (the stored row and the recounts) is read as separate statements
in one read transaction (one WAL snapshot), for as many orgs as fit in a short
trip to the thread, so a recount's CPU neither runs on nor wakes the event
loop that writers share.

The thread runs at the lowest CPU priority Linux has (SCHED_IDLE, nice 19): on
a 2-core machine a recount at normal priority, even with the GIL released,
doubled a concurrent writer's p99, because the writer's threads waited for a
core behind it at every wake-up. At nice 19 the scheduler may still let it
finish its time slice first (20 ms trips of recounts then cost writers 1.7x
at p99); a SCHED_IDLE thread is preempted by any other at once (1.25x).
Even so a recount on the other core slowed the writer's own threads, so each
statement of a recount runs while no write of this process is under way.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select

from db.engine import count_statement
from db.sqlite.connections import Compiled, ReadOnlyConnections, compiled, first_row, is_busy

RECOUNT_NICE = 19
# A trip to the recount thread recounts orgs until this long has passed: each trip wakes the event
# loop and passes the GIL back and forth, which writers felt at ~1,000 trips/s (10k-load
# orgs); longer trips would hold up a driftReport queued behind them.
RECOUNT_TRIP_SECONDS = 0.02
# A recount waits at most this long in all for this process's writers to rest.
RECOUNT_YIELD_SECONDS = 0.02


@dataclass(frozen=True, eq=False)
class RecountSteps:
    """A drift row as separate statements: the stored row, then each count (its label), then
    each statement whose every row is kept (its label: a list of tuples)."""

    stored: Select[Any]
    counts: dict[str, Select[Any]]
    listed: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _CompiledSteps:
    stored: Compiled
    counts: dict[str, Compiled]
    listed: dict[str, Compiled]


_COMPILED_STEPS: dict[RecountSteps, _CompiledSteps] = {}  # by identity, like compiled()


def _compiled_steps(steps: RecountSteps) -> _CompiledSteps:
    found = _COMPILED_STEPS.get(steps)
    if found is None:
        counts = {label: compiled(count) for label, count in steps.counts.items()}
        listed = {label: compiled(statement) for label, statement in steps.listed.items()}
        found = _COMPILED_STEPS[steps] = _CompiledSteps(compiled(steps.stored), counts, listed)
    return found


def _lower_priority() -> None:
    # Linux: the thread's own nice value (its native id is a "process" to setpriority),
    # then the idle policy (pid 0 is the calling thread). Elsewhere: normal priority.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), RECOUNT_NICE)
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


class RecountThread:
    """Recounts queue on one thread: each is maintenance, and a second thread measurably
    slowed writers. `no_writers` is set while no write of this process is under way."""

    def __init__(self, connections: ReadOnlyConnections, no_writers: threading.Event) -> None:
        self._connections = connections
        self._no_writers = no_writers
        self._pool: ThreadPoolExecutor | None = None

    async def read(self, steps: RecountSteps, org_ids: list[str]) -> list[dict[str, Any] | None]:
        """The drift rows of the first of `org_ids` (at least one) and of as many more as
        fit in one trip (RECOUNT_TRIP_SECONDS). An org's row is None if SQLite was busy."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="tally-recount", initializer=_lower_priority)
        call = contextvars.copy_context().run  # statement counting follows the operation
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, call, self.recounts, _compiled_steps(steps), org_ids
        )

    def recounts(self, steps: _CompiledSteps, org_ids: list[str]) -> list[dict[str, Any] | None]:
        """`recount` of the first org, then of more while the trip is short enough."""
        started = time.monotonic()
        rows = [self.recount(steps, org_ids[0])]
        for org_id in org_ids[1:]:
            if time.monotonic() - started >= RECOUNT_TRIP_SECONDS:
                break
            rows.append(self.recount(steps, org_id))
        return rows

    def recount(self, steps: _CompiledSteps, org_id: str) -> dict[str, Any] | None:
        """The stored row and each count, in one read transaction (one snapshot). Before
        each statement it waits until no write of this process is under way (for
        RECOUNT_YIELD_SECONDS in all, so constant writes delay a recount by that much
        only): on a small machine a recount slows whatever runs beside it, so it runs
        while writers rest, in short steps. None if SQLite is busy."""
        connection = self._connections.this_thread()
        deadline = time.monotonic() + RECOUNT_YIELD_SECONDS
        try:
            connection.execute("BEGIN")
            try:
                self._no_writers.wait(RECOUNT_YIELD_SECONDS)
                values = self._first(connection, steps.stored, org_id)
                for label, count in steps.counts.items():
                    self._no_writers.wait(max(0.0, deadline - time.monotonic()))
                    values[label] = connection.execute(count.sql, count.values({"org_id": org_id})).fetchone()[0]
                    count_statement()
                for label, statement in steps.listed.items():
                    self._no_writers.wait(max(0.0, deadline - time.monotonic()))
                    values[label] = connection.execute(statement.sql, statement.values({"org_id": org_id})).fetchall()
                    count_statement()
            finally:
                connection.execute("COMMIT")
        except sqlite3.OperationalError as error:
            if connection.in_transaction:  # never leave the next recount inside this one
                connection.rollback()
            if not is_busy(error):
                raise
            return None
        return values

    def _first(self, connection: sqlite3.Connection, statement: Compiled, org_id: str) -> dict[str, Any]:
        return first_row(connection, statement, org_id)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
