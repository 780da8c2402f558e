"""Network partitions between cluster nodes on loopback: one TCP proxy per directed pair of nodes.

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
from collections.abc import Iterable

from bus.cluster import NatsCluster

__all__ = ["RouteNet"]

_CHUNK = 1 << 16


class RouteNet:
    """Proxies for every directed pair of a cluster's nodes; start before the cluster starts."""

    def __init__(self, cluster: NatsCluster) -> None:
        self.cluster = cluster
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="route-net", daemon=True)
        self._servers: list[asyncio.Server] = []
        self._conns: dict[tuple[int, int], set[asyncio.StreamWriter]] = {}
        self._isolated: set[int] = set()
        self.ports: dict[tuple[int, int], int] = {}

    def start(self) -> RouteNet:
        """Bind one proxy per pair and tell the cluster to route through them."""
        self._thread.start()
        pairs = [(i, j) for i in range(self.cluster.size) for j in range(self.cluster.size) if i != j]
        for pair in pairs:
            self.ports[pair] = self._call(self._listen(pair))
        self.cluster.route_via(self.ports)
        return self

    def _call(self, coro: object) -> int:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    async def _listen(self, pair: tuple[int, int]) -> int:
        server = await asyncio.start_server(
            lambda r, w: self._accept(pair, r, w), "127.0.0.1", 0, reuse_address=True
        )
        self._servers.append(server)
        self._conns[pair] = set()
        return int(server.sockets[0].getsockname()[1])

    def _cut(self, pair: tuple[int, int]) -> bool:
        return bool(self._isolated.intersection(pair))

    async def _accept(
        self, pair: tuple[int, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._cut(pair):
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(
                "127.0.0.1", self.cluster.route_ports[pair[1]]
            )
        except OSError:  # the target node is down: so is this connection
            writer.close()
            return
        conns = self._conns[pair]
        conns.update((writer, up_writer))
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer)),
            asyncio.ensure_future(self._pump(up_reader, writer)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            for w in (writer, up_writer):
                conns.discard(w)
                w.close()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(_CHUNK):
                writer.write(data)
                await writer.drain()

    def isolate(self, nodes: Iterable[int]) -> None:
        """Cut every route to and from ``nodes``: open connections are closed, new ones refused."""
        self._call(self._isolate(set(nodes)))

    async def _isolate(self, nodes: set[int]) -> int:
        self._isolated |= nodes
        for pair, conns in self._conns.items():
            if self._cut(pair):
                for w in list(conns):
                    w.transport.abort()
        return 0

    def heal(self) -> None:
        """Let every route connect again."""
        self._call(self._heal())

    async def _heal(self) -> int:
        self._isolated.clear()
        return 0

    def close(self) -> None:
        """Close every proxy and stop the thread."""
        if not self._thread.is_alive():
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _close(self) -> int:
        for server in self._servers:
            server.close()
        for conns in self._conns.values():
            for w in list(conns):
                w.transport.abort()
        return 0
