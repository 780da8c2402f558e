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

Failover: with ``fallbacks`` an attempt goes to the first endpoint, in order, whose
breaker lets it through and which has not failed since the last backoff, so a failed
attempt is retried on the next endpoint at once and the backoff is slept only when
every endpoint has failed or refuses. Each endpoint has its own key and may ask for
a model of its own; the :class:`~agents.llm.chat.Completion` says which model answered.

What tenants see of a failure: the exceptions raised here name an endpoint by its place
(``primary``, ``fallback 1``), never by URL, and never quote its body; the URL (redacted),
status and first bytes of the body go to the ``agentbus.llm`` log (see
:mod:`agents.llm._failure`). ``Retry-After`` is believed up to ``retry.retry_after_max_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable

import msgspec
from msgspec.structs import replace

from agentbus.errors import CircuitOpenError, ModelConnectionError, ModelHTTPError, ModelUnavailableError
from agents.llm._failure import endpoint_name, excerpt, log, redact_url, retry_after_s
from agents.llm._http import HTTPPool, Response
from agents.llm.breaker import CircuitBreaker
from agents.llm.chat import ChatChunk, ChatRequest, ChatResponse, Completion, CompletionBuilder, Usage
from agents.llm.config import LLMConfig
from agents.llm.sse import SSEDecoder

__all__ = ["ChatClient", "Endpoint", "TokenSink"]

TokenSink = Callable[[str], Awaitable[None]]
"""Receives each content delta of a streamed answer, in order."""

_encoder = msgspec.json.Encoder()
_response_decoder = msgspec.json.Decoder(ChatResponse)
_chunk_decoder = msgspec.json.Decoder(ChatChunk)


class _Failed(Exception):
    """A retryable attempt failure; ``retry_after_s`` is the server's hint (bounded),
    ``detail`` what only the worker's log may show (a body excerpt)."""

    def __init__(self, why: str, retry_after_s: float | None = None, detail: str = "") -> None:
        super().__init__(why)
        self.why = why
        self.retry_after_s = retry_after_s
        self.detail = detail


def _summary(name: str, why: _Failed, attempt: int, attempts: int) -> str:
    """A failed call as a tenant may read it: the endpoint's place and what failed, no URL, no body."""
    of = f"attempt {attempt} of {attempts}"
    if why.why == "timeout":
        return f"model endpoint {name} unreachable (timeout; {of})"
    if why.why == "connection":
        return f"model endpoint {name} unreachable (connection failed; {of})"
    what = "unreadable answer" if why.why == "bad_body" else f"HTTP {why.why.removeprefix('http_')}"
    if why.retry_after_s is not None:
        what += f", retry after {why.retry_after_s:g}s"
    return f"model endpoint {name} failed: {what} ({of})"


class Endpoint:
    """One model endpoint of a client: URL, model, auth headers, breaker, keep-alive pool, attempt counts."""

    __slots__ = (
        "_loop",
        "_pool",
        "breaker",
        "config",
        "headers_json",
        "headers_sse",
        "key",
        "label",
        "model",
        "name",
        "outcomes",
        "url",
    )

    def __init__(
        self,
        url: str,
        config: LLMConfig,
        breaker: CircuitBreaker | None = None,
        *,
        model: str | None = None,
        api_key: str = "",
        name: str = "primary",
    ) -> None:
        self.url = url.rstrip("/")
        self.name = name
        """How errors (which tenants read) name it: its place in the configuration, not its URL."""
        self.label = redact_url(self.url)
        """The URL without user info or query: for the log and the metrics."""
        self.config = config
        self.model = model
        """The model asked here; None: the one the request names (the brain's)."""
        self.breaker = breaker or CircuitBreaker(name, config.breaker)
        self.key = api_key.encode("latin-1", "replace")
        """Masked in what the log quotes of the endpoint's answers."""
        auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
        self.headers_json = f"Content-Type: application/json\r\nAccept: application/json\r\n{auth}"
        self.headers_sse = f"Content-Type: application/json\r\nAccept: text/event-stream\r\n{auth}"
        self.outcomes: dict[str, int] = {}
        """Attempts by outcome (``ok``, ``http_429``, ``http_503``, ``connection``, ``timeout``,
        ``bad_body``, ``http_400``, ``circuit_open``), for the metrics."""
        self._pool: HTTPPool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def http(self, loop: asyncio.AbstractEventLoop) -> HTTPPool:
        """This endpoint's pool on ``loop`` (a pool belongs to one event loop)."""
        if self._pool is None or self._loop is not loop:
            cfg = self.config
            self._pool = HTTPPool(
                self.url, connect_timeout_s=cfg.connect_timeout_s, max_connections=cfg.max_connections
            )
            self._loop = loop
        return self._pool

    def count(self, outcome: str) -> None:
        """One more attempt that ended in ``outcome``."""
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    async def aclose(self) -> None:
        """Close the connections (those of the running loop's pool)."""
        if self._pool is not None and self._loop is asyncio.get_running_loop():
            await self._pool.aclose()
        self._pool = None


class ChatClient:
    """Chat Completions against an endpoint and its fallbacks, with retries and a breaker each.

    ``endpoints[0]`` is ``config.base_url``, then ``config.fallbacks`` in order. Each
    attempt goes to the first endpoint whose breaker lets it through and which has not
    failed since the last backoff: a failed attempt fails over to the next endpoint at
    once, and the client backs off only when every endpoint has failed or refuses. A
    fallback with a model of its own is asked for that model instead of the request's.
    """

    def __init__(self, config: LLMConfig, *, breaker: CircuitBreaker | None = None) -> None:
        self.config = config
        self.endpoints = [Endpoint(config.base_url, config, breaker, api_key=config.api_key)]
        self.endpoints += [
            Endpoint(
                fb.url,
                config,
                model=fb.model,
                api_key=config.api_key if fb.api_key is None else fb.api_key,
                name=endpoint_name(n),
            )
            for n, fb in enumerate(config.fallbacks, 1)
        ]

    def _first(self) -> tuple[Endpoint, bool]:
        """The first endpoint whose breaker lets an attempt through, and whether it is a probe.

        Every breaker refusing raises ``CircuitOpenError`` with the soonest time one of
        them lets a probe through."""
        refused: list[CircuitOpenError] = []
        for ep in self.endpoints:
            try:
                return ep, ep.breaker.acquire()
            except CircuitOpenError as exc:
                refused.append(exc)
        for ep in self.endpoints:
            ep.count("circuit_open")
        soonest = min(exc.retry_after_s for exc in refused)
        # named by place, whatever a breaker passed in was named
        raise CircuitOpenError(", ".join(ep.name for ep in self.endpoints), soonest)

    def _next(self, failed: list[Endpoint]) -> tuple[Endpoint, bool] | None:
        """Like :meth:`_first` among the endpoints not in ``failed``; None if none lets one through."""
        for ep in self.endpoints:
            if ep not in failed:
                with contextlib.suppress(CircuitOpenError):
                    return ep, ep.breaker.acquire()
        return None

    async def chat(
        self, request: ChatRequest, *, deadline: float | None = None, on_token: TokenSink | None = None
    ) -> Completion:
        """One model call with retries and failover; ``deadline`` is in ``loop.time()`` terms."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        encoded = _encoder.encode(request)
        attempt = 0
        failed: list[Endpoint] = []  # failed since the last backoff
        ep, probe = self._first()
        while True:
            attempt += 1
            timeout_s = cfg.request_timeout_s
            if deadline is not None:
                timeout_s = min(timeout_s, deadline - loop.time())
            sent = [False]  # set once a token went out: a stream past that point is not retried here
            model = ep.model or request.model
            body = encoded if model == request.model else _encoder.encode(replace(request, model=model))
            try:
                if timeout_s <= 0:
                    raise _Failed("timeout")
                try:
                    if request.stream:
                        result = await self._stream(ep, body, on_token, sent, timeout_s)
                    else:  # inline, not a coroutine of its own: one frame less to resume
                        response = await ep.http(loop).post(
                            "/chat/completions", body, ep.headers_json, timeout_s=timeout_s
                        )
                        result = self._completion(ep, response)
                    result.model = model
                except TimeoutError:
                    raise _Failed("timeout") from None
                except ModelConnectionError as exc:
                    raise _Failed("connection") from exc
            except _Failed as why:
                ep.breaker.failure(probe)
                ep.count(why.why)
                # the log's, never a tenant's: a body excerpt, or why the connection failed (host, port)
                detail = why.detail or (repr(why.__cause__) if why.__cause__ else "")
                delay = why.retry_after_s
                if delay is None:
                    ceiling = min(cfg.retry.max_s, cfg.retry.base_s * 2.0 ** (attempt - 1))
                    delay = ceiling / 2 + random.random() * ceiling / 2
                stop = attempt >= cfg.retry.attempts or sent[0]
                other = None
                if not stop:
                    failed.append(ep)
                    other = self._next(failed)  # another endpoint, at once
                    late = deadline is not None and loop.time() + delay >= deadline
                    stop = other is None and (delay > cfg.retry.max_s or late)
                if stop:
                    log.warning(
                        "model call failed on attempt %d of %d: %s %s: %s: %s",
                        attempt,
                        cfg.retry.attempts,
                        ep.name,
                        ep.label,
                        why.why,
                        detail,
                    )
                    raise ModelUnavailableError(
                        _summary(ep.name, why, attempt, cfg.retry.attempts),
                        endpoint=ep.name,
                        retry_after_s=why.retry_after_s,
                    ) from None
                log.debug(
                    "model call attempt %d failed: %s %s: %s: %s", attempt, ep.name, ep.label, why.why, detail
                )
                if other is None:  # every endpoint failed or refuses: back off, then start over
                    await asyncio.sleep(delay)
                    failed.clear()
                    ep, probe = self._first()
                else:
                    ep, probe = other
                continue
            except ModelHTTPError:
                ep.breaker.success(probe)  # the endpoint is up; the request was wrong
                raise
            except BaseException:
                ep.breaker.cancelled(probe)
                raise
            ep.breaker.success(probe)
            ep.count("ok")
            return result

    def _check(self, ep: Endpoint, response: Response, body: bytes) -> None:
        status = response.status
        if status < 300:
            return
        detail = f"body {excerpt(body, hide=ep.key)}"
        if status == 429 or status == 408 or status >= 500:
            wait = retry_after_s(response.headers, self.config.retry.retry_after_max_s)
            raise _Failed(f"http_{status}", wait, detail)
        ep.count(f"http_{status}")
        log.warning(
            "model endpoint refused the request: %s %s: HTTP %d: %s", ep.name, ep.label, status, detail
        )
        refused = ModelHTTPError(
            status, "the request was refused (the endpoint's answer is in the worker's log)", endpoint=ep.name
        )
        refused.detail = detail  # for code that inspects it; str() (what tenants read) leaves it out
        raise refused

    def _completion(self, ep: Endpoint, response: Response) -> Completion:
        self._check(ep, response, response.body)
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
        self, ep: Endpoint, body: bytes, on_token: TokenSink | None, sent: list[bool], timeout_s: float
    ) -> Completion:
        http = ep.http(asyncio.get_running_loop())
        response, chunks = await http.stream("/chat/completions", body, ep.headers_sse, timeout_s=timeout_s)
        async with contextlib.aclosing(chunks):
            if response.status >= 300:
                error = b"".join([c async for c in chunks])
                self._check(ep, response, error)
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
        """Close every endpoint's connections."""
        for ep in self.endpoints:
            await ep.aclose()
