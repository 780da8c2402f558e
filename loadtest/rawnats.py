"""A bare NATS protocol connection that sends frames no well-behaved client would build.

The poison suite (tests/chaos) and the fleet fuzz (:mod:`loadtest.fuzz_fleet`) need to
publish on subjects with invalid UTF-8, with header blocks nats-py cannot parse and
with envelopes the Publisher refuses. nats-py validates all of that on the way out, so
this speaks the protocol over a plain asyncio socket: ``CONNECT``, ``PUB``/``HPUB``
with exact byte counts, ``PING``/``PONG`` to know the server has read everything sent
before. Replies (JetStream's publish acks) arrive on a ``SUB`` of our own and are
matched by reply subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from typing import Any

__all__ = ["RawNats", "hpub_frame", "pub_frame"]

_CONNECT = b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1,"name":"rawnats"}\r\n'


def pub_frame(subject: bytes, payload: bytes, reply: bytes = b"") -> bytes:
    """``PUB <subject> [reply] <#bytes>`` and the payload."""
    head = b"PUB " + subject + (b" " + reply if reply else b"") + b" %d\r\n" % len(payload)
    return head + payload + b"\r\n"


def hpub_frame(subject: bytes, header_block: bytes, payload: bytes, reply: bytes = b"") -> bytes:
    """``HPUB <subject> [reply] <#header bytes> <#total bytes>``, the header block as given, the payload."""
    sizes = b" %d %d\r\n" % (len(header_block), len(header_block) + len(payload))
    head = b"HPUB " + subject + (b" " + reply if reply else b"") + sizes
    return head + header_block + payload + b"\r\n"


class RawNats:
    """One protocol-level client connection; :meth:`open` it, send frames, :meth:`close` it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.info: dict[str, Any] = {}
        self.errors: list[str] = []
        """``-ERR`` lines the server sent (it closes the connection after most of them)."""
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task[None] | None = None
        self._pongs: asyncio.Queue[None] = asyncio.Queue()
        self._inbox = b"_RAW." + secrets.token_hex(6).encode()
        self._replies: dict[bytes, asyncio.Future[bytes]] = {}
        self._next = 0

    @classmethod
    def for_url(cls, url: str) -> RawNats:
        """From ``nats://host:port``."""
        hostport = url.split("://", 1)[-1].rsplit("@", 1)[-1]
        host, _, port = hostport.partition(":")
        return cls(host or "127.0.0.1", int(port or 4222))

    @property
    def max_payload(self) -> int:
        """What the server's INFO allows (1 MiB when unknown)."""
        return int(self.info.get("max_payload", 1 << 20))

    @property
    def closed(self) -> bool:
        """True once the server dropped us (or :meth:`close` ran)."""
        return self._read_task is None or self._read_task.done()

    async def open(self, timeout_s: float = 10.0) -> RawNats:
        """Connect, read INFO, send CONNECT and a subscription for replies, wait for the PONG."""
        async with asyncio.timeout(timeout_s):
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            line = await self._reader.readline()
            if not line.startswith(b"INFO "):
                raise ConnectionError(f"not a NATS server: {line[:80]!r}")
            self.info = json.loads(line[5:])
            self._writer.write(_CONNECT + b"SUB " + self._inbox + b".* 1\r\nPING\r\n")
            self._read_task = asyncio.create_task(self._read_loop(), name="rawnats-read")
            await self._pongs.get()
        return self

    async def close(self) -> None:
        """Close the socket and stop reading."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._read_task
        for fut in self._replies.values():
            if not fut.done():
                fut.cancel()

    async def send(self, frame: bytes) -> None:
        """Write ``frame`` as is (raises ConnectionError once the server closed the connection)."""
        if self._writer is None or self.closed:
            raise ConnectionError("raw connection closed")
        self._writer.write(frame)
        await self._writer.drain()

    async def ping(self, timeout_s: float = 10.0) -> None:
        """Round trip: when this returns, the server has processed every frame sent before."""
        await self.send(b"PING\r\n")
        async with asyncio.timeout(timeout_s):
            await self._pongs.get()

    def new_reply(self) -> tuple[bytes, asyncio.Future[bytes]]:
        """A reply subject of ours and the future its first message resolves (a JetStream ack)."""
        self._next += 1
        subject = self._inbox + b".%d" % self._next
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._replies[subject] = fut
        return subject, fut

    async def publish(
        self,
        subject: bytes,
        payload: bytes,
        *,
        header_block: bytes | None = None,
        ack_timeout_s: float | None = None,
    ) -> dict[str, Any] | None:
        """``PUB`` (or ``HPUB`` with ``header_block``); with ``ack_timeout_s``, wait for and
        return JetStream's ack (``{"stream": ..., "seq": ...}`` or ``{"error": ...}``), None if
        none came in time (no stream captures the subject, or the server refused the frame)."""
        reply, fut = self.new_reply() if ack_timeout_s is not None else (b"", None)
        if header_block is None:
            frame = pub_frame(subject, payload, reply)
        else:
            frame = hpub_frame(subject, header_block, payload, reply)
        await self.send(frame)
        if fut is None or ack_timeout_s is None:
            return None
        try:
            data = await asyncio.wait_for(fut, ack_timeout_s)
        except (TimeoutError, asyncio.CancelledError):
            return None
        finally:
            self._replies.pop(reply, None)
        try:
            ack: dict[str, Any] = json.loads(data)
        except ValueError:
            return {"error": {"description": data[:200].decode(errors="replace")}}
        return ack

    async def _read_loop(self) -> None:
        assert self._reader is not None
        assert self._writer is not None
        reader, writer = self._reader, self._writer
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                op = line.split(b" ", 1)[0].rstrip(b"\r\n").upper()
                if op == b"PING":
                    writer.write(b"PONG\r\n")
                elif op == b"PONG":
                    self._pongs.put_nowait(None)
                elif op == b"-ERR":
                    self.errors.append(line[5:].strip().decode(errors="replace"))
                elif op in (b"MSG", b"HMSG"):
                    parts = line.split()
                    size = int(parts[-1])
                    body = (await reader.readexactly(size + 2))[:size]
                    if op == b"HMSG":
                        body = body[int(parts[-2]) :]
                    fut = self._replies.get(parts[1])
                    if fut is not None and not fut.done():
                        fut.set_result(body)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            return
