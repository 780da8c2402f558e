"""One replica process for the multi-process gossip test: ``python -m loadtest.gossip_replica``.

It runs a ``ReplicaState`` with gossip over NATS (optionally dropping and
duplicating a share of its datagrams) and Redis persistence, performs ``--ops``
operations on two tenants, and writes its view to a JSON status file several
times a second. An operation counts as *acknowledged* only once a snapshot
holding it is in Redis, so a ``kill -9`` never loses an acknowledged increment:

* tenant ``acme``: counter ``tasks`` += 1, set ``live`` adds ``<name>-<op>`` and
  removes the element added two operations earlier;
* tenant ``globex``: counter ``tasks`` += 1000 (a leak between tenants shows at once).

With ``--restore`` it first merges every snapshot in Redis (it still takes a new
replica id, see ``state.persistence``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

from bus.connection import connect
from bus.gossip import NatsTransport
from state.gossip import Gossip, GossipConfig
from state.persistence import SnapshotStore, SnapshotWriter
from state.replica import ReplicaState

__all__ = ["main"]

TENANTS = ("acme", "globex")


def _write_status(path: Path, status: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status))
    os.replace(tmp, path)  # readers never see half a file


async def run(args: argparse.Namespace) -> None:
    replica = ReplicaState(args.name)
    store = SnapshotStore.from_url(args.redis_url)
    restored: list[str] = []
    if args.restore:
        loaded = await store.load(replica)
        restored = loaded.merged
    writer = SnapshotWriter(store, replica, interval_s=0.5)
    writer.start()
    nc = await connect(args.nats_url, name=f"gossip-{args.name}")
    transport = NatsTransport(nc, drop_rate=args.drop, duplicate_rate=args.dup, seed=args.seed)
    config = GossipConfig.for_tests() if args.profile == "test" else GossipConfig.lan()
    gossip = Gossip(replica.replica_id, transport, replica, config)
    await gossip.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    acked = {"acme": 0, "globex": 0}
    live_added: list[str] = []
    removed: list[str] = []
    done = False
    status_path = Path(args.status_file)

    def status() -> dict[str, Any]:
        return {
            "name": args.name,
            "replica_id": replica.replica_id,
            "restored": restored,
            "done": done,
            "acked": acked,
            "added": live_added,
            "removed": removed,
            "totals": {t: replica.store(t).counter("tasks").value for t in TENANTS},
            "live": sorted(replica.store("acme").set("live").members()),
            "tenants": replica.tenants(),
            "digest": replica.digest().hex(),
            "peers": gossip.live_peers(),
            "pid": os.getpid(),
        }

    async def report() -> None:
        while True:
            _write_status(status_path, status())
            await asyncio.sleep(0.1)

    reporter = asyncio.create_task(report())
    try:
        pause_s = 1.0 / args.rate
        for op in range(args.ops):
            if stop.is_set():
                break
            acme = replica.store("acme")
            acme.counter("tasks").increment()
            element = f"{args.name}-{args.start_op + op}"
            acme.set("live").add(element)
            if op >= 2:
                old = f"{args.name}-{args.start_op + op - 2}"
                acme.set("live").discard(old)
                removed.append(old)
            replica.store("globex").counter("tasks").increment(1000)
            # not acknowledged until a snapshot holds it; a write that timed out (say, across a
            # SIGSTOP) is simply retried with the then-current state
            for _ in range(50):
                if await writer.flush():
                    break
                await asyncio.sleep(0.1)
            else:
                raise SystemExit(f"{args.name}: snapshot writes keep failing: {writer.last_error}")
            acked["acme"] += 1
            acked["globex"] += 1000
            live_added.append(element)
            await asyncio.sleep(pause_s)
        done = True
        _write_status(status_path, status())
        await stop.wait()
    finally:
        reporter.cancel()
        await gossip.stop()
        await writer.stop()
        await store.close()
        await nc.close()


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run until SIGTERM."""
    p = argparse.ArgumentParser(prog="python -m loadtest.gossip_replica", description=__doc__)
    p.add_argument("--name", required=True)
    p.add_argument("--nats-url", required=True)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--status-file", required=True)
    p.add_argument("--ops", type=int, default=100)
    p.add_argument("--start-op", type=int, default=0, help="first op number (a restored replica goes on)")
    p.add_argument("--rate", type=float, default=50.0, help="operations per second")
    p.add_argument("--drop", type=float, default=0.0, help="share of gossip datagrams dropped")
    p.add_argument("--dup", type=float, default=0.0, help="share of gossip datagrams duplicated")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--profile", choices=["test", "lan"], default="test")
    p.add_argument("--restore", action="store_true", help="merge every snapshot in Redis first")
    asyncio.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    main()
