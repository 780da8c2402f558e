"""Gossip convergence benchmark: rounds until every replica holds every update.

For each cluster size N in (3, 5, 7, 10), replicas on the in-memory network in
virtual time (LAN defaults: a 200 ms round, fan-out 3) settle their membership,
then every replica increments a counter at the same instant; we count gossip
rounds until all N replicas agree. Averaged over seeds, without loss and with 10 %
loss plus 5 % duplication (push-pull repairs what retransmission misses).

``python -m loadtest.bench_gossip`` prints one JSON line; ``run()`` returns it as a
dict (``python -m loadtest --suite state`` includes ``convergence_rounds`` from it).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

from state.gossip import GossipConfig
from state.gossip.testing import SimCluster

__all__ = ["SIZES", "convergence_rounds", "run"]

SIZES = (3, 5, 7, 10)


async def _one(n: int, seed: int, loss: float, duplicate: float, config: GossipConfig) -> float:
    sim = SimCluster(seed=seed, config=config, step_s=config.gossip_interval_s / 4)
    for i in range(n):
        await sim.add(f"n{i}")
    await sim.run_for(3 * config.probe_interval_s)  # membership settles first
    sim.network.set_faults(loss=loss, duplicate=duplicate)
    for d in sim.delegates.values():
        d.increment("tasks")
    took = await sim.run_until(lambda: all(d.value("tasks") == n for d in sim.delegates.values()), 120.0)
    if took is None:
        raise RuntimeError(f"N={n} seed={seed}: no convergence in 120 simulated seconds")
    return took / config.gossip_interval_s


def convergence_rounds(
    n: int, *, seeds: int = 20, loss: float = 0.0, duplicate: float = 0.0, config: GossipConfig | None = None
) -> list[float]:
    """Gossip rounds to full convergence for ``n`` replicas, one figure per seed."""
    cfg = config or GossipConfig.lan()
    return [asyncio.run(_one(n, seed, loss, duplicate, cfg)) for seed in range(seeds)]


def run(*, seeds: int = 20, sizes: tuple[int, ...] = SIZES) -> dict[str, Any]:
    """The benchmark's result: mean and max rounds per N, clean and lossy."""
    started = time.perf_counter()
    clean = {n: convergence_rounds(n, seeds=seeds) for n in sizes}
    lossy = {n: convergence_rounds(n, seeds=seeds, loss=0.10, duplicate=0.05) for n in sizes}
    return {
        "suite": "state",
        "bench": "gossip_convergence",
        "gossip_interval_ms": GossipConfig.lan().gossip_interval_s * 1000,
        "fanout": GossipConfig.lan().gossip_nodes,
        "seeds": seeds,
        "convergence_rounds": {str(n): round(statistics.mean(r), 2) for n, r in clean.items()},
        "convergence_rounds_max": {str(n): round(max(r), 2) for n, r in clean.items()},
        "convergence_rounds_loss10_dup5": {str(n): round(statistics.mean(r), 2) for n, r in lossy.items()},
        "convergence_rounds_loss10_dup5_max": {str(n): round(max(r), 2) for n, r in lossy.items()},
        "wall_s": round(time.perf_counter() - started, 2),
    }


if __name__ == "__main__":
    print(json.dumps(run()))
