"""Metrics from a Prometheus server: one PromQL instant query per metric, over httpx.

A query must return exactly one number (aggregate it); an empty answer is a
*missing* metric, never zero (KEDA's ``ignoreNullValues=true`` read an outage as
zero load and scaled everything down at peak: kedacore/keda#3065).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

import httpx

from agentbus.errors import ConfigError, MetricError
from scaler.policy import Reading

__all__ = ["DEFAULT_SELECTOR", "PrometheusSource", "default_queries"]

DEFAULT_SELECTOR = 'job="agentbus"'
"""The label selector of the workers' scrape job (the chart's ServiceMonitor uses this job name)."""


def default_queries(
    *, selector: str = DEFAULT_SELECTOR, rate_window: str = "1m", cpu_warmup_s: float = 60.0
) -> dict[str, str]:
    """The default PromQL of ``cpu``, ``queue_depth`` and ``inflight``.

    ``cpu`` is the per-replica average of ``rate(process_cpu_seconds_total)``, leaving out
    replicas younger than ``cpu_warmup_s``: a Python process burns a core while it
    imports and connects, and counting that would scale up again on every scale-up
    (the HPA's CPU initialization period exists for the same reason). Keep the warmup
    >= the rate window. ``queue_depth`` is ``num_pending + num_ack_pending`` per kind
    (every worker exports its consumer's numbers, so ``max by kind``), summed over kinds.
    """
    s = selector
    return {
        "cpu": (
            f"avg(rate(process_cpu_seconds_total{{{s}}}[{rate_window}])"
            f" and on (instance) (time() - process_start_time_seconds{{{s}}}) > {cpu_warmup_s:g})"
        ),
        "queue_depth": (
            f"sum(max by (kind) (agentbus_consumer_pending{{{s}}} + agentbus_consumer_ack_pending{{{s}}}))"
        ),
        "inflight": f"sum(agentbus_inflight{{{s}}})",
    }


class _QueryFailed(Exception):
    def __init__(self, message: str, *, bad_query: bool = False) -> None:
        super().__init__(message)
        self.bad_query = bad_query


class PrometheusSource:
    """Reads each metric with its own PromQL from the Prometheus HTTP API."""

    def __init__(
        self,
        url: str,
        queries: Mapping[str, str] | None = None,
        *,
        timeout_s: float = 5.0,  # well under the loop interval: a slow answer is a missing one
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.queries = dict(default_queries() if queries is None else queries)
        self._client = client or httpx.AsyncClient(timeout=timeout_s)
        self._own_client = client is None

    @property
    def metrics(self) -> frozenset[str]:
        """The metrics that have a query."""
        return frozenset(self.queries)

    async def check(self) -> None:
        """Reachable, and every query is valid PromQL (an empty answer is fine at start)."""
        try:
            r = await self._client.get(f"{self.url}/api/v1/status/buildinfo")
        except httpx.HTTPError as exc:
            raise MetricError(f"Prometheus at {self.url} is unreachable: {exc!r}", source=self.url) from exc
        if r.status_code != 200:
            raise MetricError(
                f"{self.url} answered HTTP {r.status_code}: not ready yet, or not Prometheus", source=self.url
            )
        for name, query in self.queries.items():
            try:
                await self._query(query)
            except _QueryFailed as exc:
                if exc.bad_query:
                    raise ConfigError(
                        f"metric {name!r}: Prometheus refuses the query {query!r}: {exc}"
                    ) from exc
                raise MetricError(str(exc), metric=name, source=self.url) from exc

    async def read(self, now_s: float) -> dict[str, Reading]:
        """Run every query concurrently; each failure becomes a reading with an error."""
        names = list(self.queries)
        answers = await asyncio.gather(*(self._one(self.queries[n]) for n in names))
        return {n: Reading(value, now_s, error) for n, (value, error) in zip(names, answers, strict=True)}

    async def _one(self, query: str) -> tuple[float | None, str]:
        try:
            series = await self._query(query)
        except _QueryFailed as exc:
            return None, str(exc)
        if not series:
            return None, "empty result: no series (no target, or nothing scraped yet)"
        if len(series) > 1:
            return None, f"{len(series)} series: aggregate the query to one number"
        return series[0][1], ""

    async def by_label(self, query: str, label: str) -> dict[str, float]:
        """A vector query as ``{value of label: value}`` (e.g. in-flight counts by pod)."""
        try:
            series = await self._query(query)
        except _QueryFailed as exc:
            raise MetricError(str(exc), source=self.url) from exc
        return {labels[label]: value for labels, value in series if label in labels and math.isfinite(value)}

    async def _query(self, query: str) -> list[tuple[dict[str, str], float]]:
        try:
            r = await self._client.get(f"{self.url}/api/v1/query", params={"query": query})
        except httpx.HTTPError as exc:
            raise _QueryFailed(f"Prometheus unreachable: {exc!r}") from exc
        try:
            body: dict[str, Any] = r.json()
        except ValueError as exc:
            raise _QueryFailed(f"HTTP {r.status_code}, not a Prometheus answer") from exc
        if body.get("status") != "success":
            bad = body.get("errorType") == "bad_data"
            raise _QueryFailed(
                f"{body.get('errorType', r.status_code)}: {body.get('error', '')}", bad_query=bad
            )
        data = body.get("data", {})
        kind, result = data.get("resultType"), data.get("result")
        if kind == "scalar":
            return [({}, float(result[1]))]
        if kind != "vector":
            raise _QueryFailed(f"result type {kind!r}: the query must give an instant vector or a scalar")
        return [(item.get("metric", {}), float(item["value"][1])) for item in result]

    async def aclose(self) -> None:
        """Close the HTTP client if we made it."""
        if self._own_client:
            await self._client.aclose()
