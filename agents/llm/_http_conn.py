"""One HTTP/1.1 client connection as an asyncio protocol: the response parser of :mod:`agents.llm._http`.

A :class:`Conn` sends one request at a time and frames the response by
``Content-Length``, ``chunked`` or read-until-close; the body is collected (a
non-streamed request resolves ``done`` once, head and body together) or pushed to a
queue as it arrives (streaming: ``head`` resolves first). A whole ``200`` answer in
one read, the common case, is parsed straight from that read. Only the headers that
frame the body are looked at here; :class:`Response` parses the others on first use.
Bytes that arrive when no response is expected make the connection unusable (a
server that sends more than it was asked for would otherwise answer the next request
with the leftovers).
"""

from __future__ import annotations

import asyncio
from typing import cast

from agentbus.errors import ModelConnectionError

__all__ = ["Conn", "ProtocolError", "Response", "Stale"]

_MAX_HEAD_BYTES = 64 * 1024
_MAX_BODY_BYTES = 32 * 1024 * 1024


class Response:
    """Status, lower-cased headers (parsed on first use) and (for a non-streamed request) the body."""

    __slots__ = ("_fields", "_headers", "body", "status")

    def __init__(self, status: int, fields: bytes, body: bytes = b"") -> None:
        self.status = status
        self._fields = fields  # the head after the status line, starting with CRLF
        self._headers: dict[str, str] | None = None
        self.body = body

    @property
    def headers(self) -> dict[str, str]:
        """Header names lower-cased; a repeated header keeps its last value."""
        if self._headers is None:
            self._headers = {}
            for line in self._fields.decode("latin-1").split("\r\n"):
                name, colon, value = line.partition(":")
                if colon:
                    self._headers[name.strip().lower()] = value.strip()
        return self._headers


def _field(fields: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (``b"\\r\\nname:"``, lower case) in lower-cased ``fields``."""
    at = fields.find(name)
    if at < 0:
        return None
    at += len(name)
    end = fields.find(b"\r\n", at)
    return fields[at : end if end >= 0 else len(fields)].strip()


def _framing(status: int, http11: bool, lower: bytes) -> tuple[str, int, bool]:
    """How a response's body is delimited, from its lower-cased header block: ``("chunked", -1)``,
    ``("length", n)`` or ``("close", 0)`` (read until the server closes), and keep-alive."""
    conn = _field(lower, b"\r\nconnection:") or b""
    keep_alive = (http11 and conn != b"close") or conn == b"keep-alive"
    if b"chunked" in (_field(lower, b"\r\ntransfer-encoding:") or b""):
        return "chunked", -1, keep_alive
    length = _field(lower, b"\r\ncontent-length:")
    if length is not None:
        if not length.isdigit():
            raise ProtocolError(f"bad Content-Length {length[:20]!r}")
        return "length", int(length), keep_alive
    if status in (204, 304):
        return "length", 0, keep_alive
    return "close", 0, False


class Conn(asyncio.Protocol):
    """One keep-alive connection: parses one response at a time, pushing body bytes to a queue."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.response: Response | None = None  # the current response, once its head is parsed
        self.waiting = False  # a request was sent and its response's head has not been parsed
        self.head: asyncio.Future[Response] | None = None  # streaming: resolved with the head
        self.chunks: asyncio.Queue[bytes | BaseException | None] | None = None
        self.body: bytearray | None = None  # collected here when not streaming
        self.done: asyncio.Future[Response] | None = None  # not streaming: resolved at the end
        self.mode = ""  # "length", "chunked", "close" or "" (no response in progress)
        self.left = 0  # bytes left of the body (length) or of the current chunk (chunked)
        self.in_trailer = False
        self.keep_alive = True
        self.used = False  # served a response before: a silent close means "stale", resend once
        self.got_bytes = False
        self.deadline = 0.0  # loop.time() by which the whole response must have arrived
        self.closed = False  # closed by us or lost: never reused

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if not self.waiting and not self.mode:  # nothing was asked: the server is out of step
            self.keep_alive = False
            self.close()
            return
        if self.waiting and not self.buf and self.body is not None and self._whole(data):
            return
        self.buf += data
        try:
            if self.waiting and not self._parse_head():
                return
            self._parse_body()
        except ProtocolError as exc:
            self._fail(ModelConnectionError(f"bad HTTP response: {exc}"))
            self.close()

    def _whole(self, data: bytes) -> bool:
        """The common case, a whole ``200 OK`` with a Content-Length body in one read: parse it
        straight from ``data``, with no buffer. False (nothing consumed) for anything else."""
        end = data.find(b"\r\n\r\n")
        if end < 0 or not data.startswith(b"HTTP/1.1 200 "):
            return False
        cut = data.find(b"\r\n")
        fields = data[cut:end]
        try:
            mode, size, keep_alive = _framing(200, True, fields.lower())
        except ProtocolError:
            return False  # the general path reports it
        start = end + 4
        if mode != "length" or len(data) != start + size:  # partial, or more than one response
            return False
        self.keep_alive = keep_alive
        self.waiting = False
        self.response = response = Response(200, fields, data[start:])
        self.mode = ""
        if self.done is not None and not self.done.done():
            self.done.set_result(response)
        return True

    def eof_received(self) -> None:
        self.closed = True  # the transport closes itself next (returning None says so)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.mode == "close" and not self.waiting:
            self._finish()  # read-until-close body ends here
            return
        if self.mode or self.waiting:
            stale = self.used and not self.got_bytes
            self._fail(Stale() if stale else ModelConnectionError(f"connection lost: {exc or 'closed'}"))

    # -- parsing ------------------------------------------------------------------------------

    def _parse_head(self) -> bool:
        # only the three fields that frame the body are looked at here; Response.headers
        # parses the rest if someone asks (error answers: Retry-After)
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > _MAX_HEAD_BYTES:
                raise ProtocolError("response head too large")
            return False
        head = bytes(self.buf[:end])
        del self.buf[: end + 4]
        cut = head.find(b"\r\n")
        status_line, fields = (head, b"") if cut < 0 else (head[:cut], head[cut:])
        code = status_line[9:12]
        if not status_line.startswith(b"HTTP/1.") or not code.isdigit() or status_line[12:13] not in b" ":
            raise ProtocolError(f"bad status line {status_line[:80]!r}")
        status = int(code)
        if status < 200:  # 100 Continue and friends: skip, the real head follows
            return self._parse_head()
        self.mode, self.left, self.keep_alive = _framing(status, status_line[7:8] == b"1", fields.lower())
        self.waiting = False
        self.response = Response(status, fields)
        if self.head is not None:
            self.head.set_result(self.response)
        return True

    def _parse_body(self) -> None:
        buf = self.buf
        if self.mode == "length":
            take = min(self.left, len(buf))
            if take:
                self._emit(bytes(buf[:take]))
                del buf[:take]
                self.left -= take
            if self.left == 0:
                self._finish()
        elif self.mode == "close":
            if buf:
                self._emit(bytes(buf))
                buf.clear()
        elif self.mode == "chunked":
            self._parse_chunks()

    def _parse_chunks(self) -> None:
        buf = self.buf
        while True:
            if self.in_trailer:  # after the last chunk: trailer lines until an empty one
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                line = bytes(buf[:end])
                del buf[: end + 2]
                if not line:
                    self.in_trailer = False
                    self._finish()
                    return
            elif self.left < 0:  # expecting a chunk-size line
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 1024:
                        raise ProtocolError("chunk size line too long")
                    return
                size = bytes(buf[:end]).split(b";", 1)[0].strip()
                del buf[: end + 2]
                try:
                    self.left = int(size, 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size {size[:20]!r}") from None
                if self.left == 0:
                    self.in_trailer = True
            else:  # inside a chunk's data, then its CRLF
                if self.left > 0:
                    take = min(self.left, len(buf))
                    if not take:
                        return
                    self._emit(bytes(buf[:take]))
                    del buf[:take]
                    self.left -= take
                    if self.left:
                        return
                if len(buf) < 2:
                    return
                del buf[:2]
                self.left = -1

    def _emit(self, data: bytes) -> None:
        if self.chunks is not None:
            self.chunks.put_nowait(data)
        elif self.body is not None:
            self.body += data
            if len(self.body) > _MAX_BODY_BYTES:
                raise ProtocolError(f"response body over {_MAX_BODY_BYTES} bytes")

    def _finish(self) -> None:
        self.mode = ""
        if self.chunks is not None:
            self.chunks.put_nowait(None)
        if self.done is not None and not self.done.done() and self.response is not None:
            self.response.body = bytes(self.body or b"")
            self.done.set_result(self.response)

    def _fail(self, exc: BaseException) -> None:
        self.mode = ""
        self.waiting = False
        for fut in (self.head, self.done):
            if fut is not None and not fut.done():
                fut.set_exception(exc)
                fut.exception()  # whoever awaits it still raises; nobody awaiting is not a leak
        if self.chunks is not None:
            self.chunks.put_nowait(exc)

    # -- use ----------------------------------------------------------------------------------

    def expire(self) -> None:
        self._fail(TimeoutError())
        self.close()

    def start(self, loop: asyncio.AbstractEventLoop, request: bytes, *, stream: bool) -> None:
        self.response = None
        self.waiting = True
        self.head = loop.create_future() if stream else None
        self.done = None if stream else loop.create_future()
        self.body = None if stream else bytearray()
        self.chunks = asyncio.Queue() if stream else None
        self.got_bytes = False

    @property
    def reusable(self) -> bool:
        """Between responses, open and willing to serve another request."""
        return self.keep_alive and not self.mode and not self.buf and not self.closed

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class ProtocolError(Exception):
    pass


class Stale(Exception):
    """A reused connection closed before answering: safe to resend once."""
