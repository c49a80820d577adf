"""Hot org on PostgreSQL: status changes of ONE org with 1, 8, 32 and 64 concurrent
writers, with the aggregate maintenance and without it, for 1 and 16 stats shards
(TALLY_STATS_SHARDS); every ratio is against its baseline measured in the same run.

Part of bench/postgres.py, which seeds the database and writes docs/benchmarks-postgres.md.

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
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from bench.common import (
    app_servers,
    busy_seconds,
    cpu,
    foreign_share,
    live_metrics,
    log,
    ms,
    rate,
    self_cpu,
    summarize,
    table,
    x,
)
from bench.measure import (
    ALSO_OURS,
    SET_STATUS,
    SET_STATUS_WITHOUT_AGGREGATE,
    Cell,
    Pools,
    Profile,
    count_body,
    log_cell,
    measure,
    pooled,
    toggle_bodies,
)
from bench.servers import write_without_aggregate
from db.loads import set_load_status
from db.unit_of_work import Database
from tests.server import ServerUrl

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


BROADCAST_METRICS = ("publishes", "publish_failures", "reconnects")


def broadcast_health(servers: list[ServerUrl]) -> dict[str, int]:
    """The StatsHub counters of /metrics (since each process started), summed over the processes."""
    figures = [live_metrics(server) for server in servers]
    return {key: int(sum(f.get(key, 0) for f in figures)) for key in BROADCAST_METRICS}


def http_runs(
    url: str, broadcast: str, tokens: dict[str, str], pools: Pools, profile: Profile
) -> tuple[list[Cell], dict[str, dict[str, int]]]:
    """The cells, and per shard count the broadcast health of the two processes afterwards."""
    cells = []
    health = {}
    for shards in SHARDS:
        env = {"BENCH_DATABASE_URL": url, "BENCH_BROADCAST_URL": broadcast, "BENCH_STATS_SHARDS": str(shards)}
        log(f"hot org over HTTP, {shard_label(shards)}: two processes, {'/'.join(map(str, WRITERS))} writers")
        with app_servers((f"hot{shards}-a", "naive_app", env), (f"hot{shards}-b", "naive_app", env)) as servers:
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
    with app_servers(("hot-read", "tally_app", {"BENCH_DATABASE_URL": url})) as (tally,):
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
                log_cell(f"db layer {cell.variant} {cell.label} w={writers}", cell)
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
    own = self_cpu() - cpu_before
    busy_after = busy_seconds()
    foreign = None
    also = sum(f() for f in ALSO_OURS) - also_before
    if busy_before is not None and busy_after is not None:
        foreign = foreign_share(wall, busy_after - busy_before, own + also)
    cell = Cell("", "", writers, latencies, profile.db_ops_seconds, completed, None, None, foreign)
    if completed:
        cell.server_cpu_us_per_request, cell.also_cpu_us_per_request = own * 1e6 / completed, also * 1e6 / completed
    return cell


# --- the report ------------------------------------------------------------------------------


@dataclass
class Pair:
    """One (layer, shards, writers): both variants pooled over their rounds."""

    shards: str
    writers: int
    with_: dict[str, float]  # pooled, with "db_cpu" (PostgreSQL and Redis per change)
    without: dict[str, float]
    foreign: float | None  # the largest share of the CPUs other processes took meanwhile

    @property
    def ratio(self) -> float:
        return self.with_["rps"] / self.without["rps"]


def pairs(cells: list[Cell]) -> list[Pair]:
    out = []
    for shards in map(shard_label, SHARDS):
        for writers in WRITERS:
            runs = {a: [c for c in cells if (c.variant, c.label, c.concurrency) == (name, shards, writers)] for a, name in VARIANTS.items()}
            if runs[True] and runs[False]:
                shares = [c.foreign_cpu for c in [*runs[True], *runs[False]] if c.foreign_cpu is not None]
                out.append(Pair(shards, writers, pooled(runs[True]), pooled(runs[False]), max(shares) if shares else None))
    return out


def judged(cells: list[Cell]) -> dict[str, Pair]:
    """shards label -> the pair at JUDGED_AT writers."""
    return {p.shards: p for p in pairs(cells) if p.writers == JUDGED_AT}


def pairs_table(cells: list[Cell], cpu_column: str) -> str:
    rows = [
        [p.shards, str(p.writers), rate(p.with_["rps"]), rate(p.without["rps"]), f"**{x(p.ratio)}**" if p.writers == JUDGED_AT else x(p.ratio),
         f"{ms(p.with_['p50'])} / {ms(p.with_['p99'])}", f"{ms(p.without['p50'])} / {ms(p.without['p99'])}",
         f"{cpu(p.with_['server_cpu'])} / {cpu(p.without['server_cpu'])}", f"{cpu(p.with_['db_cpu'])} / {cpu(p.without['db_cpu'])}",
         "n/a" if p.foreign is None else f"{p.foreign:.0%}"]
        for p in pairs(cells)
    ]  # fmt: skip
    header = ["stats shards", "writers", "with: changes/s", "without: changes/s", "ratio with/without", "with: p50 / p99 ms"]
    header += ["without: p50 / p99 ms", f"{cpu_column} with / without", "PostgreSQL + Redis CPU/change with / without", "other processes (max)"]
    return table(header, rows)


def verdict(p: Pair) -> tuple[str, str]:
    """The CPU ratio (without/with, app + PostgreSQL + Redis per change) and what it says of the throughput ratio."""
    total = {k: s["server_cpu"] + s["db_cpu"] for k, s in (("with", p.with_), ("without", p.without))}
    cpu_ratio = total["without"] / total["with"]
    if abs(p.ratio / cpu_ratio - 1) <= 0.15:
        text = "The two cores (servers, PostgreSQL, Redis, load generator) are saturated at this concurrency, so throughput follows CPU per change: what the aggregate costs here is CPU, not idle waiting"
    elif p.ratio < cpu_ratio:
        text = "Throughput falls further than CPU per change explains: the rest is idle waiting (for the stats row's lock, or for commits to be flushed)"
    else:
        text = "Throughput falls less than CPU per change would predict: the baseline did not saturate the cores (its changes wait too, e.g. for commits to be flushed), so idle time absorbed part of the aggregate's extra CPU"
    return x(cpu_ratio), text


def fields(http: list[Cell], db: list[Cell], read: Cell | None, health: dict[str, dict[str, int]], profile: Profile) -> dict[str, str]:
    one, many = shard_label(SHARDS[0]), shard_label(SHARDS[-1])
    p = judged(http)[one]
    cpu_ratio, why = verdict(p)
    costs = [
        [layer, shards, f"{x(q.ratio)}; per change {cpu(q.with_['server_cpu'] - q.without['server_cpu'])} more app CPU and {cpu(q.with_['db_cpu'] - q.without['db_cpu'])} more PostgreSQL + Redis CPU"]
        for layer, got in (("HTTP", judged(http)), ("db layer", judged(db)))
        for shards, q in got.items()
    ]
    hot = ref = summarize([], 0)
    if read is not None and read.by_body:
        hot, ref = read.by_body_stats()
    health_text = "; ".join(
        f"{shards}: {h['publishes']:,} snapshots published, {h['publish_failures']:,} publish failures, {h['reconnects']:,} broadcaster reconnects"
        for shards, h in health.items()
    )
    w = p.with_, p.without
    return {
        "writers": "/".join(map(str, WRITERS)),
        "judged_at": str(JUDGED_AT),
        "hot_rounds": str(profile.mutation_rounds),
        "hot_duration": f"{profile.duration:g}",
        "hot_warmup": f"{profile.warmup:g}",
        "hot_http": pairs_table(http, "server CPU/change"),
        "hot_health": health_text,
        "db_pool": str(max(WRITERS)),
        "loads_per_writer": str(LOADS_PER_WRITER),
        "db_seconds": f"{profile.db_ops_seconds:g}",
        "hot_db": pairs_table(db, "process CPU/change"),
        "one_shard": one,
        "many_shards": many,
        "why_rates": f"{rate(w[0]['rps'])} vs {rate(w[1]['rps'])} changes/s ({x(p.ratio)})",
        "why_cpu": f"{cpu(w[0]['server_cpu'])} vs {cpu(w[1]['server_cpu'])} of server CPU plus {cpu(w[0]['db_cpu'])} vs {cpu(w[1]['db_cpu'])} in PostgreSQL and Redis: "
        f"{cpu(w[0]['server_cpu'] + w[0]['db_cpu'])} vs {cpu(w[1]['server_cpu'] + w[1]['db_cpu'])} in all",
        "cpu_ratio": cpu_ratio,
        "verdict": why,
        "hot_costs": table(["layer", "stats shards", "ratio with/without, and the aggregate's extra CPU per change"], costs),
        "hot_org": HOT_ORG,
        "reference_org": REFERENCE_ORG,
        "max_shards": str(max(SHARDS)),
        "read_p50": f"{ms(hot['p50'])} vs {ms(ref['p50'])} ms ({x(hot['p50'] / ref['p50'])})",
        "read_p99": f"{ms(hot['p99'])} vs {ms(ref['p99'])} ms",
    }
