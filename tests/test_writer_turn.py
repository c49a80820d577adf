"""SQLite's writer turn (db/writers.py): one writer at a time, the waiting ones in order, and a free
turn taken at once, so writers that never yield do not queue behind a waking one."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from db.writers import WriterTurn


def enters_at_once(turn: WriterTurn) -> bool:
    """Whether entering `turn` takes it without yielding to the event loop (if it would wait, the
    attempt is cancelled)."""
    entering: Coroutine[Any, Any, None] = turn.__aenter__()
    try:
        entering.send(None)
    except StopIteration:
        return True
    with pytest.raises(asyncio.CancelledError):
        entering.throw(asyncio.CancelledError())
    return False


async def writer(turn: WriterTurn, name: str, order: list[str], hold: asyncio.Event | None = None) -> None:
    async with turn:
        order.append(name)
        if hold is not None:
            await hold.wait()


async def queued(turn: WriterTurn, *names: str, order: list[str]) -> list[asyncio.Task[None]]:
    """Writers that wait for `turn`, queued in the order of `names`."""
    tasks = []
    for name in names:
        tasks.append(asyncio.create_task(writer(turn, name, order)))
        await asyncio.sleep(0)
    return tasks


async def test_one_writer_at_a_time() -> None:
    turn, inside, most = WriterTurn(), 0, 0

    async def write() -> None:
        nonlocal inside, most
        async with turn:
            inside += 1
            most = max(most, inside)
            for _ in range(3):
                await asyncio.sleep(0)
            inside -= 1

    await asyncio.gather(*(write() for _ in range(20)))
    assert most == 1


async def test_waiting_writers_go_in_the_order_they_came() -> None:
    turn, order = WriterTurn(), list[str]()
    assert enters_at_once(turn)
    tasks = await queued(turn, "first", "second", "third", order=order)
    await turn.__aexit__(None, None, None)
    await asyncio.gather(*tasks)
    assert order == ["first", "second", "third"]


async def test_a_free_turn_is_taken_at_once_while_a_waiting_writer_wakes() -> None:
    """asyncio.Lock makes this writer wait behind the woken one (and every later writer too)."""
    turn, order = WriterTurn(), list[str]()
    assert enters_at_once(turn)
    (waiting,) = await queued(turn, "waiting", order=order)
    await turn.__aexit__(None, None, None)  # wakes it; it has not run yet
    assert enters_at_once(turn)
    order.append("came later, found it free")
    await turn.__aexit__(None, None, None)
    await waiting
    assert order == ["came later, found it free", "waiting"]


async def test_a_writer_passed_over_once_is_handed_the_turn_next() -> None:
    """A woken writer that finds the turn taken (by one that yields while holding it) waits at the
    front, and the turn goes to it next: a writer that comes meanwhile cannot take it first."""
    turn, order = WriterTurn(), list[str]()
    assert enters_at_once(turn)
    tasks = await queued(turn, "first", "second", order=order)
    await turn.__aexit__(None, None, None)  # wakes "first"
    assert enters_at_once(turn)  # before "first" runs
    order.append("found it free")
    await asyncio.sleep(0)  # "first" runs, finds it taken, and waits again
    await turn.__aexit__(None, None, None)  # hands it to "first"
    assert not enters_at_once(turn)  # one that comes now waits
    await asyncio.gather(*tasks)
    assert order == ["found it free", "first", "second"]


async def test_waiting_writers_are_woken_one_at_a_time() -> None:
    """Turns taken and given back while a woken writer has not yet run wake no other: woken
    together, the waiting ones would race, and one could lose every time."""
    turn, order, hold = WriterTurn(), list[str](), asyncio.Event()
    assert enters_at_once(turn)
    tasks = await queued(turn, "first", "second", order=order)
    await turn.__aexit__(None, None, None)  # wakes "first"
    assert enters_at_once(turn)  # before "first" runs: taken and given back
    order.append("in and out")
    await turn.__aexit__(None, None, None)
    assert enters_at_once(turn)  # and taken again, by one that yields while holding it
    order.append("holding")
    holder = asyncio.create_task(hold.wait())
    await asyncio.sleep(0)  # "first" runs and finds it taken
    hold.set()
    await holder
    await turn.__aexit__(None, None, None)
    await asyncio.gather(*tasks)
    assert order == ["in and out", "holding", "first", "second"]


async def test_a_cancelled_writer_leaves_its_place_to_the_next() -> None:
    turn, order = WriterTurn(), list[str]()
    assert enters_at_once(turn)
    first, second = await queued(turn, "first", "second", order=order)
    first.cancel()
    await asyncio.sleep(0)
    await turn.__aexit__(None, None, None)
    await asyncio.wait_for(second, 1)
    assert order == ["second"] and first.cancelled()


async def test_a_writer_cancelled_once_woken_passes_the_turn_on() -> None:
    turn, order = WriterTurn(), list[str]()
    assert enters_at_once(turn)
    first, second = await queued(turn, "first", "second", order=order)
    await turn.__aexit__(None, None, None)  # wakes "first"
    first.cancel()  # before it runs
    await asyncio.wait_for(second, 1)  # without the hand-over, "second" waits for ever
    assert order == ["second"] and first.cancelled()
