"""A small MCP server built with the SDK's server API, for tests, the example and the benchmark.

``python -m agents.llm.mcp_testing --transport stdio`` talks MCP on stdin/stdout;
``--transport http`` serves streamable HTTP on a free loopback port and prints
``listening http://127.0.0.1:<port>/mcp`` once it accepts connections. Its tools:

* ``add(a, b)``: the sum (a structured result);
* ``open_ticket(title, priority)``: a new help-desk ticket ``T-0001``, ``T-0002``, ...;
* ``whoami()``: the ``--label`` this server was started with (which server answered);
* ``sleep(seconds)``: answers after that long (timeouts);
* ``fail(message)``: a tool error (``isError``) with that message;
* ``crash()``: the process exits at once (a broken session);
* ``big(size)``: a text of ``size`` characters (results are cut by the client);
* ``header(name)``: the value of that HTTP request header ("" over stdio);
* with ``--hostile``, ``bad name!``: a tool whose name no model accepts (left out by the client).
"""

from __future__ import annotations

import argparse
import os
import socket
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

__all__ = ["build_server", "main"]


def build_server(label: str = "mcp-testing", *, hostile: bool = False) -> MCPServer:
    """The SDK server with the tools above."""
    import anyio
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer(label, log_level="WARNING")
    tickets: list[str] = []

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def open_ticket(title: str, priority: Literal["low", "normal", "high"] = "normal") -> dict[str, str]:
        """Open a help-desk ticket; returns its id."""
        tickets.append(title)
        return {"ticket_id": f"T-{len(tickets):04d}", "title": title, "priority": priority}

    @server.tool()
    def whoami() -> str:
        """Which server this is."""
        return label

    @server.tool()
    async def sleep(seconds: float) -> str:
        """Answer after ``seconds``."""
        await anyio.sleep(seconds)
        return "slept"

    @server.tool()
    def fail(message: str) -> str:
        """Fail with ``message``."""
        raise ToolError(message)

    @server.tool()
    def crash() -> str:
        """Exit the server process at once."""
        os._exit(3)

    @server.tool()
    def big(size: int) -> str:
        """A text of ``size`` characters."""
        return "x" * min(size, 10_000_000)

    def header(name: str, ctx: Any) -> str:
        """The value of an HTTP request header."""
        return str((ctx.headers or {}).get(name.lower(), ""))

    header.__annotations__["ctx"] = Context  # the class itself: the SDK injects by this annotation
    server.tool()(header)

    if hostile:
        server.add_tool(whoami, name="bad name!", description="A name no model accepts.")

    return server


def main() -> None:
    """Serve until killed (or until stdin closes, over stdio)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transport", choices=("stdio", "http"), default="stdio")
    parser.add_argument("--label", default="mcp-testing")
    parser.add_argument("--hostile", action="store_true", help="also list a tool of an unusable name")
    args = parser.parse_args()
    server = build_server(args.label, hostile=args.hostile)
    if args.transport == "stdio":
        server.run("stdio")
        return
    import anyio
    import uvicorn

    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it every answer waits for a delayed ACK (about 40 ms a call on Linux)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    app = server.streamable_http_app(host="127.0.0.1")
    web = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    print(f"listening http://127.0.0.1:{sock.getsockname()[1]}/mcp", flush=True)
    anyio.run(lambda: web.serve(sockets=[sock]))


if __name__ == "__main__":
    main()
