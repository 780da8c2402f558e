"""The state suite: the cost of our CRDTs against the ``crdts`` package, and gossip convergence.

``python -m loadtest.bench_state [--quick]`` prints one JSON line. Costs are the
best of three timed loops, in microseconds per operation, measured in this
process (so they compare with each other, not across machines). The ``crdts``
figures need the package (a dev dependency); without it they are ``null``.

``convergence_rounds`` (gossip rounds until N replicas agree, keyed by N, clean and
with 10 % loss + 5 % duplication) is the gossip side's measurement, taken from
``loadtest.bench_gossip.run`` (or the ``convergence=`` callable given).
"""

from __future__ import annotations

import argparse
import importlib
import json
import timeit
import uuid
from collections.abc import Callable
from typing import Any

from loadtest import bench_gossip
from state.counters import GCounter, PNCounter
from state.lww import LWWRegister
from state.orset import ORSet
from state.replica import ReplicaState

__all__ = ["bench_state", "main"]


def _us(fn: Callable[[], object], n: int) -> float:
    """Microseconds per call, best of three."""
    return round(min(timeit.repeat(fn, number=n, repeat=3)) / n * 1e6, 3)


def _ours(n: int) -> dict[str, float]:
    replica = ReplicaState("bench")
    store = replica.store("bench")
    counter = store.counter("tasks")
    pn = store.pncounter("budget")
    g, p, s, reg = GCounter(), PNCounter(), ORSet(), LWWRegister()
    adds = iter(range(10**9))
    out = {
        "counter_increment_us": _us(counter.increment, n),
        "record_task_us": _us(lambda: replica.record_task("bench", ok=True), n),
        "pncounter_decrement_us": _us(pn.decrement, n),
        "gcounter_increment_with_delta_us": _us(lambda: g.increment("r1"), n),
        "pncounter_increment_with_delta_us": _us(lambda: p.increment("r1"), n),
        "orset_add_us": _us(lambda: s.add("r1", f"e{next(adds) % 1000}"), n // 4),
        "lww_write_us": _us(lambda: reg.write("r1", b"\xa1x", 1), n),
    }
    # merging: a one-slot delta into a 10-replica counter, pure and through the Delegate (bytes)
    target = GCounter({f"r{i}": i for i in range(10)})
    delta = GCounter().increment("r3", 5)
    out["gcounter_merge_delta_us"] = _us(lambda: target.merge(delta), n)
    peer = ReplicaState("peer")
    src = ReplicaState("src")
    src.store("bench").counter("tasks").increment()
    blob = src.pending()
    assert blob is not None
    out["delegate_merge_delta_us"] = _us(lambda: peer.merge(blob), n // 10)
    big = ReplicaState("big")
    for i in range(100):
        big.store(f"t{i % 10}").counter(f"c{i}").increment(i)
    full = big.full_state()
    out["delegate_merge_full_100_counters_us"] = _us(lambda: peer.merge(full), n // 100)
    # what gossip calls: the merge rules of state._guard on top (issue 18)
    out["guarded_merge_delta_us"] = _us(lambda: peer.merge_from(blob, src.replica_id, delta=True), n // 10)
    out["guarded_merge_full_100_counters_us"] = _us(
        lambda: peer.merge_from(full, big.replica_id, delta=False), n // 100
    )
    return out


def _theirs(n: int) -> dict[str, Any]:
    try:
        crdts = importlib.import_module("crdts")
    except ImportError:
        return {"crdts": None}
    shared = uuid.uuid4().bytes
    a = crdts.Counter(clock=crdts.ScalarClock(uuid=shared))
    b = crdts.Counter(clock=crdts.ScalarClock(uuid=shared))
    ua, ub = a.increase(1), b.increase(1)
    a.update(ub)
    b.update(ua)
    cs = crdts.CounterSet(uuid=shared)
    pn = crdts.PNCounter()
    orset = crdts.ORSet(clock=crdts.ScalarClock(uuid=shared))
    reg = crdts.LWWRegister("r", clock=crdts.ScalarClock(uuid=shared))
    adds = iter(range(10**9))
    source = crdts.CounterSet(uuid=shared)
    source.increase(b"r3", 5)
    history = source.history()
    sink = crdts.CounterSet(uuid=shared)
    m = max(n // 20, 50)  # they are slow: fewer rounds give the same precision
    return {
        "crdts": {
            "version": getattr(crdts, "__version__", "0.0.4"),
            "counter_concurrent_plus1_plus1": a.read(),  # 1: the lost increment the docstring cites
            "counterset_increase_us": _us(lambda: cs.increase(b"r1", 1), m),
            "pncounter_increase_us": _us(lambda: pn.increase(1), m),
            "orset_observe_us": _us(lambda: orset.observe(f"e{next(adds) % 1000}"), m),
            "lwwregister_write_us": _us(lambda: reg.write(b"x", b"r1"), m),
            "counterset_merge_one_slot_us": _us(lambda: [sink.update(u) for u in history], m),
        }
    }


def _convergence(quick: bool) -> dict[str, Any]:
    result = bench_gossip.run(seeds=5 if quick else 20)
    return {k: v for k, v in result.items() if k not in ("suite", "bench", "wall_s")}


def bench_state(
    *,
    quick: bool = False,
    iterations: int | None = None,
    convergence: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run the suite and return every figure (``convergence_rounds`` keyed by replica count)."""
    n = iterations or (20_000 if quick else 200_000)
    ours = _ours(n)
    theirs = _theirs(n)
    out: dict[str, Any] = {"suite": "state", "ours": ours, **theirs}
    if theirs["crdts"] is not None:
        t = theirs["crdts"]
        ours_us = ours["counter_increment_us"]
        out["speedup_counter_increment"] = round(t["counterset_increase_us"] / ours_us, 1)
        out["speedup_orset_add"] = round(t["orset_observe_us"] / ours["orset_add_us"], 1)
    out.update(convergence() if convergence is not None else _convergence(quick))
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the suite's one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_state", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args(argv)
    print(json.dumps(bench_state(quick=args.quick)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
