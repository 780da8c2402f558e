"""HTTPPool's response framing against a raw asyncio server whose bytes and writes each test picks.

The standard library's server (test_llm_http.py) writes head and body separately, so the
whole-response fast path of ``Conn.data_received`` is rarely taken there. Here every
answer is raw bytes written in chosen pieces, and the server waits until the client has
read each piece before writing the next: "one read", "head, then body" and "byte by
byte" are what the client really gets. A pass-through spy on ``Conn`` records each read
and whether the fast path took it, so a test also proves which path it covered.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

from agentbus.errors import ModelConnectionError
from agents.llm._http import _BURST, HTTPPool
from agents.llm._http_conn import Conn as _Conn

LIVENESS_S = 5.0  # a generous bound on anything that should happen at once
T = TypeVar("T")


class Reads:
    """What every ``Conn`` read, and what ``Conn._whole`` answered for each read it saw."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.whole: list[bool] = []
        self.total = 0
        self.changed = asyncio.Event()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Reads:
    seen = Reads()
    data_received = _Conn.data_received
    whole = _Conn._whole

    def spy_data_received(self: _Conn, data: bytes) -> None:
        data_received(self, data)
        seen.chunks.append(data)
        seen.total += len(data)
        seen.changed.set()

    def spy_whole(self: _Conn, data: bytes) -> bool:
        took = whole(self, data)
        seen.whole.append(took)
        return took

    monkeypatch.setattr(_Conn, "data_received", spy_data_received)
    monkeypatch.setattr(_Conn, "_whole", spy_whole)
    return seen


@dataclass
class Answer:
    pieces: list[bytes] | None  # written one by one, each read by the client first; None: never answer
    when: Callable[[], bool] | None = None  # written once this holds (polled), not before


@dataclass
class Request:
    conn: int  # which server-side connection it came on, from 1
    path: str
    body: bytes


@dataclass
class RawServer:
    """Reads HTTP/1.1 requests (head, then a Content-Length body) and answers each with the
    next :class:`Answer` queued for its path; keeps connections open until the client closes."""

    reads: Reads
    answers: defaultdict[str, deque[Answer]] = field(default_factory=lambda: defaultdict(deque))
    requests: list[Request] = field(default_factory=list)
    accepted: int = 0
    closed_by_client: int = 0  # connections that ended with the client's EOF
    errors: list[str] = field(default_factory=list)
    port: int = 0
    _sent: int = 0
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, path: str, *answers: Answer) -> None:
        self.answers[path].extend(answers)

    async def start(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.append(writer)
        self.accepted += 1
        number = self.accepted
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    if not exc.partial:
                        self.closed_by_client += 1
                    return
                line, *fields = head[:-4].decode("latin-1").split("\r\n")
                _, path, _ = line.split(" ")
                length = 0
                for f in fields:
                    name, _, value = f.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                self.requests.append(Request(number, path, body))
                if not self.answers[path]:
                    self.errors.append(f"no answer queued for {path}")
                    return
                answer = self.answers[path].popleft()
                if answer.pieces is None:
                    continue  # never answered; the next read sees the client's EOF
                if answer.when is not None:
                    await until(answer.when, f"the condition to answer {path}")
                for piece in answer.pieces:
                    writer.write(piece)
                    await writer.drain()
                    self._sent += len(piece)
                    await self._read_by_client()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except TimeoutError:  # the client never read a piece, or an answer's condition never held
            self.errors.append(f"connection {number}: timed out answering")
        finally:
            self._handlers.discard(task)

    async def _read_by_client(self) -> None:
        """Until the client has read every byte written so far (so pieces are never merged)."""
        async with asyncio.timeout(LIVENESS_S):
            while self.reads.total < self._sent:
                self.reads.changed.clear()
                await self.reads.changed.wait()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=LIVENESS_S)
        for writer in self._writers:
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        if self._server is not None:
            await self._server.wait_closed()


@pytest.fixture
async def server(reads: Reads) -> AsyncIterator[RawServer]:
    srv = await RawServer(reads).start()
    try:
        yield srv
    finally:
        await srv.aclose()
    assert srv.errors == []


@pytest.fixture
async def pool(server: RawServer) -> AsyncIterator[HTTPPool]:
    p = HTTPPool(server.url)
    try:
        yield p
    finally:
        await p.aclose()


# -- responses and how they are cut ------------------------------------------------------------


def response(body: bytes, *fields: str, status: str = "200 OK", version: str = "HTTP/1.1") -> bytes:
    """A response with a Content-Length body and ``fields`` (``"Name: value"``) before it."""
    lines = [f"{version} {status}", *fields, f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*chunks: bytes, length_too: bool = False) -> bytes:
    """A chunked 200 (chunk extensions, the last chunk, a trailer); ``length_too``: also a
    Content-Length header counting the encoded body, which Transfer-Encoding overrides."""
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\nX-Trailer: t\r\n\r\n"
    fields = b"Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
    if length_too:
        fields += b"Content-Length: %d\r\n" % len(body)
    return b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n" + body


def one_write(raw: bytes) -> list[bytes]:
    return [raw]


def head_then_body(raw: bytes) -> list[bytes]:
    end = raw.index(b"\r\n\r\n") + 4
    return [raw[:end], raw[end:]] if end < len(raw) else [raw]


def byte_by_byte(raw: bytes) -> list[bytes]:
    return [raw[i : i + 1] for i in range(len(raw))]


Cut = Callable[[bytes], list[bytes]]
SPLIT = [pytest.param(head_then_body, id="head-then-body"), pytest.param(byte_by_byte, id="byte-by-byte")]
EVERY_CUT = [pytest.param(one_write, id="one-write"), *SPLIT]

JSON = "Content-Type: application/json"


async def until(check: Callable[[], bool], what: str) -> None:
    """Poll ``check`` within the liveness bound."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LIVENESS_S
    while loop.time() < deadline:
        if check():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"no {what} within {LIVENESS_S} s")


async def finished(aw: Awaitable[T]) -> asyncio.Future[T]:
    """``aw``, done within the liveness bound (its outcome is then the caller's to check).

    Not ``asyncio.wait_for``: its own TimeoutError would pass for the client's.
    """
    fut = asyncio.ensure_future(aw)
    await asyncio.wait({fut}, timeout=LIVENESS_S)
    if not fut.done():
        fut.cancel()
        raise AssertionError(f"not done within the liveness bound ({LIVENESS_S} s)")
    return fut


# -- (a) the fast path -------------------------------------------------------------------------


async def test_a_whole_response_in_one_read_takes_the_fast_path_and_keeps_the_connection(
    server: RawServer, pool: HTTPPool, reads: Reads
) -> None:
    first = response(b'{"n":1}', JSON, "X-Request-ID: r-1")
    second = response(b'{"n":22}', JSON, "X-Request-ID: r-2")
    server.answer("/chat", Answer(one_write(first)), Answer(one_write(second)))

    r1 = await pool.post("/chat", b'{"q":1}', "Content-Type: application/json\r\n")
    r2 = await pool.post("/chat", b'{"q":2}', "Content-Type: application/json\r\n")

    assert (r1.status, r1.body) == (200, b'{"n":1}')
    assert (r2.status, r2.body) == (200, b'{"n":22}')
    assert r1.headers["x-request-id"] == "r-1"
    assert r2.headers["content-type"] == "application/json"
    assert r2.headers["content-length"] == "8"
    assert reads.chunks == [first, second]  # each response really came in one read
    assert reads.whole == [True, True]  # ... and the fast path parsed both
    assert [(q.conn, q.body) for q in server.requests] == [(1, b'{"q":1}'), (1, b'{"q":2}')]
    assert server.accepted == 1
    assert pool.connections == 1
    assert len(pool._idle) == 1


# -- (b) the same response, cut differently ----------------------------------------------------


@pytest.mark.parametrize("cut", SPLIT)
async def test_a_response_split_across_reads_equals_the_one_read_response(
    server: RawServer, pool: HTTPPool, reads: Reads, cut: Cut
) -> None:
    raw = response(b'{"answer":"same"}', JSON, "X-Mixed-Case: Value")
    server.answer("/chat", Answer(one_write(raw)), Answer(cut(raw)))

    fast = await pool.post("/chat", b"1")
    slow = await pool.post("/chat", b"2")

    assert reads.chunks == [raw, *cut(raw)]
    assert reads.whole == [True, False]  # the first read of a split response is no whole response
    assert (slow.status, slow.body, slow.headers) == (fast.status, fast.body, fast.headers)
    assert (slow.status, slow.body) == (200, b'{"answer":"same"}')
    assert slow.headers["x-mixed-case"] == "Value"
    assert server.accepted == 1
    assert pool.connections == 1


# -- (c) Connection: close ---------------------------------------------------------------------


@pytest.mark.parametrize("cut", EVERY_CUT)
async def test_connection_close_makes_the_connection_single_use(
    server: RawServer, pool: HTTPPool, reads: Reads, cut: Cut
) -> None:
    # the server keeps its end open: only the header can tell the client not to reuse it
    raw = response(b"last one", "Connection: close")
    server.answer("/chat", Answer(cut(raw)), Answer(one_write(response(b"fresh"))))

    r = await pool.post("/chat", b"")

    assert (r.status, r.body) == (200, b"last one")
    assert reads.whole == [cut is one_write]
    assert pool.connections == 0
    assert not pool._idle
    await until(lambda: server.closed_by_client == 1, "the client to close the connection")
    again = await pool.post("/chat", b"")
    assert again.body == b"fresh"
    assert server.accepted == 2
    assert [q.conn for q in server.requests] == [1, 2]


# -- (d) chunked -------------------------------------------------------------------------------


@pytest.mark.parametrize("length_too", [False, True], ids=["chunked", "chunked-and-length"])
@pytest.mark.parametrize("cut", EVERY_CUT)
async def test_a_chunked_response_is_assembled_by_the_general_path(
    server: RawServer, pool: HTTPPool, reads: Reads, cut: Cut, length_too: bool
) -> None:
    raw = chunked(b'{"choices":', b"[", b"]}", length_too=length_too)
    server.answer("/chat", Answer(cut(raw)), Answer(one_write(response(b"next"))))

    r = await pool.post("/chat", b"")

    assert (r.status, r.body) == (200, b'{"choices":[]}')
    assert reads.whole[0] is False
    assert r.headers["transfer-encoding"] == "chunked"
    nxt = await pool.post("/chat", b"")  # the trailer was consumed: the connection is clean
    assert nxt.body == b"next"
    assert server.accepted == 1


# -- (e) error statuses and header names -------------------------------------------------------


@pytest.mark.parametrize("cut", EVERY_CUT)
async def test_a_429_keeps_its_retry_after_whatever_the_header_case(
    server: RawServer, pool: HTTPPool, reads: Reads, cut: Cut
) -> None:
    body = b'{"error":{"message":"slow down"}}'
    raw = response(body, JSON, "rEtRy-AfTeR:   2  ", "X-Dup: a", "x-DUP: b", status="429 Too Many Requests")
    server.answer("/chat", Answer(cut(raw)), Answer(one_write(response(b"ok"))))

    r = await pool.post("/chat", b"")

    assert (r.status, r.body) == (429, body)
    assert r.headers["retry-after"] == "2"
    assert r.headers["x-dup"] == "b"  # a repeated header keeps its last value
    assert "rEtRy-AfTeR" not in r.headers
    assert reads.whole[0] is False  # not a 200: the general path
    assert (await pool.post("/chat", b"")).body == b"ok"  # an error answer leaves the connection usable
    assert server.accepted == 1


# -- (f) one response after another on one connection ------------------------------------------


@pytest.mark.parametrize("cut", EVERY_CUT)
async def test_consecutive_responses_on_one_connection_do_not_bleed(
    server: RawServer, pool: HTTPPool, reads: Reads, cut: Cut
) -> None:
    # the first body holds a whole response of its own: only Content-Length may frame it
    inner = response(b"not me")
    first = response(b"[" + inner + b"]", JSON)
    second = response(b"second", JSON)
    third = response(b"", JSON)
    server.answer("/chat", Answer(cut(first)), Answer(cut(second)), Answer(cut(third)))

    bodies = [(await pool.post("/chat", b"%d" % i)).body for i in range(3)]

    assert bodies == [b"[" + inner + b"]", b"second", b""]
    assert reads.chunks == [*cut(first), *cut(second), *cut(third)]
    assert [q.body for q in server.requests] == [b"0", b"1", b"2"]
    assert {q.conn for q in server.requests} == {1}
    assert pool.connections == 1


# -- other answers the fast path must leave alone ----------------------------------------------


async def test_an_http_1_0_response_is_not_kept_alive(
    server: RawServer, pool: HTTPPool, reads: Reads
) -> None:
    server.answer("/chat", Answer(one_write(response(b"old", version="HTTP/1.0"))))
    server.answer("/chat", Answer(one_write(response(b"new"))))

    r = await pool.post("/chat", b"")

    assert (r.status, r.body) == (200, b"old")
    assert reads.whole == [False]
    assert pool.connections == 0
    assert (await pool.post("/chat", b"")).body == b"new"
    assert server.accepted == 2


async def test_an_interim_response_in_the_same_read_is_skipped(
    server: RawServer, pool: HTTPPool, reads: Reads
) -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\n" + response(b"after continue")
    server.answer("/chat", Answer(one_write(raw)), Answer(one_write(response(b"again"))))

    r = await pool.post("/chat", b"")

    assert (r.status, r.body) == (200, b"after continue")
    assert (await pool.post("/chat", b"")).body == b"again"
    assert reads.whole == [False, True]  # the next whole 200 takes the fast path again
    assert server.accepted == 1


async def test_bytes_after_a_response_make_the_connection_single_use(
    server: RawServer, pool: HTTPPool, reads: Reads
) -> None:
    # a server out of step (here: a stray second response in the same write) must not
    # answer the next request with its leftovers
    server.answer("/chat", Answer(one_write(response(b"first") + response(b"stray"))))
    server.answer("/chat", Answer(one_write(response(b"second"))))

    assert (await pool.post("/chat", b"1")).body == b"first"
    assert pool.connections == 0
    assert (await pool.post("/chat", b"2")).body == b"second"
    assert server.accepted == 2


async def test_bytes_arriving_on_an_idle_connection_retire_it(
    server: RawServer, pool: HTTPPool, reads: Reads
) -> None:
    # the second piece is written once the client has read the whole first response: it
    # reaches an idle connection, which must not be handed to the next request
    server.answer("/chat", Answer([response(b"first"), b"unasked"]))
    server.answer("/chat", Answer(one_write(response(b"second"))))

    assert (await pool.post("/chat", b"1")).body == b"first"
    await _until(lambda: reads.chunks[-1:] == [b"unasked"])
    assert (await pool.post("/chat", b"2")).body == b"second"
    assert [q.conn for q in server.requests] == [1, 2]


# -- (g) deadlines, swept ----------------------------------------------------------------------


async def test_a_response_that_never_comes_times_out_and_discards_the_connection(
    server: RawServer, pool: HTTPPool
) -> None:
    server.answer("/chat", Answer(None), Answer(one_write(response(b"later"))))
    loop = asyncio.get_running_loop()

    started = loop.time()
    post = await finished(pool.post("/chat", b"", timeout_s=0.2))
    waited = loop.time() - started

    with pytest.raises(TimeoutError):
        post.result()
    assert waited >= 0.2  # not before the deadline (the upper bound is finished()'s liveness bound)
    assert pool.connections == 0
    await until(lambda: server.closed_by_client == 1, "the client to close the timed-out connection")
    assert (await pool.post("/chat", b"")).body == b"later"
    assert server.accepted == 2


async def test_a_response_that_stalls_after_its_head_times_out(server: RawServer, pool: HTTPPool) -> None:
    raw = response(b"0123456789")
    server.answer("/chat", Answer([raw[:-4]]))  # all but the last 4 body bytes, then nothing

    post = await finished(pool.post("/chat", b"", timeout_s=0.2))

    with pytest.raises(TimeoutError):
        post.result()
    assert pool.connections == 0
    await until(lambda: server.closed_by_client == 1, "the client to close the stalled connection")


async def test_a_stream_that_stalls_raises_timeout_from_its_iterator(
    server: RawServer, pool: HTTPPool
) -> None:
    raw = chunked(b"data: a\n\n", b"data: b\n\n")
    stall = raw.index(b"data: b")
    server.answer("/chat", Answer([raw[:stall]]))
    got: list[bytes] = []

    head, chunks = await pool.stream("/chat", b"", timeout_s=0.3)

    async def read_all() -> None:
        async for c in chunks:
            got.append(c)

    reading = await finished(read_all())
    with pytest.raises(TimeoutError):
        reading.result()
    assert head.status == 200
    assert got == [b"data: a\n\n"]
    assert pool.connections == 0


async def test_the_sweep_expires_only_requests_past_their_deadline(server: RawServer, pool: HTTPPool) -> None:
    # /late is answered only after the client gave up on /never and closed its connection:
    # by then the sweep has run with /late outstanding, and must have left it alone
    server.answer("/never", Answer(None))
    late_answer = one_write(response(b"late but in time"))
    server.answer("/late", Answer(late_answer, when=lambda: server.closed_by_client == 1))

    never = asyncio.ensure_future(pool.post("/never", b"", timeout_s=0.2))
    late = await finished(pool.post("/late", b"", timeout_s=LIVENESS_S * 2))

    assert never.done()
    with pytest.raises(TimeoutError):
        never.result()
    assert late.result().body == b"late but in time"
    assert server.accepted == 2
    assert pool.connections == 1  # the late one's connection is kept


async def test_a_shorter_timeout_than_every_outstanding_one_still_fires_in_time(
    server: RawServer, pool: HTTPPool
) -> None:
    # the pool's one timer waits for the earliest deadline: a request whose deadline comes
    # before the ones already waiting must move it forward
    server.answer("/never", Answer(None), Answer(None))
    patient = asyncio.ensure_future(pool.post("/never", b"", timeout_s=3600))
    await _until(lambda: server.accepted == 1)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await pool.post("/never", b"", timeout_s=0.2)
    assert time.monotonic() - started < LIVENESS_S  # not an hour
    assert not patient.done()  # its own deadline is far away
    patient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await patient


async def test_requests_started_together_are_written_in_bursts_and_each_gets_its_answer(
    server: RawServer, pool: HTTPPool
) -> None:
    n = 3 * _BURST + 3  # full bursts written at once, the rest at the end of the loop pass
    for i in range(n):
        server.answer(f"/p{i}", Answer(one_write(response(b"answer %d" % i))))

    answers = await asyncio.wait_for(
        asyncio.gather(*(pool.post(f"/p{i}", b"q%d" % i) for i in range(n))), LIVENESS_S
    )

    assert [a.body for a in answers] == [b"answer %d" % i for i in range(n)]
    assert sorted((q.path, q.body) for q in server.requests) == sorted(
        (f"/p{i}", b"q%d" % i) for i in range(n)
    )
    assert server.accepted == n  # one request per connection at a time
    assert pool._outbox == []


async def test_requests_still_unwritten_when_the_pool_closes_fail_instead_of_hanging(
    server: RawServer, pool: HTTPPool
) -> None:
    server.answer("/warm", Answer(one_write(response(b"ok"))), Answer(one_write(response(b"ok"))))
    await asyncio.gather(pool.post("/warm", b""), pool.post("/warm", b""))  # two idle connections
    calls = [asyncio.ensure_future(pool.post("/never", b"", timeout_s=3600)) for _ in range(2)]
    await asyncio.sleep(0)  # both reuse an idle connection and wait in the outbox
    assert len(pool._outbox) == 2
    await pool.aclose()

    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), LIVENESS_S)
    assert all(isinstance(r, ModelConnectionError) for r in results), results
    assert [q.path for q in server.requests] == ["/warm", "/warm"]  # nothing was written


async def test_an_idle_connection_outlives_its_last_requests_deadline(
    server: RawServer, pool: HTTPPool
) -> None:
    server.answer("/chat", Answer(one_write(response(b"one"))), Answer(one_write(response(b"two"))))

    assert (await pool.post("/chat", b"", timeout_s=0.5)).body == b"one"
    await asyncio.sleep(0.8)  # the deadline and several sweeps pass while the connection is idle

    assert pool.connections == 1
    assert (await pool.post("/chat", b"", timeout_s=0.5)).body == b"two"
    assert server.accepted == 1


async def _until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait (a liveness bound, not a speed check) until ``check()`` holds."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# -- max_connections ---------------------------------------------------------------------------


async def test_a_capped_pool_runs_every_request_on_its_few_connections_in_arrival_order(
    server: RawServer,
) -> None:
    released = False
    for i in range(6):
        server.answer("/q", Answer(one_write(response(b"a%d" % i)), when=lambda: released))
    pool = HTTPPool(server.url, max_connections=2)
    try:
        calls = [asyncio.ensure_future(pool.post("/q", b"q%d" % i)) for i in range(6)]
        await _until(lambda: len(server.requests) == 2)
        assert {r.body for r in server.requests} == {b"q0", b"q1"}  # the first two, the rest wait
        released = True
        answers = await asyncio.wait_for(asyncio.gather(*calls), LIVENESS_S)
    finally:
        await pool.aclose()
    assert sorted(a.body for a in answers) == [b"a%d" % i for i in range(6)]
    assert server.accepted == 2  # never a third connection
    assert [r.body for r in server.requests][2:4] in ([b"q2", b"q3"], [b"q3", b"q2"])


async def test_a_request_waiting_for_a_connection_times_out_within_its_own_timeout(
    server: RawServer,
) -> None:
    server.answer("/never", Answer(None))
    server.answer("/q", Answer(one_write(response(b"after"))))
    pool = HTTPPool(server.url, max_connections=1)
    try:
        holder = asyncio.ensure_future(pool.post("/never", b"", timeout_s=3600))
        await _until(lambda: server.accepted == 1)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pool.post("/q", b"", timeout_s=0.2), LIVENESS_S)
        holder.cancel()  # frees the one connection (discarded mid-response)
        with pytest.raises(asyncio.CancelledError):
            await holder
        assert (await asyncio.wait_for(pool.post("/q", b""), LIVENESS_S)).body == b"after"
    finally:
        await pool.aclose()
    assert server.accepted == 2


async def test_requests_waiting_on_a_dead_server_fail_at_once_not_at_their_timeout() -> None:
    with socket_bound() as port:  # bound, never listening: connections are refused
        pool = HTTPPool(f"http://127.0.0.1:{port}", max_connections=1)
        calls = [pool.post("/q", b"", timeout_s=3600) for _ in range(3)]
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), LIVENESS_S)
        await pool.aclose()
    assert all(isinstance(r, ModelConnectionError) for r in results), results


async def test_closing_a_capped_pool_fails_the_requests_waiting_for_a_connection(
    server: RawServer,
) -> None:
    server.answer("/never", Answer(None))
    pool = HTTPPool(server.url, max_connections=1)
    holder = asyncio.ensure_future(pool.post("/never", b"", timeout_s=3600))
    waiting = asyncio.ensure_future(pool.post("/q", b"", timeout_s=3600))
    await _until(lambda: server.accepted == 1)
    await pool.aclose()
    results = await asyncio.wait_for(asyncio.gather(holder, waiting, return_exceptions=True), LIVENESS_S)
    assert isinstance(results[1], ModelConnectionError), results
    assert [r.path for r in server.requests] == ["/never"]


@contextlib.contextmanager
def socket_bound() -> Iterator[int]:
    """A loopback port that is bound but not listening, for as long as the block runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]
