"""Count queries and the status change's cost on SQLite (docs/benchmarks.md): one SQLite file, four
servers (bench/servers.py: floor, Tally, Tally with its count cache off, naive), the status changes of
`org_mut` with and without aggregate maintenance, and where a read spends its time (bench/breakdown.py).
"""

from __future__ import annotations

import json
from typing import Any

from bench import breakdown
from bench.common import RESULTS, app_servers, log, run_async, token
from bench.measure import (
    FULL,
    POOL,
    QUICK,
    VARIANTS,
    WARM_POOL,
    Cell,
    Pools,
    Profile,
    Stream,
    against,
    alternating,
    count_answer,
    count_body,
    count_figures,
    count_reads,
    db_layer,
    disturbance,
    measure,
    pooled,
    sides,
    spread,
    toggles,
)
from bench.seed import MUTATION_ORG, audit, open_loads, org_name, seed

PROFILES = {"full": FULL, "quick": QUICK}
NAMES = {"floor": "floor", "tally": "**Tally**", "uncached": "Tally, count cache off", "naive": "naive"}
REFERENCE = "Tally app (reference)"


def run(profile: Profile) -> dict[str, Any]:
    seeded = seed(RESULTS / f"bench-{profile.name}.db", dict.fromkeys(profile.sizes, 1))
    log(f"seeded {sum(seeded.orgs.values()):,} loads in {seeded.seconds:.1f} s ({seeded.file_bytes / 1e6:.0f} MB)")
    orgs = [org_name(size) for size in profile.sizes]
    tokens = {org: token(org) for org in [*orgs, MUTATION_ORG]}
    expected = {check["org"]: count_answer(check["actual"]) for check in run_async(audit(seeded.url, orgs, []))}
    floor_bodies = RESULTS / f"floor-{profile.name}.json"
    floor_bodies.write_text(json.dumps({f"/floor/{org}": expected[org] for org in orgs}))
    env = {"BENCH_DATABASE_URL": seeded.url, "BENCH_FLOOR_BODIES": str(floor_bodies)}
    pools = Pools(
        run_async(
            open_loads(
                seeded.url,
                MUTATION_ORG,
                POOL * (4 * profile.mutation_rounds + 1) + WARM_POOL * (2 * profile.mutation_rounds + 1),
            )
        )
    )

    def changes(server: str, variant: str, label: str, aggregate: bool) -> Cell:
        window, warm = (toggles(spread([server], 1), aggregate, pools.take(aggregate, n)) for n in (POOL, WARM_POOL))
        return measure(window, variant, label, profile, 1, tokens[MUTATION_ORG], warmup=warm)

    with app_servers(*((variant, f"{variant}_app", env) for variant in NAMES)) as up:
        servers = dict(zip(NAMES, up, strict=True))
        reads = count_reads(servers, tokens, expected, profile)
        log("countLoadsByStatus on Tally, the orgs side by side (one service token, one wrk process per org)")
        tally, service, interleaved = servers["tally"], token(None, "service"), []
        for n in (1, 16):
            each = max(1, n // len(orgs))
            streams = [Stream(tally, each, [count_body(org)], expected[org], k) for k, org in enumerate(orgs)]
            interleaved.append(measure(streams, "tally, orgs interleaved", "all orgs", profile, n, service))
        log("status change over HTTP, one client (rounds alternate which variant goes first)")
        http = [
            changes(servers["naive"], VARIANTS[aggregate], f"round {i // 2 + 1}", aggregate)
            for i, (_, aggregate) in enumerate(alternating(profile.mutation_rounds))
        ]
        http.append(changes(servers["tally"], REFERENCE, "reference", True))

    log("status change at the db layer, in process (servers stopped)")
    db = run_async(
        db_layer(seeded.url, "db layer", profile, (1,), lambda aggregate, _: pools.take(aggregate), {}, MUTATION_ORG)
    )
    log("where a read spends its time (in process)")
    calls = 100 if profile.name == "quick" else 600
    spent = breakdown.in_subprocess(str(seeded.path), seeded.url, orgs[-1], tokens[orgs[-1]], calls)
    changed = [c for c in [*http, *db] if c.variant in (VARIANTS[True], REFERENCE)]
    answered, sent = sum(c.answered for c in changed), sum(c.sent or c.answered for c in changed)
    (exact,) = run_async(audit(seeded.url, [MUTATION_ORG], pools.without_aggregate, MUTATION_ORG))
    ok = exact["ok"] and answered <= exact["version"] - 1 <= sent
    exact.update(changes=answered, abandoned=sent - answered, ok=ok)
    return {
        **report(reads, interleaved, http, db),
        **spent,
        "profile": profile.__dict__,
        "ok": exact["ok"],
        "exact": exact,
        "seeded": {"orgs": seeded.orgs, "seconds": seeded.seconds, "mb": seeded.file_bytes / 1e6},
        "cells": [c.json() for c in [*reads, *interleaved, *http, *db]],
    }


def report(reads: list[Cell], interleaved: list[Cell], http: list[Cell], db: list[Cell]) -> dict[str, Any]:
    rows, figures = count_figures(reads, NAMES)
    labels = list(dict.fromkeys(c.label for c in reads))
    small, large = labels[0], labels[-1]
    by_size = {c.concurrency: dict(zip(labels, c.split(), strict=True)) for c in interleaved}
    worst = max(labels, key=lambda label: rows["tally", label, 1]["p50"] / rows["floor", label, 1]["p50"])
    without = pooled([c for c in http if c.variant == VARIANTS[False]])
    mutations = []
    for name in (*VARIANTS.values(), REFERENCE):
        group, base = [c for c in http if c.variant == name], None if name == VARIANTS[False] else without
        mutations.append({**pooled(group), "name": name if base is None else f"**{name}**", "run": "all", "base": base})
        if len(group) > 1:
            mutations += [{**c.row(), "name": name, "run": c.label, "base": without} for c in group]
    client = sorted(c.client_cpu for c in reads if c.client_cpu is not None)
    return {
        **figures,
        "reads": {str(n): [row for row in against(rows, "floor") if row["clients"] == n] for n in (1, 16)},
        "versus": [
            {"org": label, "clients": n, "naive": rows["naive", label, n], "tally": rows["tally", label, n]}
            for label in labels
            for n in (1, 16)
        ],
        "by_org_size": [
            {"variant": v, "clients": n, "org": label, "at": rows[v, label, n], "small": rows[v, small, n]}
            for v in ("tally", "uncached", "naive", "floor")
            for n in (1, 16)
            for label in labels[1:]
        ],
        "interleaved": [
            {**stats, "clients": n, "org": label, "small": None if label == small else by_size[n][small]}
            for n in (1, 16)
            for label, stats in by_size[n].items()
        ],
        "by_size": {str(n): {"small": by_size[n][small], "large": by_size[n][large]} for n in (1, 16)},
        "mutations": mutations,
        "http": sides(http),
        "db": sides(db),
        "worst": {"org": worst, "tally": rows["tally", worst, 1], "floor": rows["floor", worst, 1]},
        "foreign": disturbance([*reads, *http, *db]),
        "client_cpu": {"median": client[len(client) // 2], "min": client[0], "max": client[-1]},
    }
