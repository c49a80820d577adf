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

    def s(variant: str, label: str, clients: int) -> dict[str, Any]:
        c = cell[(variant, label, clients)]
        return {**c.stats, "cpu": c.server_cpu, "org": label, "name": NAMES[variant], "variant": variant, "clients": clients}

    by_size = {c.concurrency: dict(zip(labels, c.split(), strict=True)) for c in interleaved}
    groups = {name: [c for c in http if c.variant == name] for name in ("with aggregate", "without aggregate", "Tally app (reference)")}
    hw, hwo = pooled(groups["with aggregate"]), pooled(groups["without aggregate"])
    dw, dwo = (pooled([c for c in db if c.variant == name]) for name in VARIANTS.values())
    trips = {c.variant: c.round_trips for c in db}
    mutations = [{**st, "name": f"**{name}**" if run_ == "all" and name != "without aggregate" else name, "run": run_, "base": None if st is hwo else hwo}
                 for name, group in groups.items()
                 for run_, st in [("all", hwo if name == "without aggregate" else pooled(group))] + ([(c.label, {**c.stats, "server_cpu": c.server_cpu}) for c in group] if len(group) > 1 else [])]
    worst = max(labels, key=lambda label: s("tally", label, 1)["p50"] / s("floor", label, 1)["p50"])
    slowest = min(labels, key=lambda label: s("tally", label, 16)["rps"])
    foreign = [c.foreign for c in [*reads, *http, *db] if c.foreign is not None]
    client = sorted(c.client_cpu for c in reads if c.client_cpu is not None)
    steps = {step["key"]: step for step in spent["steps"]}
    return {
        "profile": profile.__dict__, "small": small, "large": large,
        "reads": {str(n): [{**s(v, label, n), "floor": None if v == "floor" else s("floor", label, n)} for label in labels for v in NAMES] for n in (1, 16)},
        "versus": [{"org": label, "clients": n, "naive": s("naive", label, n), "tally": s("tally", label, n)} for label in labels for n in (1, 16)],
        "by_org_size": [{"variant": v, "clients": n, "org": label, "at": s(v, label, n), "small": s(v, small, n)}
                        for v in ("tally", "uncached", "naive", "floor") for n in (1, 16) for label in labels[1:]],
        "interleaved": [{**st, "clients": n, "org": label, "small": None if label == small else by_size[n][small]} for n in (1, 16) for label, st in by_size[n].items()],
        "by_size": {str(n): {"small": by_size[n][small], "large": by_size[n][large]} for n in (1, 16)},
        "steps": sorted(({**st, "unit": "" if st["key"].startswith("rate") else " µs"} for st in spent["steps"]), key=lambda st: STEPS.index(st["key"])),
        "step": {key: steps.get(key, {"cpu_us": float("nan"), "trips": None}) for key in STEPS},
        "plans": spent["plans"],
        "mutations": mutations,
        "db_layer": [{**dw, "name": "with aggregate", "trips": trips.get("with aggregate"), "base": dwo}, {**dwo, "name": "without aggregate", "trips": trips.get("without aggregate"), "base": None}],
        "http": {"with": hw, "without": hwo}, "db": {"with": dw, "without": dwo},
        "worst": {"org": worst, "tally": s("tally", worst, 1), "floor": s("floor", worst, 1)},
        "slowest": {"org": slowest, **{v: s(v, slowest, 16) for v in NAMES}},
        "at": {v: {"small": s(v, small, 1), "large": s(v, large, 1), "large16": s(v, large, 16)} for v in NAMES},
        "foreign": {"mean": statistics.fmean(foreign) if foreign else None, "max": max(foreign, default=None),
                    "disturbed": [f"{c.variant} {c.label} c={c.concurrency} ({c.foreign:.0%})" for c in [*reads, *http, *db] if (c.foreign or 0) >= 0.05],
                    "repeated": sum(1 for c in reads if c.attempts > 1)},
        "client_cpu": {"median": client[len(client) // 2], "min": client[0], "max": client[-1]},
    }
