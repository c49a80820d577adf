"""This process's writers: their turn at SQLite's one write lock, and how many are under way."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any


def writer_turn(dialect: str) -> contextlib.AbstractAsyncContextManager[Any]:
    """Held from BEGIN to COMMIT (or ROLLBACK) of each write transaction, and, after a COMMIT
    that finds SQLite's log too long, while the log is restarted (db/sqlite/checkpoints.py).

    SQLite has one writer at a time. Writers of this process wait here for
    their turn instead of in SQLite's busy handler, which sleeps in growing
    steps (1, 2, 5, 10 ms, ...) and so turns a 3 ms wait into 8 ms or more.
    (Other processes still meet the busy handler.) Other databases lock rows,
    not the database: no turn to take."""
    return WriterTurn() if dialect == "sqlite" else contextlib.nullcontext()


class WriterTurn:
    """One writer at a time, the waiting ones in the order they came; but a writer that finds the
    turn free takes it at once, even while a waiting one is being woken.

    Most writes hold the turn without ever yielding to the event loop (db/sqlite/inline_writes.py).
    asyncio.Lock hands a free lock to its first waiter, so once one writer had waited (behind a
    log restart, say) every later one queued behind the woken one, and each paid a wake-up
    through its whole await chain: at 8 clients, createLoad cost ~375 µs of CPU against ~355
    taking a free turn at once (session 22). The waiting ones are woken one at a time, and one
    that finds the turn taken again (by a writer that yields while holding it: a write through
    the ORM) waits at the front and is handed the turn next, so a waiting writer is passed over
    at most once each time it comes to the front."""

    def __init__(self) -> None:
        self._held = False
        self._waiting: deque[asyncio.Future[bool]] = deque()  # each answers True if handed the turn
        self._woken: asyncio.Future[bool] | None = None  # woken, and not yet run
        self._owed: asyncio.Future[bool] | None = None  # passed over once, at the front

    async def __aenter__(self) -> None:
        passed_over = False
        while self._held:
            waiter = asyncio.get_running_loop().create_future()
            if passed_over:
                self._waiting.appendleft(waiter)
                self._owed = waiter
            else:
                self._waiting.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                self._leave(waiter)
                raise
            self._woken = None
            if handed:
                return  # held for this writer
            passed_over = True
        self._held = True

    async def __aexit__(self, *exc_info: object) -> None:
        self._held = False
        self._wake_next()

    def _wake_next(self) -> None:
        if self._held or self._woken is not None:
            return
        while self._waiting:
            waiter = self._waiting.popleft()
            if waiter.done():  # cancelled, and not yet gone
                continue
            handed = waiter is self._owed
            if handed:
                self._owed, self._held = None, True
            self._woken = waiter
            waiter.set_result(handed)
            return

    def _leave(self, waiter: asyncio.Future[bool]) -> None:
        """A waiting writer cancelled: what it was given goes to the next one."""
        if self._owed is waiter:
            self._owed = None
        if not waiter.done() or waiter.cancelled():
            with contextlib.suppress(ValueError):  # unless a wake-up passed it by
                self._waiting.remove(waiter)
            return
        self._woken = None
        if waiter.result():
            self._held = False
        self._wake_next()


class WritersInFlight:
    """Writes of this process under way, each from its call to `Database.write` to its
    publish, so maintenance (recalculation) can go between them instead of in their way."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.idle_for_threads = threading.Event()  # the same, for the SQLite recount thread
        self.idle_for_threads.set()

    @contextlib.contextmanager
    def one(self) -> Iterator[None]:
        self.count += 1
        self._idle.clear()
        self.idle_for_threads.clear()
        try:
            yield
        finally:
            self.count -= 1
            if not self.count:
                self._idle.set()
                self.idle_for_threads.set()

    async def rest(self, at_most: float) -> None:
        """Wait until no write is under way, at most `at_most` seconds."""
        if self.count:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), at_most)
