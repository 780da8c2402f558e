"""Metric sources: where the policy's readings come from, behind one small interface.

* :class:`PrometheusSource` asks a Prometheus server (PromQL, one query per metric).
* :class:`ScrapeSource` scrapes the workers' ``/metrics`` itself: the embedded default,
  no Prometheus needed.
* :class:`MemorySource` is the in-memory twin for tests.

A source never raises from :meth:`MetricSource.read`: a metric it cannot read comes
back as ``Reading(None, error=...)`` and the policy holds. :meth:`MetricSource.check`
runs once at start and raises on bad configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from scaler.policy import Reading
from scaler.sources.prometheus import PrometheusSource, default_queries
from scaler.sources.scrape import SCRAPE_METRICS, ScrapeSource, fetch_samples, sample_sum

__all__ = [
    "SCRAPE_METRICS",
    "MemorySource",
    "MetricSource",
    "PrometheusSource",
    "ScrapeSource",
    "default_queries",
    "fetch_samples",
    "sample_sum",
]


class MetricSource(Protocol):
    """Reads the current value of each metric it knows."""

    @property
    def metrics(self) -> frozenset[str]:
        """Names of the metrics this source can read."""
        ...

    async def check(self) -> None:
        """Validate against the real thing once, at start (ConfigError, MetricError)."""
        ...

    async def read(self, now_s: float) -> dict[str, Reading]:
        """One reading per metric; failures are readings with ``value=None`` and an error."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class MemorySource:
    """A source whose values a test sets: ``None`` is a missing metric, ``error`` says why."""

    def __init__(self, values: Mapping[str, float | None]) -> None:
        self.values: dict[str, float | None] = dict(values)
        self.errors: dict[str, str] = {}
        self.reads = 0

    @property
    def metrics(self) -> frozenset[str]:
        """The names given at construction."""
        return frozenset(self.values)

    def set(self, name: str, value: float | None, error: str = "") -> None:
        """Change what the next read returns."""
        self.values[name] = value
        self.errors[name] = error if value is None else ""

    async def check(self) -> None:
        """Nothing to check."""

    async def read(self, now_s: float) -> dict[str, Reading]:
        """The current values, measured now."""
        self.reads += 1
        return {
            name: Reading(value, now_s, self.errors.get(name, "") or ("" if value is not None else "unset"))
            for name, value in self.values.items()
        }

    async def aclose(self) -> None:
        """Nothing to close."""
