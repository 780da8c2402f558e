"""The HTTP/1.1 client against an independent server (the standard library's), on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agents.llm._http import HTTPPool


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, bytes, int]] = []  # (path, body, client port)

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Handler.seen.append((self.path, body, self.client_address[1]))
        mode = self.path.rsplit("/", 1)[-1]
        if mode == "length":
            self._head(200, {"Content-Length": str(len(body) + 4)})
            self.wfile.write(b"got " + body)
        elif mode == "chunked":
            self._head(200, {"Transfer-Encoding": "chunked"})
            for piece in (b"data: a\n\n", b"", b"data: b\n\n"):
                if piece:
                    self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.flush()
            self.wfile.write(b"0\r\nX-Trailer: t\r\n\r\n")
        elif mode == "close":
            self._head(200, {"Connection": "close"})
            self.wfile.write(b"until the end")
            self.close_connection = True
        elif mode == "drop":  # answers, then silently closes the kept-alive connection
            self._head(200, {"Content-Length": "2"})
            self.wfile.write(b"ok")
            self.close_connection = True
        elif mode == "slow":
            time.sleep(1.0)
            self._head(200, {"Content-Length": "0"})

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = False  # server_close() joins the handler threads: none outlives the test
    httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
    Handler.seen = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


async def test_content_length_and_keep_alive(server: str) -> None:
    pool = HTTPPool(server)
    try:
        for i in range(3):
            r = await pool.post("/length", b"x%d" % i, "Content-Type: text/plain\r\n")
            assert (r.status, r.body) == (200, b"got x%d" % i)
        assert [s[0] for s in Handler.seen] == ["/v1/length"] * 3
        assert len({s[2] for s in Handler.seen}) == 1  # one connection, reused
        assert pool.connections == 1
    finally:
        await pool.aclose()


async def test_chunked_stream_with_extensions_and_trailers(server: str) -> None:
    pool = HTTPPool(server)
    try:
        head, chunks = await pool.stream("/chunked", b"{}")
        body = b"".join([c async for c in chunks])
        assert head.status == 200
        assert body == b"data: a\n\ndata: b\n\n"
        again = await pool.post("/length", b"y")  # the connection is clean for the next request
        assert again.body == b"got y"
        assert len({s[2] for s in Handler.seen}) == 1
    finally:
        await pool.aclose()


async def test_body_until_close(server: str) -> None:
    pool = HTTPPool(server)
    try:
        r = await pool.post("/close", b"")
        assert r.body == b"until the end"
        assert pool.connections == 0  # not kept
    finally:
        await pool.aclose()


async def test_stale_keep_alive_connection_is_resent_once(server: str) -> None:
    pool = HTTPPool(server)
    try:
        assert (await pool.post("/drop", b"1")).body == b"ok"
        await _until(lambda: not pool._idle or pool._idle[0].closed)
        assert (await pool.post("/length", b"2")).body == b"got 2"
        assert len({s[2] for s in Handler.seen}) == 2
    finally:
        await pool.aclose()


async def test_timeout_discards_the_connection(server: str) -> None:
    pool = HTTPPool(server)
    try:
        with pytest.raises(TimeoutError):
            await pool.post("/slow", b"", timeout_s=0.2)
        assert pool.connections == 0
    finally:
        await pool.aclose()


async def _until(check: object, timeout_s: float = 5.0) -> None:
    import asyncio

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
