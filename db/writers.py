"""This process's writers: their turn at SQLite's one write lock, and how many are under way."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any


def writer_turn(dialect: str) -> contextlib.AbstractAsyncContextManager[Any]:
    """Held from BEGIN to COMMIT (or ROLLBACK) of each write transaction, and, after a COMMIT
    that finds SQLite's log too long, while the log is restarted (db/sqlite/checkpoints.py).

    SQLite has one writer at a time. Writers of this process queue here, in
    order, instead of in SQLite's busy handler, which sleeps in growing steps
    (1, 2, 5, 10 ms, ...) and so turns a 3 ms wait into 8 ms or more. (Other
    processes still meet the busy handler.) Other databases lock rows, not the
    database: no turn to take."""
    return asyncio.Lock() if dialect == "sqlite" else contextlib.nullcontext()


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
