"""Gossip over core NATS: implements ``state.delegate.Transport``.

Each replica listens on ``agentbus.gossip.<node>``; broadcasts (join announcements,
leave notices) go to ``agentbus.gossip.all``. Core NATS is at-most-once, which is
what gossip assumes anyway. The sender travels in a header, so the payload stays
the opaque bytes gossip handed over. ``drop_rate``/``duplicate_rate`` inject faults
at the sender for chaos tests (10 % dropped, 5 % duplicated).
"""

from __future__ import annotations

import logging
import random

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus.subjects import check_token
from state.delegate import MessageHandler

__all__ = ["GOSSIP_PREFIX", "HDR_GOSSIP_FROM", "NatsTransport"]

log = logging.getLogger("agentbus.bus.gossip")

GOSSIP_PREFIX = "agentbus.gossip"
HDR_GOSSIP_FROM = "Agentbus-Gossip-From"
_BROADCAST = "all"


class NatsTransport:
    """Unreliable datagrams between replicas over one NATS connection (owned by the caller)."""

    def __init__(
        self,
        nc: Client,
        *,
        prefix: str = GOSSIP_PREFIX,
        drop_rate: float = 0.0,
        duplicate_rate: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self._nc = nc
        self._prefix = prefix
        self._drop_rate = drop_rate
        self._duplicate_rate = duplicate_rate
        self._rng = random.Random(seed)
        self._node: str | None = None
        self._subs: list[Subscription] = []
        self.dropped = 0
        self.duplicated = 0

    def subject(self, node: str) -> str:
        """The inbox subject of ``node``."""
        return f"{self._prefix}.{node}"

    async def start(self, node: str, on_message: MessageHandler) -> None:
        """Subscribe to our inbox and to broadcasts."""
        if check_token("node", node) == _BROADCAST:
            raise ValueError(f"{_BROADCAST!r} is reserved for broadcasts")
        self._node = node

        async def deliver(msg: Msg) -> None:
            sender = (msg.headers or {}).get(HDR_GOSSIP_FROM)
            if not sender:
                return
            try:
                await on_message(sender, msg.data)
            except Exception:  # a bad datagram must not kill the subscription
                log.exception("gossip handler failed")

        self._subs = [
            await self._nc.subscribe(self.subject(node), cb=deliver),
            await self._nc.subscribe(self.subject(_BROADCAST), cb=deliver),
        ]

    async def send(self, node: str, data: bytes) -> None:
        """Publish to one replica's inbox."""
        await self._publish(self.subject(node), data)

    async def broadcast(self, data: bytes) -> None:
        """Publish to every replica (ourselves included)."""
        await self._publish(self.subject(_BROADCAST), data)

    async def _publish(self, subject: str, data: bytes) -> None:
        if self._node is None:
            return
        if self._drop_rate and self._rng.random() < self._drop_rate:
            self.dropped += 1
            return
        copies = 1
        if self._duplicate_rate and self._rng.random() < self._duplicate_rate:
            self.duplicated += 1
            copies = 2
        headers = {HDR_GOSSIP_FROM: self._node}
        for _ in range(copies):
            await self._nc.publish(subject, data, headers=headers)

    async def close(self) -> None:
        """Unsubscribe (the connection stays open: it belongs to the caller)."""
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception as e:  # closed connection: nothing left to undo
                log.debug("gossip unsubscribe: %s", e)
        self._subs = []
        self._node = None
