"""The anchor of the LLM benchmark: the least a hand-written worker does per LLM task.

    python -m loadtest.llm_raw --nats-url URL --model-url URL --kind K --tasks N [--inflight 2000]

A plain nats-py pull loop (``fetch`` whenever a batch of slots is free, one asyncio
task per message) and a minimal keep-alive HTTP/1.1 client (Content-Length bodies
only, no retries, no timeouts, no breaker, no budgets, no audit trail): per task it
makes the same two model calls as the ``assistant`` agent, with the same system
prompt and tool specs (plan with the tools -> the tool result -> answer),
publishes a result to ``results.<tenant>.<task_id>`` and acks. Run on uvloop like
the worker. What agentbus adds on top of this is its overhead; what this loop
itself cannot reach is the machine's.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import deque
from typing import Any, cast
from urllib.parse import urlsplit

import msgspec

from agents.builtin.assistant import assistant
from agents.llm.agent import agent_of
from agents.llm.planner import SYSTEM_PROMPT
from bus.subjects import split_task_subject
from loadtest.bench_common import fetch_all, pull_subscription, run_on_uvloop

__all__ = ["main"]

# the same system prompt and tool specs as the assistant agent sends: the same bytes on the wire
_TOOLS = msgspec.json.decode(agent_of(assistant).tools.specs_json or b"[]")


class _Conn(asyncio.Protocol):
    """One connection, one request at a time; the response body by Content-Length."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.waiter: asyncio.Future[bytes] | None = None
        self.size = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.size < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            at = head.index(b"content-length:") + 15
            stop = head.find(b"\r\n", at)
            self.size = int(head[at : stop if stop >= 0 else None])
            self.buf = self.buf[end + 4 :]
        if len(self.buf) >= self.size and self.waiter is not None:
            body, self.buf, self.size = self.buf[: self.size], self.buf[self.size :], -1
            self.waiter.set_result(body)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))


class _Pool:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.head = f"POST {parts.path}/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        self.idle: deque[_Conn] = deque()

    async def post(self, body: bytes) -> bytes:
        conn = self.idle.pop() if self.idle else None
        if conn is None:
            _, conn = await asyncio.get_running_loop().create_connection(_Conn, self.host, self.port)
        assert conn.transport is not None
        conn.waiter = asyncio.get_running_loop().create_future()
        head = f"{self.head}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        conn.transport.write(head.encode() + body)
        answer = await conn.waiter
        self.idle.append(conn)
        return answer


async def _run(args: argparse.Namespace) -> None:
    nc, _, psub = await pull_subscription(args.nats_url, args.kind)
    pool = _Pool(args.model_url)
    encode, decode = msgspec.json.encode, msgspec.json.decode
    stock = {"PROD-001": 100}
    running: set[asyncio.Task[None]] = set()

    async def work(msg: Any) -> None:
        tenant, _ = split_task_subject(msg.subject)
        task = decode(msg.data)
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM_PROMPT.format(tenant=tenant)},
            {"role": "user", "content": task["payload"]["request"]},
        ]
        first = decode(await pool.post(encode({"model": "scripted", "messages": messages, "tools": _TOOLS})))
        reply = first["choices"][0]["message"]
        messages.append(reply)
        for call in reply.get("tool_calls") or []:
            wanted = decode(call["function"]["arguments"])
            have = stock.get(wanted["sku"], 0)
            result = {"available": have, "enough": have >= wanted["quantity"]}
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": encode(result).decode()})
        second = decode(await pool.post(encode({"model": "scripted", "messages": messages, "tools": _TOOLS})))
        answer = second["choices"][0]["message"]["content"]
        out = {"task_id": task["id"], "ok": True, "output": {"answer": answer}}
        await nc.publish(f"results.{tenant}.{task['id']}", encode(out))
        await msg.ack()

    def finished(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            raise SystemExit(f"anchor task failed: {task.exception()!r}")

    print("ready", flush=True)
    await fetch_all(psub, args.tasks, work, running, batch=args.batch, slots=args.inflight, on_done=finished)
    while running:
        await asyncio.gather(*running)
    await nc.flush()
    await nc.close()


def main(argv: list[str] | None = None) -> int:
    """Consume ``--tasks`` tasks of ``--kind``, then exit 0."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--model-url", required=True)
    parser.add_argument("--kind", required=True)
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--inflight", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100)
    run_on_uvloop(_run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
