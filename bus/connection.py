"""Connecting to NATS with reconnect settings fit for long-running workers.

nats-py gives up after 60 reconnect attempts by default; a worker must not, and it
must learn about disconnects and reconnects (the pull consumer re-issues its pull
requests after a reconnect: the server forgets them, nats.py #504).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client

from agentbus.errors import BusError

__all__ = ["connect"]

log = logging.getLogger("agentbus.bus")

Callback = Callable[[], Awaitable[None]]


async def connect(
    url: str,
    *,
    name: str = "agentbus",
    on_disconnect: Callback | None = None,
    on_reconnect: Callback | None = None,
    connect_timeout_s: float = 5.0,
    reconnect_wait_s: float = 0.5,
    first_connect_timeout_s: float | None = None,
) -> Client:
    """Connect with unlimited reconnects; callbacks observe connection changes.

    With unlimited reconnects nats-py also retries the *first* connection forever;
    ``first_connect_timeout_s`` bounds that (commands a person waits for set it) and
    raises :class:`~agentbus.errors.BusError`. None waits for the server (workers).
    """

    async def disconnected() -> None:
        if not (nc.is_closed or nc.is_draining):
            log.warning("nats disconnected")
        if on_disconnect is not None:
            await on_disconnect()

    async def reconnected() -> None:
        log.warning("nats reconnected")
        if on_reconnect is not None:
            await on_reconnect()

    async def error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    nc = Client()
    first = nc.connect(
        url,
        name=name,
        connect_timeout=connect_timeout_s,  # type: ignore[arg-type]  # nats-py accepts floats
        reconnect_time_wait=reconnect_wait_s,  # type: ignore[arg-type]
        max_reconnect_attempts=-1,
        allow_reconnect=True,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
        error_cb=error,
        # keep acks published while reconnecting; 8 MiB is ~200k acks
        pending_size=8 * 1024 * 1024,
    )
    try:
        await asyncio.wait_for(first, first_connect_timeout_s)
    except TimeoutError:
        with contextlib.suppress(Exception):
            await nc.close()
        raise BusError(f"cannot connect to NATS at {url} within {first_connect_timeout_s:g}s") from None
    return nc
