"""db/tasks.finish stops a task that swallows cancels (as redis-py did under
broadcaster's publish), waiting at most as long as it is told."""

from __future__ import annotations

import asyncio

from db.tasks import finish


async def test_a_task_that_swallows_its_first_cancels_is_stopped() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed == 3:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(finish([task]), 5)
    assert task.cancelled() and swallowed == 3


async def test_at_most_bounds_the_wait() -> None:
    deaf = True

    async def ignores_cancels() -> None:
        while True:
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                if not deaf:
                    raise

    async def fails() -> None:
        raise RuntimeError("boom")

    ignoring, failed = asyncio.create_task(ignores_cancels()), asyncio.create_task(fails())
    await asyncio.sleep(0)
    await asyncio.wait_for(finish([ignoring, failed], at_most=0.3), 5)
    assert not ignoring.done() and isinstance(failed.exception(), RuntimeError)
    deaf = False
    await asyncio.wait_for(finish([ignoring]), 5)
    assert ignoring.cancelled()


async def test_a_task_gets_its_grace_to_clean_up_before_it_is_cancelled_again() -> None:
    cleaned = asyncio.Event()

    async def releases_as_it_stops() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.3)  # a lease released, a socket closed: cut short by a second cancel
            cleaned.set()

    task = asyncio.create_task(releases_as_it_stops())
    await asyncio.sleep(0)
    await asyncio.wait_for(finish([task], grace=2), 5)
    assert task.cancelled() and cleaned.is_set()
