"""MCP tools in an agent's toolbox: sessions to MCP servers, their tools as typed tools.

:class:`MCPToolset` opens one session per configured server when the worker starts
(the agent's ``on_start``; stdio servers are spawned, HTTP servers reached) through the
official ``mcp`` SDK, lists its tools and keeps the session for every later task; the
worker's ``on_stop`` closes them. Each listed tool becomes an :class:`MCPTool`, named
``<server>__<tool>`` for the model, with the server's JSON schema as its parameters.

A call is handled like a local tool's (:mod:`agents.llm.tools`): the model's arguments
must be a JSON object valid against the tool's input schema (checked here, with
``jsonschema``, before anything is sent); the result (structured content, else the
text) or the error (``isError``, a protocol error, a timeout, an open breaker) comes
back as a :class:`~agents.llm.tools.ToolOutcome` for the model to read. Results are cut
at ``max_result_chars``. Every call passes the server's circuit breaker (the model
endpoints' breaker, :mod:`agents.llm.breaker`): timeouts and broken connections count
as failures, any answer as a success; a broken session is reopened by the next call
the breaker lets through. Calls are bounded by ``timeout_s`` and the task's deadline.

Tenants: a server configured with ``tenants`` is only in those tenants' toolboxes
(:meth:`MCPToolset.toolbox`), so another tenant's model neither sees its tools nor can
call them (an unknown tool is a failed outcome). The ``mcp`` package is optional
(``pip install 'agentbus[mcp]'``): without it, an agent with servers configured stops
the worker at start with a ConfigError (exit 78).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from agentbus.errors import AgentbusError, CircuitOpenError, ConfigError
from agents._eager import in_own_task
from agents.api import Context
from agents.llm.breaker import CircuitBreaker
from agents.llm.chat import FunctionSpec, ToolSpec
from agents.llm.mcp_config import MCPServerConfig
from agents.llm.tools import Toolbox, ToolOutcome

if TYPE_CHECKING:
    from mcp import Client

__all__ = ["MCPConnection", "MCPTool", "MCPToolset", "MCPUnavailableError", "require_mcp"]

log = logging.getLogger("agentbus.llm.mcp")

_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what OpenAI-compatible endpoints accept
_MAX_TOOLS = 128  # per server: every tool's spec goes out with every model call
_MAX_SCHEMA_BYTES = 64 * 1024
_object = msgspec.json.Decoder(dict[str, Any])


class MCPCallError(Exception):
    """The server answered a call with a protocol error (its message, for the model)."""


class MCPUnavailableError(AgentbusError):
    """An MCP server could not be started or reached, or did not list its tools in time."""


def require_mcp() -> None:
    """Raise a ConfigError naming the extra when the ``mcp`` package is missing."""
    try:
        import mcp  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "MCP servers are configured but the 'mcp' package is not installed:"
            " pip install 'agentbus[mcp]' (or remove AGENTBUS_MCP_CONFIG)"
        ) from exc


class MCPConnection:
    """One server's session, owned by a background task; its breaker and call counts."""

    def __init__(self, config: MCPServerConfig) -> None:
        self.config = config
        self.breaker = CircuitBreaker(f"mcp server {config.name}", config.breaker)
        self.outcomes: dict[str, int] = {}
        """Calls by outcome: ok, tool_error, protocol_error, invalid_arguments, timeout, connection,
        circuit_open."""
        self.seconds = 0.0
        """Time spent in calls that reached the server (for the summary metric)."""
        self.calls = 0
        self.opened = 0
        """Sessions opened: 1 after the start, one more per reopen after a broken one."""
        self.listed: list[Any] = []
        """The server's tools (``mcp.types.Tool``) as listed when the session opened."""
        self._client: Client | None = None
        self._broken = False
        self._owner: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._lock = asyncio.Lock()

    def _target(self, stack: contextlib.AsyncExitStack) -> Any:
        from mcp import StdioServerParameters

        cfg = self.config
        if cfg.command:
            return StdioServerParameters(
                command=cfg.command[0], args=list(cfg.command[1:]), env=dict(cfg.env)
            )
        if not cfg.headers:
            return cfg.url
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        http = httpx2.AsyncClient(headers=dict(cfg.headers))
        stack.push_async_callback(http.aclose)  # the SDK closes only the clients it made
        return streamable_http_client(cfg.url, http_client=http)

    async def open(self) -> None:
        """Start or reach the server and list its tools; MCPUnavailableError if it does not answer in time."""
        from mcp import Client

        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closing = asyncio.Event()

        async def own() -> None:
            # the SDK's task groups must be entered and left by one task: this one
            try:
                async with contextlib.AsyncExitStack() as stack, Client(self._target(stack)) as client:
                    listed = await client.list_tools()
                    self.listed = list(listed.tools)
                    self._client = client
                    self.opened += 1
                    ready.set_result(None)
                    await self._closing.wait()
            except BaseException as exc:
                if not ready.done():
                    ready.set_exception(exc)
                raise
            finally:
                self._client = None

        self._broken = False
        self._owner = asyncio.get_running_loop().create_task(own(), name=f"mcp-{self.config.name}")
        try:  # a timer, not asyncio.timeout: this may run in a handler's eager first step
            await asyncio.wait((ready,), timeout=self.config.connect_timeout_s)
            if not ready.done():
                raise TimeoutError
            ready.result()
        except Exception as exc:
            await self.close()
            why = "no answer" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            raise MCPUnavailableError(
                f"MCP server {self.config.name} ({self.config.transport}) could not be opened: {why}"
            ) from exc

    @property
    def connected(self) -> bool:
        """The session is open and its owner alive."""
        owner = self._owner
        return self._client is not None and not self._broken and owner is not None and not owner.done()

    async def close(self) -> None:
        """End the session (and a stdio server's process)."""
        self._closing.set()
        owner, self._owner = self._owner, None
        if owner is not None:
            await asyncio.wait((owner,), timeout=10)
            if not owner.done():
                owner.cancel()
                await asyncio.wait((owner,), timeout=5)
            if owner.done() and not owner.cancelled():
                owner.exception()  # retrieved: a session that ended badly is not "never retrieved"

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    async def call(self, tool: str, arguments: dict[str, Any], timeout_s: float) -> Any:
        """One ``tools/call`` through the breaker; TimeoutError, CircuitOpenError or ConnectionError."""
        try:
            probe = self.breaker.acquire()
        except CircuitOpenError:
            self._count("circuit_open")
            raise
        started = time.perf_counter()
        try:
            if not self.connected:
                async with self._lock:
                    if not self.connected:
                        await self.close()
                        await self.open()
            client = self._client
            assert client is not None
            result = await in_own_task(client.call_tool(tool, arguments), timeout_s)
        except TimeoutError:
            self.breaker.failure(probe)
            self._count("timeout")
            raise
        except asyncio.CancelledError:
            self.breaker.cancelled(probe)
            raise
        except Exception as exc:
            from mcp import MCPError
            from mcp.types import CONNECTION_CLOSED

            if isinstance(exc, MCPError) and exc.code != CONNECTION_CLOSED:  # the server answered: an error
                self.breaker.success(probe)
                self._count("protocol_error")
                raise MCPCallError(exc.message) from exc
            self.breaker.failure(probe)
            self._count("connection")
            log.warning("MCP server %s: call of %s failed: %r", self.config.name, tool, exc)
            self._broken = True  # the next call the breaker lets through opens a new session
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from exc
        self.breaker.success(probe)
        self.calls += 1
        self.seconds += time.perf_counter() - started
        self._count("tool_error" if result.is_error else "ok")
        return result


class MCPTool:
    """A tool of an MCP server, as the model sees and calls it."""

    __slots__ = ("_validator", "conn", "description", "effect", "name", "remote", "schema")

    def __init__(self, conn: MCPConnection, listed: Any) -> None:
        from jsonschema import validators

        self.conn = conn
        self.remote: str = listed.name
        self.name = f"{conn.config.name}__{listed.name}"
        self.description: str = (listed.description or "")[:1024]
        # Only a tool its server declares read-only may run again on a retry; any other goes
        # through the effects ledger (Context.once), like a local tool with an effect.
        annotations = getattr(listed, "annotations", None)
        self.effect: bool = not (annotations is not None and annotations.read_only_hint is True)
        schema = dict(listed.input_schema or {"type": "object"})
        if len(msgspec.json.encode(schema)) > _MAX_SCHEMA_BYTES:  # it goes out with every model call
            raise ValueError(f"input schema larger than {_MAX_SCHEMA_BYTES} bytes")
        cls = validators.validator_for(schema)
        cls.check_schema(schema)  # a schema that is no schema: the tool is left out (see toolset)
        self.schema = schema
        self._validator = cls(schema)

    def spec(self) -> ToolSpec:
        """How the model sees the tool."""
        return ToolSpec(FunctionSpec(name=self.name, description=self.description, parameters=self.schema))

    async def call(self, ctx: Context, arguments: str) -> ToolOutcome:
        """Validate the arguments against the schema, call the server, map the answer to an outcome."""
        try:
            args = _object.decode(arguments or "{}")
        except msgspec.ValidationError:
            return ToolOutcome(False, error=f"arguments of {self.name} must be a JSON object")
        except msgspec.DecodeError as exc:
            return ToolOutcome(False, error=f"arguments of {self.name} are not valid JSON: {exc}")
        problems = sorted(self._validator.iter_errors(args), key=lambda e: list(e.path))
        if problems:
            self.conn._count("invalid_arguments")
            where = "/".join(str(p) for p in problems[0].path) or "(root)"
            return ToolOutcome(
                False, error=f"invalid arguments for {self.name}: at {where}: {problems[0].message}"
            )
        limit = self.conn.config.timeout_s
        if ctx.deadline is not None:
            limit = min(limit, max(0.001, ctx.deadline - time.time()))
        server = self.conn.config.name
        try:
            result = await self.conn.call(self.remote, args, limit)
        except TimeoutError:
            return ToolOutcome(
                False, error=f"{self.name}: MCP server {server} did not answer within {limit:g}s"
            )
        except CircuitOpenError as exc:
            return ToolOutcome(
                False,
                error=f"{self.name}: MCP server {server} is unavailable (retry in {exc.retry_after_s:.0f}s)",
            )
        except ConnectionError:
            return ToolOutcome(False, error=f"{self.name}: the connection to MCP server {server} failed")
        except MCPCallError as exc:
            return ToolOutcome(False, error=f"{self.name} refused: {str(exc)[:500]}")
        return self._outcome(result)

    def _outcome(self, result: Any) -> ToolOutcome:
        cap = self.conn.config.max_result_chars
        texts = [getattr(block, "text", None) for block in result.content]
        text = "\n".join(t for t in texts if isinstance(t, str))
        if len(text) > cap:
            text = text[:cap] + f" [cut at {cap} characters]"
        if result.is_error:
            return ToolOutcome(False, error=f"{self.name} failed: {text or 'the server reported an error'}")
        structured = result.structured_content
        if structured is not None and len(msgspec.json.encode(structured)) <= cap:
            return ToolOutcome(True, structured)
        return ToolOutcome(True, text)


class MCPToolset:
    """The MCP servers of one agent: opened at start, their tools per tenant, closed at stop."""

    def __init__(self, servers: Sequence[MCPServerConfig]) -> None:
        self.servers = tuple(servers)
        self.connections: list[MCPConnection] = []
        self._tools: list[tuple[MCPServerConfig, MCPTool]] = []
        self._boxes: dict[str, Toolbox] = {}

    async def open(self, local: Iterable[str] = ()) -> None:
        """Open every session (all at once) and list the tools; a clash with local tools: ConfigError."""
        if not self.servers:
            return
        require_mcp()
        taken = set(local)
        self.connections = [MCPConnection(cfg) for cfg in self.servers]
        try:
            opened = await asyncio.gather(*(c.open() for c in self.connections), return_exceptions=True)
            failed = [exc for exc in opened if isinstance(exc, BaseException)]
            if failed:
                raise failed[0]
            for cfg, conn in zip(self.servers, self.connections, strict=True):
                if len(conn.listed) > _MAX_TOOLS and cfg.tools is None:
                    log.warning(
                        "MCP server %s lists %d tools: the first %d are used",
                        cfg.name,
                        len(conn.listed),
                        _MAX_TOOLS,
                    )
                listed_tools = conn.listed if cfg.tools is not None else conn.listed[:_MAX_TOOLS]
                for listed in listed_tools:
                    if cfg.tools is not None and listed.name not in cfg.tools:
                        continue
                    name = f"{cfg.name}__{listed.name}"
                    if not _TOOL_NAME.fullmatch(name):
                        log.warning(
                            "MCP server %s: tool %.80r left out: not a usable tool name", cfg.name, name
                        )
                        continue
                    if name in taken:
                        raise ConfigError(f"MCP server {cfg.name}: a second tool named {name!r}")
                    try:
                        tool = MCPTool(conn, listed)
                    except Exception as exc:
                        log.warning(
                            "MCP server %s: tool %s left out: bad input schema: %s", cfg.name, name, exc
                        )
                        continue
                    taken.add(name)
                    self._tools.append((cfg, tool))
                missing = set(cfg.tools or ()) - {t.remote for c, t in self._tools if c is cfg}
                if missing:
                    raise ConfigError(f"MCP server {cfg.name} does not list the tools {sorted(missing)}")
        except BaseException:
            await self.close()
            raise
        log.info("MCP tools: %s", ", ".join(t.name for _, t in self._tools) or "none")

    @property
    def tools(self) -> list[MCPTool]:
        """Every MCP tool, whichever tenants may use it."""
        return [t for _, t in self._tools]

    def toolbox(self, base: Toolbox, tenant: str) -> Toolbox:
        """``base`` plus the MCP tools ``tenant`` may use (cached per tenant)."""
        if not self._tools:
            return base
        box = self._boxes.get(tenant)
        if box is None:
            if len(self._boxes) >= 4096:  # tenants are unbounded: so is nothing kept per tenant
                self._boxes.clear()
            mine = [t for cfg, t in self._tools if cfg.tenants is None or tenant in cfg.tenants]
            box = base.extended(mine)
            self._boxes[tenant] = box
        return box

    async def close(self) -> None:
        """Close every session."""
        for conn in self.connections:
            await conn.close()
        self.connections = []
        self._tools = []
        self._boxes.clear()
