"""Count queries and the status change's cost on SQLite (docs/benchmarks.md).

1. Seeds one SQLite file: one org per size plus `org_mut` for the status changes.
2. Starts four uvicorn processes (bench/servers.py): floor, Tally, Tally with its count
   cache off, naive; checks that all answer countLoadsByStatus with the bytes of a recount.
3. countLoadsByStatus at 1 and 16 closed-loop clients, the variants interleaved per
   (size, clients); then Tally with the orgs interleaved in one run.
4. A status change (OPEN <-> ASSIGNED) with and without aggregate maintenance, over HTTP
   and at the db layer, in rounds that alternate which goes first.
5. Where a read spends its time (bench/breakdown.py); then checks the aggregate is exact.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from functools import partial
from pathlib import Path
from typing import Any

from bench import breakdown
from bench.common import (
    RESULTS,
    busy_seconds,
    cpu,
    foreign_share,
    human,
    log,
    met,
    ms,
    rate,
    run_async,
    self_cpu,
    table,
    token,
    x,
)
from bench.common import app_servers as servers
from bench.measure import (
    FULL,
    QUICK,
    RETRY_DEADLINE,
    SET_STATUS,
    SET_STATUS_WITHOUT_AGGREGATE,
    Cell,
    Pools,
    Profile,
    cells,
    count_answer,
    count_body,
    log_cell,
    measure,
    measure_read,
    pooled,
    post,
    toggle_bodies,
)
from bench.seed import MUTATION_ORG, open_loads, org_name, recount, seed, stored

PROFILES = {"full": FULL, "quick": QUICK}
READ_VARIANTS = ("floor", "tally", "uncached", "naive")
VARIANT_NAMES = {"floor": "floor", "tally": "**Tally**", "uncached": "Tally, count cache off", "naive": "naive"}
BREAKDOWN_ORDER = ("sqlite3", "aiosqlite", "jwt", "jwt-cached", "read-session", "read", "app", "app-uncached", "rate1", "rate16")


def rounds(count: int) -> list[bool]:
    """With aggregate first in even rounds, second in odd ones."""
    return [first for r in range(count) for first in ((True, False) if r % 2 == 0 else (False, True))]


def run(profile: Profile) -> dict[str, Any]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    seeded = seed(RESULTS / f"bench-{profile.name}.db", list(profile.sizes))
    log(f"seeded {sum(seeded.orgs.values()):,} loads in {seeded.seconds:.1f} s ({seeded.file_bytes / 1e6:.0f} MB)")
    orgs = [org_name(size) for size in profile.sizes]
    tokens = {org: token(org, ttl=3600) for org in [*orgs, MUTATION_ORG]}
    expected = {org: count_answer(recount(seeded.path, org)) for org in orgs}
    floor_bodies = RESULTS / f"floor-{profile.name}.json"
    floor_bodies.write_text(json.dumps({f"/floor/{org}": expected[org] for org in orgs}))
    env = {"BENCH_DATABASE_URL": seeded.url}
    pools = Pools(open_loads(seeded.path, MUTATION_ORG, 500 * (4 * profile.mutation_rounds + 1)))
    reads, interleaved, http = [], [], []
    specs = [(v, f"{v}_app", env) for v in READ_VARIANTS[1:]]
    with servers(("floor", "floor_app", {"BENCH_FLOOR_BODIES": str(floor_bodies)}), *specs) as up:
        by_variant = dict(zip(READ_VARIANTS, up, strict=True))

        def target(variant: str, org: str) -> dict[str, Any]:
            return {"path": f"/floor/{org}", "token": None} if variant == "floor" else {"path": "/graphql", "token": tokens[org]}

        for org in orgs:
            for variant in READ_VARIANTS:
                spot = target(variant, org)
                answer = post(by_variant[variant], spot["path"], spot["token"], json.loads(count_body(org))).decode()
                if answer != expected[org]:
                    raise RuntimeError(f"{variant} answers {answer} for {org}, expected {expected[org]}")
        log("countLoadsByStatus (variants interleaved per size and concurrency)")
        RETRY_DEADLINE[0] = time.monotonic() + profile.retry_until
        for org, size in zip(orgs, profile.sizes, strict=True):
            for clients in (1, 16):
                for variant in READ_VARIANTS:
                    reads.append(
                        measure_read(
                            by_variant[variant], variant, human(size), bodies=[count_body(org)], expect=expected[org],
                            concurrency=clients, profile=profile, **target(variant, org),
                        )
                    )  # fmt: skip
        log("countLoadsByStatus on Tally with the orgs interleaved (one service token, bodies alternate)")
        for clients in (1, 16):
            interleaved.append(
                measure(
                    by_variant["tally"], "tally, orgs interleaved", "all orgs", token=token(None, "service", 3600),
                    bodies=[count_body(org) for org in orgs], expect=[expected[org] for org in orgs],
                    concurrency=clients, profile=profile, split=True,
                )
            )  # fmt: skip
        log("status change over HTTP, one client (rounds alternate which variant goes first)")
        for i, aggregate in enumerate(rounds(profile.mutation_rounds)):
            query = SET_STATUS if aggregate else SET_STATUS_WITHOUT_AGGREGATE
            http.append(
                measure(
                    by_variant["naive"], "with aggregate" if aggregate else "without aggregate", f"round {i // 2 + 1}",
                    token=tokens[MUTATION_ORG], bodies=toggle_bodies(query, pools.take(aggregate=aggregate)),
                    concurrency=1, profile=profile,
                )
            )  # fmt: skip
        http.append(
            measure(
                by_variant["tally"], "Tally app (reference)", "reference", token=tokens[MUTATION_ORG],
                bodies=toggle_bodies(SET_STATUS, pools.take(aggregate=True)), concurrency=1, profile=profile,
            )
        )  # fmt: skip

    log("status change at the db layer, in process (servers stopped)")
    plan = [(aggregate, pools.take(aggregate=aggregate)) for aggregate in rounds(profile.mutation_rounds)]
    db_cells: list[Cell] = run_async(db_level_runs(seeded.url, plan, profile))
    log("where a read spends its time (in process)")
    calls = 100 if profile.name == "quick" else 600
    spent = breakdown.in_subprocess(str(seeded.path), seeded.url, orgs[-1], tokens[orgs[-1]], calls)

    # The aggregate must still be exact: the recount, corrected for the loads that the
    # without-aggregate runs left ASSIGNED (those deliberately bypassed the counters).
    changes = sum(c.completed_ok for c in [*http, *db_cells] if c.variant in ("with aggregate", "Tally app (reference)"))
    counts, version = stored(seeded.path, MUTATION_ORG)
    truth = recount(seeded.path, MUTATION_ORG)
    bypassed = assigned_among(seeded.path, pools.without_aggregate)
    truth["loads_open"] += bypassed
    truth["loads_assigned"] -= bypassed
    exact = counts == truth and version == 1 + changes
    return {
        "profile": profile.__dict__,
        "seeded": {"orgs": seeded.orgs, "seconds": seeded.seconds, "file_bytes": seeded.file_bytes},
        "reads": [c.json() for c in reads],
        "interleaved": [c.json() for c in interleaved],
        "http": [c.json() for c in http],
        "db": [c.json() for c in db_cells],
        **spent,
        "ok": exact,
        "exact": {"ok": exact, "bypassed": bypassed, "version": version, "changes": changes},
    }


async def db_level_runs(url: str, plan: list[tuple[bool, list[int]]], profile: Profile) -> list[Cell]:
    """Each (aggregate?, pool): Database.write(set_load_status) or the same without the aggregate,
    called back to back in this process for db_ops_seconds (after a short warm-up)."""
    from bench.servers import write_without_aggregate
    from db.loads import set_load_status
    from db.unit_of_work import Database

    db = Database(url)  # no after-commit hooks: this is the aggregate alone, no publishing
    out = []
    try:
        for aggregate, ids in plan:
            write = db.write if aggregate else partial(write_without_aggregate, db)
            latencies: list[int] = []
            busy_before, own_before, wall = busy_seconds(), self_cpu(), time.monotonic()
            warm_until = time.perf_counter() + min(1.0, profile.warmup)
            window_start = window_end = 0.0
            i, trips = 0, -1
            while True:
                now = time.perf_counter()
                if now >= warm_until and not window_start:
                    window_start = now
                if window_start and now - window_start >= profile.db_ops_seconds:
                    window_end = now
                    break
                status = "ASSIGNED" if (i // len(ids)) % 2 == 0 else "OPEN"
                work = partial(set_load_status, load_id=str(ids[i % len(ids)]), status=status, scope=MUTATION_ORG)
                i += 1
                if i == 3:  # a warm call (pooled connection) also counts its round trips to aiosqlite
                    with breakdown.counting_round_trips() as counted:
                        await write(work)
                    trips = counted["n"]
                    continue
                started = time.perf_counter_ns()
                await write(work)
                if window_start:
                    latencies.append((time.perf_counter_ns() - started) // 1000)
            busy_after = busy_seconds()
            foreign = None if busy_before is None or busy_after is None else foreign_share(time.monotonic() - wall, busy_after - busy_before, self_cpu() - own_before)
            variant = "with aggregate" if aggregate else "without aggregate"
            out.append(Cell(variant, "db layer", 1, latencies, window_end - window_start, i, foreign_cpu=foreign, round_trips=trips))
            log_cell(f"db layer {variant}", out[-1])
    finally:
        await db.dispose()
    return out


def assigned_among(path: Path, ids: list[int]) -> int:
    conn = sqlite3.connect(path)
    try:
        total = 0
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            total += conn.execute(f"SELECT count(*) FROM loads WHERE status = 'ASSIGNED' AND id IN ({marks})", chunk).fetchone()[0]
        return total
    finally:
        conn.close()


# --- the report ---------------------------------------------------------------------------------


def fields(data: dict[str, Any]) -> dict[str, Any]:
    profile = Profile(**{**data["profile"], "sizes": tuple(data["profile"]["sizes"])})
    reads, http, db = cells(data["reads"]), cells(data["http"]), cells(data["db"])
    labels = [human(size) for size in profile.sizes]
    small, large = labels[0], labels[-1]
    by_key = {(c.variant, c.label, c.concurrency): c for c in reads}

    def get(variant: str, label: str, clients: int) -> dict[str, float]:
        return by_key[(variant, label, clients)].stats

    def server_cpu(variant: str, label: str, clients: int) -> float:
        return by_key[(variant, label, clients)].server_cpu_us_per_request or math.nan

    by_size = {c.concurrency: dict(zip(labels, c.by_body_stats(), strict=True)) for c in cells(data["interleaved"])}
    t_small, t_large, n_large, u_small = get("tally", small, 1), get("tally", large, 1), get("naive", large, 1), get("uncached", small, 1)
    floor_small = get("floor", small, 1)
    i_small, i_large = by_size[1][small], by_size[1][large]
    flat = i_large["p50"] / i_small["p50"]
    speedup = n_large["p50"] / t_large["p50"]
    floor_ratios = {label: get("tally", label, 1)["p50"] / get("floor", label, 1)["p50"] for label in labels}
    worst_floor = max(floor_ratios, key=lambda label: floor_ratios[label])
    rates = {label: get("tally", label, 16)["rps"] for label in labels}
    slowest = min(rates, key=lambda label: rates[label])
    groups = {name: [c for c in http if c.variant == name] for name in ("with aggregate", "without aggregate", "Tally app (reference)")}
    http_with, http_without = pooled(groups["with aggregate"]), pooled(groups["without aggregate"])
    db_groups = {name: [c for c in db if c.variant == name] for name in ("with aggregate", "without aggregate")}
    db_with, db_without = pooled(db_groups["with aggregate"]), pooled(db_groups["without aggregate"])
    steps = {step["key"]: step for step in data["steps"]}
    trips = {name: group[0].round_trips for name, group in db_groups.items() if group}
    foreign = [(c, c.foreign_cpu) for c in [*reads, *http, *db] if c.foreign_cpu is not None]
    disturbed = [f"{c.variant} {c.label} c={c.concurrency} ({f:.0%})" for c, f in foreign if f >= 0.05]
    repeated = sum(1 for c in reads if c.attempts > 1)
    client = sorted(c.client_cpu_us_per_request for c in reads if c.client_cpu_us_per_request is not None)
    exact = data["exact"]
    seeded = data["seeded"]

    def read_rows(clients: int) -> list[list[str]]:
        rows = []
        for label in labels:
            base = get("floor", label, clients)
            for variant in READ_VARIANTS:
                s = get(variant, label, clients)
                vs = ["baseline"] * 3 if variant == "floor" else [x(s[k] / base[k]) for k in ("p50", "p99", "rps")]
                rows.append([label, VARIANT_NAMES[variant], ms(s["p50"]), ms(s["p99"]), rate(s["rps"]), *vs, cpu(server_cpu(variant, label, clients)), f"{s['n']:,.0f}"])
        return rows

    def mutation_rows() -> list[list[str]]:
        rows = []
        for name, group in groups.items():
            baseline = name == "without aggregate"
            for run_, s, server in [("all", pooled(group), None), *([(c.label, c.stats, c) for c in group] if len(group) > 1 else [])]:
                server_us = s["server_cpu"] if server is None else (server.server_cpu_us_per_request or math.nan)
                vs = ["baseline"] * 3 if baseline and server is None else [x(s["p50"] / http_without["p50"]), x(s["mean"] / http_without["mean"]), x(server_us / http_without["server_cpu"])]
                rows.append([f"**{name}**" if server is None and not baseline else name, run_, ms(s["p50"]), ms(s["p99"]), ms(s["mean"]), rate(s["rps"]), vs[0], vs[1], cpu(server_us), vs[2], f"{s['n']:,.0f}"])
        return rows

    read_header = ["org", "variant", "p50", "p99", "req/s", "p50 vs floor", "p99 vs floor", "req/s vs floor", "server CPU/req", "samples"]
    versus = [
        [label, str(clients), x(get("naive", label, clients)["p50"] / get("tally", label, clients)["p50"]), x(get("naive", label, clients)["p99"] / get("tally", label, clients)["p99"]), x(get("tally", label, clients)["rps"] / get("naive", label, clients)["rps"])]
        for label in labels
        for clients in (1, 16)
    ]
    by_org_size = [
        [variant, str(clients), f"{label} vs {small}", *(x(get(variant, label, clients)[k] / get(variant, small, clients)[k]) for k in ("p50", "p99", "rps"))]
        for variant in ("tally", "uncached", "naive", "floor")
        for clients in (1, 16)
        for label in labels[1:]
    ]
    interleaved_rows = [
        [str(clients), label, ms(st["p50"]), ms(st["p99"]), *(["baseline"] * 2 if label == small else [x(st["p50"] / by_size[clients][small]["p50"]), x(st["p99"] / by_size[clients][small]["p99"])]), f"{st['n']:,.0f}"]
        for clients in (1, 16)
        for label, st in by_size[clients].items()
    ]
    step_rows = [
        [s["name"], "" if math.isnan(s["us"]) else f"{s['us']:,.0f}" + ("" if s["key"].startswith("rate") else " µs"), "" if math.isnan(s["cpu_us"]) else f"{s['cpu_us']:,.0f} µs", "" if s["trips"] is None else str(s["trips"])]
        for s in sorted(data["steps"], key=lambda s: BREAKDOWN_ORDER.index(s["key"]) if s["key"] in BREAKDOWN_ORDER else 99)
    ]
    db_rows = [
        [name, ms(s["p50"]), ms(s["p99"]), ms(s["mean"]), rate(s["rps"]), *(["baseline"] * 2 if name == "without aggregate" else [x(s["p50"] / db_without["p50"]), x(s["mean"] / db_without["mean"])]), str(trips.get(name, "n/a")), f"{s['n']:,.0f}"]
        for name, s in (("with aggregate", db_with), ("without aggregate", db_without))
    ]
    plans = "\n".join(f"{p['what']}:\n\n```sql\n{p['sql']}\n```\n\n" + "\n".join(f"- `{line}`" for line in p["plan"]) + "\n" for p in data["plans"])
    quality = ""
    if foreign:
        quality = f"Other processes used {sum(f for _, f in foreign) / len(foreign):.1%} of the machine's CPU on average during the measurements (max {max(f for _, f in foreign):.1%})"
        if disturbed:
            quality += "; **these measurements shared the machine with other work (5% or more) and are less trustworthy: " + ", ".join(disturbed) + "**"
        if repeated:
            quality += f". {repeated} read measurement(s) were repeated for that reason (up to 3 attempts, the least disturbed one is reported)"
        quality += "."

    def step_cpu(key: str) -> float:
        return steps[key]["cpu_us"] if key in steps else math.nan

    return {
        "profile": profile.name,
        "quick_note": " **This is a quick smoke run: short windows and small orgs; do not compare its figures with the targets.**" if profile.name == "quick" else "",
        "quality": quality,
        "small": small,
        "large": large,
        "flat_measured": f"orgs interleaved in one run: p50 {ms(i_large['p50'])} ms vs {ms(i_small['p50'])} ms at 1 client: **{x(flat)}** (p99: {x(i_large['p99'] / i_small['p99'])}; at 16 clients p50: {x(by_size[16][large]['p50'] / by_size[16][small]['p50'])}). Measured separately, minutes apart: {x(t_large['p50'] / t_small['p50'])}",
        "flat_met": met(flat <= 1.2),
        "naive_measured": f"naive p50 {ms(n_large['p50'])} ms vs Tally {ms(t_large['p50'])} ms at 1 client: **{x(speedup)}** (16 clients, req/s: {x(get('tally', large, 16)['rps'] / get('naive', large, 16)['rps'])})",
        "naive_met": met(speedup >= 20),
        "floor_measured": "Tally p50 / floor p50: " + ", ".join(f"{label}: **{x(r)}**" for label, r in floor_ratios.items()) + f" (worst {worst_floor}: Tally {ms(get('tally', worst_floor, 1)['p50'])} ms, floor {ms(get('floor', worst_floor, 1)['p50'])} ms)",
        "floor_met": met(floor_ratios[worst_floor] <= 4),
        "rate_measured": "Tally req/s: " + ", ".join(f"{label}: **{rate(v)}** ({x(v / get('floor', label, 16)['rps'])} of the floor's)" for label, v in rates.items()),
        "rate_met": met(rates[slowest] >= 1000),
        "http_measured": f"p50 {ms(http_with['p50'])} ms vs {ms(http_without['p50'])} ms: **{x(http_with['p50'] / http_without['p50'])}** (mean {x(http_with['mean'] / http_without['mean'])}, p99 {x(http_with['p99'] / http_without['p99'])}, server CPU/request {x(http_with['server_cpu'] / http_without['server_cpu'])})",
        "http_met": met(http_with["p50"] / http_without["p50"] <= 1.3),
        "db_measured": f"p50 {ms(db_with['p50'])} ms vs {ms(db_without['p50'])} ms: **{x(db_with['p50'] / db_without['p50'])}** (mean {x(db_with['mean'] / db_without['mean'])}, p99 {x(db_with['p99'] / db_without['p99'])})",
        "db_met": met(db_with["p50"] / db_without["p50"] <= 1.3),
        "exactness": f"after the run, {MUTATION_ORG}'s aggregate row {'equals' if exact['ok'] else '**DIFFERS FROM**'} the recount (corrected for the {exact['bypassed']} loads the without-aggregate runs left ASSIGNED), and its version is {exact['version']} = 1 + {exact['changes']} committed changes" + ("" if exact["version"] == 1 + exact["changes"] else f" (**EXPECTED {1 + exact['changes']}**)"),
        "interleaved_p50s_1": ", ".join(f"{ms(st['p50'])} ms at {label}" for label, st in by_size[1].items()),
        "interleaved_p50s_16": ", ".join(f"{ms(st['p50'])} ms at {label}" for label, st in by_size[16].items()),
        "tally_small_p50": ms(t_small["p50"]),
        "tally_large_p50": ms(t_large["p50"]),
        "tally_drift": f"{abs(t_large['p50'] / t_small['p50'] - 1):.0%}",
        "floor_drift": f"{abs(get('floor', large, 1)['p50'] / floor_small['p50'] - 1):.0%}",
        "naive_small_p50": ms(get("naive", small, 1)["p50"]),
        "naive_large_p50": ms(n_large["p50"]),
        "naive_large_cpu": cpu(server_cpu("naive", large, 1)),
        "naive_speedup": x(speedup),
        "uncached_large_p50": ms(get("uncached", large, 1)["p50"]),
        "naive_vs_uncached_large": x(n_large["p50"] / get("uncached", large, 1)["p50"]),
        "naive_vs_uncached_small": x(get("naive", small, 1)["p50"] / u_small["p50"]),
        "floor_small_p50": ms(floor_small["p50"]),
        "floor_small_cpu": cpu(server_cpu("floor", small, 1)),
        "tally_small_cpu": cpu(server_cpu("tally", small, 1)),
        "jwt_cached_cpu": f"{step_cpu('jwt-cached'):,.1f}",
        "jwt_cpu": f"{step_cpu('jwt'):,.0f}",
        "read_cpu": f"{step_cpu('read'):,.0f}",
        "session_cpu": f"{step_cpu('read-session'):,.0f}",
        "session_trips": steps.get("read-session", {}).get("trips"),
        "app_cpu": f"{step_cpu('app'):,.0f}",
        "uncached_app_cpu": f"{step_cpu('app-uncached'):,.0f}",
        "uncached_small_p50": ms(u_small["p50"]),
        "uncached_vs_floor": x(u_small["p50"] / floor_small["p50"]),
        "slowest": slowest,
        "slowest_cpu": cpu(server_cpu("tally", slowest, 16)),
        "slowest_ceiling": f"{1e6 / server_cpu('tally', slowest, 16):,.0f}",
        "slowest_rate": rate(rates[slowest]),
        "slowest_floor_rate": rate(get("floor", slowest, 16)["rps"]),
        "slowest_floor_cpu": cpu(server_cpu("floor", slowest, 16)),
        "slowest_uncached_rate": rate(get("uncached", slowest, 16)["rps"]),
        "slowest_uncached_cpu": cpu(server_cpu("uncached", slowest, 16)),
        "trips_with": trips.get("with aggregate"),
        "trips_without": trips.get("without aggregate"),
        "db_with_p50": ms(db_with["p50"]),
        "db_without_p50": ms(db_without["p50"]),
        "db_ratio": x(db_with["p50"] / db_without["p50"]),
        "http_with_p50": ms(http_with["p50"]),
        "http_without_p50": ms(http_without["p50"]),
        "http_ratio": x(http_with["p50"] / http_without["p50"]),
        "http_with_cpu": cpu(http_with["server_cpu"]),
        "http_without_cpu": cpu(http_without["server_cpu"]),
        "reads_1": table(read_header, read_rows(1)),
        "reads_16": table(read_header, read_rows(16)),
        "versus_naive": table(["org", "clients", "naive p50 / Tally p50", "naive p99 / Tally p99", "Tally req/s / naive req/s"], versus),
        "by_org_size": table(["variant", "clients", "orgs", "p50 ratio", "p99 ratio", "req/s ratio"], by_org_size),
        "interleaved": table(["clients", "org", "p50", "p99", f"p50 vs {small}", f"p99 vs {small}", "samples"], interleaved_rows),
        "floor_large_p50": ms(get("floor", large, 1)["p50"]),
        "floor_large_cpu": cpu(server_cpu("floor", large, 1)),
        "tally_large_cpu": cpu(server_cpu("tally", large, 1)),
        "steps": table(["step", "median wall time (or rate)", "CPU per call", "calls into aiosqlite's thread"], step_rows),
        "plans": plans,
        "mutations": table(["variant", "run", "p50", "p99", "mean", "req/s", "p50 vs without", "mean vs without", "server CPU/req", "CPU vs without", "samples"], mutation_rows()),
        "db_layer": table(["variant", "p50", "p99", "mean", "changes/s", "p50 vs without", "mean vs without", "calls into aiosqlite's thread", "samples"], db_rows),
        "file_mb": f"{seeded['file_bytes'] / 1e6:.0f}",
        "seed_seconds": f"{seeded['seconds']:.1f}",
        "orgs": ", ".join(f"`{org}` {n:,} loads" for org, n in seeded["orgs"].items()),
        "client_cpu": f"a median {client[len(client) // 2]:,.0f} µs (from {client[0]:,.0f} to {client[-1]:,.0f} µs)" if client else "an unknown amount",
        "warmup": f"{profile.warmup:g}",
        "duration": f"{profile.duration:g}",
        "min_samples": profile.min_samples,
        "max_duration": f"{profile.max_duration:g}",
    }
