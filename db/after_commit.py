"""What runs once a write transaction has committed: the hooks that publish its stats."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from db.aggregates import StatsSnapshot

AfterCommit = Callable[[list[StatsSnapshot]], Awaitable[None]]

log = logging.getLogger("tally.db")


class AfterCommitHooks(list[AfterCommit]):
    """The hooks, in order; each gets the changed orgs' snapshots of one commit.

    `wanted` says whether anyone will hear of an org's commit (the hub: a subscriber in
    this process, or a channel to other processes); no snapshot is read for an org nobody
    hears of.
    """

    def __init__(self) -> None:
        super().__init__()
        self.wanted: Callable[[str], bool] = lambda _org_id: True

    def want(self, org_ids: list[str]) -> list[str]:
        """The orgs among `org_ids` (once each) whose snapshot the hooks need."""
        return [org_id for org_id in dict.fromkeys(org_ids) if self and self.wanted(org_id)]

    async def run(self, snapshots: list[StatsSnapshot]) -> None:
        if not snapshots:
            return
        for hook in self:
            try:
                await hook(snapshots)
            except Exception:  # the commit stands whatever a hook does
                log.exception("after-commit hook failed")
