"""Hot org on PostgreSQL: `uv run python -m bench.hot_org [--seconds N] [--url URL]`.

Mutation throughput for ONE org with 1, 8, 32 and 64 concurrent writers, with
the aggregate maintenance and without it, in one run, for 1 and 16 stats shards
(TALLY_STATS_SHARDS). Each writer toggles its own loads OPEN <-> ASSIGNED through
`db.loads.set_load_status` in `Database.write`-style transactions:

- with: the app's AggregateSession (counter deltas, one stats upsert per commit);
- without: the same function in a plain SQLAlchemy Session (no hooks, no stats row),
  same BEGIN/locking/commit: the difference is exactly the aggregate maintenance.

Writes docs/benchmarks-postgres.md.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from pathlib import Path

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from bench.machine import describe
from db.engine import WRITE
from db.loads import create_load, set_load_status
from db.migrate import upgrade_async
from db.unit_of_work import Database

ROOT = Path(__file__).resolve().parent.parent
ORG = "org_hot"
WRITERS = (1, 8, 32, 64)
LOADS_PER_WRITER = 4


async def admin(server: str, sql: str) -> None:
    conn = await asyncpg.connect(f"{server}/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def throughput(db: Database, ids: list[str], writers: int, with_aggregate: bool, seconds: float) -> float:
    plain = async_sessionmaker(db.engine, sync_session_class=Session, expire_on_commit=False)
    done = 0
    stop = time.monotonic() + seconds

    async def writer(k: int) -> None:
        nonlocal done
        mine = ids[k * LOADS_PER_WRITER : (k + 1) * LOADS_PER_WRITER]
        state = dict.fromkeys(mine, "OPEN")
        while time.monotonic() < stop:
            load_id = random.choice(mine)
            target = "ASSIGNED" if state[load_id] == "OPEN" else "OPEN"
            if with_aggregate:
                await db.write(lambda s, i=load_id, t=target: set_load_status(s, i, t, None))
            else:
                session: AsyncSession
                async with plain() as session:
                    await session.connection(execution_options={WRITE: True})
                    await set_load_status(session, load_id, target, None)
                    await session.commit()
            state[load_id] = target
            done += 1

    await asyncio.gather(*(writer(k) for k in range(writers)))
    return done / seconds


async def run(server: str, seconds: float) -> list[tuple[int, int, float, float]]:
    rows = []
    for shards in (1, 16):
        name = f"tally_bench_hot_{shards}"
        await admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin(server, f'CREATE DATABASE "{name}"')
        url = f"{server.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"
        await upgrade_async(url)
        db = Database(url, pool_size=max(WRITERS) + 5, stats_shards=shards)

        async def seed(session: AsyncSession) -> list[str]:
            loads = [
                await create_load(session, ORG, status="OPEN", load_type="UNMAPPED")
                for _ in range(max(WRITERS) * LOADS_PER_WRITER)
            ]
            return [str(load.id) for load in loads]

        ids = await db.write(seed)
        for writers in WRITERS:
            # Alternate, so drift in machine load hits both variants alike.
            with_rate = await throughput(db, ids, writers, True, seconds)
            without_rate = await throughput(db, ids, writers, False, seconds)
            rows.append((shards, writers, with_rate, without_rate))
            print(
                f"shards={shards:2d} writers={writers:2d}: with {with_rate:6.0f}/s  without {without_rate:6.0f}/s  ratio {with_rate / without_rate:.2f}",
                flush=True,
            )
        await db.dispose()
        await admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return rows


def report(rows: list[tuple[int, int, float, float]], machine: dict[str, str], seconds: float, load_end: str) -> str:
    lines = [
        "# Hot-org benchmark (PostgreSQL)",
        "",
        "Command: `uv run python -m bench.hot_org` (PostgreSQL at `postgresql://postgres@127.0.0.1:5432`).",
        "",
        "## Machine",
        "",
        *(f"- {k}: {v}" for k, v in machine.items()),
        f"- Load average at end: {load_end}",
        "",
        "## Method",
        "",
        f"One org; each writer toggles its own {LOADS_PER_WRITER} loads OPEN <-> ASSIGNED for {seconds:g} s per cell, "
        "one transaction per change (BEGIN, SELECT ... FOR UPDATE, UPDATE, [stats upsert], COMMIT), writers as asyncio "
        "tasks in one process with a pool of 69 connections. *with* = the app's AggregateSession; *without* = the same "
        "domain function in a plain Session (no counter deltas, no stats row). Variants alternate per cell.",
        "",
        "## Results (transactions per second)",
        "",
        "| stats shards | writers | with aggregates | without | ratio with/without |",
        "|---:|---:|---:|---:|---:|",
        *(f"| {s} | {w} | {a:.0f} | {b:.0f} | {a / b:.2f} |" for s, w, a, b in rows),
        "",
    ]
    at32 = {s: a / b for s, w, a, b in rows if w == 32}
    lines += [
        "## Target",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        *(
            f"| with aggregates >= 0.7x without at 32 writers ({s} shard{'s' if s > 1 else ''}) | {r:.2f}x | {'yes' if r >= 0.7 else 'no'} |"
            for s, r in at32.items()
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks-postgres.md")
    args = parser.parse_args()
    machine = describe(ROOT)
    rows = asyncio.run(run(args.server, args.seconds))
    load_end = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    args.out.write_text(report(rows, machine, args.seconds, load_end))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
