"""``python -m loadtest``: agentbus against a raw nats-py anchor, on one server, in one run.

Every suite measures agentbus and a raw nats-py loop doing the same work, in
alternation, each phase in a fresh child interpreter on uvloop (``bench_common``):

* ``throughput`` (a, b): a no-op agent on the in-process :class:`~agents.worker.Worker`
  against ``fetch(500)`` -> decode -> handler -> ``ack()``; target ratio >= 0.9;
* ``io`` (c): 50 ms handlers, 1,000 in flight; target >= 95% of the ideal 20k/s;
* ``latency`` (d): 2,000 tasks/s from this process into a consumer process; target p99 <= 1 ms;
* ``memory`` (e): 100k tasks in flight; target <= 3 KB of RSS each.

:func:`run_bench` returns every figure as one dict (the CLI prints it as the last
line, JSON) and reports progress through ``say``.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

from nats.aio.client import Client

from bus.connection import connect
from bus.embedded import EmbeddedNats, find_nats_server
from loadtest.bench_common import run_on_uvloop
from loadtest.bench_io import IoParams, run_io
from loadtest.bench_latency import LatencyParams, run_latency
from loadtest.bench_memory import MemoryParams, run_memory
from loadtest.bench_throughput import ThroughputParams, run_throughput

__all__ = ["SUITES", "TARGETS", "BenchOptions", "run_bench"]

SUITES = ("throughput", "io", "latency", "memory")

TARGETS: dict[str, tuple[str, float]] = {
    "ratio": (">=", 0.9),
    "io_pct_of_ideal": (">=", 95.0),
    "p99_ms": ("<=", 1.0),
    "rss_per_inflight_kb": ("<=", 3.0),
}
"""The figure each suite is judged by, and its target."""


@dataclass(frozen=True, kw_only=True, slots=True)
class BenchOptions:
    """One benchmark run: which suites, how big, against which server."""

    suites: tuple[str, ...] = SUITES
    throughput: ThroughputParams = field(default_factory=ThroughputParams)
    io: IoParams = field(default_factory=IoParams)
    latency: LatencyParams = field(default_factory=LatencyParams)
    memory: MemoryParams = field(default_factory=MemoryParams)
    nats_url: str | None = None  # None: start an embedded nats-server for the run
    quick: bool = False

    @classmethod
    def quick_preset(cls, **changes: Any) -> BenchOptions:
        """Small sizes for a smoke run of about a minute."""
        return cls(
            throughput=ThroughputParams(n=20_000, reps=2),
            io=IoParams(n=20_000, reps=1),
            latency=LatencyParams(duration_s=3.0, reps=1),
            memory=MemoryParams(n=20_000),
            quick=True,
            **changes,
        )


def run_bench(options: BenchOptions, *, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the selected suites and return every figure (see ``TARGETS`` for the headline ones)."""
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    server: EmbeddedNats | None = None
    url = options.nats_url
    if url is None:
        server = EmbeddedNats().start()
        url = server.url
    try:
        out = run_on_uvloop(_suites(options, url, server is not None, say))
    finally:
        if server is not None:
            server.close()
    out.update(_environment(options, load_before))
    out["seconds"] = round(time.perf_counter() - started, 1)
    out["targets_met"] = {
        key: (out[key] >= goal if op == ">=" else out[key] <= goal)
        for key, (op, goal) in TARGETS.items()
        if key in out
    }
    return out


async def _suites(
    options: BenchOptions, url: str, owns_server: bool, say: Callable[[str], None]
) -> dict[str, Any]:
    nc = await connect(url, name="agentbus-bench")
    run = uuid.uuid4().hex[:6]  # fresh kinds: never touch another run's consumers
    out: dict[str, Any] = {}
    errors: dict[str, str] = {}
    try:
        for name in options.suites:
            suite = _SUITES[name]
            try:  # one failed suite still leaves the others' figures
                out.update(await suite(nc, url, options, f"{name[:3]}-{run}", owns_server, say))
            except Exception as exc:
                say(f"  {name} FAILED: {exc!r}")
                errors[name] = repr(exc)
    finally:
        await nc.close()
    if errors:
        out["errors"] = errors
    return out


Suite = Callable[
    [Client, str, BenchOptions, str, bool, Callable[[str], None]], Coroutine[Any, Any, dict[str, Any]]
]


async def _throughput(
    nc: Client, url: str, options: BenchOptions, kind: str, owns_server: bool, say: Callable[[str], None]
) -> dict[str, Any]:
    t = options.throughput
    say(f"(a, b) throughput: {t.n:,} no-op tasks, {t.reps} reps each, alternating")
    res = await run_throughput(nc, url, t, kind=kind, owns_server=owns_server, say=say)
    say(
        f"  = raw nats-py {res['raw_rate']:,.0f} tasks/s (fetch {t.raw_batch}), agentbus "
        f"{res['agentbus_rate']:,.0f} tasks/s (max_inflight {t.max_inflight}): "
        f"{res['ratio']:.2f}x (target >= 0.9); CPU per task {res['cpu_ratio']:.2f}x less than raw"
    )
    return res


async def _io(
    nc: Client, url: str, options: BenchOptions, kind: str, owns_server: bool, say: Callable[[str], None]
) -> dict[str, Any]:
    io = options.io
    say(
        f"(c) I/O-bound: {io.n:,} tasks of {io.sleep_s * 1000:g} ms, {io.max_inflight} in flight, "
        f"ideal {io.ideal_rate:,.0f}/s, {io.reps} reps each"
    )
    res = await run_io(nc, url, io, kind=kind, owns_server=owns_server, say=say)
    say(
        f"  = agentbus {res['io_rate']:,.0f} tasks/s, {res['io_pct_of_ideal']:.1f}% of ideal "
        f"(target >= 95%; raw nats-py {res['raw_io_pct_of_ideal']:.1f}%), "
        f"peak RSS {res['io_peak_rss_mib']:.1f} MiB"
    )
    return res


async def _latency(
    nc: Client, url: str, options: BenchOptions, kind: str, owns_server: bool, say: Callable[[str], None]
) -> dict[str, Any]:
    lat = options.latency
    say(
        f"(d) latency: {lat.rate:,.0f} tasks/s for {lat.duration_s:g} s into a consumer process, "
        f"{lat.reps} reps each"
    )
    res = await run_latency(nc, url, lat, kind=kind, owns_server=owns_server, say=say)
    say(
        f"  = agentbus p50 {res['p50_ms']:.3f} ms, p99 {res['p99_ms']:.3f} ms (target <= 1 ms), "
        f"max {res['max_ms']:.2f} ms; raw nats-py p50 {res['raw_p50_ms']:.3f} ms, "
        f"p99 {res['raw_p99_ms']:.3f} ms"
    )
    return res


async def _memory(
    nc: Client, url: str, options: BenchOptions, kind: str, owns_server: bool, say: Callable[[str], None]
) -> dict[str, Any]:
    mem = options.memory
    say(f"(e) memory: {mem.n:,} tasks in flight, each awaiting an Event")
    res = await run_memory(nc, url, mem, kind=kind, owns_server=owns_server, say=say)
    say(
        f"  = agentbus {res['rss_per_inflight_kb']:.2f} KB per task in flight (target <= 3 KB); "
        f"raw nats-py {res['raw_rss_per_inflight_kb']:.2f} KB"
    )
    return res


_SUITES: dict[str, Suite] = {"throughput": _throughput, "io": _io, "latency": _latency, "memory": _memory}


def _environment(options: BenchOptions, load_before: float) -> dict[str, Any]:
    try:
        server = subprocess.run(
            [find_nats_server(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except Exception:  # only informational
        server = "unknown"
    return {
        "quick": options.quick,
        "suites": list(options.suites),
        "server": "embedded" if options.nats_url is None else "external",
        "nats_server": server,
        "python": platform.python_version(),
        "nats_py": version("nats-py"),
        "msgspec": version("msgspec"),
        "uvloop": version("uvloop"),
        "cpus": os.cpu_count(),
        "loadavg_1m_before": round(load_before, 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
    }
