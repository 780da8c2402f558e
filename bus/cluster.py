"""A NATS cluster of embedded servers on loopback: N nodes, full-mesh routes, JetStream, fsync per ack.

Each node is an :class:`~bus.embedded.EmbeddedNats` with its own ``server_name``
(``n1``, ``n2``, ...), its own store directory and a route port; every node lists every
other node's route port, so any two nodes that are up find each other again after a
restart. ``sync_interval: always`` is on by default, as the chart's NATS values set it:
a stored task is on disk on a majority before its publisher gets the ack (the Jepsen
report on 2.12 lost acknowledged writes with the 2-minute default).

Routes may go through hops chosen by the caller (:meth:`NatsCluster.route_via`: the
chaos suite puts a TCP proxy on each directed pair of nodes to cut one node off). Then
each node advertises a port nobody listens on, so a node never learns another's real
route port from cluster gossip and every route keeps going through its hop.

A cluster serves JetStream once a meta leader is elected (:meth:`NatsCluster.wait_ready`);
R3 streams need three live nodes to be created. ``leafnodes`` opens a leaf node port on
each node, and ``domain`` names the cluster's JetStream domain, for an edge site
(:mod:`bus.edge`).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

from agentbus.errors import ConfigError
from bus.embedded import EmbeddedNats, free_port, monitor

__all__ = ["CLUSTER_NAME", "NatsCluster"]

CLUSTER_NAME = "agentbus"


class NatsCluster:
    """``size`` nats-server processes forming one JetStream cluster on 127.0.0.1."""

    def __init__(
        self,
        size: int = 3,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        sync_always: bool = True,
        leafnodes: bool = False,
        domain: str = "",
        name: str = CLUSTER_NAME,
        extra_config: str = "",
    ) -> None:
        if size < 1:
            raise ConfigError("a cluster needs at least one node")
        self.size = size
        self.name = name
        self.extra_config = extra_config
        """Added to every node's configuration (authorization, tls blocks), before the cluster's."""
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="agentbus-cluster-"))
        self.route_ports = [free_port() for _ in range(size)]
        self.leaf_ports = [free_port() for _ in range(size)] if leafnodes else []
        self._hops: dict[tuple[int, int], int] = {}
        self._advertise = 0
        self.nodes = [
            EmbeddedNats(
                store_dir=self.base_dir / self.server_name(i),
                sync_always=sync_always,
                jetstream_config=f"domain: {domain}" if domain else "",
            )
            for i in range(size)
        ]
        self._write_configs()

    @staticmethod
    def server_name(i: int) -> str:
        """The ``server_name`` of node ``i`` (0-based): ``n1``, ``n2``, ..."""
        return f"n{i + 1}"

    def index_of(self, server_name: str) -> int:
        """Node index of a ``server_name`` (as a stream's cluster info names its leader)."""
        for i in range(self.size):
            if self.server_name(i) == server_name:
                return i
        raise KeyError(server_name)

    @property
    def urls(self) -> list[str]:
        """Client URLs of every node."""
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated: what ``--nats-url`` takes as seeds."""
        return ",".join(self.urls)

    @property
    def leaf_urls(self) -> list[str]:
        """Leaf node URLs of every node (``leafnodes=True``)."""
        return [f"nats-leaf://127.0.0.1:{p}" for p in self.leaf_ports]

    def route_via(self, hops: Mapping[tuple[int, int], int]) -> None:
        """Route node ``i``'s connection to node ``j`` through loopback port ``hops[(i, j)]``.

        Call before :meth:`start`. Each node then advertises an unused port (see the module
        docstring), so gossip never bypasses a hop.
        """
        self._hops = dict(hops)
        self._advertise = free_port()
        self._write_configs()

    def _write_configs(self) -> None:
        for i, node in enumerate(self.nodes):
            routes = ", ".join(
                f"nats-route://127.0.0.1:{self._hops.get((i, j), self.route_ports[j])}"
                for j in range(self.size)
                if j != i
            )
            advertise = f"  advertise: 127.0.0.1:{self._advertise}\n" if self._advertise else ""
            # no_advertise: a leaf node dials only the URLs it was given (all of them), never a
            # leaf port learnt from gossip, so a proxy on its uplink sees every connection.
            leaf = (
                f"leafnodes {{\n  listen: 127.0.0.1:{self.leaf_ports[i]}\n  no_advertise: true\n}}\n"
                if self.leaf_ports
                else ""
            )
            node.extra_config = self.extra_config + (
                f"\nserver_name: {self.server_name(i)}\n"
                f"cluster {{\n  name: {self.name}\n  listen: 127.0.0.1:{self.route_ports[i]}\n"
                f"{advertise}  routes: [{routes}]\n}}\n{leaf}"
            )

    def start(self, timeout_s: float = 60.0) -> NatsCluster:
        """Start every node (in parallel: each waits for the others) and wait for a meta leader."""
        with ThreadPoolExecutor(self.size) as pool:
            for f in [pool.submit(node.start, timeout_s) for node in self.nodes]:
                f.result()
        self.wait_ready(timeout_s)
        return self

    def alive(self, i: int) -> bool:
        """Whether node ``i``'s process is running (a stopped one, SIGSTOP, still counts)."""
        proc = self.nodes[i].proc
        return proc is not None and proc.poll() is None

    def wait_ready(self, timeout_s: float = 60.0, nodes: list[int] | None = None) -> None:
        """Wait until each of ``nodes`` (default: the live ones) sees the same meta leader and
        its JetStream health check passes."""
        deadline = time.monotonic() + timeout_s
        want = [i for i in range(self.size) if self.alive(i)] if nodes is None else nodes
        while time.monotonic() < deadline:
            leaders = {self.meta_leader(i) for i in want}
            if len(leaders) == 1 and "" not in leaders and all(self._healthy(i) for i in want):
                return
            time.sleep(0.1)  # a poll of the servers' own monitoring endpoints
        raise ConfigError(f"NATS cluster not ready after {timeout_s:g}s; logs in {self.base_dir}")

    def monitor(self, i: int, path: str) -> tuple[int, Any]:
        """``(status, JSON body)`` of node ``i``'s monitoring endpoint ``path``; ``(0, None)`` if down."""
        return monitor(f"http://127.0.0.1:{self.nodes[i].http_port}", path)

    def _healthy(self, i: int) -> bool:
        return self.monitor(i, "/healthz")[0] == 200

    def meta_leader(self, i: int) -> str:
        """The meta leader node ``i`` knows of ("" if none or unreachable)."""
        status, body = self.monitor(i, "/jsz")
        if status != 200 or not isinstance(body, dict):
            return ""
        meta = body.get("meta_cluster") or {}
        return str(meta.get("leader") or "") if isinstance(meta, dict) else ""

    def varz(self, i: int) -> dict[str, Any]:
        """Node ``i``'s ``/varz`` (its effective configuration); {} when unreachable."""
        body = self.monitor(i, "/varz")[1]
        return body if isinstance(body, dict) else {}

    def pid(self, i: int) -> int:
        """Process id of node ``i``."""
        proc = self.nodes[i].proc
        if proc is None:
            raise ConfigError(f"node {self.server_name(i)} is not running")
        return proc.pid

    def kill(self, i: int) -> None:
        """``kill -9`` node ``i`` and reap it; its store stays for :meth:`restart`."""
        node = self.nodes[i]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()
        node.proc = None

    def pause(self, i: int) -> None:
        """SIGSTOP node ``i``: alive, holding its sockets, answering nothing."""
        os.kill(self.pid(i), signal.SIGSTOP)

    def resume(self, i: int) -> None:
        """SIGCONT node ``i``."""
        os.kill(self.pid(i), signal.SIGCONT)

    def restart(self, i: int, timeout_s: float = 60.0) -> None:
        """Start node ``i`` again on its ports with its store (after :meth:`kill` or :meth:`stop`)."""
        self.nodes[i].start(timeout_s)

    def stream_group(self, i: int, stream: str, account: str = "$G") -> str:
        """The name of ``stream``'s Raft group as node ``i`` reports it ("" if unknown)."""
        status, body = self.monitor(i, "/jsz?accounts=true&streams=true&raft=true")
        if status != 200 or not isinstance(body, dict):
            return ""
        for acc in body.get("account_details") or []:
            if isinstance(acc, dict) and acc.get("name") == account:
                for info in acc.get("stream_detail") or []:
                    if isinstance(info, dict) and info.get("name") == stream:
                        return str(info.get("stream_raft_group") or "")
        return ""

    def reseed_replica(self, i: int, stream: str, account: str = "$G", timeout_s: float = 60.0) -> None:
        """Replace node ``i``'s replica of ``stream`` with a fresh one: kill the node, delete its
        copy of the stream and of the stream's Raft group, start it again. The node rejoins
        the group empty and the leader sends it a snapshot.

        The repair for a replica that stays behind because its catch-up keeps failing
        (nats-server 2.15 logs ``Expected first catchup entry to be a snapshot and peerstate,
        will retry``; a restart with the same files does not help). Only safe while the other
        replicas are a current quorum: the caller checks (docs/cluster.md, "Runbook").
        """
        group = self.stream_group(i, stream, account)
        if not group:
            raise ConfigError(f"node {self.server_name(i)} reports no Raft group for stream {stream}")
        self.kill(i)
        js = self.nodes[i].store_dir / "js" / "jetstream"
        shutil.rmtree(js / account / "streams" / stream, ignore_errors=True)
        shutil.rmtree(js / "$SYS" / "_js_" / group, ignore_errors=True)
        self.restart(i, timeout_s)

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL); stores are kept."""
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                os.kill(node.proc.pid, signal.SIGCONT)  # a paused node cannot act on SIGTERM
            node.stop()

    def close(self) -> None:
        """Stop every node and delete the stores if this object created them."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
