"""A scripted OpenAI-compatible server: real HTTP/1.1 on a free loopback port, replayed replies.

Tests and benchmarks talk to it over TCP exactly as to vLLM or a hosted API; it
fakes the model, not the protocol. ``POST <prefix>/chat/completions`` answers with
the next :class:`Reply` of the script (JSON, an SSE stream, an error status with
``Retry-After``, a malformed body, a hang-up), or, once the script is empty, with
``default(request)``. ``POST <prefix>/embeddings`` answers every input with the
deterministic vector of :class:`~agents.kb.embed.HashEmbedder` (``embed_dim`` dimensions,
so a test knows which text is near which), or with the next of ``script_embeddings(...)``
when some are queued. Every request is recorded with its arrival time. Helpers
build the usual replies: :func:`text`, :func:`tool_calls`, :func:`stream_text`,
:func:`stream_tool_calls`, :func:`status`, :func:`malformed`.

``python -m agents.llm.testing --delay-ms 200`` runs the benchmark's model (a plan
with one tool call, then an answer) and prints ``listening <url>`` when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from agents.kb.embed import HashEmbedder

__all__ = [
    "Recorded",
    "Reply",
    "ScriptedLLM",
    "bench_model",
    "malformed",
    "status",
    "stream_text",
    "stream_tool_calls",
    "text",
    "tool_calls",
]


@dataclass
class Reply:
    """One scripted answer."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    events: list[bytes] | None = None  # SSE: each is sent as one chunk after ``event_delay_s``
    delay_s: float = 0.0  # before the head is sent
    event_delay_s: float = 0.0
    hang_up: bool = False  # close the connection instead of answering (or, with events, after them)
    _wire: bytes = field(default=b"", repr=False, compare=False)

    def wire(self) -> bytes:
        """The whole response (a reply without events), built once: the benchmark sends it
        thousands of times a second, and this server's CPU is taken from the worker's."""
        if not self._wire:
            self._wire = _head(self, chunked=False) + self.body
        return self._wire


@dataclass
class Recorded:
    """A request as the server saw it."""

    at: float  # time.monotonic() on arrival
    body: dict[str, Any]
    headers: dict[str, str]


def _completion(message: dict[str, Any], finish: str, usage: tuple[int, int]) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-scripted",
            "object": "chat.completion",
            "model": "scripted",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)},
        }
    ).encode()


def _calls(calls: Sequence[tuple[str, str | dict[str, Any]]]) -> list[dict[str, Any]]:
    return [
        {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)},
        }
        for i, (name, args) in enumerate(calls)
    ]


def text(content: str, *, usage: tuple[int, int] = (10, 5), delay_s: float = 0.0) -> Reply:
    """A JSON answer with ``content``."""
    body = _completion({"role": "assistant", "content": content}, "stop", usage)
    return Reply(body=body, headers={"Content-Type": "application/json"}, delay_s=delay_s)


def tool_calls(
    calls: Sequence[tuple[str, str | dict[str, Any]]],
    *,
    usage: tuple[int, int] = (10, 5),
    delay_s: float = 0.0,
) -> Reply:
    """A JSON answer calling tools: ``(name, arguments)``, arguments as JSON text (maybe malformed)."""
    body = _completion(
        {"role": "assistant", "content": None, "tool_calls": _calls(calls)}, "tool_calls", usage
    )
    return Reply(body=body, headers={"Content-Type": "application/json"}, delay_s=delay_s)


def _sse(chunks: list[dict[str, Any]], usage: tuple[int, int]) -> list[bytes]:
    out = []
    for delta, finish in chunks:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        chunk = {"id": "c", "object": "chat.completion.chunk", "choices": [choice]}
        out.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    tail = {"id": "c", "choices": [], "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1]}}
    out.append(b"data: " + json.dumps(tail).encode() + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


def stream_text(
    pieces: Sequence[str],
    *,
    usage: tuple[int, int] = (10, 5),
    event_delay_s: float = 0.0,
    delay_s: float = 0.0,
) -> Reply:
    """An SSE answer whose content arrives in ``pieces``."""
    chunks: list[Any] = [({"role": "assistant"}, None)]
    chunks += [({"content": p}, None) for p in pieces]
    chunks.append(({}, "stop"))
    return Reply(
        headers={"Content-Type": "text/event-stream"},
        events=_sse(chunks, usage),
        event_delay_s=event_delay_s,
        delay_s=delay_s,
    )


def stream_tool_calls(
    calls: Sequence[tuple[str, str | dict[str, Any]]], *, usage: tuple[int, int] = (10, 5), split: int = 3
) -> Reply:
    """An SSE answer calling tools, each call's arguments cut into ``split`` deltas, calls interleaved."""
    chunks: list[Any] = [({"role": "assistant"}, None)]
    parts: list[list[str]] = []
    for i, (name, args) in enumerate(calls):
        raw = args if isinstance(args, str) else json.dumps(args)
        step = max(1, -(-len(raw) // split))
        parts.append([raw[j : j + step] for j in range(0, len(raw), step)] or [""])
        first = {
            "index": i,
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        chunks.append(({"tool_calls": [first]}, None))
    for j in range(max(len(p) for p in parts) if parts else 0):
        for i, p in enumerate(parts):
            if j < len(p):
                chunks.append(({"tool_calls": [{"index": i, "function": {"arguments": p[j]}}]}, None))
    chunks.append(({}, "tool_calls"))
    return Reply(headers={"Content-Type": "text/event-stream"}, events=_sse(chunks, usage))


def status(code: int, *, retry_after: str | None = None, body: str = "", delay_s: float = 0.0) -> Reply:
    """An error answer, e.g. ``status(429, retry_after="1")``."""
    headers = {"Content-Type": "application/json"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    payload = body or json.dumps({"error": {"message": f"scripted {code}", "code": code}})
    return Reply(status=code, body=payload.encode(), headers=headers, delay_s=delay_s)


def malformed() -> Reply:
    """A 200 whose body is not JSON."""
    return Reply(body=b'{"choices": [{"message": ', headers={"Content-Type": "application/json"})


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests"}


def _head(reply: Reply, *, chunked: bool) -> bytes:
    lines = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in reply.headers.items()]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(reply.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class _Conn(asyncio.Protocol):
    def __init__(self, server: ScriptedLLM) -> None:
        self.server = server
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it
        self.server._conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._conns.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        raw = bytes(self.buf[:end])
        lower = raw.lower()
        at = lower.find(b"\r\ncontent-length:")
        size = 0
        if at >= 0:
            stop = lower.find(b"\r\n", at + 17)
            size = int(lower[at + 17 : stop if stop >= 0 else len(lower)])
        if len(self.buf) < end + 4 + size:
            return
        body = bytes(self.buf[end + 4 : end + 4 + size])
        del self.buf[: end + 4 + size]
        method, path = raw[: raw.find(b"\r\n")].decode("latin-1").split(" ")[:2]
        self.busy = True
        if method != "POST" or path not in (
            self.server.prefix + "/chat/completions",
            self.server.prefix + "/embeddings",
        ):
            self._send(status(404, body=f"no route {method} {path}"))
            return
        if path == self.server.prefix + "/embeddings":
            self._send(self.server._embed(body, raw))
            return
        self._send(self.server._answer(body, raw))

    def _send(self, reply: Reply) -> None:
        loop = asyncio.get_running_loop()
        if reply.events is None and not reply.hang_up:
            data = reply.wire()
            if reply.delay_s > 0:
                loop.call_later(reply.delay_s, self._write, data)
            else:
                self._write(data)
            return
        task = loop.create_task(self._send_slowly(reply))
        self.server._tasks.add(task)
        task.add_done_callback(self.server._tasks.discard)

    async def _send_slowly(self, reply: Reply) -> None:
        assert self.transport is not None
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.hang_up and reply.events is None:
            self.transport.close()
            return
        self.transport.write(_head(reply, chunked=True))
        for event in reply.events or []:
            if reply.event_delay_s:
                await asyncio.sleep(reply.event_delay_s)
            self.transport.write(b"%x\r\n%s\r\n" % (len(event), event))
        if reply.hang_up:  # a stream that breaks off
            self.transport.close()
            return
        self._write(b"0\r\n\r\n")

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.busy = False
            if self.buf:
                self._next()


class ScriptedLLM:
    """The server: ``script(...)`` replies, read ``requests``; ``url`` is the API base (``.../v1``)."""

    def __init__(
        self,
        *,
        default: Callable[[bytes], Reply] | None = None,
        record: bool = True,
        prefix: str = "/v1",
        embed_dim: int = 512,
    ) -> None:
        self.prefix = prefix
        self.embedder = HashEmbedder(embed_dim)
        self.embedding_requests: list[Recorded] = []
        """Every ``/embeddings`` request (``body["input"]`` is the batch)."""
        self._embed_script: deque[Reply] = deque()
        self.default = default
        self.record = record
        self.requests: list[Recorded] = []
        self.served = 0
        self._script: deque[Reply] = deque()
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        """The base URL an OpenAI-compatible client is configured with."""
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    def script(self, *replies: Reply) -> None:
        """Queue replies, answered in order."""
        self._script.extend(replies)

    def script_embeddings(self, *replies: Reply) -> None:
        """Queue answers to ``/embeddings`` requests (errors, malformed bodies), used before the default."""
        self._embed_script.extend(replies)

    def _embed(self, body: bytes, head: bytes) -> Reply:
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            return status(400, body="not JSON")
        self.embedding_requests.append(Recorded(time.monotonic(), request, {}))
        if self._embed_script:
            return self._embed_script.popleft()
        texts = request.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return status(400, body="input must be a string or a list of strings")
        data = [
            {"object": "embedding", "index": i, "embedding": self.embedder.vector(t)}
            for i, t in enumerate(texts)
        ]
        answer = {
            "object": "list",
            "data": data,
            "model": request.get("model", ""),
            "usage": {"total_tokens": 0},
        }
        return Reply(body=json.dumps(answer).encode(), headers={"Content-Type": "application/json"})

    @property
    def pending(self) -> int:
        """Scripted replies not yet used."""
        return len(self._script)

    def _answer(self, body: bytes, head: bytes) -> Reply:
        self.served += 1
        if self.record:
            headers = {}
            for line in head.decode("latin-1").split("\r\n")[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            self.requests.append(Recorded(time.monotonic(), json.loads(body or b"{}"), headers))
        if self._script:
            return self._script.popleft()
        if self.default is not None:
            return self.default(body)
        return status(500, body="script exhausted")

    async def start(self, port: int = 0) -> ScriptedLLM:
        """Listen on 127.0.0.1 (a free port unless ``port``)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", port, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            if conn.transport is not None:
                conn.transport.close()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            await self._server.wait_closed()


def bench_model(delay_s: float, hold_s: float = 5.0) -> Callable[[bytes], Reply]:
    """The benchmark's model: one ``check_inventory`` call, then (after its result) an answer.

    A request mentioning ``__hold__`` is answered after ``hold_s`` instead (the memory phase).
    """
    call = [("check_inventory", '{"sku": "PROD-001", "quantity": 1}')]
    plan = tool_calls(call, delay_s=delay_s)
    answer = text("There are enough units of PROD-001.", delay_s=delay_s)
    held = tool_calls(call, delay_s=hold_s), text("Held.", delay_s=hold_s)

    def reply(body: bytes) -> Reply:
        second = b'"role":"tool"' in body
        if b"__hold__" in body:
            return held[second]
        return answer if second else plan

    return reply


def main() -> None:
    """Run the benchmark model until killed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=200.0)
    args = parser.parse_args()

    async def serve() -> None:
        server = await ScriptedLLM(default=bench_model(args.delay_ms / 1000), record=False).start(args.port)
        print(f"listening {server.url}", flush=True)
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
