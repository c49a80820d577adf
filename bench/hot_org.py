"""Hot org on PostgreSQL: status changes of ONE org with 1, 8, 32 and 64 concurrent
writers, with the aggregate maintenance and without it, for 1 and 16 stats shards
(TALLY_STATS_SHARDS); every ratio is against its baseline measured in the same run.

Part of `uv run python -m bench.postgres`, which seeds the database and writes
docs/benchmarks-postgres.md; `uv run python -m bench.hot_org [--quick]` runs this part
alone (report under bench/results/).

- HTTP (the target): GraphQL `updateLoadStatus` mutations from closed-loop clients
  (bench/loadgen.py) spread over two uvicorn processes sharing the database and a Redis
  broadcast, the production shape. Both run bench/servers.py `naive_app`: Tally's app and
  Mutation plus `updateLoadStatusWithoutAggregate`, the same resolver path and
  `set_load_status` in a plain session (no counter deltas, no stats upsert, no publish).
  Each run toggles its own fresh OPEN loads OPEN -> ASSIGNED -> OPEN, so every change is real.
- db layer (stricter, secondary): `Database.write(set_load_status)` against
  `write_without_aggregate` (the same minus the aggregate), writers as asyncio tasks in
  this process, each toggling its own LOADS_PER_WRITER loads: no HTTP or GraphQL cost
  dilutes the difference.

Per writer count and round, the variants alternate which goes first.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import httpx

from bench import report
from bench.report import ms, rate, x
from bench.run import (
    ALSO_OURS,
    SET_STATUS,
    SET_STATUS_WITHOUT_AGGREGATE,
    Cell,
    Pools,
    Profile,
    Server,
    busy_seconds,
    count_body,
    foreign_share,
    log,
    measure,
    running,
    self_cpu,
    toggle_bodies,
)
from bench.servers import write_without_aggregate
from db.loads import set_load_status
from db.unit_of_work import Database

HOT_ORG = "org_hot"
REFERENCE_ORG = "org_hot_ref"  # a small org with one stats row, to price reading a sharded one
WRITERS = (1, 8, 32, 64)
SHARDS = (1, 16)
JUDGED_AT = 32
TARGET = 0.7
HTTP_POOL = 1000  # loads per HTTP run: far more than requests in flight, so none overlap
LOADS_PER_WRITER = 4  # db layer
VARIANTS = {True: "with aggregate", False: "without aggregate"}


def shard_label(shards: int) -> str:
    return f"{shards} shard{'s' if shards > 1 else ''}"


def profile_of(profile: Profile) -> Profile:
    """Shorter windows than the reads': there are 32 HTTP and 32 db-layer runs."""
    return replace(profile, warmup=min(profile.warmup, 1.0), duration=min(profile.duration, 5.0))


def loads_needed(rounds: int) -> int:
    """OPEN loads the hot org needs: a fresh pool per HTTP run, plus the db layer's."""
    return len(SHARDS) * len(WRITERS) * 2 * rounds * HTTP_POOL + 2 * max(WRITERS) * LOADS_PER_WRITER


def schedule(rounds: int) -> Iterator[tuple[int, bool]]:
    """(writers, with aggregate?) in measuring order: which variant goes first alternates."""
    for round_ in range(rounds):
        for k, writers in enumerate(WRITERS):
            first = (round_ + k) % 2 == 0
            yield writers, first
            yield writers, not first


BROADCAST_METRICS = ("published", "publish_failures", "reconnects")


def broadcast_health(servers: list[Server]) -> dict[str, int]:
    """The StatsHub counters of /healthz (since each process started), summed over the processes."""
    lives = [httpx.get(f"{server.base}/healthz", timeout=10).json()["live"] for server in servers]
    return {key: sum(int(live.get(key, 0)) for live in lives) for key in BROADCAST_METRICS}


def http_runs(
    url: str, broadcast: str, tokens: dict[str, str], pools: Pools, profile: Profile
) -> tuple[list[Cell], dict[str, dict[str, int]]]:
    """The cells, and per shard count the broadcast health of the two processes afterwards."""
    cells = []
    health = {}
    for shards in SHARDS:
        env = {"BENCH_DATABASE_URL": url, "BENCH_BROADCAST_URL": broadcast, "BENCH_STATS_SHARDS": str(shards)}
        log(f"hot org over HTTP, {shard_label(shards)}: two processes, {'/'.join(map(str, WRITERS))} writers")
        with running((f"hot{shards}-a", "naive_app", env), (f"hot{shards}-b", "naive_app", env)) as servers:
            for writers, aggregate in schedule(profile.mutation_rounds):
                query = SET_STATUS if aggregate else SET_STATUS_WITHOUT_AGGREGATE
                cells.append(
                    measure(
                        servers,
                        VARIANTS[aggregate],
                        shard_label(shards),
                        path="/graphql",
                        token=tokens[HOT_ORG],
                        bodies=toggle_bodies(query, pools.take(aggregate=aggregate, size=HTTP_POOL)),
                        expect=None,
                        concurrency=writers,
                        profile=profile,
                    )
                )
            health[shard_label(shards)] = broadcast_health(servers)
    return cells, health


def shard_read_cost(url: str, service_token: str, profile: Profile) -> Cell:
    """countLoadsByStatus on Tally, one client, requests alternating between the hot org
    (its stats now spread over up to 16 rows) and the one-row reference org."""
    with running(("hot-read", "tally_app", {"BENCH_DATABASE_URL": url})) as (tally,):
        return measure(
            tally,
            "tally, orgs interleaved",
            "sharded vs one row",
            path="/graphql",
            token=service_token,
            bodies=[count_body(HOT_ORG), count_body(REFERENCE_ORG)],
            expect=None,
            concurrency=1,
            profile=profile,
            split=True,
        )


# --- the db layer ----------------------------------------------------------------------------


async def db_layer_runs(url: str, ids: dict[bool, list[int]], profile: Profile) -> list[Cell]:
    """Each (shards, writers, variant) for db_ops_seconds; ids[aggregate] are that variant's loads."""
    state = dict.fromkeys([*ids[True], *ids[False]], "OPEN")
    cells = []
    for shards in SHARDS:
        log(f"hot org at the db layer, {shard_label(shards)} (in process)")
        db = Database(url, pool_size=max(WRITERS), stats_shards=shards)  # no after-commit hooks: no publishing
        try:
            for writers, aggregate in schedule(profile.mutation_rounds):
                write = db.write if aggregate else partial(write_without_aggregate, db)
                cell = await db_run(write, ids[aggregate], state, writers, profile)
                cell.variant, cell.label = VARIANTS[aggregate], shard_label(shards)
                cells.append(cell)
                s = cell.stats
                log(
                    f"  db layer {cell.variant:<18} {cell.label:<9} w={writers:<2} {s['rps']:7.0f} changes/s  "
                    f"p50 {s['p50'] / 1000:7.2f} ms  p99 {s['p99'] / 1000:7.2f} ms"
                )
        finally:
            await db.dispose()
    return cells


async def db_run(
    write: Callable[[Any], Awaitable[Any]], ids: list[int], state: dict[int, str], writers: int, profile: Profile
) -> Cell:
    """`writers` closed-loop tasks, writer k toggling ids[k * LOADS_PER_WRITER ...] in turn;
    the changes completed inside the window (after a warm-up) are counted."""
    warmup = min(1.0, profile.warmup)
    start = time.perf_counter() + warmup
    stop = start + profile.db_ops_seconds
    latencies: list[int] = []
    completed = 0
    busy_before, cpu_before, also_before = busy_seconds(), self_cpu(), sum(f() for f in ALSO_OURS)

    async def writer(k: int) -> None:
        nonlocal completed
        mine = ids[k * LOADS_PER_WRITER : (k + 1) * LOADS_PER_WRITER]
        n = 0
        while (began := time.perf_counter()) < stop:
            load_id = mine[n % len(mine)]
            n += 1
            target = "ASSIGNED" if state[load_id] == "OPEN" else "OPEN"
            await write(partial(set_load_status, load_id=str(load_id), status=target, scope=HOT_ORG))
            state[load_id] = target
            completed += 1
            if start <= (ended := time.perf_counter()) <= stop:
                latencies.append(int((ended - began) * 1e6))

    wall = time.monotonic()
    await asyncio.gather(*(writer(k) for k in range(writers)))
    wall = time.monotonic() - wall
    cpu = self_cpu() - cpu_before
    busy_after = busy_seconds()
    foreign = None
    also = sum(f() for f in ALSO_OURS) - also_before
    if busy_before is not None and busy_after is not None:
        foreign = foreign_share(wall, busy_after - busy_before, cpu + also)
    cell = Cell("", "", writers, latencies, profile.db_ops_seconds, completed, None, None, foreign)
    if completed:
        cell.server_cpu_us_per_request, cell.also_cpu_us_per_request = cpu * 1e6 / completed, also * 1e6 / completed
    return cell


# --- the report ------------------------------------------------------------------------------


def mean_cpu(cells: list[Cell], attr: str) -> float:
    """CPU per change over several runs, weighted by their changes (NaN if unknown)."""
    known = [(getattr(c, attr), c.completed_ok) for c in cells if getattr(c, attr) is not None]
    weight = sum(n for _, n in known)
    return sum(v * n for v, n in known) / weight if weight else math.nan


@dataclass
class Pair:
    """One (layer, shards, writers): both variants pooled over their rounds."""

    shards: str
    writers: int
    with_: dict[str, float]  # report.pooled, plus "db_cpu" (PostgreSQL and Redis per change)
    without: dict[str, float]
    foreign: float | None  # the largest share of the CPUs other processes took meanwhile

    @property
    def ratio(self) -> float:
        return self.with_["rps"] / self.without["rps"]


def pairs(cells: list[Cell]) -> list[Pair]:
    out = []
    for shards in map(shard_label, SHARDS):
        for writers in WRITERS:
            runs = {
                aggregate: [c for c in cells if (c.variant, c.label, c.concurrency) == (name, shards, writers)]
                for aggregate, name in VARIANTS.items()
            }
            if not runs[True] or not runs[False]:
                continue
            pooled = {aggregate: report.pooled(cells) for aggregate, cells in runs.items()}
            for aggregate, stats in pooled.items():
                stats["db_cpu"] = mean_cpu(runs[aggregate], "also_cpu_us_per_request")
            shares = [c.foreign_cpu for c in [*runs[True], *runs[False]] if c.foreign_cpu is not None]
            out.append(Pair(shards, writers, pooled[True], pooled[False], max(shares) if shares else None))
    return out


def judged(cells: list[Cell]) -> dict[str, Pair]:
    """shards label -> the pair at JUDGED_AT writers."""
    return {p.shards: p for p in pairs(cells) if p.writers == JUDGED_AT}


def table(cells: list[Cell], cpu_column: str) -> str:
    rows = []
    for p in pairs(cells):
        mark = "**" if p.writers == JUDGED_AT else ""
        rows.append(
            [
                p.shards,
                str(p.writers),
                rate(p.with_["rps"]),
                rate(p.without["rps"]),
                f"{mark}{x(p.ratio)}{mark}",
                f"{ms(p.with_['p50'])} / {ms(p.with_['p99'])}",
                f"{ms(p.without['p50'])} / {ms(p.without['p99'])}",
                f"{report.cpu(p.with_['server_cpu'])} / {report.cpu(p.without['server_cpu'])}",
                f"{report.cpu(p.with_['db_cpu'])} / {report.cpu(p.without['db_cpu'])}",
                "n/a" if p.foreign is None else f"{p.foreign:.0%}",
            ]
        )
    header = ["stats shards", "writers", "with: changes/s", "without: changes/s", "ratio with/without"]
    header += ["with: p50 / p99 ms", "without: p50 / p99 ms", f"{cpu_column} with / without"]
    header += ["PostgreSQL + Redis CPU/change with / without", "other processes (max)"]
    return report.table(header, rows)


def health_text(health: dict[str, int]) -> str:
    return (
        f"{health['published']:,} snapshots published, {health['publish_failures']:,} publish failures, "
        f"{health['reconnects']:,} broadcaster reconnects"
    )


def render(
    http: list[Cell], db: list[Cell], read: Cell | None, health: dict[str, dict[str, int]], profile: Profile
) -> list[str]:
    """The hot-org section of docs/benchmarks-postgres.md."""
    out = [
        "## Hot org: status changes of one org under concurrent writers\n",
        f"One org, {'/'.join(map(str, WRITERS))} concurrent writers, each change one transaction "
        "(BEGIN, `SELECT ... FOR UPDATE` of the load, UPDATE, and with the aggregate the stats upsert as the "
        "last statement before COMMIT). *with* = the app as it is; *without* = the same app and code path "
        "minus the aggregate maintenance (see `bench/servers.py`). Throughput is changes completed in the "
        f"window per second, pooled over {profile.mutation_rounds} round(s) in which the variants alternate "
        "which goes first; the ratio is with/without, both from this run. CPU columns are CPU time per "
        "change: of the app (servers, or this process at the db layer) and of the PostgreSQL and Redis "
        "server processes. *Other processes* is the largest share of the machine's CPU used meanwhile by "
        "anything else.\n",
        "### Over HTTP (the target): GraphQL `updateLoadStatus`, two uvicorn processes, Redis broadcast\n",
        f"Closed-loop clients (bench/loadgen.py, one process) spread evenly over two `naive_app` processes "
        f"(one worker each, pool 10 + 20 overflow connections each); window {profile.duration:g} s after "
        f"{profile.warmup:g} s of warm-up.\n",
        table(http, "server CPU/change"),
        "",
    ]
    if health:
        out.append(
            "Broadcast health afterwards (`/healthz` of both processes): "
            + "; ".join(f"{shards}: {health_text(h)}" for shards, h in health.items())
            + ". A reconnect means a heartbeat did not come back through Redis within "
            "its timeout; publishes while it reconnects fail (counted and logged; the mutation still succeeds).\n"
        )
    out += [
        "### At the db layer (stricter, secondary): `Database.write(set_load_status)` in process\n",
        f"Writers are asyncio tasks in the benchmark process (one Database, pool {max(WRITERS)}), each "
        f"toggling its own {LOADS_PER_WRITER} loads; window {profile.db_ops_seconds:g} s after a short "
        "warm-up; *without* = `write_without_aggregate`. No HTTP or GraphQL cost dilutes the difference, "
        "and nothing is published.\n",
        table(db, "process CPU/change"),
        "",
    ]
    out += why(judged(http), judged(db), read)
    return out


def why(http: dict[str, Pair], db: dict[str, Pair], read: Cell | None) -> list[str]:
    """What limits the ratio and what sharding trades, from this run's numbers."""
    one, many = shard_label(SHARDS[0]), shard_label(SHARDS[-1])
    if one not in http or many not in http:
        return []

    def extra(pair: Pair, key: str) -> float:
        return pair.with_[key] - pair.without[key]

    def costs(pair: Pair) -> str:
        return (
            f"{x(pair.ratio)}; per change {report.cpu(extra(pair, 'server_cpu'))} more app CPU and "
            f"{report.cpu(extra(pair, 'db_cpu'))} more PostgreSQL + Redis CPU"
        )

    p = http[one]
    total = {v: s["server_cpu"] + s["db_cpu"] for v, s in (("with", p.with_), ("without", p.without))}
    cpu_ratio = total["without"] / total["with"]
    if abs(p.ratio / cpu_ratio - 1) <= 0.15:
        verdict = (
            "The two cores (servers, PostgreSQL, Redis, load generator) are saturated at this concurrency, "
            "so throughput follows CPU per change: what the aggregate costs here is CPU, not idle waiting"
        )
    elif p.ratio < cpu_ratio:
        verdict = (
            "Throughput falls further than CPU per change explains: the rest is idle waiting (for the stats "
            "row's lock, or for commits to be flushed)"
        )
    else:
        verdict = (
            "Throughput falls less than CPU per change would predict: the baseline did not saturate the "
            "cores (its changes wait too, e.g. for commits to be flushed), so idle time absorbed part of the "
            "aggregate's extra CPU"
        )
    out = [
        f"### Why, at {JUDGED_AT} writers\n",
        f"Over HTTP with {one}, {rate(p.with_['rps'])} vs {rate(p.without['rps'])} changes/s "
        f"({x(p.ratio)}), while a change cost {report.cpu(p.with_['server_cpu'])} vs "
        f"{report.cpu(p.without['server_cpu'])} of server CPU plus {report.cpu(p.with_['db_cpu'])} vs "
        f"{report.cpu(p.without['db_cpu'])} in PostgreSQL and Redis: {report.cpu(total['with'])} vs "
        f"{report.cpu(total['without'])} in all, a CPU ratio (without/with) of {x(cpu_ratio)}. {verdict}. "
        "Contention on the one stats row shows up as PostgreSQL CPU as well (row-lock queueing, re-checking "
        "the newest version of a row updated hundreds of times a second); spreading the counters over rows "
        "cuts that part, not the app's.\n",
        "| layer | stats shards | ratio with/without, and the aggregate's extra CPU per change |",
        "|---|---|---|",
        *(
            f"| {layer} | {shards} | {costs(pair)} |"
            for layer, got in (("HTTP", http), ("db layer", db))
            for shards, pair in got.items()
        ),
        "",
        "### The trade-off of sharding the counters\n",
        "With one row, every writer of the org queues on that row's lock from its upsert until its COMMIT is "
        "flushed, so the org's commits are serialized; with N rows a writer picks one at random and waits "
        "only for writers that picked the same one. What it costs:\n",
    ]
    read_text = ""
    if read is not None and read.by_body is not None:
        hot, ref = (report.summarize(sorted(samples), read.seconds) for samples in read.by_body)
        read_text = (
            f" Measured: countLoadsByStatus on one Tally process, one client, requests alternating between "
            f"{HOT_ORG} (now {max(SHARDS)} rows) and {REFERENCE_ORG} (one row): p50 {ms(hot['p50'])} vs "
            f"{ms(ref['p50'])} ms ({x(hot['p50'] / ref['p50'])}), p99 {ms(hot['p99'])} vs {ms(ref['p99'])} ms."
        )
    out += [
        f"- every read sums up to N rows instead of reading one (one statement still, a primary-key range).{read_text}",
        "- every write publishes the org's sums read after its commit (never the one row its upsert touched: "
        "another process's setting, or an earlier one, may have written other rows). Writers of the org whose "
        "commits land together share that read (`db.stats_reader.SharedReads`: each joins the next read that "
        "starts after its commit) and so one event. The published snapshot may already include later commits "
        "(the version, the sum of the rows' versions, still only grows).",
        "- N rows per hot org in organization_stats; a recalculation corrects the sum (its correction goes "
        "to one row). TALLY_STATS_SHARDS only decides where new deltas go, so processes may differ and it "
        "can change without a migration.",
        "",
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    from bench.postgres import main as postgres_main

    return postgres_main(["--only", "hot", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
