"""Fair share between tenants, measured (issue 19; docs/fairness.md).

Each scenario runs real workers (:class:`~agents.worker.Worker`, in this process, on uvloop)
against a fresh embedded nats-server, both sides of every ratio in the same run:

* ``quiet_p99_ratio_<n>``: quiet tenants (5 at once) send ``sleep_s: 0.01`` tasks one every
  20 ms and wait for each result, alone, then behind a noisy tenant's backlog of ``n``
  ``sleep_s: 0.2`` tasks (2 workers, default slots): p99 behind the backlog / p99 alone;
* ``share_error``: tenants weighted 3:1, both backlogged: the largest relative error of
  their completion ratio against 3 over consecutive windows;
* ``jain_index``: 1,000 backlogged tenants whose consumers exist (a running deployment's):
  Jain's index of completions per tenant over a window (1 is perfectly fair);
* ``single_tenant_ratio``: one tenant's no-op throughput with fair scheduling over the
  per-kind consumer (the landed path), alternating, median of the repetitions.

``python -m loadtest.bench_fairness [--quick]`` prints one JSON line last; ``python -m
loadtest --suite fairness`` runs it as a child suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import msgspec

from agents import Context, Registry, agent
from agents.config import WorkerConfig
from agents.worker import Worker
from bus.connection import connect
from bus.embedded import EmbeddedNats
from bus.fair import FairConsumer
from bus.publisher import Publisher, TaskSpec
from bus.topology import TASKS_STREAM, ConsumerSpec, ensure_streams, ensure_tenant_consumer
from loadtest.bench_common import run_on_uvloop

__all__ = ["FairnessParams", "run_fairness"]

KIND = "fjob"


class Job(msgspec.Struct):
    sleep_s: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class FairnessParams:
    """Sizes of one run (``quick()``: a smoke run of well under a minute)."""

    backlogs: tuple[int, ...] = (30_000, 100_000)
    quiet_tenants: int = 5
    quiet_tasks: int = 40  # per quiet tenant, one every 20 ms
    share_window_s: float = 10.0
    share_windows: int = 2
    many_tenants: int = 1_000
    many_window_s: float = 10.0
    single_tasks: int = 20_000
    single_reps: int = 3

    @classmethod
    def quick(cls) -> FairnessParams:
        """Small numbers for tests and smoke runs."""
        return cls(
            backlogs=(2_000,),
            quiet_tenants=2,
            quiet_tasks=10,
            share_window_s=1.0,
            share_windows=2,
            many_tenants=100,
            many_window_s=1.5,
            single_tasks=3_000,
            single_reps=1,
        )


def _registry(done: Counter[str] | None = None) -> Registry:
    async def job(ctx: Context, task: Job) -> Job:
        if task.sleep_s:
            await asyncio.sleep(task.sleep_s)
        if done is not None:
            done[ctx.tenant] += 1
        return task

    return Registry([agent(kind=KIND, input=Job, output=Job, timeout_s=60)(job)])


def _config(url: str, name: str, **changes: Any) -> WorkerConfig:
    base: dict[str, Any] = {"nats_url": url, "worker_id": name, "http_port": -1, "gossip": False}
    return WorkerConfig(**(base | changes))


class _Server:
    """A fresh embedded nats-server with the streams, and a connection to it."""

    async def __aenter__(self) -> _Server:
        self.server = EmbeddedNats().start()
        self.url = self.server.url
        self.nc = await connect(self.url, name="bench-fairness")
        await ensure_streams(self.nc.jetstream())
        self.pub = Publisher(self.nc, max_pending_acks=8192)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pub.close()
        await self.nc.close()
        self.server.close()

    async def backlog(self, tenant: str, n: int, sleep_s: float) -> None:
        """Queue ``n`` tasks of ``tenant`` as fast as the ack window allows."""
        step = 10_000
        for start in range(0, n, step):
            specs = [TaskSpec(tenant, KIND, Job(sleep_s=sleep_s)) for _ in range(min(step, n - start))]
            await self.pub.submit_many(specs)


async def _workers(url: str, n: int, registry: Registry, **changes: Any) -> list[Worker]:
    workers = [Worker(_config(url, f"bench-{i}", **changes), registry) for i in range(n)]
    for w in workers:
        await w.start()
    return workers


async def _stop(workers: list[Worker]) -> None:
    for w in workers:
        await w.stop()


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def _quiet_latencies(pub: Publisher, params: FairnessParams) -> list[float]:
    """Every quiet tenant sends its tasks one every 20 ms, waiting for each; latencies in ms."""

    async def tenant(name: str) -> list[float]:
        out = []
        for _ in range(params.quiet_tasks):
            started = time.perf_counter()
            result = await pub.call(name, KIND, Job(sleep_s=0.01), timeout_s=60)
            assert result.ok, result.error
            out.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(max(0.0, 0.02 - (time.perf_counter() - started)))
        return out

    names = [f"quiet{i}" for i in range(params.quiet_tenants)]
    await asyncio.gather(*(pub.call(n, KIND, Job(), timeout_s=60) for n in names))  # open their lanes
    runs = await asyncio.gather(*(tenant(n) for n in names))
    return [ms for run in runs for ms in run]


async def quiet_behind_noisy(params: FairnessParams, backlog: int, say: Any) -> dict[str, Any]:
    """Quiet tenants' p99 alone, then behind ``backlog`` noisy tasks, in one server and run."""
    async with _Server() as s:
        workers = await _workers(s.url, 2, _registry())
        try:
            solo = await _quiet_latencies(s.pub, params)
            published = time.perf_counter()
            await s.backlog("noisy", backlog, 0.2)
            say(f"  noisy backlog of {backlog:,} stored in {time.perf_counter() - published:.1f} s")
            behind = await _quiet_latencies(s.pub, params)
            info = await s.nc.jetstream().stream_info(TASKS_STREAM, subjects_filter=f"tasks.noisy.{KIND}")
            left = (info.state.subjects or {}).get(f"tasks.noisy.{KIND}", 0)
            await s.nc.jetstream().purge_stream(TASKS_STREAM)  # the run is capped: the rest is not needed
        finally:
            await _stop(workers)
    ratio = _p99(behind) / _p99(solo)
    say(
        f"  quiet p99 alone {_p99(solo):.1f} ms, behind {backlog:,}: {_p99(behind):.1f} ms "
        f"({ratio:.2f}x; {left:,} noisy tasks still queued at the end)"
    )
    return {
        f"quiet_p99_ratio_{backlog // 1000}k": round(ratio, 3),
        f"quiet_solo_p99_ms_{backlog // 1000}k": round(_p99(solo), 2),
        f"quiet_behind_p99_ms_{backlog // 1000}k": round(_p99(behind), 2),
        f"noisy_left_{backlog // 1000}k": left,
    }


async def weighted_shares(params: FairnessParams, say: Any) -> dict[str, Any]:
    """Tenants weighted 3:1, both backlogged: the completion ratio's error per window."""
    done: Counter[str] = Counter()
    rate = 32 / 0.01  # 32 slots of 10 ms tasks
    each = int(rate * params.share_window_s * (params.share_windows + 1))
    async with _Server() as s:
        await s.backlog("gold", each, 0.01)
        await s.backlog("bronze", each, 0.01)
        workers = await _workers(s.url, 1, _registry(done), max_inflight=32, tenant_weights={"gold": 3})
        try:
            await asyncio.sleep(0.5)  # both lanes open
            errors = []
            for _ in range(params.share_windows):
                before = Counter(done)
                await asyncio.sleep(params.share_window_s)
                gold, bronze = done["gold"] - before["gold"], done["bronze"] - before["bronze"]
                errors.append(abs(gold / max(1, bronze) / 3 - 1))
                say(f"  window: gold {gold:,}, bronze {bronze:,} ({gold / max(1, bronze):.2f}:1)")
        finally:
            await _stop(workers)
    return {"share_error": round(max(errors), 4)}


async def many_tenants(params: FairnessParams, say: Any) -> dict[str, Any]:
    """Jain's index of completions per tenant, 1,000 (or ``many_tenants``) backlogged tenants."""
    done: Counter[str] = Counter()
    n = params.many_tenants
    per = max(20, int(2 * 64 / 0.005 * params.many_window_s / n) + 10)  # more than a window serves
    async with _Server() as s:
        js, spec = s.nc.jetstream(), ConsumerSpec(kind=KIND)
        for start in range(0, n, 50):  # the tenants' consumers, as a running deployment has them
            await asyncio.gather(
                *(ensure_tenant_consumer(js, spec, f"m{i:04d}") for i in range(start, start + 50))
            )
        for i in range(n):
            await s.backlog(f"m{i:04d}", per, 0.005)
        workers = await _workers(s.url, 2, _registry(done))
        try:
            consumers = [w.runners[0].consumer for w in workers]
            deadline = time.monotonic() + 60
            while any(isinstance(c, FairConsumer) and c.lanes < n for c in consumers):
                assert time.monotonic() < deadline, "the tenants' consumers did not all open"
                await asyncio.sleep(0.1)
            before = Counter(done)
            await asyncio.sleep(params.many_window_s)
            counts = [done[f"m{i:04d}"] - before[f"m{i:04d}"] for i in range(n)]
        finally:
            await _stop(workers)
    total = sum(counts)
    jain = total * total / (n * sum(c * c for c in counts)) if total else 0.0
    say(f"  {n:,} tenants, {total:,} completions in {params.many_window_s:g} s: Jain index {jain:.3f}")
    return {"jain_index": round(jain, 4), "jain_completions": total}


async def single_tenant(params: FairnessParams, say: Any) -> dict[str, Any]:
    """One tenant's no-op throughput, fair scheduling against the per-kind consumer, alternating."""
    rates: dict[str, list[float]] = {"kind": [], "tenant": []}
    for _ in range(params.single_reps):
        for strategy in ("kind", "tenant"):
            done: Counter[str] = Counter()
            async with _Server() as s:
                await s.backlog("solo", params.single_tasks, 0.0)
                workers = await _workers(s.url, 1, _registry(done), max_inflight=256, fairness=strategy)
                started = time.perf_counter()
                try:
                    while done["solo"] < params.single_tasks:  # noqa: ASYNC110  # polled: no hook in the handler
                        await asyncio.sleep(0.01)
                finally:
                    elapsed = time.perf_counter() - started
                    await _stop(workers)
            rates[strategy].append(params.single_tasks / elapsed)
    kind, tenant = statistics.median(rates["kind"]), statistics.median(rates["tenant"])
    say(f"  one tenant: per-kind {kind:,.0f} tasks/s, fair {tenant:,.0f} tasks/s ({tenant / kind:.2f}x)")
    return {
        "single_tenant_ratio": round(tenant / kind, 3),
        "single_kind_rate": round(kind),
        "single_fair_rate": round(tenant),
    }


async def run_fairness(params: FairnessParams, say: Any = print) -> dict[str, Any]:
    """Every scenario; one dict of figures."""
    out: dict[str, Any] = {}
    errors: dict[str, str] = {}
    scenarios: list[tuple[str, Any]] = [("single tenant, fair against per-kind", single_tenant(params, say))]
    for backlog in params.backlogs:
        scenario = quiet_behind_noisy(params, backlog, say)
        scenarios.append((f"quiet tenants behind a noisy backlog of {backlog:,}", scenario))
    scenarios.append(("weights 3:1", weighted_shares(params, say)))
    scenarios.append((f"{params.many_tenants:,} tenants", many_tenants(params, say)))
    for title, scenario in scenarios:
        say(f"fairness: {title}")
        try:  # one failed scenario still leaves the others' figures
            out.update(await scenario)
        except Exception as exc:
            say(f"  FAILED: {exc!r}")
            errors[title] = repr(exc)
    if errors:
        out["errors"] = errors
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios; the last line of stdout is one JSON object."""
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_fairness", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small numbers: a smoke run")
    args = p.parse_args(argv)
    params = FairnessParams.quick() if args.quick else FairnessParams()
    started = time.perf_counter()
    out = run_on_uvloop(run_fairness(params, say=lambda line: print(line, flush=True)))
    out["quick"] = args.quick
    out["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
