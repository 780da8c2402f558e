"""Metrics straight from the workers' ``/metrics``: the embedded default, no Prometheus server.

Each read scrapes every target concurrently and computes what the default PromQL
of :mod:`scaler.sources.prometheus` computes:

* ``cpu``: per-replica rate of ``process_cpu_seconds_total`` between two scrapes,
  averaged, leaving out replicas younger than ``cpu_warmup_s`` (start-up CPU is not load);
* ``queue_depth``: ``num_pending + num_ack_pending``, max by kind (every worker
  exports its consumer's numbers), summed over kinds;
* ``inflight``: the sum of ``agentbus_inflight``.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from scaler.policy import Reading

__all__ = ["SCRAPE_METRICS", "Samples", "ScrapeSource", "fetch_samples", "sample_sum"]

SCRAPE_METRICS = frozenset({"cpu", "queue_depth", "inflight"})
"""What :class:`ScrapeSource` can compute."""

Samples = dict[str, list[tuple[dict[str, str], float]]]
"""Sample name -> ``(labels, value)`` pairs of one scrape."""


async def fetch_samples(client: httpx.AsyncClient, url: str) -> Samples | None:
    """One scrape of ``url``; None if it does not answer 200 with the text format."""
    try:
        r = await client.get(url)
        if r.status_code != 200:
            return None
        out: Samples = defaultdict(list)
        for family in text_string_to_metric_families(r.text):
            for s in family.samples:
                out[s.name].append((s.labels, s.value))
        return out
    except (httpx.HTTPError, ValueError):
        return None


def sample_sum(samples: Samples, name: str) -> float | None:
    """Sum of every sample called ``name``; None if there is none."""
    values = [v for _, v in samples.get(name, ())]
    return sum(values) if values else None


class ScrapeSource:
    """Scrapes ``targets()`` (URLs of ``/metrics``, re-read each time: replicas come and go)."""

    def __init__(
        self,
        targets: Callable[[], Iterable[str]],
        *,
        timeout_s: float = 2.0,  # a worker that cannot answer in 2 s is left out of this reading
        cpu_warmup_s: float = 10.0,  # a worker's imports and connect take ~1-3 s of CPU
        client: httpx.AsyncClient | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._targets = targets
        self._client = client or httpx.AsyncClient(timeout=timeout_s)
        self._own_client = client is None
        self._warmup_s = cpu_warmup_s
        self._wall = wall_clock
        self._last_cpu: dict[str, tuple[float, float]] = {}  # url -> (scraped at, cpu seconds)

    @property
    def metrics(self) -> frozenset[str]:
        """``cpu``, ``queue_depth``, ``inflight``."""
        return SCRAPE_METRICS

    async def check(self) -> None:
        """Nothing to check before the workers exist."""

    async def read(self, now_s: float) -> dict[str, Reading]:
        """Scrape every target now and compute the three metrics."""
        urls = list(self._targets())
        scraped = await asyncio.gather(*(fetch_samples(self._client, u) for u in urls))
        answered = {u: s for u, s in zip(urls, scraped, strict=True) if s is not None}
        self._last_cpu = {u: v for u, v in self._last_cpu.items() if u in answered}
        if not answered:
            error = f"no worker answered /metrics ({len(urls)} targets)"
            return {name: Reading(None, now_s, error) for name in SCRAPE_METRICS}
        return {
            "cpu": self._cpu(answered, now_s),
            "queue_depth": _queue_depth(answered, now_s),
            "inflight": Reading(
                sum(sample_sum(s, "agentbus_inflight") or 0.0 for s in answered.values()), now_s
            ),
        }

    def _cpu(self, answered: dict[str, Samples], now_s: float) -> Reading:
        rates, wall = [], self._wall()
        for url, samples in answered.items():
            cpu = sample_sum(samples, "process_cpu_seconds_total")
            started = sample_sum(samples, "process_start_time_seconds")
            if cpu is None:
                continue
            last = self._last_cpu.get(url)
            self._last_cpu[url] = (now_s, cpu)
            if last is None or now_s <= last[0] or (started is not None and wall - started < self._warmup_s):
                continue
            rates.append(max(0.0, cpu - last[1]) / (now_s - last[0]))
        if not rates:
            return Reading(None, now_s, "no CPU rate yet: needs two scrapes of a warmed-up worker")
        return Reading(sum(rates) / len(rates), now_s)

    async def aclose(self) -> None:
        """Close the HTTP client if we made it."""
        if self._own_client:
            await self._client.aclose()


def _queue_depth(answered: dict[str, Samples], now_s: float) -> Reading:
    by_kind: dict[str, float] = {}
    for samples in answered.values():
        pending = {lb.get("kind", ""): v for lb, v in samples.get("agentbus_consumer_pending", ())}
        acked = {lb.get("kind", ""): v for lb, v in samples.get("agentbus_consumer_ack_pending", ())}
        for kind in pending.keys() & acked.keys():
            by_kind[kind] = max(by_kind.get(kind, 0.0), pending[kind] + acked[kind])
    if not by_kind:
        return Reading(None, now_s, "no worker exports consumer pending counts yet")
    return Reading(sum(by_kind.values()), now_s)
