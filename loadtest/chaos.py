"""``python -m loadtest.chaos``: fault rounds against a 3-node R3 cluster, judged by the history checker.

A real cluster (:class:`~bus.cluster.NatsCluster`, routes through :class:`RouteNet`),
real worker processes (``agentbus worker`` serving :mod:`loadtest.chaos_agent`) and one
publisher at a steady offered load record a history: every publish ack, every
completed run (the workers' journals), every dead letter (stream ``DLQ``), every fault
window. Rounds cycle through :data:`~loadtest.chaos_faults.FAULTS`; every other cycle
also ``kill -9``\\ s a worker at the fault's start. After the last round the publisher
stops, the backlog drains, and :func:`~loadtest.chaos_history.check` judges.

Then the same fleet measures R3 against R1 (the stream scaled down in place): a burst of
tasks published as fast as the ack window allows, timed from first publish to last
journaled run. The last line printed is one JSON summary; exit 1 on any loss or violation.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.chaos_faults import FAULTS, FaultContext
from loadtest.chaos_fleet import Fleet
from loadtest.chaos_history import Fault, History, check

__all__ = ["ChaosConfig", "main", "run"]

log = logging.getLogger("agentbus.chaos")

NODE_LOSS = ("kill_leader", "kill_follower")
"""Faults that take one node away: the throughput figure is measured over these."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ChaosConfig:
    """One run's shape; the defaults are ``make chaos`` (20 rounds, a few minutes)."""

    rounds: int = 20
    faults: tuple[str, ...] = tuple(FAULTS)
    rate_per_s: float = 150.0  # offered load, well under what three workers finish on 2 cores
    healthy_s: float = 4.0  # before each fault: the baseline throughput
    hold_s: float = 10.0  # how long a node stays dead or cut off (past the Raft election timeout)
    pause_s: float = 10.0  # SIGSTOP length
    settle_timeout_s: float = 60.0  # after a heal: a stream leader and a quorum again
    lag_timeout_s: float = 15.0  # then this long for the last replica to catch up (else reported)
    drain_timeout_s: float = 120.0  # after the last round: every acked task accounted for
    workers: int = 3
    ack_wait_s: float = 2.0  # redelivery of a dead worker's task
    max_deliver: int = 3
    poison_every: int = 97  # one task in 97 fails on every delivery (must be dead-lettered)
    worker_kill_every: int = 2  # every 2nd cycle through the faults also kill -9s a worker (1: every)
    burst: int = 2000  # tasks per R3 / R1 throughput burst (0: skip the comparison)
    sync_always: bool = True  # the chart's sync_interval: always (fsync before every ack)
    reseed: bool = True  # a replica that does not catch up after a heal gets a fresh copy (the runbook's)


@dataclass(slots=True)
class _Round:
    fault: str
    worker_kill: bool
    start: float
    end: float
    healthy_rate: float = 0.0
    fault_rate: float = 0.0
    recovery_s: float | None = None
    lagging: list[str] = field(default_factory=list)
    """Replicas of TASKS not current when the next round began (a fault did not heal cleanly)."""
    reseeded: list[str] = field(default_factory=list)
    """Replicas that stayed behind after the heal and were given a fresh copy (``reseed``)."""


@dataclass(slots=True)
class _Summary:
    rounds: list[_Round] = field(default_factory=list)
    r3_per_s: float = 0.0
    r1_per_s: float = 0.0


async def run(cfg: ChaosConfig, workdir: Path) -> dict[str, Any]:
    """Run the rounds in ``workdir``; the JSON summary (``lost`` must be 0)."""
    t0 = time.monotonic()
    history = History()
    summary = _Summary()
    fleet = Fleet(
        workdir,
        workers=cfg.workers,
        ack_wait_s=cfg.ack_wait_s,
        max_deliver=cfg.max_deliver,
        sync_always=cfg.sync_always,
    )
    async with fleet:
        publishing = asyncio.create_task(fleet.publish_steadily(history, cfg.rate_per_s, cfg.poison_every))
        ctx = FaultContext(fleet.cluster, fleet.net, fleet.js, hold_s=cfg.hold_s, pause_s=cfg.pause_s)
        try:
            for n in range(cfg.rounds):
                name = cfg.faults[n % len(cfg.faults)]
                every = cfg.worker_kill_every  # 2: the second cycle through the faults, the fourth...
                worker_kill = every > 0 and (n // len(cfg.faults)) % every == every - 1
                # the last fault's backlog worked off first: healthy is the offered load, not a catch-up
                if not await fleet.wait_steady(int(cfg.rate_per_s), cfg.settle_timeout_s):
                    log.warning("round %d: the backlog did not drain in %gs", n + 1, cfg.settle_timeout_s)
                await asyncio.sleep(cfg.healthy_s)
                start = time.monotonic()
                log.warning("round %d: %s%s", n + 1, name, " + worker kill -9" if worker_kill else "")
                victim = fleet.kill_worker() if worker_kill else None
                await FAULTS[name](ctx)
                end = time.monotonic()
                history.faults.append(Fault(name, start, end))
                lagging = await fleet.settle(cfg.settle_timeout_s, cfg.lag_timeout_s)
                reseeded: list[str] = []
                if lagging:
                    log.warning("round %d: TASKS replicas not current after the heal: %s", n + 1, lagging)
                    if cfg.reseed and "(no quorum)" not in lagging:
                        began = time.monotonic()  # a node restarts: the checker allows redeliveries
                        reseeded, lagging = lagging, await fleet.reseed(lagging, cfg.settle_timeout_s)
                        history.faults.append(Fault("reseed", began, time.monotonic()))
                if victim is not None:
                    await fleet.restart_worker(victim)
                summary.rounds.append(
                    _Round(name, worker_kill, start, end, lagging=lagging, reseeded=reseeded)
                )
        finally:
            publishing.cancel()
            await asyncio.gather(publishing, return_exceptions=True)
        await fleet.wait_published(history)
        await fleet.drain(history, cfg.drain_timeout_s)
        if cfg.burst:  # each after a small warm-up burst at the same replicas, not measured
            await fleet.burst(history, cfg.burst // 10, replicas=3, tag="w3")
            summary.r3_per_s = await fleet.burst(history, cfg.burst, replicas=3)
            await fleet.burst(history, cfg.burst // 10, replicas=1, tag="w1")
            summary.r1_per_s = await fleet.burst(history, cfg.burst, replicas=1)
        await fleet.collect(history)
    verdict = check(history, grace_s=cfg.settle_timeout_s + cfg.ack_wait_s * (cfg.max_deliver + 2))
    _rates(summary, history, cfg.healthy_s)
    node_loss = [r for r in summary.rounds if r.fault in NODE_LOSS and r.healthy_rate > 0]
    recoveries = [r.recovery_s for r in summary.rounds if r.recovery_s is not None]
    out: dict[str, Any] = {
        "rounds": len(summary.rounds),
        "worker_kills": sum(r.worker_kill for r in summary.rounds),
        "acked": verdict.acked,
        "completed": verdict.completed,
        "dead_lettered": verdict.dead_lettered,
        "dead_lettered_not_poison": verdict.dead_lettered_not_poison,
        "lost": len(verdict.lost),
        "duplicates": verdict.duplicates,
        "indeterminate": verdict.indeterminate,
        "violations": verdict.violations(),
        "throughput_during_fault_ratio": _ratio(node_loss),
        "recovery_s_p50": round(statistics.median(recoveries), 3) if recoveries else None,
        "recovery_s_max": round(max(recoveries), 3) if recoveries else None,
        "by_fault": _by_fault(summary.rounds),
        "lagging_after_heal": [
            {"round": i + 1, "fault": r.fault, "replicas": r.lagging}
            for i, r in enumerate(summary.rounds)
            if r.lagging
        ],
        "reseeded": [
            {"round": i + 1, "fault": r.fault, "replicas": r.reseeded}
            for i, r in enumerate(summary.rounds)
            if r.reseeded
        ],
        "r3_tasks_per_s": round(summary.r3_per_s, 1),
        "r1_tasks_per_s": round(summary.r1_per_s, 1),
        "r3_vs_r1": round(summary.r3_per_s / summary.r1_per_s, 3) if summary.r1_per_s else None,
        "offered_per_s": cfg.rate_per_s,
        "sync_always": cfg.sync_always,
        "seconds": round(time.monotonic() - t0, 1),
    }
    return out


def _rates(summary: _Summary, history: History, healthy_s: float) -> None:
    """Fill each round's healthy and in-fault completion rates and its recovery time."""
    first_end: dict[str, float] = {}
    for e in history.executions:
        first_end[e.task_id] = min(first_end.get(e.task_id, e.end), e.end)
    ends = sorted(first_end.values())
    sent = history.sent
    for r in summary.rounds:
        r.healthy_rate = _count(ends, r.start - healthy_s, r.start) / healthy_s
        r.fault_rate = _count(ends, r.start, r.end) / max(r.end - r.start, 1e-9)
        after = [end for tid, end in first_end.items() if sent.get(tid, -1.0) >= r.start]
        r.recovery_s = min(after) - r.start if after else None


def _count(sorted_values: list[float], lo: float, hi: float) -> int:
    return bisect.bisect_left(sorted_values, hi) - bisect.bisect_left(sorted_values, lo)


def _ratio(rounds: Sequence[_Round]) -> float | None:
    healthy = sum(r.healthy_rate for r in rounds)
    return round(sum(r.fault_rate for r in rounds) / healthy, 3) if healthy else None


def _by_fault(rounds: Sequence[_Round]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r.fault for r in rounds):
        mine = [r for r in rounds if r.fault == name]
        rec = [r.recovery_s for r in mine if r.recovery_s is not None]
        out[name] = {
            "rounds": len(mine),
            "throughput_ratio": _ratio(mine),
            "recovery_s_p50": round(statistics.median(rec), 3) if rec else None,
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m loadtest.chaos [--rounds N] [--workdir DIR]``."""
    p = argparse.ArgumentParser(prog="python -m loadtest.chaos", description=__doc__.split("\n")[0])
    defaults = ChaosConfig()
    p.add_argument("--rounds", type=int, default=defaults.rounds)
    p.add_argument("--rate", type=float, default=defaults.rate_per_s, help="offered tasks per second")
    p.add_argument("--burst", type=int, default=defaults.burst, help="tasks per R3/R1 burst (0: skip)")
    p.add_argument(
        "--faults",
        default=",".join(defaults.faults),
        help="faults the rounds cycle through, comma-separated (default %(default)s)",
    )
    p.add_argument("--workdir", help="keep the cluster's stores, logs and journals here")
    p.add_argument(
        "--no-sync-always", action="store_true", help="nats-server's default fsync (every 2 min) instead"
    )
    p.add_argument(
        "--no-reseed",
        action="store_true",
        help="leave a TASKS replica that does not catch up after a heal as it is (reported, not repaired)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    unknown = [f for f in faults if f not in FAULTS]
    if unknown or not faults:
        p.error(f"--faults: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(FAULTS)}")
    cfg = ChaosConfig(
        rounds=args.rounds,
        faults=faults,
        rate_per_s=args.rate,
        burst=args.burst,
        sync_always=not args.no_sync_always,
        reseed=not args.no_reseed,
    )
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="agentbus-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    summary = asyncio.run(run(cfg, workdir))
    print(f"chaos: workdir {workdir}", file=sys.stderr)
    print(json.dumps(summary), flush=True)
    return 0 if summary["lost"] == 0 and not summary["violations"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
