"""A loopback TCP proxy to nats-server that loses a share of the client's JetStream acks.

It parses the client-to-server protocol (``PUB``/``HPUB`` frames; every other line passes
as is). An ack is a publish to ``$JS.ACK.<stream>.<consumer>...``: a lost ``+ACK`` is simply
not forwarded; a lost ``+NXT <pull request>`` (an ack and a pull in one frame) loses the
ack only: its pull request goes on to ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>``,
as if the ack had been dropped and the pull sent on its own. The server then redelivers the
task after ``ack_wait``, exactly what a lost ack does in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

from loadtest.chaos_net import TcpProxy

__all__ = ["AckDropProxy", "PubFilterProxy"]


class PubFilterProxy(TcpProxy):
    """Forwards a client's protocol to ``127.0.0.1:<upstream_port>``; each ``PUB``/``HPUB`` frame
    goes through :meth:`_pub` (which may drop or rewrite it), every other line passes as is."""

    async def _client_to_server(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, OSError):  # the client went away
            while True:
                line = await reader.readuntil(b"\r\n")
                op = line[:5].upper()
                if op.startswith(b"PUB ") or op.startswith(b"HPUB "):
                    args = line[:-2].split(b" ")
                    body = await reader.readexactly(int(args[-1]) + 2)
                    line = self._pub(op.startswith(b"HPUB "), args, line, body)
                writer.write(line)
                await writer.drain()

    def _pub(self, headers: bool, args: list[bytes], line: bytes, body: bytes) -> bytes:
        """The bytes to forward for one frame (``args``: its control line split; ``body`` with
        its CRLF): by default the frame unchanged."""
        return line + body


class AckDropProxy(PubFilterProxy):
    """Forwards to ``127.0.0.1:<upstream_port>``, dropping ``share`` of the acks (seeded), at
    most ``budget`` of them (None: no limit)."""

    def __init__(
        self, upstream_port: int, *, share: float, seed: int = 21, budget: int | None = None
    ) -> None:
        super().__init__(upstream_port)
        self._share = share
        self._budget = budget
        self._random = random.Random(seed)
        self.acks = 0
        self.dropped = 0

    def _pub(self, headers: bool, args: list[bytes], line: bytes, body: bytes) -> bytes:
        if headers or not args[1].startswith(b"$JS.ACK."):
            return line + body
        self.acks += 1
        within = self._budget is None or self.dropped < self._budget
        if within and self._random.random() < self._share:
            self.dropped += 1
            line, body = self._without_ack(args, body)
        return line + body

    @staticmethod
    def _without_ack(args: list[bytes], body: bytes) -> tuple[bytes, bytes]:
        """The frame with its ack taken out: nothing, or the pull request of a ``+NXT``."""
        payload = body[:-2]
        if not payload.startswith(b"+NXT"):
            return b"", b""
        request = payload[4:].strip()
        tokens = args[1].split(b".")
        stream, consumer = tokens[2], tokens[3]
        reply = args[2] if len(args) == 4 else b""
        line = b"PUB $JS.API.CONSUMER.MSG.NEXT.%s.%s %s %d\r\n" % (stream, consumer, reply, len(request))
        return line, request + b"\r\n"
