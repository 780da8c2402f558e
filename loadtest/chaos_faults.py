"""The faults of the chaos suite, each injected into a live 3-node cluster and healed again.

A fault is a coroutine function ``(ctx) -> None`` that injects, holds for ``ctx.hold_s``
and heals; the runner times it. The node chosen is the ``TASKS`` stream's leader (the
interesting one) except for ``kill_follower``. Every fault heals in a way a production
cluster would: a killed node restarts with its store (its JetStream files recovered), a
paused one continues, a cut one is reconnected; ``restart_all`` kills all three nodes
and starts them again from their stores, with no clock change (processes only).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.js import JetStreamContext

from bus.cluster import NatsCluster
from bus.topology import TASKS_STREAM
from loadtest.chaos_net import RouteNet

__all__ = ["FAULTS", "FaultContext", "stream_roles"]


@dataclass(slots=True)
class FaultContext:
    """What a fault acts on."""

    cluster: NatsCluster
    net: RouteNet
    js: JetStreamContext
    hold_s: float
    pause_s: float = 10.0


async def stream_roles(ctx: FaultContext) -> tuple[int, list[int]]:
    """``(leader, followers)`` of stream TASKS, as node indexes (retried while an election runs)."""
    for _ in range(100):
        try:
            info = await ctx.js.stream_info(TASKS_STREAM)
        except Exception:
            await asyncio.sleep(0.2)
            continue
        if info.cluster is not None and info.cluster.leader:
            leader = ctx.cluster.index_of(info.cluster.leader)
            return leader, [i for i in range(ctx.cluster.size) if i != leader]
        await asyncio.sleep(0.2)
    raise RuntimeError("stream TASKS has no leader")


async def _kill_and_restart(ctx: FaultContext, node: int) -> None:
    await asyncio.to_thread(ctx.cluster.kill, node)
    await asyncio.sleep(ctx.hold_s)
    await asyncio.to_thread(ctx.cluster.restart, node)


async def kill_leader(ctx: FaultContext) -> None:
    """``kill -9`` the stream leader; restart it with its data after ``hold_s``."""
    leader, _ = await stream_roles(ctx)
    await _kill_and_restart(ctx, leader)


async def kill_follower(ctx: FaultContext) -> None:
    """``kill -9`` a follower of the stream; restart it with its data after ``hold_s``."""
    _, followers = await stream_roles(ctx)
    await _kill_and_restart(ctx, followers[0])


async def pause(ctx: FaultContext) -> None:
    """SIGSTOP the stream leader for ``pause_s`` (10 s by default), then SIGCONT."""
    leader, _ = await stream_roles(ctx)
    ctx.cluster.pause(leader)
    try:
        await asyncio.sleep(ctx.pause_s)
    finally:
        ctx.cluster.resume(leader)


async def partition(ctx: FaultContext) -> None:
    """Cut the stream leader off from both peers for ``hold_s``; its clients stay connected to it."""
    leader, _ = await stream_roles(ctx)
    ctx.net.isolate([leader])
    try:
        await asyncio.sleep(ctx.hold_s)
    finally:
        ctx.net.heal()


async def restart_all(ctx: FaultContext) -> None:
    """``kill -9`` all three nodes, then start them again from their stores."""
    for i in range(ctx.cluster.size):
        await asyncio.to_thread(ctx.cluster.kill, i)
    await asyncio.sleep(min(ctx.hold_s, 1.0))
    await asyncio.gather(*(asyncio.to_thread(ctx.cluster.restart, i) for i in range(ctx.cluster.size)))


FAULTS: dict[str, Callable[[FaultContext], Awaitable[None]]] = {
    "kill_leader": kill_leader,
    "kill_follower": kill_follower,
    "pause": pause,
    "partition": partition,
    "restart_all": restart_all,
}
"""Every fault by name, in the order rounds cycle through them."""
