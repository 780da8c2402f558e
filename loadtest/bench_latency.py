"""(d) Latency at a steady rate: this process publishes at ``rate`` tasks/s into a consumer process.

Latency is what the handler sees: ``time.time()`` when it is called minus the
task's ``sent_at``, the wall clock stamped right before
:meth:`Publisher.submit_nowait` (which stamps ``Task.created_at`` microseconds
later in the same call). Both processes share one clock, so this is publish ->
JetStream -> pull -> decode -> handler, end to end. The consumer is either a
running agentbus worker (a no-op agent) or the anchor, a raw nats-py loop of
``fetch(10)``; they alternate, and the percentiles pool every repetition.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError

from agents.api import Context
from bus.messages import decoder_for
from bus.publisher import Publisher
from loadtest.bench_common import (
    TENANT,
    BenchIn,
    Child,
    Countdown,
    Queue,
    alternate,
    bench_agent,
    bench_worker,
    payload,
    percentile,
    pull_subscription,
)

__all__ = ["LatencyParams", "latency_child", "raw_latency_child", "run_latency"]


@dataclass(frozen=True, kw_only=True, slots=True)
class LatencyParams:
    """What phase (d) runs."""

    rate: float = 2000.0  # tasks/s
    duration_s: float = 10.0  # per repetition
    reps: int = 2  # per side
    max_inflight: int = 256
    raw_batch: int = 10  # the anchors' best uvloop configuration

    @property
    def n(self) -> int:
        """Tasks published per repetition."""
        return int(self.rate * self.duration_s)


async def latency_child(p: dict[str, Any]) -> dict[str, Any]:
    """agentbus: a worker whose handler records its latency, until ``n`` tasks arrived."""
    n, kind = int(p["n"]), str(p["kind"])
    countdown = Countdown(n)
    latencies: list[float] = []
    record, clock = latencies.append, time.time

    @bench_agent(kind, int(p["max_inflight"]))
    async def stamp(ctx: Context, task: BenchIn) -> None:
        record(clock() - task.sent_at)
        countdown.hit()

    worker = bench_worker(p["url"], stamp)
    await worker.start()
    print("READY", flush=True)
    try:
        await asyncio.wait_for(countdown.done.wait(), float(p["timeout_s"]))
    except TimeoutError:
        pass  # report what arrived; the parent compares it with what was sent
    finally:
        await worker.stop()
    return {"latencies_ms": [round(x * 1000.0, 4) for x in latencies]}


async def raw_latency_child(p: dict[str, Any]) -> dict[str, Any]:
    """The anchor: fetch(batch) -> decode -> record -> ``await msg.ack()``."""
    n, kind, batch = int(p["n"]), str(p["kind"]), int(p["batch"])
    nc, _, psub = await pull_subscription(p["url"], kind)
    decode = decoder_for(BenchIn).decode
    latencies: list[float] = []
    record, clock = latencies.append, time.time
    print("READY", flush=True)
    deadline = time.monotonic() + float(p["timeout_s"])
    while len(latencies) < n and time.monotonic() < deadline:
        try:
            msgs = await psub.fetch(batch, timeout=5)
        except NatsTimeoutError:
            continue
        for msg in msgs:
            record(clock() - decode(msg.data).payload.sent_at)
            await msg.ack()
    await nc.flush()
    await nc.close()
    return {"latencies_ms": [round(x * 1000.0, 4) for x in latencies]}


async def _paced(nc: Client, kind: str, rate: float, n: int) -> float:
    """Publish ``n`` tasks at ``rate`` per second; returns the rate achieved."""
    publisher = Publisher(nc, max_pending_acks=1024)
    futures = []
    t0 = time.monotonic()
    for i in range(n):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        futures.append(await publisher.submit_nowait(TENANT, kind, payload(i)))
    await asyncio.gather(*futures)
    return n / (time.monotonic() - t0)


def _summary(latencies_ms: list[float]) -> dict[str, float]:
    ms = sorted(latencies_ms)
    return {
        "p50_ms": percentile(ms, 0.50),
        "p90_ms": percentile(ms, 0.90),
        "p99_ms": percentile(ms, 0.99),
        "p999_ms": percentile(ms, 0.999),
        "max_ms": ms[-1] if ms else float("nan"),
    }


async def run_latency(
    nc: Client,
    url: str,
    params: LatencyParams,
    *,
    kind: str,
    owns_server: bool,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Alternate agentbus and the anchor as the consumer; pooled percentiles of each."""
    achieved: list[float] = []

    async def one(side: str, rep: int) -> dict[str, Any]:
        side_kind = f"{kind}-{side}{rep}"
        queue = Queue(nc.jetstream(), side_kind, owns_server=owns_server, per_tenant=side == "agentbus")
        await queue.create()
        child = await Child.start(
            "latency" if side == "agentbus" else "raw_latency",
            {
                "url": url,
                "kind": side_kind,
                "n": params.n,
                "max_inflight": params.max_inflight,
                "batch": params.raw_batch,
                "timeout_s": params.duration_s + 30,
            },
        )
        try:
            await child.ready()
            achieved.append(await _paced(nc, side_kind, params.rate, params.n))
        except BaseException:
            await child.kill()
            raise
        result = await child.result(timeout_s=params.duration_s + 60)
        await queue.delete()
        got = len(result["latencies_ms"])
        if got != params.n:
            raise RuntimeError(f"latency phase ({side}): {got} of {params.n} tasks arrived")
        s = _summary(result["latencies_ms"])
        say(
            f"  {side:<12} p50 {s['p50_ms']:6.3f} ms, p99 {s['p99_ms']:7.3f} ms, "
            f"max {s['max_ms']:7.2f} ms (rep {rep + 1})"
        )
        return result

    reps = await alternate(params.reps, ("raw", "agentbus"), one)
    ours = _summary([x for r in reps["agentbus"] for x in r["latencies_ms"]])
    raw = _summary([x for r in reps["raw"] for x in r["latencies_ms"]])
    return {
        **ours,
        **{f"raw_{k}": v for k, v in raw.items()},
        "latency_rate": params.rate,
        "latency_achieved_rate": min(achieved),
        "latency_n": params.n * params.reps,
        "latency_reps": params.reps,
    }
