"""Prometheus metrics of one process, served at /metrics.

Every process exposes the same names with no label of its own (Prometheus adds
`instance` and `job`), so a deployment's figures are sums over its processes:
`sum(rate(tally_graphql_requests_total[5m])) by (field, outcome)`.

GraphQL operations are counted as they run (OperationOutcomes). Everything else
is read at scrape time from the counters the process keeps anyway (StatsHub,
the count cache, Database, recalculation runs), so serving adds no work. A
count query answered by the count cache runs no GraphQL: it is counted in
`tally_count_cache_hits_total` only; its misses run GraphQL and are counted as
requests too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.requests import Request
from starlette.responses import Response

from db.broadcast import StatsHub
from db.run_counts import run_counts
from db.unit_of_work import Database
from edge.count_cache import CountCache


class Metrics:
    """One app's registry: tests serve several apps from one process, so not the global one."""

    def __init__(self, db: Database, hub: StatsHub) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tally_graphql_requests",
            "GraphQL operations by type, root field and outcome (ok, or the first error's code)",
            ["type", "field", "outcome"],
            registry=self.registry,
        )
        self._counters: dict[tuple[str, str, str], Any] = {}
        self.state = ProcessState(db, hub)
        self.registry.register(self.state)

    def count_operation(self, operation_type: str, field: str, outcome: str) -> None:
        labels = (operation_type, field, outcome)
        counter = self._counters.get(labels)
        if counter is None:  # prometheus_client's labels() checks and locks on every call: once per label set
            counter = self._counters[labels] = self.requests.labels(*labels)
        counter.inc()

    def watch_count_cache(self, cache: CountCache | None) -> None:
        self.state.count_cache = cache

    async def endpoint(self, _request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class ProcessState:
    """The process's own counters, read when scraped."""

    def __init__(self, db: Database, hub: StatsHub) -> None:
        self.db = db
        self.hub = hub
        self.count_cache: CountCache | None = None

    def collect(self) -> Iterable[Metric]:
        yield from self._live()
        hits, misses = (self.count_cache.hits, self.count_cache.misses) if self.count_cache else (0, 0)
        yield counter("tally_count_cache_hits", "Count queries answered from the count cache", hits)
        yield counter("tally_count_cache_misses", "Count queries the count cache sent on to GraphQL", misses)
        runs = run_counts(self.db)
        finished = CounterMetricFamily(
            "tally_recalculation_runs", "Recalculation runs this process finished", labels=["outcome"]
        )
        finished.add_metric(["ok"], runs.succeeded)
        finished.add_metric(["error"], runs.failed)
        yield finished
        yield counter("tally_recalculation_corrections", "Counters corrected by recalculation runs", runs.corrections)
        yield counter(
            "tally_write_retries", "Write transactions run again after a retryable failure", self.db.write_retries
        )

    def _live(self) -> Iterator[Metric]:
        live = self.hub.snapshot_metrics()
        fan_out = GaugeMetricFamily(
            "tally_live_fan_out", "What carries commits to the other processes' subscribers", labels=["kind"]
        )
        fan_out.add_metric([self.hub.fan_out], 1)
        yield fan_out
        yield gauge(
            "tally_live_connected", "1 while the broadcast channel (or SQLite following) works", live["connected"]
        )
        yield gauge("tally_live_subscribers", "Live subscriptions on this process", live["subscribers"])
        yield gauge("tally_live_channels", "Orgs this process listens to", live["channels"])
        yield counter("tally_live_publishes", "Snapshots published", live["published"])
        yield counter(
            "tally_live_publish_failures",
            "Publishes that failed (the mutation still succeeded)",
            live["publish_failures"],
        )
        yield counter("tally_live_republishes", "Orgs published again once the channel was back", live["republished"])
        yield counter("tally_live_reconnects", "Broadcast channel rebuilds", live["reconnects"])


def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))
