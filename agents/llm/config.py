"""LLM configuration: typed, keyword-only, read from the environment once, at the edge.

With no ``base_url`` the task agent thinks with the deterministic offline brain, so
nothing needs a model; setting ``AGENTBUS_LLM_BASE_URL`` (and a model) switches it to
an OpenAI-compatible endpoint: vLLM, Ollama (``http://localhost:11434/v1``),
llama.cpp server, LiteLLM or a hosted API. The API key comes from
``AGENTBUS_LLM_API_KEY`` or, for Kubernetes Secrets mounted as files, from the file
named by ``AGENTBUS_LLM_API_KEY_FILE``. ``AGENTBUS_LLM_FALLBACK_URLS`` (comma-separated)
names more endpoints, tried in order when the ones before fail or their breakers are
open. They serve the same model with the same key unless ``AGENTBUS_LLM_FALLBACK_<n>_MODEL``
and ``AGENTBUS_LLM_FALLBACK_<n>_API_KEY`` (or ``..._API_KEY_FILE``) say otherwise for the
n-th of them (from 1): another provider, or a smaller model kept as a reserve.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from agentbus.errors import ConfigError
from agents.llm._failure import redact_url

__all__ = ["BreakerConfig", "LLMConfig", "LimitsConfig", "ModelEndpoint", "RetryConfig"]

_FALLBACK_VAR = re.compile(r"AGENTBUS_LLM_FALLBACK_(\d+)_(MODEL|API_KEY|API_KEY_FILE)")


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryConfig:
    """Retries of one model call on 429, 5xx and connection failures."""

    attempts: int = 4  # tries per call, the first included
    base_s: float = 0.25  # first backoff; doubles, with full jitter
    max_s: float = 8.0  # cap of one backoff and of a Retry-After honoured in place
    # A longer Retry-After (or one past the deadline) ends the call: the task is
    # nakked with that delay instead of holding a worker slot while it waits.
    retry_after_max_s: float = 60.0  # the longest Retry-After believed; a longer one is cut to it
    # (the endpoint is not trusted with a task's fate: 10^12 s would park it for good)


@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerConfig:
    """One circuit breaker per model endpoint (closed / open / half-open)."""

    failure_threshold: int = 5  # consecutive failed attempts that open it
    open_s: float = 10.0  # how long it stays open before one probe is let through
    half_open_probes: int = 1  # concurrent probes while half-open


@dataclass(frozen=True, kw_only=True, slots=True)
class LimitsConfig:
    """Per-tenant limits: cluster-wide on a worker with shared state, else per process."""

    token_budget: int | None = None  # model tokens per tenant per window; None: unlimited
    budget_window_s: float = 86_400.0  # a day
    requests_per_s: float | None = None  # model calls per tenant; None: unlimited
    burst: int = 20  # calls a quiet tenant may make at once
    tenant_budgets: Mapping[str, int] = field(default_factory=dict)  # overrides token_budget


@dataclass(frozen=True, slots=True)
class ModelEndpoint:
    """A fallback model endpoint; ``model`` and ``api_key`` None: the primary's."""

    url: str
    model: str | None = None  # None: the model the brain asks for (AGENTBUS_LLM_MODEL)
    api_key: str | None = field(default=None, repr=False)  # None: the primary's key; "": none


@dataclass(frozen=True, kw_only=True, slots=True)
class LLMConfig:
    """Where the model is and how the task agent uses it."""

    base_url: str = ""  # e.g. http://127.0.0.1:8000/v1; empty: the offline brain
    fallbacks: tuple[ModelEndpoint, ...] = ()  # tried in order when the ones before fail
    model: str = ""
    api_key: str = field(default="", repr=False)
    stream: bool = True  # ask for SSE (tokens as they come) for tasks whose publisher follows the stream
    temperature: float | None = 0.0  # deterministic plans; None: the server's default
    max_tokens: int | None = None  # per completion; None: the server's default
    request_timeout_s: float = 60.0  # one attempt, capped by the task's deadline
    connect_timeout_s: float = 10.0
    max_connections: int = 0  # to the endpoint, per worker process; 0: one per concurrent call
    max_turns: int = 8  # model turns (plans) per task: the step bound
    max_steps: int = 16  # tool calls per task
    max_tool_errors: int = 3  # bad tool calls fed back to the model before the task is rejected
    retry: RetryConfig = field(default_factory=RetryConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    def __post_init__(self) -> None:
        # URLs are named redacted in these errors: they may carry credentials or a key
        if self.base_url and not _is_http_url(self.base_url):
            raise ConfigError(
                f"AGENTBUS_LLM_BASE_URL must be an http(s) URL with a host, not {redact_url(self.base_url)!r}"
            )
        if self.fallbacks and not self.base_url:
            raise ConfigError("AGENTBUS_LLM_FALLBACK_URLS needs AGENTBUS_LLM_BASE_URL (the first endpoint)")
        for n, fb in enumerate(self.fallbacks, 1):
            if not _is_http_url(fb.url):
                raise ConfigError(
                    f"AGENTBUS_LLM_FALLBACK_URLS: {redact_url(fb.url)!r} is not an http(s) URL with a host"
                )
            if fb.model == "":
                raise ConfigError(
                    f"fallback {n} ({redact_url(fb.url)}): an empty model name (leave"
                    " AGENTBUS_LLM_FALLBACK_<n>_MODEL unset, or ModelEndpoint.model None, to ask for the"
                    " primary's)"
                )
        urls = [u.rstrip("/") for u in (self.base_url, *(fb.url for fb in self.fallbacks))]
        if len(set(urls)) < len(urls):
            shown = ", ".join(redact_url(u) for u in urls)
            raise ConfigError(f"AGENTBUS_LLM_FALLBACK_URLS repeats an endpoint: {shown}")
        if self.base_url and not self.model:
            raise ConfigError("a model endpoint needs a model name (AGENTBUS_LLM_MODEL)")
        if self.max_turns < 1 or self.max_steps < 1 or self.max_tool_errors < 0:
            raise ConfigError("need max_turns >= 1, max_steps >= 1 and max_tool_errors >= 0")
        if self.max_connections < 0:
            raise ConfigError("AGENTBUS_LLM_MAX_CONNECTIONS must be >= 0 (0: no cap)")
        if self.retry.attempts < 1 or self.breaker.failure_threshold < 1:
            raise ConfigError("need retry.attempts >= 1 and breaker.failure_threshold >= 1")
        if not 0 <= self.retry.retry_after_max_s < math.inf:
            raise ConfigError("AGENTBUS_LLM_RETRY_AFTER_MAX_S must be a number of seconds >= 0")

    @property
    def offline(self) -> bool:
        """True when no model endpoint is configured (the offline brain thinks)."""
        return not self.base_url

    def with_(self, **changes: Any) -> LLMConfig:
        """A copy with ``changes``."""
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LLMConfig:
        """Defaults overlaid with ``AGENTBUS_LLM_*`` variables."""
        env = os.environ if environ is None else environ
        key = _api_key(env, "AGENTBUS_LLM_API_KEY") or ""
        limits: dict[str, Any] = {}
        try:
            if env.get("AGENTBUS_LLM_TENANT_TOKEN_BUDGET"):
                limits["token_budget"] = int(env["AGENTBUS_LLM_TENANT_TOKEN_BUDGET"])
            if env.get("AGENTBUS_LLM_TENANT_RPS"):
                limits["requests_per_s"] = float(env["AGENTBUS_LLM_TENANT_RPS"])
            stream = env.get("AGENTBUS_LLM_STREAM", "1").lower() not in ("0", "false", "no")
            timeout_s = float(env.get("AGENTBUS_LLM_TIMEOUT_S", "60"))
            max_connections = int(env.get("AGENTBUS_LLM_MAX_CONNECTIONS", "0"))
            retry = RetryConfig(retry_after_max_s=float(env.get("AGENTBUS_LLM_RETRY_AFTER_MAX_S", "60")))
        except ValueError as exc:
            raise ConfigError(f"AGENTBUS_LLM_*: {exc}") from exc
        return cls(
            base_url=env.get("AGENTBUS_LLM_BASE_URL", ""),
            fallbacks=_fallbacks_from_env(env),
            model=env.get("AGENTBUS_LLM_MODEL", ""),
            api_key=key,
            stream=stream,
            request_timeout_s=timeout_s,
            max_connections=max_connections,
            retry=retry,
            limits=LimitsConfig(**limits),
        )


def _is_http_url(url: str) -> bool:
    """An http(s) URL with a host and a valid port: checked here, so no task meets a bad one."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _api_key(env: Mapping[str, str], var: str) -> str | None:
    """``var``, else the contents of the file named by ``var``_FILE (a mounted Secret); None: neither."""
    key = env.get(var)
    key_file = env.get(f"{var}_FILE", "")
    if key_file and not key:
        try:
            with open(key_file) as f:
                return f.read().strip()
        except OSError as exc:
            raise ConfigError(f"{var}_FILE={key_file!r}: {exc}") from exc
    return key


def _fallbacks_from_env(env: Mapping[str, str]) -> tuple[ModelEndpoint, ...]:
    """``AGENTBUS_LLM_FALLBACK_URLS``, each with its ``AGENTBUS_LLM_FALLBACK_<n>_*`` overrides."""
    urls = [u.strip() for u in env.get("AGENTBUS_LLM_FALLBACK_URLS", "").split(",") if u.strip()]
    for name in env:
        if name.startswith("AGENTBUS_LLM_FALLBACK_") and name != "AGENTBUS_LLM_FALLBACK_URLS":
            match = _FALLBACK_VAR.fullmatch(name)
            if match is None:
                raise ConfigError(
                    f"{name}: unknown; per fallback: AGENTBUS_LLM_FALLBACK_<n>_MODEL, _API_KEY, _API_KEY_FILE"
                )
            if not 1 <= int(match[1]) <= len(urls):
                raise ConfigError(
                    f"{name}: AGENTBUS_LLM_FALLBACK_URLS names {len(urls)} endpoint(s), counted from 1"
                )
    return tuple(
        ModelEndpoint(
            url,
            model=env.get(f"AGENTBUS_LLM_FALLBACK_{n}_MODEL"),
            api_key=_api_key(env, f"AGENTBUS_LLM_FALLBACK_{n}_API_KEY"),
        )
        for n, url in enumerate(urls, 1)
    )
