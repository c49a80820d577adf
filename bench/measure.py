"""Closed-loop measurements over HTTP (bench/loadgen.py in its own process), and what they cost."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from typing import Any

import httpx

from bench.common import (
    ROOT,
    busy_seconds,
    child_env,
    children_cpu,
    foreign_share,
    log,
    process_cpu,
    summarize,
    wait_for_quiet,
    weighted,
)
from tests.server import ServerUrl

COUNT_QUERY = (
    "query CountLoads($org: ID!) { countLoadsByStatus(orgId: $org) { open assigned completed canceled total } }"
)
SET_STATUS = (
    "mutation SetStatus($id: ID!, $status: LoadStatus!) { updateLoadStatus(id: $id, status: $status) { id status } }"
)
# The bench-only mutation, aliased so that its response has the same shape and size.
SET_STATUS_WITHOUT_AGGREGATE = (
    "mutation SetStatus($id: ID!, $status: LoadStatus!) "
    "{ updateLoadStatus: updateLoadStatusWithoutAggregate(id: $id, status: $status) { id status } }"
)
DISTURBED = 0.10  # a read measurement during which other processes used this share of the CPUs is redone
POOL = 500  # loads per mutation run; each run toggles its own, so every change is a real one


@dataclass(frozen=True)
class Profile:
    name: str
    sizes: tuple[int, ...]
    warmup: float  # seconds per measurement, before the window opens
    duration: float  # seconds of the measurement window
    min_samples: int  # the window is extended (up to max_duration) until this many
    max_duration: float
    mutation_rounds: int  # rounds of (with, without), alternating which goes first
    db_ops_seconds: float  # per db-level mutation run
    retry_until: float  # seconds after the reads start during which disturbed reads are measured again


FULL = Profile("full", (1_000, 100_000, 1_000_000), 2.0, 8.0, 400, 20.0, 2, 5.0, 90.0)
QUICK = Profile("quick", (1_000, 10_000), 0.2, 0.8, 20, 1.5, 1, 0.8, 0.0)


@dataclass
class Cell:
    """One measurement: latencies (µs) of a closed-loop run and what it cost."""

    variant: str
    label: str
    concurrency: int
    latencies_us: list[int]
    seconds: float
    completed_ok: int
    server_cpu_us_per_request: float | None = None
    client_cpu_us_per_request: float | None = None
    foreign_cpu: float | None = None  # share of the machine's CPU used by other processes meanwhile
    round_trips: int | None = None  # calls into aiosqlite's thread per operation (db layer only)
    by_body: list[list[int]] | None = None  # latencies per request body (interleaved measurements)
    attempts: int = 1
    also_cpu_us_per_request: float | None = None  # CPU of the ALSO_OURS processes (e.g. PostgreSQL)

    @cached_property
    def stats(self) -> dict[str, float]:
        return summarize(self.latencies_us, self.seconds)

    def json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "stats"}

    def by_body_stats(self) -> list[dict[str, float]]:
        return [summarize(samples, self.seconds) for samples in self.by_body or []]


def cells(data: list[dict[str, Any]]) -> list[Cell]:
    return [Cell(**item) for item in data]


def pooled(group: list[Cell]) -> dict[str, float]:
    """Statistics over the samples of several runs of the same variant, CPU weighted by their requests."""
    stats = summarize([v for c in group for v in c.latencies_us], sum(c.seconds for c in group))
    stats["server_cpu"] = weighted([(c.server_cpu_us_per_request, c.completed_ok) for c in group])
    stats["db_cpu"] = weighted([(c.also_cpu_us_per_request, c.completed_ok) for c in group])
    return stats


# CPU seconds so far of other processes whose work is part of every measurement (a database
# server, say): counted as ours, not as disturbance. bench/postgres.py registers PostgreSQL's.
ALSO_OURS: list[Callable[[], float]] = []
RETRY_DEADLINE = [0.0]  # disturbed reads are measured again until then (set when the reads start)


def also_ours() -> float:
    return sum(f() for f in ALSO_OURS)


def servers_cpu(servers: list[ServerUrl]) -> float | None:
    times = [process_cpu(s.process.pid) if s.process else None for s in servers]
    return None if None in times else sum(t for t in times if t is not None)


def post(server: ServerUrl, path: str, token: str | None, body: dict[str, Any]) -> bytes:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.post(f"{server}{path}", json=body, headers=headers, timeout=60)
    response.raise_for_status()
    return response.content


def measure(
    server: ServerUrl | list[ServerUrl],
    variant: str,
    label: str,
    *,
    bodies: list[str],
    token: str | None,
    concurrency: int,
    profile: Profile,
    path: str = "/graphql",
    expect: str | list[str] | None = None,
    split: bool = False,
) -> Cell:
    """bench/loadgen.py against the servers (clients spread over them), with the servers' CPU."""
    servers = server if isinstance(server, list) else [server]
    spec = {
        "host": "127.0.0.1",
        "port": servers[0].port,
        "ports": [s.port for s in servers],
        "path": path,
        "headers": {"Authorization": f"Bearer {token}"} if token else {},
        "bodies": bodies,
        "expect": expect,
        "concurrency": concurrency,
        "split": split,
        **{k: getattr(profile, k) for k in ("warmup", "duration", "min_samples", "max_duration")},
    }
    cpu_before, busy_before, children_before, also_before = servers_cpu(servers), busy_seconds(), children_cpu(), also_ours()
    wall = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "bench.loadgen"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env(),
        timeout=profile.warmup + profile.max_duration + 60,
    )
    cpu_after, busy_after, children_after, also = servers_cpu(servers), busy_seconds(), children_cpu(), also_ours() - also_before
    wall = time.monotonic() - wall
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{done.stderr}")
    result = json.loads(done.stdout)
    if result["errors"]:
        raise RuntimeError(f"{variant} {label} c={concurrency}: {result['errors']} errors: {result['first_errors']}")
    ok = result["completed_ok"]
    server_cpu = foreign = None
    if cpu_before is not None and cpu_after is not None:
        server_cpu = (cpu_after - cpu_before) * 1e6 / ok if ok else None
        if busy_before is not None and busy_after is not None:
            ours = (cpu_after - cpu_before) + (children_after - children_before) + also
            foreign = foreign_share(wall, busy_after - busy_before, ours)
    cell = Cell(
        variant,
        label,
        concurrency,
        sorted(result["latencies_us"]),
        result["seconds"],
        ok,
        server_cpu,
        result["client_cpu_us_per_request"],
        foreign,
        by_body=result.get("latencies_by_body"),
        also_cpu_us_per_request=also * 1e6 / ok if ALSO_OURS and ok else None,
    )
    note = f"  (other processes: {foreign:.0%} of the CPUs)" if foreign and foreign >= 0.05 else ""
    log_cell(f"{variant} {label} c={concurrency}", cell, note)
    return cell


def log_cell(what: str, cell: Cell, note: str = "") -> None:
    s = cell.stats
    log(f"  {what:<40} p50 {s['p50'] / 1000:8.3f} ms  p99 {s['p99'] / 1000:8.3f} ms  {s['rps']:8.0f}/s  n={s['n']:.0f}{note}")


def measure_read(*args: Any, profile: Profile, **kwargs: Any) -> Cell:
    """`measure`, redone (up to twice, within the run's retry budget) when other processes
    took a noticeable share of the CPUs meanwhile; the least disturbed attempt is kept."""
    best = measure(*args, profile=profile, **kwargs)
    attempts = 1
    while best.foreign_cpu is not None and best.foreign_cpu >= DISTURBED and attempts < 3 and time.monotonic() < RETRY_DEADLINE[0]:
        log(f"  (disturbed: other processes used {best.foreign_cpu:.0%} of the CPUs; measuring again)")
        wait_for_quiet(15)
        cell = measure(*args, profile=profile, **kwargs)
        attempts += 1
        if cell.foreign_cpu is not None and cell.foreign_cpu < best.foreign_cpu:
            best = cell
    return replace(best, attempts=attempts)


def count_body(org_id: str) -> str:
    return json.dumps({"query": COUNT_QUERY, "variables": {"org": org_id}, "operationName": "CountLoads"})


def count_answer(truth: dict[str, int]) -> str:
    """The exact bytes countLoadsByStatus answers for these counters (loads_open, ...)."""
    counts = {k: truth[f"loads_{k}"] for k in ("open", "assigned", "completed", "canceled")}
    return json.dumps({"data": {"countLoadsByStatus": {**counts, "total": sum(counts.values())}}}, separators=(",", ":"))


def toggle_bodies(query: str, ids: list[int]) -> list[str]:
    """Each load OPEN -> ASSIGNED, then each back: every request a real change."""
    return [
        json.dumps({"query": query, "variables": {"id": str(i), "status": status}, "operationName": "SetStatus"})
        for status in ("ASSIGNED", "OPEN")
        for i in ids
    ]


class Pools:
    """Disjoint sets of OPEN loads (ids read once, before any change), one per mutation run."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.taken = 0
        self.without_aggregate: list[int] = []

    def take(self, *, aggregate: bool, size: int = POOL) -> list[int]:
        ids = self.ids[self.taken : self.taken + size]
        if len(ids) < size:
            raise RuntimeError(f"only {len(self.ids)} OPEN loads in the pools")
        self.taken += size
        if not aggregate:
            self.without_aggregate.extend(ids)
        return ids
