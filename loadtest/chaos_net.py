"""Network partitions on loopback: TCP proxies that can be cut and healed (:class:`ProxyNet`),
one per directed pair of cluster nodes (:class:`RouteNet`) or one per uplink of an edge site;
and :class:`TcpProxy`, one proxy on the caller's loop that can inject bytes into its
clients' streams or filter what they send (a subclass overrides ``_client_to_server``).

Node ``i`` reaches node ``j``'s route port only through the proxy of ``(i, j)``
(:meth:`bus.cluster.NatsCluster.route_via`), so a proxy knows which two nodes a route
connection joins; loopback alone could not tell whose socket it is. :meth:`RouteNet.isolate`
closes every route connection of one node and refuses new ones (a firewall's REJECT:
both sides see the connection end at once), while that node and its clients keep
running: its clients stay connected to a server that has lost its cluster.
:meth:`RouteNet.heal` lets routes connect again; the servers' own route retries do it.

Why proxies rather than network namespaces: no root, no veth or bridge left behind
when a run is killed, and the same mechanism on a laptop and in CI. The proxies run on
their own event loop in a thread, so a busy test loop does not stall the routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Hashable, Iterable
from typing import Any, Self

from bus.cluster import NatsCluster

__all__ = ["ProxyNet", "RouteNet", "TcpProxy"]

_CHUNK = 1 << 16

_Pump = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` in whole reads until either side ends."""
    with contextlib.suppress(OSError):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()


async def _splice(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    conns: set[asyncio.StreamWriter],
    forward: _Pump = _pump,
) -> None:
    """Pump both ways (``forward`` client to server) until one side ends; then close both.

    Both writers are in ``conns`` meanwhile, so a cut or a close can abort them.
    """
    (reader, writer), (up_reader, up_writer) = client, upstream
    conns.update((writer, up_writer))
    pumps = [
        asyncio.ensure_future(forward(reader, up_writer)),
        asyncio.ensure_future(_pump(up_reader, writer)),
    ]
    try:
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in pumps:
            task.cancel()
        for w in (writer, up_writer):
            conns.discard(w)
            w.close()


class ProxyNet:
    """Named loopback TCP proxies on one event loop in a thread; each can be cut and healed."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="proxy-net", daemon=True)
        self._thread.start()
        self._servers: list[asyncio.Server] = []
        self._targets: dict[Hashable, int] = {}
        self._conns: dict[Hashable, set[asyncio.StreamWriter]] = {}
        self._cut: set[Hashable] = set()
        self.ports: dict[Hashable, int] = {}

    def add(self, name: Hashable, target_port: int) -> int:
        """A proxy to ``127.0.0.1:target_port``; the port it listens on."""
        self._targets[name] = target_port
        self.ports[name] = self._call(self._listen(name))
        return self.ports[name]

    def _call(self, coro: Coroutine[Any, Any, int]) -> int:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self, name: Hashable) -> int:
        server = await asyncio.start_server(lambda r, w: self._accept(name, r, w), "127.0.0.1", 0)
        self._servers.append(server)
        self._conns[name] = set()
        return int(server.sockets[0].getsockname()[1])

    async def _accept(
        self, name: Hashable, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if name in self._cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._targets[name])
        except OSError:  # the target is down: so is this connection
            writer.transport.abort()
            return
        await _splice((reader, writer), (up_reader, up_writer), self._conns[name])

    def cut(self, names: Iterable[Hashable]) -> None:
        """Close the open connections of ``names`` (both sides see them end) and refuse new ones."""
        self._call(self._cut_now(set(names)))

    async def _cut_now(self, names: set[Hashable]) -> int:
        self._cut |= names
        for name in names:
            for w in list(self._conns.get(name, ())):
                w.transport.abort()
        return 0

    def heal(self) -> None:
        """Let every proxy connect again."""
        self._call(self._heal_now())

    async def _heal_now(self) -> int:
        self._cut.clear()
        return 0

    def close(self) -> None:
        """Close every proxy and stop the thread."""
        if not self._thread.is_alive():
            return
        self._call(self._close_now())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _close_now(self) -> int:
        for server in self._servers:
            server.close()
        for conns in self._conns.values():
            for w in list(conns):
                w.transport.abort()
        return 0


class RouteNet(ProxyNet):
    """A proxy for every directed pair ``(i, j)`` of a cluster's nodes; start before the cluster."""

    def __init__(self, cluster: NatsCluster) -> None:
        super().__init__()
        self.cluster = cluster

    def start(self) -> RouteNet:
        """Bind one proxy per pair and tell the cluster to route through them."""
        size = self.cluster.size
        hops = {
            (i, j): self.add((i, j), self.cluster.route_ports[j])
            for i in range(size)
            for j in range(size)
            if i != j
        }
        self.cluster.route_via(hops)
        return self

    def isolate(self, nodes: Iterable[int]) -> None:
        """Cut every route to and from ``nodes``."""
        cut = set(nodes)
        self.cut(pair for pair in self.ports if isinstance(pair, tuple) and cut.intersection(pair))


class TcpProxy:
    """A loopback TCP proxy to ``127.0.0.1:<upstream_port>`` on the running event loop.

    :meth:`inject` writes bytes into the server-to-client stream of every client connected
    now (between two whole reads, never inside one); a subclass that overrides
    ``_client_to_server`` sees, and may change, every byte a client sends.
    """

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._conns: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream = await asyncio.open_connection("127.0.0.1", self._upstream)
        except OSError:  # the server is down: so is this connection
            writer.transport.abort()
            return
        self._clients.add(writer)
        try:
            await _splice((reader, writer), upstream, self._conns, self._client_to_server)
        finally:
            self._clients.discard(writer)

    async def _client_to_server(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _pump(reader, writer)

    def inject(self, data: bytes) -> int:
        """Write ``data`` to every client connected now; how many there were."""
        for writer in self._clients:
            writer.write(data)
        return len(self._clients)

    async def close(self) -> None:
        """Stop listening and abort every connection."""
        if self._server is not None:
            self._server.close()
        for w in list(self._conns):
            w.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
