"""Which failed transactions are worth running again, and the count of those that were."""

from __future__ import annotations

import asyncio
import logging
import random

from sqlalchemy.exc import DBAPIError, IntegrityError

log = logging.getLogger("tally.db")

# PostgreSQL: serialization_failure, deadlock_detected; SQLite: database is locked.
RETRYABLE_SQLSTATES = {"40001", "40P01"}
MAX_ATTEMPTS = 5


def retryable(error: DBAPIError) -> bool:
    if error.connection_invalidated:
        return True  # the server restarted under a pooled connection; a fresh one will do
    if isinstance(error, IntegrityError):
        return True  # a concurrent insert won a unique race; re-running sees it
    sqlstate = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return sqlstate in RETRYABLE_SQLSTATES or "database is locked" in str(error.orig)


class WriteRetries:
    """Decides, after a write transaction failed, whether to run it again (after a
    random, growing pause) or raise; counts the transactions run again."""

    def __init__(self) -> None:
        self.count = 0

    async def again(self, error: DBAPIError, attempt: int) -> None:
        """Return after the pause before attempt `attempt + 1`; re-raise `error` if there is none."""
        if attempt == MAX_ATTEMPTS or not retryable(error):
            raise error
        self.count += 1
        log.info("retrying transaction (attempt %d): %s", attempt, type(error.orig))
        await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))
