"""The periodic recalculation job: one runner at a time across every process.

A row of `scheduler_leases` says when the job is next due and who holds it.
A process takes the lease with one conditional UPDATE (due, and free or
expired), so exactly one wins; a crashed holder's lease expires and another
process takes over. The winner recalculates every org (a recorded run),
promotes SPOT loads, then releases the lease and sets the next due time.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta
from functools import partial

from sqlalchemy import or_, update
from sqlalchemy.ext.asyncio import AsyncSession

from db.lanes import promote_spot_loads
from db.models import SchedulerLease, utcnow
from db.recalculation import all_org_ids, recalculate
from db.tasks import finish
from db.unit_of_work import Database

log = logging.getLogger("tally.scheduler")
JOB = "recalculate"


class RecalculationScheduler:
    def __init__(self, db: Database, interval_seconds: float, *, lease_seconds: float = 600) -> None:
        self.db = db
        self.interval = interval_seconds
        self.lease = max(lease_seconds, interval_seconds)
        self.tick = min(max(interval_seconds / 10, 0.2), 30.0)
        self.holder = f"{uuid.uuid4().hex[:12]}"
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.interval > 0:
            self._task = asyncio.create_task(self._loop(), name="tally-recalculation-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            await finish([self._task], grace=10)  # its lease is released as it stops: a write, maybe waiting

    async def _loop(self) -> None:
        while True:
            try:
                if await self.db.write(self._acquire):
                    try:
                        await self.run_once()
                    finally:
                        await self.db.write(self._release)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduled recalculation failed")
            await asyncio.sleep(self.tick)

    async def run_once(self) -> None:
        results = await recalculate(self.db, None, "schedule")
        for org_id in await self.db.read(all_org_ids):
            await self.db.write(partial(promote_spot_loads, org_id=org_id))
        log.info(
            "scheduled recalculation: %d orgs, %d corrections",
            len(results),
            sum(len(r.corrected) for r in results),
        )

    async def _acquire(self, session: AsyncSession) -> bool:
        now = utcnow()
        result = await session.execute(
            update(SchedulerLease)
            .where(
                SchedulerLease.name == JOB,
                SchedulerLease.next_run_at <= now,
                or_(SchedulerLease.holder.is_(None), SchedulerLease.expires_at < now),
            )
            .values(holder=self.holder, expires_at=now + timedelta(seconds=self.lease))
        )
        return result.rowcount == 1  # type: ignore[attr-defined]

    async def _release(self, session: AsyncSession) -> None:
        now = utcnow()
        await session.execute(
            update(SchedulerLease)
            .where(SchedulerLease.name == JOB, SchedulerLease.holder == self.holder)
            .values(holder=None, expires_at=None, next_run_at=now + timedelta(seconds=self.interval))
        )
