"""Drift reports, recalculation and its history (db/recalculation.py does the work)."""

from __future__ import annotations

import strawberry

from db import recalculation as recalc
from schema.context import Info
from schema.types import (
    CounterDrift,
    DriftReport,
    MoneyDrift,
    OrganizationStats,
    RecalculationResult,
    RecalculationRun,
    StatsCorrection,
    as_utc,
    maybe_utc,
    money,
)

MAX_RUNS = 100


def _drifts(items: list[recalc.CounterDrift]) -> list[CounterDrift]:
    """Counts (counters, and the money rows' invoice counts) as CounterDrift."""
    return [CounterDrift(counter=d.counter, stored=d.stored, actual=d.actual) for d in items if not d.money]


def _money_drifts(items: list[recalc.CounterDrift]) -> list[MoneyDrift]:
    """Amounts as MoneyDrift."""
    return [MoneyDrift(name=d.counter, stored=money(d.stored), actual=money(d.actual)) for d in items if d.money]


def _result(r: recalc.Recalculation) -> RecalculationResult:
    return RecalculationResult(
        org_id=strawberry.ID(r.org_id),
        corrected=_drifts(r.corrected),
        stats=OrganizationStats.of(r.stats),
        corrected_money=_money_drifts(r.corrected),
    )


async def drift_report(info: Info, org_id: strawberry.ID) -> DriftReport:
    drift = await recalc.drift_report(info.context.db, org_id)
    return DriftReport(
        org_id=strawberry.ID(org_id),
        ok=not drift.counters,
        drift=_drifts(drift.counters),
        checked_at=as_utc(drift.checked_at),
        money_drift=_money_drifts(drift.counters),
    )


async def recalculate_org_stats(info: Info, org_id: strawberry.ID) -> RecalculationResult:
    (result,) = await recalc.recalculate(info.context.db, [org_id], "api")
    return _result(result)


async def recalculate_all_org_stats(info: Info) -> list[RecalculationResult]:
    return [_result(r) for r in await recalc.recalculate(info.context.db, None, "api")]


async def recalculation_runs(info: Info, limit: int = 20) -> list[RecalculationRun]:
    scope = info.context.principal.scope
    records = await recalc.newest_runs(info.context.db, max(0, min(limit, MAX_RUNS)), corrections_of=scope)
    return [
        RecalculationRun(
            id=strawberry.ID(str(record.run.id)),
            trigger=record.run.trigger,
            started_at=as_utc(record.run.started_at),
            finished_at=maybe_utc(record.run.finished_at),
            orgs_checked=record.run.orgs_checked,
            corrections=record.run.corrections,
            error=record.run.error,
            details=[StatsCorrection.of(correction) for correction in record.corrections],
        )
        for record in records
    ]
