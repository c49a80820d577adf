"""Drift: reported, corrected online, recorded, published; the scheduler runs alone."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from db import recalculation
from db.recalculation import drift_report
from db.sqlite import recount_thread
from db.unit_of_work import Database
from main import create_app
from settings import Settings
from tests.helpers import Api, Counted, assert_exact, stored, token
from tests.server import ROOT

LOADS = 'mutation($s: LoadStatus) { createLoad(input: {orgId: "org_a", status: $s}) { id } }'
DRIFT = 'query { driftReport(orgId: "org_a") { ok drift { counter stored actual } } }'
RECALC = 'mutation { recalculateOrgStats(orgId: "org_a") { corrected { counter stored actual } stats { version loads { open } } } }'


async def inject_drift(db: Database, sql: str) -> None:
    """Corrupt the stats row behind the aggregate's back, as a bug would."""
    async with db.engine.begin() as conn:
        await conn.execute(text(sql))


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TALLY_DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.mark.slow
async def test_injected_drift_is_reported_corrected_recorded_and_published(
    api: Api, db: Database, app_client: tuple[httpx.AsyncClient, Database], database_url: str
) -> None:
    for _ in range(4):
        await api.ok(LOADS)
    assert (await api.ok(DRIFT))["driftReport"] == {"ok": True, "drift": []}
    await inject_drift(db, "UPDATE organization_stats SET loads_open = loads_open + 3, invoices_paid = 7")
    _, version_before = await stored(db, "org_a")

    report = (await api.ok(DRIFT))["driftReport"]
    assert report["ok"] is False
    assert {(d["counter"], d["stored"], d["actual"]) for d in report["drift"]} == {
        ("loads_open", 7, 4),
        ("invoices_paid", 7, 0),
    }
    checked = cli(database_url, "check-drift", "--json")
    assert checked.returncode == 1, checked.stderr
    assert {r["counter"] for r in json.loads(checked.stdout)["rows"]} == {"loads_open", "invoices_paid"}
    assert "loads_open" in cli(database_url, "check-drift").stdout

    hub = app_client[0]._transport.app.state.hub  # type: ignore[attr-defined]
    async with hub.subscribe("org_a") as mailbox:
        result = (await api.ok(RECALC))["recalculateOrgStats"]
        assert {c["counter"] for c in result["corrected"]} == {"loads_open", "invoices_paid"}
        assert result["stats"] == {"version": version_before + 1, "loads": {"open": 4}}
        published = await asyncio.wait_for(mailbox.newer_than(version_before), 2)
        assert published.counts["loads_open"] == 4 and published.counts["invoices_paid"] == 0

    await assert_exact(db, "org_a")
    assert (await api.ok(DRIFT))["driftReport"]["ok"] is True
    assert cli(database_url, "check-drift", "--org", "org_a").returncode == 0
    runs = await api.ok("{ recalculationRuns { trigger corrections details { counter stored actual } } }")
    newest = runs["recalculationRuns"][0]
    assert newest["trigger"] == "api" and newest["corrections"] == 2
    assert {(d["counter"], d["stored"], d["actual"]) for d in newest["details"]} == {
        ("loads_open", 7, 4),
        ("invoices_paid", 7, 0),
    }
    # A recalculation without drift changes nothing but lastRecalculatedAt.
    again = (await api.ok(RECALC))["recalculateOrgStats"]
    assert again["corrected"] == [] and again["stats"]["version"] == version_before + 1


@pytest.mark.slow
async def test_cli_recalc_fixes_drift_and_lists_the_run(api: Api, db: Database, database_url: str) -> None:
    await api.ok(LOADS)
    await inject_drift(db, "UPDATE organization_stats SET type_unmapped = 0")
    fixed = cli(database_url, "recalc", "--json")
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(fixed.stdout)["rows"] == [{"org": "org_a", "counter": "type_unmapped", "stored": 0, "actual": 1}]
    await assert_exact(db, "org_a")
    runs = cli(database_url, "runs")
    assert runs.returncode == 0 and "cli" in runs.stdout


@pytest.mark.slow
async def test_recalculation_beside_concurrent_writers_corrects_nothing(api: Api, db: Database) -> None:
    """No real drift: recalculations in a loop during concurrent writes (counts and money: priced,
    billed, partly paid invoices) find none."""
    stop = asyncio.Event()

    async def writer(n: int) -> None:
        for i in range(25):
            load = (await api.ok(LOADS, s="OPEN"))["createLoad"]["id"]
            invoice = (await api.ok(
                'mutation($id: ID!) { createInvoice(input: {loadId: $id, amount: "100.50"}) { id } }', id=load
            ))["createInvoice"]["id"]  # fmt: skip
            await api.ok("mutation($id: ID!) { updateLoadStatus(id: $id, status: ASSIGNED) { id } }", id=load)
            await api.ok("mutation($id: ID!) { updateInvoiceStatus(id: $id, status: BILLED) { id } }", id=invoice)
            await api.ok('mutation($id: ID!) { recordPayment(invoiceId: $id, amount: "0.50") { id } }', id=invoice)
            if (n + i) % 3 == 0:
                await api.ok("mutation($id: ID!) { deleteLoad(id: $id) { id } }", id=load)

    async def recalculator() -> list[Any]:
        corrections: list[Any] = []
        while not stop.is_set():
            corrections += (await api.ok(RECALC))["recalculateOrgStats"]["corrected"]
        return corrections

    recalcs = asyncio.create_task(recalculator())
    await asyncio.gather(*(writer(n) for n in range(4)))
    stop.set()
    assert await recalcs == []
    runs = (await api.ok("{ recalculationRuns(limit: 100) { corrections } }"))["recalculationRuns"]
    assert len(runs) > 3 and all(r["corrections"] == 0 for r in runs)
    await assert_exact(db, "org_a")


async def test_recount_runs_off_the_event_loop_at_the_lowest_priority(db: Database) -> None:
    """SQLite: the recount leaves the loop's thread and yields the CPU to writers (SCHED_IDLE, nice 19)."""
    if db.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL recounts in its own server process")
    recount_threads: list[int] = []

    def on_recount_thread(original: Any) -> Any:
        def row(*args: Any) -> Any:
            recount_threads.append(threading.get_native_id())
            return original(*args)

        return row

    thread = db.stats.recount_thread
    if thread is None:
        pytest.skip("SQLite's fast paths are off (TALLY_SQLITE_FAST_PATHS=0)")
    thread.recount = on_recount_thread(thread.recount)  # type: ignore[method-assign]
    drift = await drift_report(db, "org_a")
    assert drift.counters == [] and recount_threads
    tid = recount_threads[0]
    assert tid != threading.get_native_id()
    stat = await asyncio.to_thread(Path(f"/proc/self/task/{tid}/stat").read_text)
    fields = stat.rpartition(")")[2].split()  # proc(5) fields from 3 on
    assert int(fields[16]) == 19  # field 19: nice
    assert int(fields[38]) == os.SCHED_IDLE  # field 41: policy


async def test_recounts_wait_for_the_writers_of_their_process(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite: a recount shares the CPU with this process's writers, so its statements run once they are done."""
    if db.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL recounts in its own server process")
    monkeypatch.setattr(recount_thread, "RECOUNT_YIELD_SECONDS", 10.0)
    events: list[str] = []
    thread = db.stats.recount_thread
    if thread is None:
        pytest.skip("SQLite's fast paths are off (TALLY_SQLITE_FAST_PATHS=0)")
    first = thread._first
    loop_thread = threading.get_native_id()

    def statement(*args: Any) -> Any:
        if threading.get_native_id() != loop_thread:
            events.append("recount statement")
        return first(*args)

    thread._first = statement  # type: ignore[method-assign]

    async def slow_write(session: Any) -> None:
        await asyncio.sleep(0.3)
        events.append("write done")

    write = asyncio.create_task(db.write(slow_write))
    await asyncio.sleep(0.05)
    assert db.writers.count == 1  # the write is under way
    drift = await drift_report(db, "org_a")
    await write
    assert events[:2] == ["write done", "recount statement"] and drift.counters == []


@pytest.mark.slow
async def test_scheduler_runs_alone_across_two_instances_and_survives_a_dead_holder(
    database_url: str,
) -> None:
    first = create_app(Settings(database_url=database_url, recalc_interval_seconds=1))
    second = create_app(Settings(database_url=database_url, recalc_interval_seconds=1))
    db: Database = first.state.db
    # A runner that crashed holding the lease: expired, due.
    await inject_drift(
        db,
        "UPDATE scheduler_leases SET holder = 'crashed', expires_at = '2000-01-01 00:00:00' WHERE name = 'recalculate'",
    )
    async with first.router.lifespan_context(first), second.router.lifespan_context(second):
        await asyncio.sleep(4.5)
    async with db.engine.connect() as conn:
        runs = (
            await conn.execute(text("SELECT started_at, finished_at, trigger FROM recalculation_runs ORDER BY id"))
        ).all()
    await db.dispose()
    assert 3 <= len(runs) <= 6, runs
    assert all(r.trigger == "schedule" and r.finished_at is not None for r in runs)
    for earlier, later in itertools.pairwise(runs):
        assert earlier.finished_at <= later.started_at  # never two at once


async def test_scheduled_job_is_off_at_zero(database_url: str) -> None:
    app = create_app(Settings(database_url=database_url, recalc_interval_seconds=0))
    async with app.router.lifespan_context(app):
        await asyncio.sleep(0.5)
    async with app.state.db.engine.connect() as conn:
        assert (await conn.execute(text("SELECT COUNT(*) FROM recalculation_runs"))).scalar() == 0
    await app.state.db.dispose()


async def test_admin_only_and_service_only(api: Api) -> None:
    member = api.as_(token("org_a", "member"))
    assert (await member.error(DRIFT))["extensions"]["code"] == "FORBIDDEN"
    assert (await member.error(RECALC))["extensions"]["code"] == "FORBIDDEN"
    everything = "mutation { recalculateAllOrgStats { orgId } }"
    assert (await api.error(everything))["extensions"]["code"] == "FORBIDDEN"
    await api.ok(LOADS)
    service = api.as_(token(None, "service"))
    assert (await service.ok(everything))["recalculateAllOrgStats"] == [{"orgId": "org_a"}]
    other = api.as_(token("org_b", "admin"))
    assert (await other.error(DRIFT))["extensions"]["code"] == "FORBIDDEN"


async def test_a_run_over_many_orgs_writes_exact_orgs_in_batches(
    api: Api, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exact orgs cost one write per batch, a drifted org its own correction; all are recorded."""
    service = api.as_(token(None, "service"))
    orgs = [f"org_{i}" for i in range(7)]
    for org in orgs:
        await service.ok("mutation($o: ID!) { createLoad(input: {orgId: $o}) { id } }", o=org)
    await inject_drift(db, "UPDATE organization_stats SET loads_open = 5 WHERE org_id = 'org_3'")
    versions = {org: (await stored(db, org))[1] for org in orgs}
    monkeypatch.setattr(recalculation, "EXACT_BATCH_ORGS", 2)
    writes = Counted(db.write_script)
    monkeypatch.setattr(db, "write_script", writes)
    fields = "orgId corrected { counter } stats { version lastRecalculatedAt }"
    results = (await service.ok(f"mutation {{ recalculateAllOrgStats {{ {fields} }} }}"))["recalculateAllOrgStats"]

    # org_0, org_1 | org_2 (flushed before the correction) | org_3 | org_4, org_5 | org_6
    assert writes.calls == 5
    assert [r["orgId"] for r in results] == orgs
    assert [r["orgId"] for r in results if r["corrected"]] == ["org_3"]
    assert all(r["stats"]["lastRecalculatedAt"] for r in results)
    assert {r["orgId"]: r["stats"]["version"] for r in results} == {**versions, "org_3": versions["org_3"] + 1}
    runs = await api.ok("{ recalculationRuns(limit: 1) { orgsChecked corrections finishedAt } }")
    run = runs["recalculationRuns"][0]
    assert run["orgsChecked"] == 7 and run["corrections"] == 1 and run["finishedAt"]
    for org in orgs:
        await assert_exact(db, org)


def test_operator_commands_on_an_unmigrated_database_say_so_in_one_line(tmp_path: Any) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    for command in ("check-drift", "recalc", "runs"):
        done = cli(url, command)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr and "python main.py migrate" in done.stderr, done.stderr
