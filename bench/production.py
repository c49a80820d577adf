"""Speed where production runs (docs/benchmarks-production.md): count queries on PostgreSQL against a bare
floor, writes on both databases against raw-driver floors (bench/floors.py); needs PostgreSQL (--server) and wrk."""

from __future__ import annotations

import hashlib
import json
import statistics
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Profile, Stream, app_servers, closed_loop, database, first_ids, post, process_cpu, run_async
from bench.postgres import environment, scratch_database, service_cpu, sql
from db.migrate import upgrade_async
from db.models import Invoice
from tests.server import ServerUrl

PROFILES = {"full": replace(common.FULL, duration=5.0, warmup=1.0), "quick": common.QUICK}
C = {"org": "org_speed", "floor_org": "org_floor", "seeded": 1_000, "repeats": 3, "read_clients": (1, 32, 100),
     "write_clients": 8, "batch": 1_000, "imports": 5, "pool": 500}  # fmt: skip
ORG, FLOOR_ORG = C["org"], C["floor_org"]
STATS = (
    "query Stats($org: ID!) { organizationStats(orgId: $org) { version loads { open assigned completed canceled } "
    "invoices { missingData draft billed pendingPayment paid void } } }"
)
CREATE = "mutation Create($org: ID!) { createLoad(input: {orgId: $org}) { id status } }"
SET_INVOICE = (
    "mutation SetInvoice($id: ID!, $status: InvoiceStatus!) "
    "{ updateInvoiceStatus(id: $id, status: $status) { id status } }"
)
IMPORT = "mutation Import($org: ID!, $s: [ShipmentInput!]!) { importShipments(orgId: $org, shipments: $s) { outcome } }"
TO_DRAFT = "mutation($ids: [ID!]!) { bulkUpdateInvoiceStatus(ids: $ids, status: DRAFT) { updated } }"
OVERHEAD_POOLS = (250, 50)  # loads toggled per run of the aggregate's overhead, and per its warm-up
SESSIONS = "SELECT sessions FROM pg_stat_database WHERE datname = $1"  # asked from another database


def body(query: str, **variables: Any) -> str:
    return json.dumps({"query": query, "variables": variables})


def run(profile: Profile, server: str) -> dict[str, Any]:
    with scratch_database(server, "tally_bench_speed") as (dsn, url), tempfile.TemporaryDirectory() as tmp:
        sqlite_url = f"sqlite+aiosqlite:///{Path(tmp) / 'speed.db'}"
        for each in (url, sqlite_url):
            run_async(prepare(each))
        run_async(sql(dsn, "VACUUM ANALYZE"))  # no autovacuum of the new tables during the measurements
        reads = count_queries(url, dsn, profile)
        writes = [write_paths(label, each, profile) for label, each in (("SQLite", sqlite_url), ("PostgreSQL", url))]
    return {"c": C, "profile": profile.__dict__, "reads": reads, "writes": writes, "machine": environment(server)}


async def prepare(url: str) -> None:
    """A migrated database with both orgs; Tally's holding C["seeded"] OPEN loads made through the app."""
    from db.loads import create_load
    from db.organizations import create_organization
    from db.row_writes import in_session

    async def hundred_loads(session: Any) -> None:
        for _ in range(100):
            await in_session(session, create_load(ORG, status="OPEN", load_type="UNMAPPED"))

    await upgrade_async(url)
    async with database(url) as db:
        for org in (ORG, FLOOR_ORG):
            await db.write(lambda s, org=org: create_organization(s, org, org))
        for _ in range(C["seeded"] // 100):
            await db.write(hundred_loads)


def count_queries(url: str, dsn: str, profile: Profile) -> dict[str, Any]:
    """organizationStats through the floor, Tally, and Tally without its count cache. The runs at one
    client go in rounds, one of each server per round, then the steady runs at C["read_clients"][1] the
    same way, so that the machine's drift (the floor's own repeats moved by up to 29 % in earlier runs,
    its p50 at one client from 82 to 129 µs) reaches every server alike, and a server's steady repeats
    are one round apart (~20 s), with no 1-client run between them; each figure is the median of the
    rounds'."""
    member = common.token(ORG, "member")
    with tempfile.NamedTemporaryFile("w", suffix=".json") as bodies:
        with app_servers(("speed-tally", "tally_app", {"BENCH_DATABASE_URL": url})) as (tally,):
            answer = post(tally + "/graphql", body(STATS, org=ORG), member)
        json.dump({"/graphql": answer}, bodies)
        bodies.flush()
        servers = [("floor", "floor_app", {"BENCH_FLOOR_BODIES": bodies.name}),
                   ("tally", "tally_app", {"BENCH_DATABASE_URL": url}),
                   ("uncached", "uncached_app", {"BENCH_DATABASE_URL": url})]  # fmt: skip
        with app_servers(*((f"speed-{v}", f, env) for v, f, env in servers)) as up:
            reads = {v: Reads(v, server, body(STATS, org=ORG), answer, member, dsn, profile)
                     for (v, _, _), server in zip(servers, up, strict=True)}  # fmt: skip
            for each in reads.values():
                each.warm()
            for _ in range(C["repeats"]):
                for each in reads.values():
                    each.one_client()
            probes = []
            for _ in range(C["repeats"]):
                probes.append(cpu_probe())
                for each in reads.values():
                    each.steady()
            for each in reads.values():
                each.most()
    figures: dict[str, Any] = {variant: each.figures() for variant, each in reads.items()}
    for variant in ("tally", "uncached"):  # each repeat against the floor's run of the same round, seconds apart
        relative = [rate / floor for rate, floor in zip(reads[variant].rates, reads["floor"].rates, strict=True)]
        figures[variant]["c32"]["against_floor"] = spread(relative)
    figures["probe"] = {"ms": [f"{p * 1e3:.0f}" for p in probes], "spread": spread(probes)}
    return figures


def cpu_probe() -> float:
    """CPU seconds of a fixed piece of Python work (hashing, a dict), in this process with the servers idle:
    the same instructions every time, so what moves between repeats is the machine's speed."""
    started, digest, tally = time.process_time(), b"", dict.fromkeys(range(1000), 0)
    for i in range(100_000):
        digest = hashlib.sha256(digest).digest()
        tally[i % 1000] += i
    return time.process_time() - started


class Reads:
    """One server's count-query runs: one client, the steady repeats, the most clients."""

    def __init__(
        self, variant: str, server: ServerUrl, request: str, answer: str, bearer: str, dsn: str, profile: Profile
    ) -> None:
        self.variant, self.server, self.request, self.answer, self.bearer = variant, server, request, answer, bearer
        self.dsn, self.profile = dsn, profile
        self.c1s: list[dict[str, Any]] = []
        self.c100: dict[str, Any] = {}
        self.runs: list[dict[str, Any]] = []
        self.sessions = {"c32": 0, "c100": 0}

    def at(self, clients: int) -> dict[str, Any]:
        stream = Stream(self.server, clients, [self.request], self.answer)
        return closed_loop([stream], self.variant, "organizationStats", self.profile, clients, self.bearer).row()

    def warm(self) -> None:
        """A run at one client, then one at the steady runs' clients: a server's first run at 32 clients
        (its connections, its buffers) is not one of the repeats whose spread is measured."""
        self.at(C["read_clients"][0])
        self.at(C["read_clients"][1])

    def one_client(self) -> None:
        self.c1s.append(self.at(C["read_clients"][0]))

    def steady(self) -> None:
        self.runs.append(self.counting_sessions("c32", C["read_clients"][1]))

    def most(self) -> None:
        self.c100 = self.counting_sessions("c100", C["read_clients"][2])

    def counting_sessions(self, key: str, clients: int) -> dict[str, Any]:
        """A run at `clients`; the PostgreSQL sessions opened meanwhile are added to `sessions[key]`."""
        before = sessions_now(self.dsn)
        row = self.at(clients)
        self.sessions[key] += sessions_now(self.dsn) - before
        return row

    @property
    def rates(self) -> list[float]:
        return [row["rps"] for row in self.runs]

    def figures(self) -> dict[str, Any]:
        median = statistics.median(self.rates)
        p50s = [row["p50"] for row in self.c1s]
        return {
            "c1": {
                **min(self.c1s, key=lambda row: abs(row["p50"] - statistics.median(p50s))),
                "p50s": [f"{p50 / 1000:.3f}" for p50 in p50s],
            },
            "c32": {
                **min(self.runs, key=lambda row: abs(row["rps"] - median)),
                "spread": spread(self.rates),
                "rates": [f"{rate:,.0f}" for rate in self.rates],
                # CPU per request, and the share of a core the server used (req/s x CPU per request): the same
                # share at every repeat means a CPU-bound server whose speed moved with the machine's.
                "cpus": [f"{row['server_cpu']:.0f}" for row in self.runs],
                "busy": [f"{row['rps'] * row['server_cpu'] / 1e6:.0%}" for row in self.runs],
            },
            "c100": self.c100,
            "sessions": self.sessions,
        }


def spread(values: list[float]) -> float:
    """(max - min) / median."""
    return (max(values) - min(values)) / statistics.median(values)


def sessions_now(dsn: str) -> int:
    """Sessions ever opened to the benchmark's database (read over a connection to another one)."""
    time.sleep(0.5)  # pg_stat_database catches up with the backends' reports
    server, name = dsn.rsplit("/", 1)
    return int(run_async(sql(f"{server}/postgres", SESSIONS, name))[0][0])


def write_paths(label: str, url: str, profile: Profile) -> dict[str, Any]:
    """createLoad (floor and Tally), importShipments (both), then status changes on Tally's new rows, and a
    load's status change with and without the aggregate (`naive_app`, one client, rounds alternating which
    goes first)."""
    common.log(f"writes on {label}")
    member, clients, env = common.token(ORG, "member"), C["write_clients"], {"BENCH_DATABASE_URL": url}
    servers = [(f"{label}-write-floor", "write_floor_app", env), (f"{label}-writes", "tally_app", env),
               (f"{label}-without", "naive_app", env)]  # fmt: skip
    with app_servers(*servers) as (floor, tally, naive):

        def run_at(streams: list[Stream], variant: str, what: str, bearer: str | None, **warm: Any) -> dict[str, Any]:
            return closed_loop(streams, variant, what, profile, clients, bearer, **warm).row()

        floor_create = Stream(floor, clients, [json.dumps({"orgId": FLOOR_ORG})], path="/createLoad")
        create = {
            "floor": run_at([floor_create], "floor", "createLoad", None),
            "tally": run_at([Stream(tally, clients, [body(CREATE, org=ORG)])], "tally", "createLoad", member),
        }
        imports = {
            "floor": import_rate(floor, "/importShipments", FLOOR_ORG, None, profile),
            "tally": import_rate(tally, "/graphql", ORG, member, profile),
        }
        # More OPEN loads than `prepare` seeded: the rest are those createLoad and the imports just made.
        overhead_needed = 2 * profile.mutation_rounds * sum(OVERHEAD_POOLS)
        ids = run_async(first_ids(url, ORG, C["pool"] + 100 + overhead_needed))
        pools, overhead_pools = common.Pools(ids[: C["pool"] + 100]), common.Pools(ids[C["pool"] + 100 :])
        warm_loads = common.toggles([(tally, clients)], True, pools.take(True, 100))
        loads = run_at(common.toggles([(tally, clients)], True, pools.take(True, C["pool"])), "tally", "updateLoadStatus",
                       member, warmup=warm_loads)  # fmt: skip
        invoices = invoice_streams(tally, url, member)
        update_invoice = run_at(invoices[1], "tally", "updateInvoiceStatus", member, warmup=invoices[0])
        # The aggregate's own cost: a load's status change with and without it, one client, no subscriber.
        changes = common.status_changes([naive], (1,), overhead_pools, profile, member, "aggregate", OVERHEAD_POOLS)
    checks = run_async(common.audit(url, [ORG, FLOOR_ORG], overhead_pools.without_aggregate, ORG))
    return {"db": label, "create": create, "imports": imports, "update_load": loads,
            "update_invoice": update_invoice, "overhead": common.pairs(changes)[0], "checks": checks}  # fmt: skip


def import_rate(server: ServerUrl, path: str, org: str, bearer: str | None, profile: Profile) -> dict[str, Any]:
    """Calls of C["batch"] new shipments each, one after another: shipments per second and CPU per shipment."""
    calls, pid = C["imports"] if profile.name == "full" else 1, server.process.pid if server.process else 0

    def call(k: int) -> None:
        shipments = [{"shipmentId": f"{org}-{uuid.uuid4().hex}", "loadNumber": f"L{k}-{i}"} for i in range(C["batch"])]
        payload = body(IMPORT, org=org, s=shipments) if bearer else json.dumps({"orgId": org, "shipments": shipments})
        post(server + path, payload, bearer, timeout=300)

    call(-1)  # warm-up
    cpu, also, started = process_cpu(pid), service_cpu(), time.perf_counter()
    for k in range(calls):
        call(k)
    seconds, shipments = time.perf_counter() - started, calls * C["batch"]
    return {"rate": shipments / seconds, "server_cpu": (process_cpu(pid) - cpu) * 1e6 / shipments,
            "db_cpu": (service_cpu() - also) * 1e6 / shipments, "calls": calls}  # fmt: skip


def invoice_streams(tally: ServerUrl, url: str, bearer: str) -> tuple[list[Stream], list[Stream]]:
    """(warm-up, window) streams of updateInvoiceStatus DRAFT -> BILLED, then each back, on invoices the
    imports created (MISSING_DATA, moved to DRAFT first)."""
    ids = run_async(first_ids(url, ORG, C["pool"] + 100, Invoice, "MISSING_DATA"))
    for k in range(0, len(ids), 500):
        post(tally + "/graphql", body(TO_DRAFT, ids=[str(i) for i in ids[k : k + 500]]), bearer)

    def streams(share: list[int]) -> list[Stream]:
        bodies = [body(SET_INVOICE, id=str(i), status=s) for s in ("BILLED", "DRAFT") for i in share]
        return [Stream(tally, C["write_clients"], bodies)]

    return streams(ids[:100]), streams(ids[100:])
