"""A client for OpenAI-compatible Chat Completions: JSON or SSE, retries, a circuit breaker.

``ChatClient.chat`` sends one :class:`~agents.llm.chat.ChatRequest` and returns a
:class:`~agents.llm.chat.Completion`, streamed (``stream=True``: every content delta
goes to ``on_token`` as it arrives, tool-call deltas are reassembled by index, so
parallel tool calls work) or not. HTTP is :mod:`agents.llm._http` (why not httpx or
the ``openai`` SDK: see there): one keep-alive pool per client and event loop.

Retries, per call: 429, 408, 5xx, connection failures, timeouts of one attempt and
unreadable bodies are retried up to ``retry.attempts`` times with jittered
exponential backoff, or after the server's ``Retry-After`` / ``retry-after-ms``
when it sends one. A wait longer than ``retry.max_s`` or past the task's deadline is
not slept through: the call ends with :class:`~agentbus.errors.ModelUnavailableError`
carrying the delay, and the task agent naks the task for that long (the worker slot
is freed). A stream that fails after tokens went out is not retried in place either
(the tokens would repeat): the task is retried, and its stream events carry the
attempt. Every attempt passes the endpoint's breaker first. Other 4xx answers raise
:class:`~agentbus.errors.ModelHTTPError` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import random
import time
from collections.abc import Awaitable, Callable

import msgspec

from agentbus.errors import CircuitOpenError, ModelConnectionError, ModelHTTPError, ModelUnavailableError
from agents.llm._http import HTTPPool, Response
from agents.llm.breaker import CircuitBreaker
from agents.llm.chat import ChatChunk, ChatRequest, ChatResponse, Completion, CompletionBuilder, Usage
from agents.llm.config import LLMConfig
from agents.llm.sse import SSEDecoder

__all__ = ["ChatClient", "TokenSink"]

TokenSink = Callable[[str], Awaitable[None]]
"""Receives each content delta of a streamed answer, in order."""

_encoder = msgspec.json.Encoder()
_response_decoder = msgspec.json.Decoder(ChatResponse)
_chunk_decoder = msgspec.json.Decoder(ChatChunk)


class _Failed(Exception):
    """A retryable attempt failure; ``retry_after_s`` is the server's hint."""

    def __init__(self, why: str, retry_after_s: float | None = None) -> None:
        super().__init__(why)
        self.why = why
        self.retry_after_s = retry_after_s


class ChatClient:
    """Chat Completions against one endpoint, with retries and that endpoint's breaker."""

    def __init__(self, config: LLMConfig, *, breaker: CircuitBreaker | None = None) -> None:
        self.config = config
        self.endpoint = config.base_url.rstrip("/")
        self.breaker = breaker or CircuitBreaker(self.endpoint, config.breaker)
        auth = f"Authorization: Bearer {config.api_key}\r\n" if config.api_key else ""
        self._headers_json = f"Content-Type: application/json\r\nAccept: application/json\r\n{auth}"
        self._headers_sse = f"Content-Type: application/json\r\nAccept: text/event-stream\r\n{auth}"
        self._pool: HTTPPool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.outcomes: dict[str, int] = {}
        """Attempts by outcome (``ok``, ``http_429``, ``http_503``, ``connection``, ``timeout``,
        ``bad_body``, ``http_400``, ``circuit_open``), for the metrics."""

    def _http(self, loop: asyncio.AbstractEventLoop) -> HTTPPool:
        if self._pool is None or self._loop is not loop:  # a pool belongs to one event loop
            cfg = self.config
            self._pool = HTTPPool(
                self.endpoint, connect_timeout_s=cfg.connect_timeout_s, max_connections=cfg.max_connections
            )
            self._loop = loop
        return self._pool

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    async def chat(
        self, request: ChatRequest, *, deadline: float | None = None, on_token: TokenSink | None = None
    ) -> Completion:
        """One model call with retries; ``deadline`` is in ``loop.time()`` terms."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        body = _encoder.encode(request)
        attempt = 0
        while True:
            attempt += 1
            try:
                probe = self.breaker.acquire()
            except CircuitOpenError:
                self._count("circuit_open")
                raise
            timeout_s = cfg.request_timeout_s
            if deadline is not None:
                timeout_s = min(timeout_s, deadline - loop.time())
            sent = [False]  # set once a token went out: a stream past that point is not retried here
            try:
                if timeout_s <= 0:
                    raise _Failed("timeout")
                try:
                    if request.stream:
                        result = await self._stream(body, on_token, sent, timeout_s)
                    else:  # inline, not a coroutine of its own: one frame less to resume
                        response = await self._http(loop).post(
                            "/chat/completions", body, self._headers_json, timeout_s=timeout_s
                        )
                        result = self._completion(response)
                except TimeoutError:
                    raise _Failed("timeout") from None
                except ModelConnectionError as exc:
                    raise _Failed("connection") from exc
            except _Failed as failed:
                self.breaker.failure(probe)
                self._count(failed.why)
                delay = failed.retry_after_s
                if delay is None:
                    ceiling = min(cfg.retry.max_s, cfg.retry.base_s * 2.0 ** (attempt - 1))
                    delay = ceiling / 2 + random.random() * ceiling / 2
                late = deadline is not None and loop.time() + delay >= deadline
                if attempt >= cfg.retry.attempts or delay > cfg.retry.max_s or late or sent[0]:
                    cause = failed.__cause__ or failed
                    raise ModelUnavailableError(
                        f"model endpoint {self.endpoint} failed {attempt} attempt(s); last: {failed.why}"
                        f" ({cause})",
                        endpoint=self.endpoint,
                        retry_after_s=failed.retry_after_s,
                    ) from None
                await asyncio.sleep(delay)
                continue
            except ModelHTTPError:
                self.breaker.success(probe)  # the endpoint is up; the request was wrong
                raise
            except BaseException:
                self.breaker.cancelled(probe)
                raise
            self.breaker.success(probe)
            self._count("ok")
            return result

    def _check(self, response: Response, body: bytes) -> None:
        status = response.status
        if status < 300:
            return
        detail = body[:500].decode("utf-8", "replace")
        if status == 429 or status == 408 or status >= 500:
            raise _Failed(f"http_{status}", _retry_after(response.headers))
        self._count(f"http_{status}")
        raise ModelHTTPError(status, detail, endpoint=self.endpoint)

    def _completion(self, response: Response) -> Completion:
        self._check(response, response.body)
        try:
            answer = _response_decoder.decode(response.body)
        except msgspec.DecodeError as exc:
            raise _Failed("bad_body") from exc
        if not answer.choices:
            raise _Failed("bad_body") from ValueError("no choices in the answer")
        choice = answer.choices[0]
        msg = choice.message
        return Completion(
            msg.content or "", msg.tool_calls or [], answer.usage or Usage(), choice.finish_reason
        )

    async def _stream(
        self, body: bytes, on_token: TokenSink | None, sent: list[bool], timeout_s: float
    ) -> Completion:
        http = self._http(asyncio.get_running_loop())
        response, chunks = await http.stream(
            "/chat/completions", body, self._headers_sse, timeout_s=timeout_s
        )
        async with contextlib.aclosing(chunks):
            if response.status >= 300:
                error = b"".join([c async for c in chunks])
                self._check(response, error)
            decoder = SSEDecoder()
            builder = CompletionBuilder()
            done = False
            async for raw in chunks:
                for data in decoder.feed(raw):
                    if data == b"[DONE]":
                        done = True
                        continue
                    try:
                        chunk = _chunk_decoder.decode(data)
                    except msgspec.DecodeError as exc:
                        raise _Failed("bad_body") from exc
                    text = builder.add(chunk)
                    if text and on_token is not None:
                        sent[0] = True
                        await on_token(text)
            if not done and builder.finish_reason is None:
                raise _Failed("connection") from ModelConnectionError("stream ended before [DONE]")
        return builder.build()

    async def aclose(self) -> None:
        """Close the connections."""
        if self._pool is not None and self._loop is asyncio.get_running_loop():
            await self._pool.aclose()
        self._pool = None


def _retry_after(headers: dict[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    try:
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        if value.replace(".", "", 1).isdigit():
            return float(value)
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (ValueError, TypeError):
        return None
