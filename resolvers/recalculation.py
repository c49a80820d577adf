from __future__ import annotations

import strawberry
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from db import models
from db import recalculation as recalc
from schema.context import Info
from schema.types import (
    CounterDrift,
    DriftReport,
    OrganizationStats,
    RecalculationResult,
    RecalculationRun,
    StatsCorrection,
    as_utc,
    maybe_utc,
)

MAX_RUNS = 100


def _drifts(items: list[recalc.CounterDrift]) -> list[CounterDrift]:
    return [CounterDrift(counter=d.counter, stored=d.stored, actual=d.actual) for d in items]


def _result(r: recalc.Recalculation) -> RecalculationResult:
    return RecalculationResult(
        org_id=strawberry.ID(r.org_id), corrected=_drifts(r.corrected), stats=OrganizationStats.of(r.stats)
    )


async def drift_report(info: Info, org_id: strawberry.ID) -> DriftReport:
    drift = await recalc.drift_report(info.context.db, org_id)
    return DriftReport(
        org_id=strawberry.ID(org_id),
        ok=not drift.counters,
        drift=_drifts(drift.counters),
        checked_at=as_utc(drift.checked_at),
    )


async def recalculate_org_stats(info: Info, org_id: strawberry.ID) -> RecalculationResult:
    (result,) = await recalc.recalculate(info.context.db, [org_id], "api")
    return _result(result)


async def recalculate_all_org_stats(info: Info) -> list[RecalculationResult]:
    return [_result(r) for r in await recalc.recalculate(info.context.db, None, "api")]


async def recalculation_runs(info: Info, limit: int = 20) -> list[RecalculationRun]:
    scope = info.context.principal.scope
    limit = max(0, min(limit, MAX_RUNS))

    async def work(session: AsyncSession) -> list[RecalculationRun]:
        runs = (
            await session.scalars(
                select(models.RecalculationRun).order_by(models.RecalculationRun.id.desc()).limit(limit)
            )
        ).all()
        stmt = select(models.StatsCorrection).where(models.StatsCorrection.run_id.in_([r.id for r in runs]))
        if scope is not None:
            stmt = stmt.where(models.StatsCorrection.org_id == scope)
        details: dict[int, list[StatsCorrection]] = {}
        for row in await session.scalars(stmt.order_by(models.StatsCorrection.id)):
            details.setdefault(row.run_id, []).append(StatsCorrection.of(row))
        return [
            RecalculationRun(
                id=strawberry.ID(str(run.id)),
                trigger=run.trigger,
                started_at=as_utc(run.started_at),
                finished_at=maybe_utc(run.finished_at),
                orgs_checked=run.orgs_checked,
                corrections=run.corrections,
                error=run.error,
                details=details.get(run.id, []),
            )
            for run in runs
        ]

    return await info.context.db.read(work)
