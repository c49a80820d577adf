"""Stopping background tasks for good.

One cancel is not always enough: on Python 3.11, asyncio.wait_for swallows a
cancel that lands just as the awaited operation completes (CPython gh-86296,
fixed in 3.12), and the task carries on. redis-py wraps every socket write in
it, so a task cancelled during broadcaster's publish sometimes keeps running.
So a task is cancelled again until it is done.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable
from typing import Any


async def finish(tasks: Iterable[asyncio.Task[Any]], at_most: float = math.inf, grace: float = 0.1) -> None:
    """Cancel the tasks until they are done (for at most `at_most` seconds), giving them `grace`
    seconds after each cancel to clean up (a lease to release, a socket to close), and retrieve
    their outcomes: asyncio logs a task dropped while pending ("Task was destroyed") and a
    failure nobody looked at ("never retrieved")."""
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    deadline = time.monotonic() + at_most
    while pending and (left := deadline - time.monotonic()) > 0:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(grace, left))
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()
