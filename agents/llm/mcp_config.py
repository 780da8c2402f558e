"""Which MCP servers an LLM agent uses: typed, checked at start, read from a file or given in code.

``AGENTBUS_MCP_CONFIG`` names a JSON file (a ConfigMap, on Kubernetes)::

    {"servers": [
      {"name": "tickets", "command": ["python", "-m", "tickets_mcp"]},
      {"name": "crm", "url": "https://crm.internal/mcp", "tenants": ["acme"],
       "headers": {"Authorization": "Bearer ..."}, "timeout_s": 10, "kinds": ["helpdesk"]}
    ]}

``command`` starts a server over stdio (the worker spawns it, one process per worker);
``url`` reaches one over streamable HTTP. ``tenants`` limits who sees the server's tools
(absent: every tenant), ``kinds`` which agents use it (absent: every LLM agent), ``tools``
which of its tools are offered (absent: all). The model sees a tool as
``<server>__<tool>``. Secrets in ``headers`` may be read from a file instead:
``"headers_file": "/var/run/secrets/crm-headers.json"``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import msgspec

from agentbus.env import Env
from agentbus.errors import ConfigError
from agents.llm.config import BreakerConfig

__all__ = ["MCPServerConfig", "mcp_servers_from_env"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,31}")  # no "_": "__" separates server and tool


@dataclass(frozen=True, kw_only=True, slots=True)
class MCPServerConfig:
    """One MCP server: how to reach it, who may use its tools, how long a call may take."""

    name: str
    command: tuple[str, ...] = ()  # stdio: the argv of the server process
    url: str = ""  # streamable HTTP: the endpoint, e.g. http://127.0.0.1:8000/mcp
    env: Mapping[str, str] = field(default_factory=dict)  # stdio: added to a minimal environment
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # HTTP: sent with every request
    tenants: tuple[str, ...] | None = None  # None: every tenant sees the tools
    kinds: tuple[str, ...] | None = None  # None: every LLM agent uses the server
    tools: tuple[str, ...] | None = None  # None: every tool the server lists
    timeout_s: float = 30.0  # one tool call (capped by the task's deadline)
    connect_timeout_s: float = 20.0  # starting or reaching the server and listing its tools
    max_result_chars: int = 16_384  # a longer result is cut: it goes to the model and the audit
    breaker: BreakerConfig = field(default_factory=BreakerConfig)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ConfigError(f"MCP server name {self.name[:40]!r}: use 1-32 of [A-Za-z0-9-]")
        if bool(self.command) == bool(self.url):
            raise ConfigError(f"MCP server {self.name}: give exactly one of command (stdio) and url (HTTP)")
        if self.url:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"MCP server {self.name}: url must be http(s) with a host")
        if self.timeout_s <= 0 or self.connect_timeout_s <= 0 or self.max_result_chars < 64:
            raise ConfigError(f"MCP server {self.name}: timeouts must be > 0, max_result_chars >= 64")

    @property
    def transport(self) -> str:
        """``stdio`` or ``http``."""
        return "stdio" if self.command else "http"

    def serves(self, kind: str) -> bool:
        """Whether agent ``kind`` uses this server."""
        return self.kinds is None or kind in self.kinds


class _Server(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    command: list[str] = []
    url: str = ""
    env: dict[str, str] = {}
    headers: dict[str, str] = {}
    headers_file: str = ""
    tenants: list[str] | None = None
    kinds: list[str] | None = None
    tools: list[str] | None = None
    timeout_s: float = 30.0
    connect_timeout_s: float = 20.0
    max_result_chars: int = 16_384


class _File(msgspec.Struct, forbid_unknown_fields=True):
    servers: list[_Server]


def _headers(server: _Server) -> dict[str, str]:
    if not server.headers_file:
        return server.headers
    try:
        with open(server.headers_file) as f:
            extra = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"MCP server {server.name}: headers_file {server.headers_file!r}: {exc}") from exc
    if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
        raise ConfigError(f"MCP server {server.name}: headers_file must hold a JSON object of strings")
    return {**server.headers, **extra}


def mcp_servers_from_env(environ: Mapping[str, str] | None = None) -> tuple[MCPServerConfig, ...]:
    """The servers of the file ``AGENTBUS_MCP_CONFIG`` names; () when it is unset."""
    path = Env(environ).file("AGENTBUS_MCP_CONFIG")
    if path is None:
        return ()
    try:
        with open(path, "rb") as f:
            parsed = msgspec.json.decode(f.read(), type=_File)
    except (OSError, msgspec.DecodeError) as exc:
        raise ConfigError(f"AGENTBUS_MCP_CONFIG={path!r}: {exc}") from exc
    servers = tuple(
        MCPServerConfig(
            name=s.name,
            command=tuple(s.command),
            url=s.url,
            env=s.env,
            headers=_headers(s),
            tenants=None if s.tenants is None else tuple(s.tenants),
            kinds=None if s.kinds is None else tuple(s.kinds),
            tools=None if s.tools is None else tuple(s.tools),
            timeout_s=s.timeout_s,
            connect_timeout_s=s.connect_timeout_s,
            max_result_chars=s.max_result_chars,
        )
        for s in parsed.servers
    )
    names = [s.name for s in servers]
    if len(set(names)) != len(names):
        raise ConfigError(f"AGENTBUS_MCP_CONFIG: two servers of one name in {names}")
    return servers
