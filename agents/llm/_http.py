"""A small HTTP/1.1 client on asyncio protocols: keep-alive pool, chunked bodies, TLS, streaming.

Why not httpx or the ``openai`` SDK (which is httpx underneath)? Measured on this
project's 2-core machine against a local server answering after 200 ms, with one
connection per concurrent request (what 2,000 concurrent LLM tasks need):

==========================  ======================  ============================
client                      CPU per request         100 concurrent requests
==========================  ======================  ============================
httpx 0.28 / httpcore 1.0   ~9,500 us               36 req/s of an ideal 500
httpx2 2.16 (pool fixed)    ~1,300 us               356 req/s
aiohttp 3.14                ~250 us                 470 req/s
this module                 ~35-45 us               at the ideal rate
==========================  ======================  ============================

httpcore's pool rescans every connection for every queued request
(``_assign_requests_to_connections``, O(connections x requests): encode/httpx#3215,
encode/httpcore#1035, still open), so its cost grows with concurrency exactly where
an LLM worker lives; the SDK also brings its own retries (which would fight ours and
the breaker's) and pydantic. The Chat Completions surface we need is narrow: POST a
JSON body, read a JSON body or an SSE stream. That is this module: ~200 lines, no
dependency, HTTP/1.1 with keep-alive, ``Content-Length``, ``chunked`` and
read-until-close bodies, TLS via :mod:`ssl`. Not supported: proxies, HTTP/2,
redirects, compression (we send no ``Accept-Encoding``, so servers answer plainly).

A request on a reused keep-alive connection that dies before any response byte
arrived (the server closed it while idle) is resent once on a fresh connection,
as urllib3 does; nothing else is retried here (retries are :mod:`agents.llm.client`'s).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncGenerator
from typing import cast
from urllib.parse import urlsplit

from agentbus.errors import ModelConnectionError

__all__ = ["HTTPPool", "Response"]

_MAX_HEAD_BYTES = 64 * 1024
_MAX_BODY_BYTES = 32 * 1024 * 1024
_SWEEP_S = 0.05  # how often outstanding requests are checked against their deadlines


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


class _Conn(asyncio.Protocol):
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

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self.waiting and not self.buf and self.body is not None and self._whole(data):
            return
        self.buf += data
        try:
            if self.waiting and not self._parse_head():
                return
            self._parse_body()
        except _ProtocolError as exc:
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
        lower = fields.lower()
        length = _field(lower, b"\r\ncontent-length:")
        if length is None or not length.isdigit() or b"\r\ntransfer-encoding:" in lower:
            return False
        start = end + 4
        size = int(length)
        if len(data) != start + size:  # partial, or more than one response: the general path
            return False
        self.keep_alive = _field(lower, b"\r\nconnection:") != b"close"
        self.waiting = False
        self.response = response = Response(200, fields, data[start:])
        self.mode = ""
        if self.done is not None and not self.done.done():
            self.done.set_result(response)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.mode == "close" and not self.waiting:
            self._finish()  # read-until-close body ends here
            return
        if self.mode or self.waiting:
            stale = self.used and not self.got_bytes
            self._fail(_Stale() if stale else ModelConnectionError(f"connection lost: {exc or 'closed'}"))

    # -- parsing ------------------------------------------------------------------------------

    def _parse_head(self) -> bool:
        # only the three fields that frame the body are looked at here; Response.headers
        # parses the rest if someone asks (error answers: Retry-After)
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > _MAX_HEAD_BYTES:
                raise _ProtocolError("response head too large")
            return False
        head = bytes(self.buf[:end])
        del self.buf[: end + 4]
        cut = head.find(b"\r\n")
        status_line, fields = (head, b"") if cut < 0 else (head[:cut], head[cut:])
        code = status_line[9:12]
        if not status_line.startswith(b"HTTP/1.") or not code.isdigit() or status_line[12:13] not in b" ":
            raise _ProtocolError(f"bad status line {status_line[:80]!r}")
        status = int(code)
        if status < 200:  # 100 Continue and friends: skip, the real head follows
            return self._parse_head()
        lower = fields.lower()
        conn = _field(lower, b"\r\nconnection:") or b""
        self.keep_alive = (status_line[7:8] == b"1" and conn != b"close") or conn == b"keep-alive"
        length = _field(lower, b"\r\ncontent-length:")
        if b"chunked" in (_field(lower, b"\r\ntransfer-encoding:") or b""):
            self.mode, self.left = "chunked", -1
        elif length is not None:
            if not length.isdigit():
                raise _ProtocolError(f"bad Content-Length {length[:20]!r}")
            self.mode, self.left = "length", int(length)
        elif status in (204, 304):
            self.mode, self.left = "length", 0
        else:
            self.mode, self.keep_alive = "close", False
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
                        raise _ProtocolError("chunk size line too long")
                    return
                size = bytes(buf[:end]).split(b";", 1)[0].strip()
                del buf[: end + 2]
                try:
                    self.left = int(size, 16)
                except ValueError:
                    raise _ProtocolError(f"bad chunk size {size[:20]!r}") from None
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
                raise _ProtocolError(f"response body over {_MAX_BODY_BYTES} bytes")

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
        assert self.transport is not None
        self.transport.write(request)

    @property
    def reusable(self) -> bool:
        return self.keep_alive and not self.mode and self.transport is not None and not self.closing

    @property
    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _ProtocolError(Exception):
    pass


class _Stale(Exception):
    """A reused connection closed before answering: safe to resend once."""


class HTTPPool:
    """Keep-alive connections to one origin (``scheme://host:port``); one request per connection."""

    def __init__(
        self, base_url: str, *, connect_timeout_s: float = 10.0, user_agent: str = "agentbus"
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.prefix = url.path.rstrip("/")
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        default_port = self.port == (443 if url.scheme == "https" else 80)
        host = self.host if default_port else f"{self.host}:{self.port}"
        self._fixed = f"Host: {host}\r\nUser-Agent: {user_agent}\r\n".encode("latin-1")
        self._connect_timeout_s = connect_timeout_s
        self._starts: dict[tuple[str, str], bytes] = {}
        self._idle: deque[_Conn] = deque()
        self._all: set[_Conn] = set()
        self._busy: set[_Conn] = set()  # waiting for (the rest of) a response
        self._sweeper: asyncio.TimerHandle | None = None

    def _request_bytes(self, path: str, body: bytes, headers: str) -> bytes:
        start = self._starts.get((path, headers))
        if start is None:  # the request line and fixed headers are encoded once per (path, headers)
            line = f"POST {self.prefix}{path} HTTP/1.1\r\n{headers}".encode("latin-1") + self._fixed
            start = self._starts[(path, headers)] = line + b"Content-Length: "
        return b"%s%d\r\n\r\n%s" % (start, len(body), body)

    def _idle_conn(self) -> _Conn | None:
        while self._idle:
            conn = self._idle.pop()  # the most recently used: least likely to have timed out
            if not conn.closing:
                return conn
            self._all.discard(conn)
        return None

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(_Conn, self.host, self.port, ssl=self._ssl)
        except (OSError, TimeoutError) as exc:
            raise ModelConnectionError(f"cannot connect to {self.host}:{self.port}: {exc!r}") from exc
        self._all.add(conn)
        return conn

    def _begin(self, conn: _Conn, request: bytes, *, stream: bool, timeout_s: float) -> None:
        # one sweeping timer per pool, not a timer per request: arming and cancelling a
        # timer cost more than the rest of sending a request (a timeout fires up to
        # _SWEEP_S late, which no LLM call's timeout notices)
        loop = asyncio.get_running_loop()
        conn.deadline = loop.time() + timeout_s
        conn.start(loop, request, stream=stream)
        self._busy.add(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_later(_SWEEP_S, self._sweep)

    def _sweep(self) -> None:
        """Expire every request past its deadline; re-arm while any is outstanding."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in [c for c in self._busy if c.deadline <= now]:
            self._busy.discard(conn)
            conn.expire()
        if self._busy:
            self._sweeper = loop.call_later(_SWEEP_S, self._sweep)

    def _release(self, conn: _Conn) -> None:
        self._busy.discard(conn)
        conn.used = True
        if conn.reusable:
            self._idle.append(conn)
        else:
            conn.close()
            self._all.discard(conn)

    def _discard(self, conn: _Conn) -> None:
        self._busy.discard(conn)
        conn.close()
        self._all.discard(conn)

    async def post(self, path: str, body: bytes, headers: str = "", *, timeout_s: float = 60.0) -> Response:
        """POST ``body`` to ``path`` (``headers``: extra ``Name: value\\r\\n`` lines); TimeoutError
        once ``timeout_s`` passed without the whole response."""
        request = self._request_bytes(path, body, headers)
        for _ in range(2):
            conn = self._idle_conn() or await self._connect()
            self._begin(conn, request, stream=False, timeout_s=timeout_s)
            try:
                assert conn.done is not None
                response = await conn.done  # one wake-up per request: head and body together
            except _Stale:
                self._discard(conn)
                continue
            except BaseException:
                self._discard(conn)  # timeouts and cancellation leave it mid-response
                raise
            self._release(conn)
            return response
        raise ModelConnectionError("server closed the connection twice without answering")

    async def stream(
        self, path: str, body: bytes, headers: str = "", *, timeout_s: float = 60.0
    ) -> tuple[Response, AsyncGenerator[bytes, None]]:
        """POST; the head and an iterator over body bytes (consume or close it). ``timeout_s``
        bounds the whole response: past it the iterator raises TimeoutError."""
        request = self._request_bytes(path, body, headers)
        for _ in range(2):
            conn = self._idle_conn() or await self._connect()
            self._begin(conn, request, stream=True, timeout_s=timeout_s)
            try:
                assert conn.head is not None
                response = await conn.head
            except _Stale:
                self._discard(conn)
                continue
            except BaseException:
                self._discard(conn)
                raise
            return response, self._chunks(conn)
        raise ModelConnectionError("server closed the connection twice without answering")

    async def _chunks(self, conn: _Conn) -> AsyncGenerator[bytes, None]:
        assert conn.chunks is not None
        finished = False
        try:
            while True:
                item = await conn.chunks.get()
                if item is None:
                    finished = True
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self._release(conn) if finished else self._discard(conn)

    @property
    def connections(self) -> int:
        """Open connections (idle and busy)."""
        return len(self._all)

    async def aclose(self) -> None:
        """Close every connection."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()
        self._busy.clear()
        await asyncio.sleep(0)  # let transports run connection_lost
