"""A server's /metrics (the Prometheus text exposition) as {sample: value}, for tests and benchmarks."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[str, float]  # 'name{label="value",...}' (labels sorted; no braces without labels) -> value

# The hub's figures by short name.
LIVE = {
    "subscribers": "tally_live_subscribers",
    "channels": "tally_live_channels",
    "published": "tally_live_publishes_total",
    "publish_failures": "tally_live_publish_failures_total",
    "republished": "tally_live_republishes_total",
    "reconnects": "tally_live_reconnects_total",
    "connected": "tally_live_connected",
}


def key(name: str, **labels: str) -> str:
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def parsed(text: str) -> Samples:
    return {
        key(sample.name, **sample.labels): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(base: str) -> Samples:
    response = httpx.get(f"{base}/metrics", timeout=10)
    response.raise_for_status()
    return parsed(response.text)


async def scrape_async(base: str) -> Samples:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{base}/metrics")
    response.raise_for_status()
    return parsed(response.text)


def live_figures(samples: Samples) -> dict[str, int]:
    return {figure: int(samples[name]) for figure, name in LIVE.items()}


async def live(base: str) -> dict[str, int]:
    return live_figures(await scrape_async(base))
