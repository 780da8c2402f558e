"""The local actuator: resizes a :class:`~scaler.local.LocalSupervisor`, retiring the idlest first.

Before a scale-down it reads ``agentbus_inflight`` from each active replica's
``/metrics`` and retires those holding the fewest messages (the newest first on a
tie; a replica that does not answer counts as busy). The supervisor SIGTERMs them:
they stop fetching, finish or hand back what they hold, and exit 0.

It can also keep a Prometheus ``file_sd_configs`` file listing the live replicas, so
a Prometheus server follows the pool as it changes.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import httpx

from scaler.actuators import ScaleResult
from scaler.local import LocalSupervisor
from scaler.sources.scrape import fetch_samples, sample_sum

__all__ = ["LocalActuator"]


class LocalActuator:
    """Scales the supervisor's pool; ``ports`` maps replica name to its HTTP (metrics) port."""

    def __init__(
        self,
        supervisor: LocalSupervisor,
        ports: Mapping[str, int],
        *,
        host: str = "127.0.0.1",
        file_sd_path: str | os.PathLike[str] | None = None,
        timeout_s: float = 1.0,  # an in-flight read slower than this counts as "busy"
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.supervisor = supervisor
        self._ports = ports
        self._host = host
        self._file_sd = Path(file_sd_path) if file_sd_path is not None else None
        self._written: list[str] | None = None
        self._client = client or httpx.AsyncClient(timeout=timeout_s)
        self._own_client = client is None

    def targets(self) -> list[str]:
        """``host:port`` of every live replica (retiring ones included while they drain)."""
        live = self.supervisor.pids()
        return [f"{self._host}:{self._ports[n]}" for n in sorted(live) if n in self._ports]

    def metrics_urls(self) -> list[str]:
        """``/metrics`` URLs of the live replicas (the targets of a ScrapeSource)."""
        return [f"http://{t}/metrics" for t in self.targets()]

    async def current(self) -> int:
        """Active replicas (not counting retiring ones); refreshes the file_sd file."""
        self._write_file_sd()
        return self.supervisor.size

    async def inflight(self) -> dict[str, float]:
        """``agentbus_inflight`` of each active replica; ``inf`` when it does not answer."""
        names = [r.name for r in self.supervisor.active()]

        async def one(name: str) -> float:
            port = self._ports.get(name)
            if port is None:
                return math.inf
            samples = await fetch_samples(self._client, f"http://{self._host}:{port}/metrics")
            value = sample_sum(samples, "agentbus_inflight") if samples is not None else None
            return math.inf if value is None else value

        values = await asyncio.gather(*(one(n) for n in names))
        return dict(zip(names, values, strict=True))

    async def scale(self, replicas: int) -> ScaleResult:
        """Start replicas, or SIGTERM the idlest ones until ``replicas`` remain active."""
        before = self.supervisor.size
        if replicas >= before:
            await self.supervisor.scale_to(replicas)
            self._write_file_sd()
            return ScaleResult(before, self.supervisor.size)
        inflight = await self.inflight()
        seq = {r.name: r.seq for r in self.supervisor.active()}
        order = sorted(inflight, key=lambda n: (inflight[n], -seq.get(n, 0)))
        victims = tuple(order[: before - replicas])
        await self.supervisor.scale_to(replicas, retire=victims)
        self._write_file_sd()
        return ScaleResult(before, self.supervisor.size, victims, inflight)

    def _write_file_sd(self) -> None:
        if self._file_sd is None:
            return
        targets = self.targets()
        if targets == self._written:
            return
        tmp = self._file_sd.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": targets, "labels": {}}]))
        tmp.replace(self._file_sd)  # atomic: Prometheus never reads half a file
        self._written = targets

    async def aclose(self) -> None:
        """Close the HTTP client if we made it (the supervisor is its owner's to stop)."""
        if self._own_client:
            await self._client.aclose()
