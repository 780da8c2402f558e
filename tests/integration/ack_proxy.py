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
import random

__all__ = ["AckDropProxy"]


class AckDropProxy:
    """Forwards to ``127.0.0.1:<upstream_port>``, dropping ``share`` of the acks (seeded)."""

    def __init__(self, upstream_port: int, *, share: float, seed: int = 21) -> None:
        self._upstream = upstream_port
        self._share = share
        self._random = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.acks = 0
        self.dropped = 0

    async def start(self) -> AckDropProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream)
        self._writers.update((writer, up_writer))
        pumps = [
            asyncio.create_task(self._client_to_server(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for w in (writer, up_writer):
            w.close()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    async def _client_to_server(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line = await reader.readuntil(b"\r\n")
            op = line[:5].upper()
            if not (op.startswith(b"PUB ") or op.startswith(b"HPUB ")):
                writer.write(line)
                await writer.drain()
                continue
            args = line[:-2].split(b" ")
            size = int(args[-1])
            body = await reader.readexactly(size + 2)
            subject = args[1]
            if op.startswith(b"PUB ") and subject.startswith(b"$JS.ACK."):
                self.acks += 1
                if self._random.random() < self._share:
                    self.dropped += 1
                    line, body = self._without_ack(args, body)
            writer.write(line + body)
            await writer.drain()

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

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
