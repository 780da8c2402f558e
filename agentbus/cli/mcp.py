"""``agentbus mcp serve``: the registered agent kinds as MCP tools, so MCP clients drive the fleet.

    agentbus mcp serve --agents agents.builtin --tenant acme               # stdio
    agentbus mcp serve --agents agents.builtin --tenant acme --transport http --port 8765

Each agent kind is a tool of the same name whose input schema is the JSON schema of the
agent's msgspec input type. A call is validated against that type (strictly: no ``"3"``
for an int), submitted as a task of ``--tenant`` (due by the end of the wait) through
:class:`~bus.publisher.Publisher` and answered with the task's result: the output as
structured content and as JSON text, or, for a task that failed or was dead-lettered, an
error result with the reason. The task asks for its stream (``stream: true``), and each
stream event (tokens, tool steps) is sent to the client as a progress notification when
the client asked for progress. The tenant is this command's, never the client's: run one
``mcp serve`` per tenant, with that tenant's NATS credentials (``AGENTBUS_NATS_*``).

Over stdio, stdout is the protocol; logs go to stderr. Over HTTP the endpoint is
``http://<host>:<port>/mcp`` (printed on stdout once it listens), bound to 127.0.0.1 by
default. With ``AGENTBUS_MCP_SERVE_TOKEN`` (or ``..._TOKEN_FILE``, a mounted Secret) every
request must carry ``Authorization: Bearer <token>`` (401 otherwise); an address other
than loopback is refused without one, since whoever reaches the endpoint submits tasks as
the tenant. Put a proxy that authenticates your users in front of it for anything more.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import inspect
import ipaddress
import socket
import sys
import time
from typing import Any

import msgspec

from agentbus.cli._codes import EXIT_CONFIG
from agentbus.env import Env
from agentbus.errors import AgentbusError, ConfigError, UsageError
from agents.api import AgentSpec
from agents.config import WorkerConfig, nats_auth_from_env, resolve_nats_url
from agents.registry import Registry
from bus.connection import connect
from bus.messages import DecisionEvent, DoneEvent, StepEvent, TokenEvent, stream_event_decoder
from bus.publisher import Publisher, new_task_id
from bus.subjects import check_token, stream_subject

__all__ = ["register", "tool_schema"]


def register(sub: Any) -> None:
    """Add the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser("mcp", help="serve agent kinds as MCP tools")
    mcp = p.add_subparsers(dest="mcp_command", required=True, metavar="ACTION")
    serve = mcp.add_parser("serve", help="an MCP server whose tools submit tasks (stdio or HTTP)")
    serve.add_argument(
        "--agents", help="modules defining the agents (default: $AGENTBUS_AGENTS or agents.builtin)"
    )
    serve.add_argument("--kind", action="append", dest="kinds", help="expose only these kinds (repeatable)")
    serve.add_argument("--tenant", required=True, help="the tenant every call's task is submitted for")
    serve.add_argument(
        "--nats-url", help="NATS server (default: $AGENTBUS_NATS_URL or a running `agentbus up`)"
    )
    serve.add_argument("--transport", choices=("stdio", "http"), default="stdio")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP address (default %(default)s)")
    serve.add_argument("--port", type=int, default=0, help="HTTP port (default: a free one, printed)")
    serve.add_argument(
        "--timeout-s", type=float, default=120.0, help="result wait per call (default %(default)s)"
    )
    serve.set_defaults(run=run)


def tool_schema(spec: AgentSpec[Any, Any]) -> dict[str, Any]:
    """The JSON schema of the agent's input type, with the top-level ``$ref`` resolved (an object)."""
    schema = msgspec.json.schema(spec.input)
    defs: dict[str, Any] = schema.get("$defs", {})
    ref = schema.get("$ref", "")
    if ref.startswith("#/$defs/"):
        top: dict[str, Any] = dict(defs.pop(ref.removeprefix("#/$defs/")))
        if defs:
            top["$defs"] = defs
        schema = top
    if schema.get("type") != "object":  # MCP wants an object: wrap anything else as {"input": ...}
        schema = {"type": "object", "properties": {"input": schema}, "required": ["input"]}
    return schema


class _Bridge:
    """Tool calls -> tasks of one tenant -> results (and stream events -> progress)."""

    def __init__(self, registry: Registry, tenant: str, pub: Publisher, nc: Any, timeout_s: float) -> None:
        self.registry = registry
        self.tenant = tenant
        self.pub = pub
        self.nc = nc
        self.timeout_s = timeout_s
        self.wrapped = {
            s.kind for s in registry if msgspec.json.schema(s.input).get("type") not in (None, "object")
        }

    def tools(self) -> list[Any]:
        from mcp import types

        return [
            types.Tool(
                name=s.kind,
                description=(inspect.getdoc(s.handler) or f"Run a {s.kind} task.")[:1024],
                input_schema=tool_schema(s),
            )
            for s in self.registry
        ]

    async def call(self, ctx: Any, name: str, arguments: dict[str, Any]) -> Any:
        from mcp import types

        def error(text: str) -> types.CallToolResult:
            return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True)

        if name not in self.registry:
            return error(f"unknown tool {name[:80]!r}; the tools are: {', '.join(self.registry.kinds)}")
        spec = self.registry[name]
        raw: Any = arguments.get("input") if name in self.wrapped else arguments
        try:
            payload = msgspec.to_builtins(msgspec.convert(raw, spec.input))
        except msgspec.ValidationError as exc:
            return error(f"invalid arguments for {name}: {exc}")
        task_id = new_task_id()
        events: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1024)

        async def on_event(msg: Any) -> None:
            with contextlib.suppress(asyncio.QueueFull):  # progress is best effort
                events.put_nowait(msg.data)

        sub = await self.nc.subscribe(stream_subject(self.tenant, task_id), cb=on_event)
        try:
            # past the wait nobody reads the result: the deadline makes the fleet drop the task then
            deadline = time.time() + self.timeout_s
            call = self.pub.call(
                self.tenant,
                name,
                payload,
                timeout_s=self.timeout_s,
                task_id=task_id,
                deadline=deadline,
                stream=True,
            )
            waiting = asyncio.ensure_future(call)
            seen = 0
            ended = False
            while not waiting.done():
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait({waiting, getter}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    continue
                seen += 1
                ended = await _progress(ctx, seen, getter.result())
            try:
                result = waiting.result()
            except AgentbusError as exc:
                return error(f"task {task_id}: {exc}")
            # the events travel on another subscription than the result: let the last ones in
            while seen and not ended:
                try:
                    data = await asyncio.wait_for(events.get(), 1.0)
                except TimeoutError:
                    break
                seen += 1
                ended = await _progress(ctx, seen, data)
        finally:
            await sub.unsubscribe()
        if not result.ok:
            return error(f"task {task_id} failed: {result.error}")
        output = result.output
        structured = output if isinstance(output, dict) else {"result": output}
        text = msgspec.json.encode(output).decode()
        return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=structured)


async def _progress(ctx: Any, n: int, data: bytes) -> bool:
    """Send one stream event as progress; True for the task's last event (``done``)."""
    try:
        event = stream_event_decoder.decode(data)
    except msgspec.DecodeError:
        return False
    if isinstance(event, DoneEvent):
        return True
    if isinstance(event, TokenEvent):
        message = event.text
    elif isinstance(event, StepEvent):
        message = f"{event.tool}: {'ok' if event.ok else 'failed'}"
    elif isinstance(event, DecisionEvent):
        message = f"turn {event.turn}: " + (", ".join(event.tools) or "answer")
    else:
        return False
    with contextlib.suppress(Exception):  # a client that went away must not fail the call
        await ctx.session.report_progress(float(n), None, message[:500])
    return False


def _server(bridge: _Bridge) -> Any:
    from mcp import types
    from mcp.server import Server

    tools = bridge.tools()

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        result: types.CallToolResult = await bridge.call(ctx, params.name, params.arguments or {})
        return result

    return Server("agentbus", on_list_tools=list_tools, on_call_tool=call_tool)


def run(args: argparse.Namespace) -> int:
    """Serve until stdin closes (stdio) or SIGINT/SIGTERM (HTTP)."""
    try:
        import mcp  # noqa: F401
    except ImportError:
        print(
            "agentbus: error: `mcp serve` needs the mcp package: pip install 'agentbus[mcp]'", file=sys.stderr
        )
        return EXIT_CONFIG
    check_token("tenant", args.tenant)
    args.token = Env().secret("AGENTBUS_MCP_SERVE_TOKEN")
    if args.transport == "http" and not args.token and not _loopback(args.host):
        raise UsageError(
            f"serving HTTP on {args.host} needs AGENTBUS_MCP_SERVE_TOKEN (or _FILE): whoever reaches"
            f" the endpoint submits tasks as tenant {args.tenant}"
        )
    modules = tuple(args.agents.split(",")) if args.agents else WorkerConfig.from_env().agent_modules
    registry = Registry.from_modules(modules)
    if args.kinds:
        registry = registry.only(args.kinds)
    if not len(registry):
        raise ConfigError("no agent kinds to serve")
    return asyncio.run(_serve(args, registry))


async def _serve(args: argparse.Namespace, registry: Registry) -> int:
    nc = await connect(
        resolve_nats_url(args.nats_url),
        name="agentbus-mcp",
        first_connect_timeout_s=5.0,
        auth=nats_auth_from_env(),
    )
    try:
        bridge = _Bridge(registry, args.tenant, Publisher(nc), nc, args.timeout_s)
        server = _server(bridge)
        if args.transport == "stdio":
            from mcp.server.stdio import stdio_server

            async with stdio_server() as (read, write):
                await server.run(read, write, server.create_initialization_options())
        else:
            await _serve_http(server, args.host, args.port, args.token)
    finally:
        await nc.drain()
    return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Bearer:
    """An ASGI guard: HTTP requests without ``Authorization: Bearer <token>`` get a 401."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(given, self.expected):
                headers = [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")]
                await send({"type": "http.response.start", "status": 401, "headers": headers})
                await send({"type": "http.response.body", "body": b"unauthorized\n"})
                return
        await self.app(scope, receive, send)


async def _serve_http(server: Any, host: str, port: int, token: str | None) -> None:
    import uvicorn

    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it every answer waits for a delayed ACK (about 40 ms a call on Linux)
    sock = socket.socket(
        socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
    )
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    app = server.streamable_http_app(host=host)
    if token:
        app = _Bearer(app, token)
    web = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"listening http://{shown}:{bound}/mcp", flush=True)
    await web.serve(sockets=[sock])
