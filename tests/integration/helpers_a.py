"""Helpers shared by the data-path integration tests (round trip, backpressure, kill -9, drain, dedupe).

Everything here talks to the real nats-server of the fixtures: a core subscription
that collects results, consumer and stream state read from JetStream, and the
workers' own ``/metrics``. Nothing waits by sleeping a fixed time.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from conftest import WorkerProcess, dlq_messages
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from agents.builtin.basic import EchoOut
from bus.messages import DeadLetter, Result
from bus.topology import kind_consumers

__all__ = [
    "ConsumerTotals",
    "ResultLog",
    "consumer_state",
    "consumer_totals",
    "dead_letters",
    "launch",
    "metric",
    "metric_value",
    "poll",
    "queue_empty",
]

_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class ResultLog:
    """Every :class:`Result` seen on ``results.*.*`` (a core subscription), with its arrival time."""

    def __init__(self, output_type: Any = EchoOut) -> None:
        self._decoder = msgspec.json.Decoder(Result[output_type])
        self.arrivals: list[tuple[float, Result[Any]]] = []
        self.undecodable = 0
        self._sub: Subscription | None = None

    async def start(self, nc: Client, subject: str = "results.*.*") -> ResultLog:
        """Subscribe; call before publishing so no result can be missed."""
        self._sub = await nc.subscribe(subject, cb=self._on_msg, pending_msgs_limit=-1)
        await nc.flush()  # the server knows the interest before anything is published
        return self

    async def stop(self) -> None:
        """Unsubscribe."""
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def _on_msg(self, msg: Msg) -> None:
        try:
            result = self._decoder.decode(msg.data)
        except msgspec.DecodeError:
            self.undecodable += 1
            return
        self.arrivals.append((time.monotonic(), result))

    @property
    def results(self) -> list[Result[Any]]:
        """Results in arrival order (duplicates included: delivery is at-least-once)."""
        return [r for _, r in self.arrivals]

    def ok_ids(self) -> set[str]:
        """Ids of tasks that completed successfully."""
        return {r.task_id for _, r in self.arrivals if r.ok}

    def failed(self) -> list[Result[Any]]:
        """Results with ``ok=False`` (dead-lettered tasks)."""
        return [r for _, r in self.arrivals if not r.ok]


async def poll(
    check: Callable[[], Any], *, timeout_s: float = 30.0, every_s: float = 0.05, what: str = "condition"
) -> None:
    """Await ``check()`` (sync or async) until truthy; a generous liveness bound, not a timing claim."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(every_s)


async def consumer_state(nc: Client, kind: str) -> tuple[int, int]:
    """``(num_pending, num_ack_pending)`` summed over the kind's consumers (per tenant or per kind)."""
    totals = await consumer_totals(nc, kind)
    return totals.num_pending, totals.num_ack_pending


@dataclass
class ConsumerTotals:
    """A kind's consumers' counts, summed."""

    num_pending: int = 0
    num_ack_pending: int = 0
    num_waiting: int = 0
    num_redelivered: int = 0
    delivered: int = 0
    consumers: int = 0


async def consumer_totals(nc: Client, kind: str) -> ConsumerTotals:
    """Counts of every consumer of ``kind`` (the tenants' consumers, or ``agents-<kind>``), summed."""
    out = ConsumerTotals()
    for info in await kind_consumers(nc.jetstream(), kind):
        out.num_pending += info.num_pending or 0
        out.num_ack_pending += info.num_ack_pending or 0
        out.num_waiting += info.num_waiting or 0
        out.num_redelivered += info.num_redelivered or 0
        out.delivered += (info.delivered.consumer_seq or 0) if info.delivered else 0
        out.consumers += 1
    return out


async def dead_letters(nc: Client) -> list[DeadLetter]:
    """Every dead letter stored in the DLQ stream, in stream order."""
    return [msgspec.json.decode(data, type=DeadLetter) for _, data in await dlq_messages(nc.jetstream())]


async def queue_empty(nc: Client, kind: str) -> bool:
    """Nothing waiting and nothing delivered-but-unacked for ``kind``."""
    return await consumer_state(nc, kind) == (0, 0)


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """Sum of the samples of ``name`` whose labels include ``labels``; None if there is none."""
    total: float | None = None
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match[1] != name:
            continue
        have = dict(_LABEL.findall(match[2] or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total = (total or 0.0) + float(match[3])
    return total


async def metric(worker: WorkerProcess, name: str, **labels: str) -> float | None:
    """One value from a worker's ``/metrics`` (None if unreachable or absent)."""
    status, body = await asyncio.to_thread(worker.get, "/metrics")
    if status != 200:
        return None
    return metric_value(body, name, **labels)


async def launch(start_worker: Callable[..., WorkerProcess], name: str, *args: str) -> WorkerProcess:
    """Start a worker subprocess and wait for its /readyz without blocking the event loop."""
    return await asyncio.to_thread(start_worker, name, *args)
