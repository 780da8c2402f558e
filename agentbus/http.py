"""The HTTP endpoint of every agentbus process (worker and scaler): ``/healthz``, ``/readyz``, ``/metrics``.

A few dozen lines over ``asyncio.start_server`` instead of a web framework: three
GET routes, one connection per scrape or probe, served on the process's own loop
so ``/readyz`` tells the truth about that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

__all__ = ["HealthServer"]

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HealthServer:
    """Serves probes and metrics; ``ready()`` returns ``(is_ready, detail)``."""

    def __init__(
        self,
        *,
        registry: CollectorRegistry,
        ready: Callable[[], tuple[bool, str]],
        alive: Callable[[], tuple[bool, str]],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._registry = registry
        self._ready = ready
        self._alive = alive
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when 0 was asked for)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Start listening."""
        self._server = await asyncio.start_server(self._serve, self._host, self._port)

    async def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            method, target = head.split(b" ", 2)[:2]
            status, ctype, body = self._route(method.decode(), target.decode().split("?", 1)[0])
            writer.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                % (status, _REASONS[status].encode(), ctype.encode(), len(body))
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _route(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method != "GET":
            return 405, "text/plain", b"GET only\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if path in ("/healthz", "/readyz"):
            ok, detail = (self._alive if path == "/healthz" else self._ready)()
            return (200 if ok else 503), "text/plain", detail.encode() + b"\n"
        return 404, "text/plain", b"not found\n"
