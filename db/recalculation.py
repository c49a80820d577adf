"""Drift detection and online recalculation of organization_stats.

A recalculation reads the stored row and a recount of the source rows in one
consistent snapshot, so their difference is real drift, whatever writers do
meanwhile: ONE statement (`DRIFT_QUERY`) on PostgreSQL; on SQLite the same
reads as separate statements in one read transaction (`DRIFT_STEPS`), run off
the event loop at the lowest CPU priority while this process's writers rest
(`StatsReader.read_recounts`; in a session when SQLite's fast paths are off).
It then applies that difference as a delta in a short write transaction (one
single-row upsert, `db.aggregates.correction`, run on the driver). Writers are never blocked longer
than by any other single-row update, and writes that commit in between are
kept: their own deltas already moved both sides alike.

Runs are recorded here too (`Run`), and read back (`newest_runs`) for the
`recalculationRuns` query and the CLI's `runs`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from typing import Any, TypeVar, cast

from sqlalchemy import Select, Table, bindparam, func, insert, literal, select, true, update

from db.aggregates import (
    COUNTERS,
    INVOICE_STATUS_COUNTERS,
    LOAD_STATUS_COUNTERS,
    LOAD_TYPE_COUNTERS,
    STATS_QUERY,
    StatsSnapshot,
    correction,
    marked_recalculated,
)
from db.errors import TallyError
from db.models import (
    Invoice,
    Load,
    Organization,
    RecalculationRun,
    StatsCorrection,
    utcnow,
)
from db.money_drift import (
    AMOUNTS,
    MONEY_DRIFT_QUERY,
    TOTAL_NAMES,
    MoneyState,
    RowDrift,
    money_state,
    read_money,
)
from db.organizations import ENSURE_ORGANIZATION, organization_values
from db.rules import check_text
from db.run_counts import run_counts
from db.stats_reader import RecountSteps
from db.unit_of_work import Database
from db.work import ReadSession, Script

log = logging.getLogger("tally.recalculation")
MAX_ATTEMPTS = 5
EXACT_BATCH_ORGS = 16
EXACT_BATCH_SECONDS = 1.0
WRITERS_REST_SECONDS = 0.02  # a run's writes wait at most this long for other writers of the process
T = TypeVar("T")
RUNS = cast(Table, RecalculationRun.__table__)
CORRECTIONS = cast(Table, StatsCorrection.__table__)


@dataclass(frozen=True)
class CounterDrift:
    counter: (
        str  # a counter, or a money value's name (db/money_drift.py: "money.invoiced", "revenue[2026-03].collected")
    )
    stored: int
    actual: int
    money: bool = False  # an amount in cents


@dataclass(frozen=True)
class Drift:
    org_id: str
    stored: StatsSnapshot
    epoch: int
    actual: dict[str, int]
    checked_at: datetime
    has_stats_row: bool = True
    money: MoneyState | None = None  # read in a snapshot of its own, at the same epoch

    @property
    def counters(self) -> list[CounterDrift]:
        """Every value that differs from its recount: counters, money totals, money rows."""
        found = [
            CounterDrift(c, self.stored.counts[c], self.actual[c])
            for c in COUNTERS
            if self.stored.counts[c] != self.actual[c]
        ]
        if self.money is not None:
            stored, actual = self.money.stored, self.money.actual
            found += [
                CounterDrift(TOTAL_NAMES[c], stored[c], actual[c], money=True) for c in stored if stored[c] != actual[c]
            ]
            found += [CounterDrift(r.name, r.stored, r.actual, money=r.column in AMOUNTS) for r in self.money.rows]
        return found

    @property
    def delta(self) -> dict[str, int]:
        """The stats row's correction: each counter and money total by its difference."""
        delta = {c: self.actual[c] - self.stored.counts[c] for c in COUNTERS if self.actual[c] != self.stored.counts[c]}
        if self.money is not None:
            delta.update(
                {c: a - self.money.stored[c] for c, a in self.money.actual.items() if a != self.money.stored[c]}
            )
        return delta

    @property
    def row_deltas(self) -> list[RowDrift]:
        return list(self.money.rows) if self.money is not None else []


@dataclass(frozen=True)
class Recalculation:
    org_id: str
    corrected: list[CounterDrift]
    stats: StatsSnapshot


def _counts() -> dict[str, Select[Any]]:
    """One org's rows with each value of each counted column, one count each, by
    the label of its column in the drift row (`actual_<counter>`).

    Each is a range of an `(org_id, column, id)` index, read from the index alone;
    counting both load columns in one pass over the loads instead read every
    load's row (5x slower at 10k loads, on SQLite)."""
    counted = (
        (Load.__table__, "status", LOAD_STATUS_COUNTERS),
        (Load.__table__, "load_type", LOAD_TYPE_COUNTERS),
        (Invoice.__table__, "status", INVOICE_STATUS_COUNTERS),
    )
    return {
        f"actual_{counter}": select(func.count())
        .select_from(table)
        .where(table.c.org_id == bindparam("org_id"), table.c[column] == value)
        for table, column, counters in counted
        for value, counter in counters.items()
    }


def _drift_query() -> Select[Any]:
    """The stored row and the recounts in ONE statement, hence one snapshot on any
    database and isolation level. The stored row's columns are NULL if the org
    has none."""
    stored = STATS_QUERY.subquery("stored")
    one_row = select(literal(1).label("one")).subquery("one_row")
    actual = [count.scalar_subquery().label(label) for label, count in _counts().items()]
    return select(stored, *actual).select_from(one_row.outerjoin(stored, true()))


# Built once: building and compiling statements was most of a small org's recalculation CPU.
DRIFT_QUERY = _drift_query()
# The same reads as separate statements, for a reader that runs them in one read
# transaction (one snapshot) and may pause between them (SQLite's recount thread).
DRIFT_STEPS = RecountSteps(STATS_QUERY, _counts(), listed={"money": MONEY_DRIFT_QUERY})


def _drift(org_id: str, row: Mapping[str, Any]) -> Drift:
    """The drift of a drift row; with its money drift when the row carries it (the recount thread
    reads MONEY_DRIFT_QUERY in the same snapshot)."""
    has_row = row["org_id"] is not None
    return Drift(
        org_id=org_id,
        stored=StatsSnapshot.from_mapping(row) if has_row else StatsSnapshot.empty(org_id),
        epoch=int(row["corrections"]) if has_row else 0,
        actual={c: int(row[f"actual_{c}"]) for c in COUNTERS},
        checked_at=utcnow(),
        has_stats_row=has_row,
        money=money_state(row["money"]) if "money" in row else None,
    )


async def drift_report(db: Database, org_id: str) -> Drift:
    return (await drift_reports(db, [org_id]))[0]


async def drift_reports(db: Database, org_ids: list[str]) -> list[Drift]:
    """The drift of the first of `org_ids` (at least one): on SQLite as many as one
    trip to the recount thread allows, off the event loop; elsewhere one. Each with its
    money drift (`db.money_drift`), read at the same correction epoch."""
    rows = await db.stats.read_recounts(DRIFT_STEPS, org_ids)
    return [
        await _with_money(
            db, _drift(org_id, row if row is not None else await db.read(partial(_read_drift_row, org_id=org_id)))
        )
        for org_id, row in zip(org_ids, rows, strict=False)
    ]


async def _with_money(db: Database, drift: Drift) -> Drift:
    """`drift` and the org's money drift. Two snapshots, but at one epoch: a recalculation that
    corrected the org in between makes both be read again (a correction needs them to agree)."""
    for _ in range(MAX_ATTEMPTS):
        if drift.money is not None:  # read with the counters, in their snapshot
            return drift
        money = await db.read(partial(read_money, org_id=drift.org_id))
        if money.epoch == drift.epoch:
            return replace(drift, money=money)
        drift = _drift(drift.org_id, await db.read(partial(_read_drift_row, org_id=drift.org_id)))
    raise RuntimeError(f"the drift of {drift.org_id} kept racing another recalculation")


async def _read_drift_row(session: ReadSession, *, org_id: str) -> Mapping[str, Any]:
    return (await session.execute(DRIFT_QUERY, {"org_id": org_id})).one()._mapping


@dataclass
class Run:
    """A recalculation run being recorded. Its row is written with its first write
    (a correction, or a batch of exact orgs) and completed with its last, so
    recalculating one org is one write transaction: writers beside it queue behind
    one short transaction, not three."""

    trigger: str
    started_at: datetime
    id: int | None = None
    orgs_checked: int = 0
    corrections: int = 0

    def record(self, *, finished: bool, error: str | None = None) -> Script[None]:
        values: dict[str, Any] = {"orgs_checked": self.orgs_checked, "corrections": self.corrections}
        values.update(finished_at=utcnow() if finished else None, error=error[:2000] if error else None)
        if self.id is None:
            row = yield _NEW_RUN, {"trigger": self.trigger, "started_at": self.started_at, **values}
            self.id = row.id
        else:
            yield _RUN_PROGRESS, {"run_id": self.id, **values}

    async def write(
        self,
        db: Database,
        change: Callable[[str], Script[tuple[T | None, list[str]]]],
        *,
        orgs: int,
        corrected: list[tuple[str, CounterDrift]],
        finished: bool,
    ) -> T | None:
        """`change` (a script for the dialect: its result and the orgs whose stats it changed)
        and this run's progress (`orgs` more checked, each of `corrected` recorded) in one write
        transaction. If `change` returns None, nothing is recorded."""
        before = (self.id, self.orgs_checked, self.corrections)

        def script(dialect: str) -> Script[tuple[T | None, list[str]]]:
            result, changed = yield from change(dialect)
            if result is None:
                return None, []
            # Set from `before`, not added: Database.write_script may run this again after a retry.
            self.id, self.orgs_checked, self.corrections = before[0], before[1] + orgs, before[2] + len(corrected)
            yield from self.record(finished=finished)
            now = utcnow()
            for org_id, d in corrected:
                values = {"org_id": org_id, "counter": d.counter, "stored": d.stored, "actual": d.actual}
                yield _NEW_CORRECTION, {"run_id": self.id, "corrected_at": now, **values}
            return result, changed

        await db.writers_rest(WRITERS_REST_SECONDS)
        try:
            result = await db.write_script(script)
        except BaseException:
            self.id, self.orgs_checked, self.corrections = before  # rolled back with its transaction
            raise
        if result is None:
            self.id, self.orgs_checked, self.corrections = before
        return result


_RUN_COLUMNS = ("orgs_checked", "corrections", "finished_at", "error")
# Built once, like every statement on a recalculation's write path.
_NEW_RUN = (
    insert(RUNS)
    .values(trigger=bindparam("trigger"), started_at=bindparam("started_at"), **{c: bindparam(c) for c in _RUN_COLUMNS})
    .returning(RUNS.c.id)
)
_RUN_PROGRESS = update(RUNS).where(RUNS.c.id == bindparam("run_id")).values({c: bindparam(c) for c in _RUN_COLUMNS})
_NEW_CORRECTION = insert(CORRECTIONS).values(
    {c: bindparam(c) for c in ("run_id", "org_id", "counter", "stored", "actual", "corrected_at")}
)


async def recalculate_org(
    db: Database, org_id: str, run: Run, *, last: bool, drift: Drift | None = None
) -> Recalculation:
    """Correct one org's row to its recount (`drift`, if just read), recording and
    logging each correction."""
    for _ in range(MAX_ATTEMPTS):
        found = drift or await drift_report(db, org_id)
        drift = None  # a retry recounts

        def change(dialect: str, found: Drift = found) -> Script[tuple[StatsSnapshot | None, list[str]]]:
            if not found.has_stats_row:  # the stats row needs its org (foreign key)
                yield ENSURE_ORGANIZATION[dialect], organization_values(org_id)
            rows = [(r.table, r.key, r.column, r.actual - r.stored) for r in found.row_deltas]
            snapshot = yield from correction(dialect, org_id, found.delta, found.epoch, rows)
            return snapshot, [org_id] if snapshot is not None and (found.delta or rows) else []

        corrected = [(org_id, d) for d in found.counters]
        if await run.write(db, change, orgs=1, corrected=corrected, finished=last) is not None:
            for d in found.counters:
                log.warning(
                    "drift corrected: org=%s counter=%s stored=%d actual=%d run=%d",
                    org_id,
                    d.counter,
                    d.stored,
                    d.actual,
                    run.id,
                )
            stats = await db.read_stats(org_id)  # the org's sums, not one shard row
            return Recalculation(org_id, found.counters, stats)
    raise RuntimeError(f"recalculation of {org_id} kept racing another recalculation")


async def _record_exact(db: Database, run: Run, found: list[Drift], *, finished: bool) -> list[Recalculation]:
    """Orgs whose recount matched their row: `lastRecalculatedAt` and the run's
    progress, in one write transaction however many orgs there are. Each result's
    stats are the row the recount verified."""
    org_ids = [drift.org_id for drift in found]

    def change(_dialect: str) -> Script[tuple[datetime, list[str]]]:
        return (yield from marked_recalculated(org_ids)), []

    now = await run.write(db, change, orgs=len(org_ids), corrected=[], finished=finished)
    return [Recalculation(d.org_id, [], replace(d.stored, last_recalculated_at=now)) for d in found]


async def recalculate(db: Database, org_ids: list[str] | None, trigger: str) -> list[Recalculation]:
    """One recorded run over these orgs (None: every org).

    Each org with drift is corrected in its own write transaction, at once. Orgs
    found exact (the normal case) are recorded in batches (EXACT_BATCH_ORGS orgs, or
    EXACT_BATCH_SECONDS after the batch's first recount): a run over thousands of
    small orgs would otherwise make a write transaction per org, and on SQLite
    writers take turns."""
    for org_id in org_ids or []:
        check_text(org_id, "orgId", required=True)  # refused before any run is recorded
    run = Run(trigger, started_at=utcnow())
    results: list[Recalculation] = []
    exact: list[Drift] = []
    batch_started = 0.0
    try:
        if org_ids is None:
            org_ids = await db.read(all_org_ids)
        checked = 0
        while checked < len(org_ids):
            # A trip's worth of recounts (at most a batch: the list is not copied whole each time).
            for drift in await drift_reports(db, org_ids[checked : checked + EXACT_BATCH_ORGS]):
                checked += 1
                last = checked == len(org_ids)
                if drift.counters or not drift.has_stats_row:
                    results += await _record_exact(db, run, exact, finished=False) if exact else []
                    exact = []
                    results.append(await recalculate_org(db, drift.org_id, run, last=last, drift=drift))
                    continue
                if not exact:
                    batch_started = time.monotonic()
                exact.append(drift)
                if last or len(exact) >= EXACT_BATCH_ORGS or time.monotonic() - batch_started >= EXACT_BATCH_SECONDS:
                    results += await _record_exact(db, run, exact, finished=last)
                    exact = []
        if not org_ids:
            await _record_exact(db, run, [], finished=True)
    except Exception as error:
        # Admins read runs (recalculationRuns.error): a domain refusal says why; anything
        # else is recorded without its text (it may hold SQL) and logged by the caller.
        if isinstance(error, TallyError):
            recorded = f"{error.code}: {error.message}"
        else:
            recorded = "internal error (see the server log)"
        run_counts(db).finished(run.corrections, failed=True)
        run_id = run.id

        def failed(_dialect: str) -> Script[tuple[None, list[str]]]:
            run.id = run_id  # as before this transaction's first attempt
            yield from run.record(finished=True, error=recorded)
            return None, []

        await db.write_script(failed)
        raise
    run_counts(db).finished(run.corrections, failed=False)
    return results


async def all_org_ids(session: ReadSession) -> list[str]:
    return list((await session.scalars(select(Organization.org_id).order_by(Organization.org_id))).all())


@dataclass(frozen=True)
class RunRecord:
    run: RecalculationRun
    corrections: list[StatsCorrection]

    def summary(self) -> dict[str, Any]:
        """The run's columns by name, without its corrections (the CLI's `runs`)."""
        columns = ("id", "trigger", "started_at", "finished_at", "orgs_checked", "corrections", "error")
        return {column: getattr(self.run, column) for column in columns}


async def newest_runs(
    db: Database, limit: int, *, with_corrections: bool = True, corrections_of: str | None = None
) -> list[RunRecord]:
    """The newest `limit` runs, newest first, each with its corrections in order (only
    those of the org `corrections_of`, if given; none without `with_corrections`)."""

    async def work(session: ReadSession) -> list[RunRecord]:
        runs = (await session.scalars(select(RecalculationRun).order_by(RecalculationRun.id.desc()).limit(limit))).all()
        by_run: dict[int, list[StatsCorrection]] = {}
        if with_corrections and runs:
            stmt = select(StatsCorrection).where(StatsCorrection.run_id.in_([run.id for run in runs]))
            if corrections_of is not None:
                stmt = stmt.where(StatsCorrection.org_id == corrections_of)
            for correction in await session.scalars(stmt.order_by(StatsCorrection.id)):
                by_run.setdefault(correction.run_id, []).append(correction)
        return [RunRecord(run, by_run.get(run.id, [])) for run in runs]

    return await db.read(work)


async def recent_runs(db: Database, limit: int) -> list[dict[str, Any]]:
    return [record.summary() for record in await newest_runs(db, limit, with_corrections=False)]
