"""How a :class:`~bus.fair.FairConsumer` learns which tenants a kind has: the stream's
backlogged subjects every ``discover_s``, and every tenant consumer active within
``idle_s`` (the tenants other workers serve). Each new tenant gets a lane: its consumer
created (``provision``), an inbox token, and a standing request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client

from bus._lanes import Lane, backlogged, sort_backlogged, tenant_consumers

__all__: list[str] = []

log = logging.getLogger("agentbus.bus")

_MAX_NEW_LANES = 256  # consumers created per discovery round: a flood of new tenants is paced
_CONCURRENT_CREATES = 32
_REFRESH_ROUNDS = 25  # discovery rounds between two readings of the tenant consumers (5 s)


class _Discovery:
    """The discovery half of :class:`~bus.fair.FairConsumer` (which sets these attributes)."""

    _nc: Client
    _stream: str
    _kind: str
    _filter: str
    _prefix: str
    _lanes: dict[str, Lane]
    _by_token: dict[str, Lane]
    _next_token: int
    _alone: bool
    _weights: dict[str, int]
    _max_lanes: int
    _idle_s: float
    _discover_s: float
    _provision: Callable[[str], Awaitable[str]]
    _on_invalid: Callable[[], Awaitable[object]] | None
    fetching: bool

    def _settle(self, lane: Lane) -> None:
        raise NotImplementedError

    def _schedule_pull(self) -> None:
        raise NotImplementedError

    async def discover(self) -> int:
        """Read the subjects of this kind that hold messages; open a lane for each new tenant.
        Returns how many lanes were opened."""
        try:
            subjects = await backlogged(self._nc, self._stream, self._filter)
        except Exception as exc:  # the next round tries again
            log.debug("discovering tenants of %s failed: %s", self._kind, exc)
            return 0
        room = min(_MAX_NEW_LANES, self._max_lanes - len(self._lanes))
        known, new, invalid = sort_backlogged(subjects, self._lanes, self._kind, room)
        for lane in known:
            if not (lane.credit or lane.standing or lane.pending):
                lane.pending = 1  # one message tells the lane its backlog
                self._settle(lane)
        opened = 0
        for start in range(0, len(new), _CONCURRENT_CREATES):  # a round trip each: in parallel
            batch = new[start : start + _CONCURRENT_CREATES]
            names = await asyncio.gather(*(self._provision(t) for t, _ in batch), return_exceptions=True)
            for (tenant, subject), name in zip(batch, names, strict=True):
                if isinstance(name, BaseException):
                    log.warning("cannot create the consumer of %s: %s", ascii(subject[:200]), name)
                elif subject not in self._lanes or self._lanes[subject].gone:
                    self._open(tenant, subject, name)
                    opened += 1
            if self.fetching:
                self._schedule_pull()
        if invalid and self._on_invalid is not None:
            try:
                await self._on_invalid()
            except Exception as exc:  # the next round tries again
                log.warning("dead-lettering invalid subjects of %s failed: %s", self._kind, exc)
        if self.fetching:
            self._schedule_pull()
        return opened

    async def _open_existing(self) -> None:
        """A lane (a standing request) for every tenant consumer active within ``idle_s``: the
        tenants other workers serve, so their next task goes to whichever worker has room."""
        try:
            existing = await tenant_consumers(self._nc.jetstream(), self._kind, active_s=self._idle_s)
        except Exception as exc:  # discovery finds the backlogged ones anyway
            log.debug("listing the consumers of %s failed: %s", self._kind, exc)
            return
        for tenant, subject, name in existing[: max(0, self._max_lanes - len(self._lanes))]:
            if subject not in self._lanes:
                self._open(tenant, subject, name, pending=0)  # a standing request finds out

    def _open(self, tenant: str, subject: str, consumer: str, *, pending: int = 1) -> None:
        old = self._lanes.get(subject)
        if old is not None:  # gone, with messages still running: let them finish under it
            self._by_token.pop(old.inbox.rsplit(".", 1)[1], None)
        token = str(self._next_token)
        self._next_token += 1
        lane = Lane(
            tenant,
            subject,
            f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{consumer}",
            f"{self._prefix}.{token}",
            max(1, self._weights.get(tenant, 1)),
        )
        if old is not None:
            lane.held = old.held
        lane.pending = pending  # 1: one message tells the lane its backlog
        self._lanes[subject] = lane
        if self._alone:  # no longer: the first lane asks by what the server says it has
            for first in self._lanes.values():
                if first is not lane:
                    first.pending = max(first.pending, first.credit + 1)
                    self._settle(first)
        self._alone = len(self._lanes) == 1
        self._by_token[token] = lane
        self._settle(lane)

    async def _discover_forever(self) -> None:
        for rounds in itertools.count(1):
            await asyncio.sleep(self._discover_s)
            if not self.fetching:
                continue
            with contextlib.suppress(Exception):
                if rounds % _REFRESH_ROUNDS == 0:  # tenants other workers served: a standing request here too
                    await self._open_existing()
                await self.discover()
