"""What runs once a write transaction has committed: the hooks that publish its stats."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from db.aggregates import StatsSnapshot

AfterCommit = Callable[[list[StatsSnapshot]], Awaitable[None]]

log = logging.getLogger("tally.db")


class AfterCommitHooks(list[AfterCommit]):
    """The hooks, in order; each gets the changed orgs' snapshots of one commit."""

    async def run(self, snapshots: list[StatsSnapshot]) -> None:
        if not snapshots:
            return
        for hook in self:
            try:
                await hook(snapshots)
            except Exception:  # the commit stands whatever a hook does
                log.exception("after-commit hook failed")
