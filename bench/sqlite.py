"""Count queries and the status change's cost on SQLite (docs/benchmarks.md).

Seeds one SQLite file (one org per size, plus `org_mut` for the status changes); starts four
uvicorn processes (floor, Tally, Tally with its count cache off, naive) and checks that all
answer countLoadsByStatus with the bytes of a recount; measures it at 1 and 16 clients, the
variants interleaved per (size, clients), then Tally with the orgs interleaved in one run; a
status change with and without aggregate maintenance, over HTTP and at the db layer, in rounds
alternating which goes first; where a read spends its time (bench/breakdown.py); and checks
that the aggregate is exact.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import time
from functools import partial
from typing import Any

from bench import breakdown
from bench.common import RESULTS, app_servers, human, log, run_async, token
from bench.measure import (
    FULL,
    POOL,
    QUICK,
    VARIANTS,
    Cell,
    Pools,
    Profile,
    alternating,
    count_answer,
    count_body,
    db_writers,
    log_cell,
    measure,
    pooled,
    post,
    ratios,
    toggle_bodies,
)
from bench.seed import MUTATION_ORG, open_loads, org_name, recount, seed, stored

PROFILES = {"full": FULL, "quick": QUICK}
NAMES = {"floor": "floor", "tally": "**Tally**", "uncached": "Tally, count cache off", "naive": "naive"}
STEPS = ("sqlite3", "aiosqlite", "jwt", "jwt-cached", "read-session", "read", "app", "app-uncached", "rate1", "rate16")


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
    pools = Pools(open_loads(seeded.path, MUTATION_ORG, POOL * (4 * profile.mutation_rounds + 1)))
    reads, interleaved, http = [], [], []
    with app_servers(("floor", "floor_app", {"BENCH_FLOOR_BODIES": str(floor_bodies)}), *[(v, f"{v}_app", env) for v in list(NAMES)[1:]]) as up:
        servers = dict(zip(NAMES, up, strict=True))

        def target(variant: str, org: str) -> dict[str, Any]:
            return {"path": f"/floor/{org}", "token": None} if variant == "floor" else {"path": "/graphql", "token": tokens[org]}

        for org in orgs:
            for variant, server in servers.items():
                spot = target(variant, org)
                answer = post(f"{server}{spot['path']}", count_body(org), spot["token"])
                if answer != expected[org]:
                    raise RuntimeError(f"{variant} answers {answer} for {org}, expected {expected[org]}")
        log("countLoadsByStatus (variants interleaved per size and concurrency)")
        retry_until = time.monotonic() + profile.retry_until
        for org, size in zip(orgs, profile.sizes, strict=True):
            for clients in (1, 16):
                for variant, server in servers.items():
                    reads.append(measure(server, variant, human(size), bodies=[count_body(org)], expect=expected[org], concurrency=clients,
                                         profile=profile, retry_until=retry_until, **target(variant, org)))
        log("countLoadsByStatus on Tally with the orgs interleaved (one service token, bodies alternate)")
        for clients in (1, 16):
            interleaved.append(measure(servers["tally"], "tally, orgs interleaved", "all orgs", token=token(None, "service", 3600), split=True,
                                       bodies=[count_body(org) for org in orgs], expect=[expected[org] for org in orgs], concurrency=clients, profile=profile))
        log("status change over HTTP, one client (rounds alternate which variant goes first)")
        for i, (_, aggregate) in enumerate(alternating(profile.mutation_rounds)):
            http.append(measure(servers["naive"], VARIANTS[aggregate], f"round {i // 2 + 1}", token=tokens[MUTATION_ORG], concurrency=1,
                                bodies=toggle_bodies(aggregate, pools.take(aggregate=aggregate)), profile=profile))
        http.append(measure(servers["tally"], "Tally app (reference)", "reference", token=tokens[MUTATION_ORG], concurrency=1,
                            bodies=toggle_bodies(True, pools.take(aggregate=True)), profile=profile))

    log("status change at the db layer, in process (servers stopped)")
    plan = [(aggregate, pools.take(aggregate=aggregate)) for _, aggregate in alternating(profile.mutation_rounds)]
    db: list[Cell] = run_async(db_level(seeded.url, plan, profile))
    log("where a read spends its time (in process)")
    spent = breakdown.in_subprocess(str(seeded.path), seeded.url, orgs[-1], tokens[orgs[-1]], 100 if profile.name == "quick" else 600)

    # The recount, corrected for the loads the without-aggregate runs left ASSIGNED (they bypassed the counters).
    changes = sum(c.completed_ok for c in [*http, *db] if c.variant in ("with aggregate", "Tally app (reference)"))
    counts, version = stored(seeded.path, MUTATION_ORG)
    truth = recount(seeded.path, MUTATION_ORG)
    with sqlite3.connect(seeded.path) as conn:
        ids = pools.without_aggregate
        bypassed = sum(conn.execute(f"SELECT count(*) FROM loads WHERE status = 'ASSIGNED' AND id IN ({', '.join('?' * len(ids[i:i + 500]))})", ids[i : i + 500]).fetchone()[0] for i in range(0, len(ids), 500))
    truth["loads_open"] += bypassed
    truth["loads_assigned"] -= bypassed
    exact = {"ok": counts == truth and version == 1 + changes, "bypassed": bypassed, "version": version, "changes": changes}
    figures = report(profile, reads, interleaved, http, db, spent)
    seeded_facts = {"orgs": seeded.orgs, "seconds": seeded.seconds, "mb": seeded.file_bytes / 1e6}
    return {**figures, "ok": exact["ok"], "exact": exact, "seeded": seeded_facts, "cells": [c.json() for c in [*reads, *interleaved, *http, *db]]}


async def db_level(url: str, plan: list[tuple[bool, list[int]]], profile: Profile) -> list[Cell]:
    """Database.write(set_load_status), or the same without the aggregate, back to back in this process."""
    from bench.servers import write_without_aggregate
    from db.unit_of_work import Database

    db = Database(url)  # no after-commit hooks: the aggregate alone, no publishing
    out = []
    try:
        for aggregate, ids in plan:
            write = db.write if aggregate else partial(write_without_aggregate, db)
            out.append(await db_writers(write, ids, {}, MUTATION_ORG, 1, profile, count_trips=True))
            out[-1].variant, out[-1].label = VARIANTS[aggregate], "db layer"
            log_cell(f"db layer {out[-1].variant}", out[-1])
    finally:
        await db.dispose()
    return out


def report(profile: Profile, reads: list[Cell], interleaved: list[Cell], http: list[Cell], db: list[Cell], spent: dict[str, Any]) -> dict[str, Any]:
    labels = [human(size) for size in profile.sizes]
    small, large = labels[0], labels[-1]
    cell = {(c.variant, c.label, c.concurrency): c for c in reads}

    def s(variant: str, label: str, clients: int) -> dict[str, float]:
        c = cell[(variant, label, clients)]
        return {**c.stats, "cpu": c.server_cpu, "org": label, "name": NAMES[variant], "variant": variant, "clients": clients}

    by_size = {c.concurrency: dict(zip(labels, c.split(), strict=True)) for c in interleaved}
    groups = {name: [c for c in http if c.variant == name] for name in ("with aggregate", "without aggregate", "Tally app (reference)")}
    hw, hwo = pooled(groups["with aggregate"]), pooled(groups["without aggregate"])
    dw, dwo = (pooled([c for c in db if c.variant == name]) for name in VARIANTS.values())
    trips = {c.variant: c.round_trips for c in db}
    mutations = []
    for name, group in groups.items():
        baseline = name == "without aggregate"
        runs = [("all", pooled(group))] + ([(c.label, {**c.stats, "server_cpu": c.server_cpu}) for c in group] if len(group) > 1 else [])
        for run_, st in runs:
            vs = {} if baseline and run_ == "all" else {f"vs_{k}": v for k, v in ratios(st, hwo).items()}
            mutations.append({**st, "name": f"**{name}**" if run_ == "all" and not baseline else name, "run": run_, "vs_p50": None, "vs_mean": None, "vs_server_cpu": None, **vs})
    floor = {label: s("tally", label, 1)["p50"] / s("floor", label, 1)["p50"] for label in labels}
    worst = max(floor, key=floor.__getitem__)
    rates = {label: s("tally", label, 16)["rps"] for label in labels}
    slowest = min(rates, key=rates.__getitem__)
    foreign = [c.foreign for c in [*reads, *http, *db] if c.foreign is not None]
    client = [c.client_cpu for c in reads if c.client_cpu is not None]
    steps = {step["key"]: step for step in spent["steps"]}
    flat = by_size[1][large]["p50"] / by_size[1][small]["p50"]
    speedup = s("naive", large, 1)["p50"] / s("tally", large, 1)["p50"]
    return {
        "profile": profile.__dict__,
        "small": small,
        "large": large,
        "reads": {str(n): [{**s(v, label, n), **{f"vs_{k}": None if v == "floor" else s(v, label, n)[k] / s("floor", label, n)[k] for k in ("p50", "p99", "rps")}}
                           for label in labels for v in NAMES] for n in (1, 16)},
        "versus": [{"org": label, "clients": n, **ratios(s("naive", label, n), s("tally", label, n), ("p50", "p99")), "rps": s("tally", label, n)["rps"] / s("naive", label, n)["rps"]}
                   for label in labels for n in (1, 16)],
        "by_org_size": [{"variant": v, "clients": n, "org": label, **ratios(s(v, label, n), s(v, small, n), ("p50", "p99", "rps"))}
                        for v in ("tally", "uncached", "naive", "floor") for n in (1, 16) for label in labels[1:]],
        "interleaved": [{**st, "clients": n, "org": label, "vs_p50": None if label == small else st["p50"] / by_size[n][small]["p50"], "vs_p99": None if label == small else st["p99"] / by_size[n][small]["p99"]}
                        for n in (1, 16) for label, st in by_size[n].items()],
        "steps": sorted(({**st, "unit": "" if st["key"].startswith("rate") else " µs"} for st in spent["steps"]), key=lambda st: STEPS.index(st["key"])),
        "step": {key: steps.get(key, {"cpu_us": float("nan"), "trips": None}) for key in STEPS},
        "plans": spent["plans"],
        "mutations": mutations,
        "db_layer": [{**st, "name": name, "trips": trips.get(name), **({"vs_p50": None, "vs_mean": None} if name == "without aggregate" else {f"vs_{k}": v for k, v in ratios(st, dwo).items()})}
                     for name, st in (("with aggregate", dw), ("without aggregate", dwo))],
        "t": {
            "flat": {"ratio": flat, "p99": by_size[1][large]["p99"] / by_size[1][small]["p99"], "c16": by_size[16][large]["p50"] / by_size[16][small]["p50"],
                     "small": by_size[1][small], "large": by_size[1][large], "separate": s("tally", large, 1)["p50"] / s("tally", small, 1)["p50"], "met": flat <= 1.2},
            "naive": {"ratio": speedup, "rps16": s("tally", large, 16)["rps"] / s("naive", large, 16)["rps"], "met": speedup >= 20},
            "floor": {"worst": worst, "ratio": floor[worst], "tally": s("tally", worst, 1), "floor": s("floor", worst, 1), "met": floor[worst] <= 4},
            "rate": {"slowest": slowest, "tally": s("tally", slowest, 16), "floor": s("floor", slowest, 16), "uncached": s("uncached", slowest, 16),
                     "ceiling": 1e6 / s("tally", slowest, 16)["cpu"], "vs_floor": rates[slowest] / s("floor", slowest, 16)["rps"], "met": rates[slowest] >= 1000},
            "http": {"with": hw, "without": hwo, **ratios(hw, hwo), "met": hw["p50"] / hwo["p50"] <= 1.3},
            "db": {"with": dw, "without": dwo, **ratios(dw, dwo), "trips_with": trips.get("with aggregate"), "trips_without": trips.get("without aggregate"), "met": dw["p50"] / dwo["p50"] <= 1.3},
        },
        "at": {v: {"small": s(v, small, 1), "large": s(v, large, 1)} for v in NAMES},
        "drift": {v: abs(s(v, large, 1)["p50"] / s(v, small, 1)["p50"] - 1) for v in ("tally", "floor")},
        "foreign": {"mean": statistics.fmean(foreign) if foreign else None, "max": max(foreign, default=None),
                    "disturbed": [f"{c.variant} {c.label} c={c.concurrency} ({c.foreign:.0%})" for c in [*reads, *http, *db] if (c.foreign or 0) >= 0.05],
                    "repeated": sum(1 for c in reads if c.attempts > 1)},
        "client_cpu": {"median": sorted(client)[len(client) // 2], "min": min(client), "max": max(client)},
    }
