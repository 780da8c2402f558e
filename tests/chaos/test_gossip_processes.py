"""Real multi-process gossip over a real nats-server.

Five ``loadtest.gossip_replica`` processes increment two tenants' counters and add
and remove OR-set elements concurrently, gossiping over core NATS with 10 % of
datagrams dropped and 5 % duplicated. One replica is SIGSTOPped for 10 s in the
middle of its work; another is killed with ``kill -9`` and restored from Redis (it
takes a new replica id and goes on working). After the last heal every replica
must report the exact totals (the sum of every acknowledged increment), the same
set with no removed element back, and only the two tenants, within 10 s.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bus.embedded import EmbeddedNats, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CONVERGE_BOUND_S = 10.0


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server on a free loopback port, ready when it answers PING."""
    port = free_port()
    log = open(tmp_path / "redis.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not start: {(tmp_path / 'redis.log').read_text()}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


class Replica:
    def __init__(self, tmp: Path, run: str, name: str, nats: str, redis: str, *extra: str) -> None:
        self.run, self.name = run, name
        self.status_path = tmp / f"{run}.json"
        self.log_path = tmp / f"{run}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "loadtest.gossip_replica",
                    "--name",
                    name,
                    "--nats-url",
                    nats,
                    "--redis-url",
                    redis,
                    "--status-file",
                    str(self.status_path),
                    "--drop",
                    "0.10",
                    "--dup",
                    "0.05",
                    *extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )

    def status(self) -> dict[str, Any]:
        if self.proc.poll() is not None and self.proc.returncode not in (-signal.SIGKILL,):
            raise AssertionError(f"{self.run} exited {self.proc.returncode}:\n{self.log_path.read_text()}")
        try:
            return dict(json.loads(self.status_path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait(check: Any, timeout_s: float, what: str) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def test_five_replicas_converge_exactly_after_sigstop_and_kill9(tmp_path: Path, redis_url: str) -> None:
    nats = EmbeddedNats(store_dir=tmp_path / "nats").start()
    replicas: list[Replica] = []
    try:

        def start(run: str, name: str, *extra: str) -> Replica:
            r = Replica(tmp_path, run, name, nats.url, redis_url, *extra)
            replicas.append(r)
            return r

        work = ["--ops", "200", "--rate", "40"]
        r0, r1 = start("r0", "r0", *work), start("r1", "r1", *work)
        victim = start("r2", "r2", "--ops", "60", "--rate", "40")
        r3, r4 = start("r3", "r3", *work), start("r4", "r4", *work)
        wait(lambda: all(len(r.status().get("peers", [])) == 4 for r in replicas), 30, "full membership")

        os.kill(r1.proc.pid, signal.SIGSTOP)  # mid-work: it resumes its remaining ops afterwards
        stopped_at = time.monotonic()

        wait(lambda: victim.status().get("done"), 30, "victim's first phase")
        victim.proc.kill()  # kill -9: no leave, no final snapshot
        victim.proc.wait()
        time.sleep(1.0)
        restored = start("r2b", "r2", "--restore", "--start-op", "60", "--ops", "60", "--rate", "40")
        wait(lambda: bool(restored.status().get("restored")), 30, "restore from redis")

        time.sleep(max(0.0, 10.0 - (time.monotonic() - stopped_at)))
        os.kill(r1.proc.pid, signal.SIGCONT)
        healed_at = time.monotonic()

        running = [r0, r1, restored, r3, r4]
        wait(lambda: all(r.status().get("done") for r in running), 60, "every workload done")
        last_event = max(healed_at, time.monotonic())

        statuses = [r.status() for r in (*running, victim)]
        expected = {t: sum(s["acked"][t] for s in statuses) for t in ("acme", "globex")}
        assert expected == {"acme": 4 * 200 + 120, "globex": 1000 * (4 * 200 + 120)}
        added = {e for s in statuses for e in s["added"]}
        removed = {e for s in statuses for e in s["removed"]}
        want_live = sorted(added - removed)

        def exact() -> bool:
            views = [r.status() for r in running]
            return (
                all(
                    v["totals"] == expected and v["live"] == want_live and v["tenants"] == ["acme", "globex"]
                    for v in views
                )
                and len({v["digest"] for v in views}) == 1
            )

        try:
            took = wait(exact, CONVERGE_BOUND_S, "exact totals on every replica")
        except AssertionError:
            views = {
                r.run: {
                    **{k: r.status().get(k) for k in ("totals", "digest", "tenants")},
                    "live_ok": r.status().get("live") == want_live,
                }
                for r in running
            }
            raise AssertionError(f"expected {expected}; replicas: {views}") from None
        after_heal_s = last_event - healed_at
        print(f"converged {took:.2f}s after the last op ({after_heal_s:.1f}s of work after the heal)")
        assert restored.status()["replica_id"] != victim.status()["replica_id"]
    finally:
        for r in replicas:
            r.stop()
        nats.stop()
