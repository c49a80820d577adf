"""Reads of orgs' stats, shared by the callers that wait for them."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable

from db.aggregates import StatsSnapshot


class SharedReads:
    """Reads of orgs' stats, shared by the callers that wait for them.

    Each caller gets a read that started after it asked. With no read of the org
    in flight, the caller reads at once (the common case: no task, no waiting).
    Otherwise it joins the next read of its org, which starts when the one in
    flight ends. So a count query still reflects every commit before it arrived,
    and a writer's read (for its event) starts after its commit; but 32 clients
    polling one org's counts, or writers of one hot org committing together,
    share one read (and one event) instead of making one each.
    """

    def __init__(self, read: Callable[[str], Awaitable[StatsSnapshot]]) -> None:
        self._read = read
        self._next: dict[str, asyncio.Future[StatsSnapshot]] = {}  # not started yet
        self._reading: set[str] = set()

    async def read(self, org_id: str) -> StatsSnapshot:
        if org_id not in self._reading:
            self._reading.add(org_id)
            try:
                return await self._read(org_id)
            finally:
                self._hand_over(org_id)
        future = self._next.get(org_id)
        if future is None:
            future = self._next[org_id] = asyncio.get_running_loop().create_future()
        return await asyncio.shield(future)  # one waiter's cancellation is not the others'

    def _hand_over(self, org_id: str) -> None:
        """A read ended: serve the callers that queued during it, or stop. The shared read runs in
        a context of its own: it is no caller's statement (TALLY_QUERY_STATS counts per request)."""
        if org_id in self._next:
            asyncio.get_running_loop().create_task(self._serve(org_id), context=contextvars.Context())
        else:
            self._reading.discard(org_id)

    async def _serve(self, org_id: str) -> None:
        future = self._next.pop(org_id)
        try:
            future.set_result(await self._read(org_id))
        except asyncio.CancelledError:
            future.cancel()  # its waiters are told, not left waiting
            raise
        except Exception as error:
            future.set_exception(error)
            future.exception()  # retrieved here too: every waiter may have gone
        finally:
            self._hand_over(org_id)
