"""The ``agentbus`` command as a user runs it: real subprocesses in a temp directory.

``agentbus up`` starts its own nats-server and workers and records them in
``.agentbus/up.json``; ``publish`` and ``status`` run in the same directory find it
there. Readiness comes from that file and the workers' own ``/readyz``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import ROOT, wait_until

from bus.connection import connect
from bus.embedded import EmbeddedNats, free_port
from bus.topology import TASKS_STREAM, ensure_streams

pytestmark = pytest.mark.integration

UP_STATE = Path(".agentbus") / "up.json"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return env


def agentbus(
    cwd: Path, *args: str, stdin: str | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m agentbus <args>`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "agentbus", *args],
        cwd=cwd,
        env=_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


class Up:
    """A running ``agentbus up`` and what it wrote to its state file."""

    def __init__(self, cwd: Path, workers: int, *args: str, new_session: bool = False) -> None:
        self.cwd = cwd
        self.log_path = cwd / "up.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agentbus", "up", "--workers", str(workers), *args],
                cwd=cwd,
                env=_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=new_session,
            )
        self.state: dict[str, Any] = {}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, workers: int) -> None:
        path = self.cwd / UP_STATE

        def state_written() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"agentbus up exited {self.proc.returncode}:\n{self.log()}")
            if not path.exists():
                return False
            self.state = json.loads(path.read_text())  # written atomically (tmp + rename)
            return len(self.state["metrics_ports"]) == workers

        wait_until(state_written, 60, "agentbus up writing .agentbus/up.json")
        assert self.state["pid"] == self.proc.pid
        assert self.state["nats_url"].startswith("nats://127.0.0.1:")
        wait_until(
            lambda: all(http_status(p, "/readyz") == 200 for p in self.ports),
            60,
            "every worker of `up` ready",
        )

    @property
    def ports(self) -> list[int]:
        return list(self.state["metrics_ports"].values())

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def up_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[tuple[Up, list[psutil.Process]]] = []

    def start(workers: int, *args: str) -> Up:
        up = Up(tmp_path, workers, *args)
        up.wait_ready(workers)
        started.append((up, up.descendants()))
        return up

    yield start
    for up, children in started:
        up.stop()
        for child in children:  # never leave a worker or nats-server behind, even on failure
            if child.is_running():
                child.kill()


def gone(procs: list[psutil.Process]) -> bool:
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


@pytest.mark.slow
def test_up_publish_status_and_shutdown(tmp_path: Path, up_factory: Any) -> None:
    up: Up = up_factory(2)
    children = up.descendants()
    commands = [" ".join(c.cmdline()) for c in children]
    assert sum(" worker " in c for c in commands) == 2, commands
    assert sum("nats-server" in c for c in commands) == 1, commands

    # one task, waiting for its result
    done = agentbus(tmp_path, "publish", "echo", '{"text":"hi"}', "--tenant", "acme", "--wait")
    assert done.returncode == 0, done.stderr
    (row,) = json_lines(done.stdout)
    assert row["ok"] is True
    assert row["output"]["text"] == "hi"
    assert row["output"]["tenant"] == "acme"
    assert (row["tenant"], row["kind"]) == ("acme", "echo")
    assert row["worker"] in up.state["metrics_ports"]

    # JSON lines on stdin: several tenants and kinds in one run
    lines = [
        {"tenant": "acme", "kind": "echo", "payload": {"text": "a"}, "id": "stdin-a"},
        {"tenant": "globex", "kind": "echo", "payload": {"text": "b"}, "id": "stdin-b"},
        {"kind": "summarize", "payload": {"text": "Cats purr. Cats sleep a lot."}, "id": "stdin-c"},
    ]
    stdin = "\n".join(json.dumps(line) for line in lines) + "\n\n"
    done = agentbus(tmp_path, "publish", "-", "--wait", "--tenant", "initech", stdin=stdin)
    assert done.returncode == 0, done.stderr
    rows = {r["task_id"]: r for r in json_lines(done.stdout)}
    assert sorted(rows) == ["stdin-a", "stdin-b", "stdin-c"]
    assert all(r["ok"] for r in rows.values())
    assert rows["stdin-a"]["output"]["text"] == "a"
    assert rows["stdin-b"]["tenant"] == "globex"
    assert rows["stdin-c"]["tenant"] == "initech"  # --tenant is the default for lines without one
    assert rows["stdin-c"]["kind"] == "summarize"
    assert "cats" in rows["stdin-c"]["output"]["keywords"]

    # without --wait: the stored reference; the same id twice is deduplicated by JetStream
    first = agentbus(tmp_path, "publish", "echo", '{"text":"once"}', "--tenant", "acme", "--id", "dup-1")
    again = agentbus(tmp_path, "publish", "echo", '{"text":"once"}', "--tenant", "acme", "--id", "dup-1")
    assert (first.returncode, again.returncode) == (0, 0), first.stderr + again.stderr
    (ref1,) = json_lines(first.stdout)
    (ref2,) = json_lines(again.stdout)
    assert ref1["task_id"] == "dup-1"
    assert ref1["subject"] == "tasks.acme.echo"
    assert ref1["duplicate"] is False
    assert ref2["duplicate"] is True
    assert ref2["seq"] == ref1["seq"]

    # a payload the agent cannot accept: dead-lettered, reported, exit 1
    bad = agentbus(tmp_path, "publish", "echo", '{"nope":1}', "--tenant", "acme", "--wait")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    (row,) = json_lines(bad.stdout)
    assert row["ok"] is False
    assert row["error"].startswith("invalid_payload")

    # a payload that is not JSON never leaves the command line
    garbage = agentbus(tmp_path, "publish", "echo", "{not json", "--tenant", "acme")
    assert garbage.returncode == 2
    assert "agentbus: error: payload is not JSON" in garbage.stderr

    # status as JSON: the consumers of every kind that had tasks (one per tenant, summed per
    # kind: docs/fairness.md; no task of `order` was sent), the dead letter, an empty queue
    status = agentbus(tmp_path, "status", "--json", "--interval-s", "0.2")
    assert status.returncode == 0, status.stderr
    snap = json.loads(status.stdout)
    assert sorted(k["kind"] for k in snap["kinds"]) == ["echo", "summarize"]
    assert snap["dead_letters"] == {"acme/echo": 1}
    assert snap["dlq_total"] == 1
    wait_until(
        lambda: (
            json.loads(agentbus(tmp_path, "status", "--json", "--interval-s", "0.1").stdout)["tasks_total"]
            == 0
        ),
        30,
        "the queue to drain",
    )

    # status as a table names the kinds and the tenant/kind with its dead letter
    table = agentbus(tmp_path, "status", "--interval-s", "0.2")
    assert table.returncode == 0, table.stderr
    for word in ("echo", "summarize", "acme/echo", "dlq 1"):
        assert word in table.stdout, table.stdout

    # Ctrl-C: drain the workers, stop the server, remove the state file, exit 0
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(60) == 0, up.log()
    wait_until(lambda: gone(children), 30, "every child of `up` to exit")
    assert not (tmp_path / UP_STATE).exists()
    assert all(http_status(port, "/healthz") == 0 for port in up.ports)
    assert "draining workers" in up.log()


def test_up_exits_zero_on_sigterm(tmp_path: Path, up_factory: Any) -> None:
    up: Up = up_factory(1)
    children = up.descendants()
    assert len(children) >= 2  # a worker and nats-server
    assert stat.S_IMODE((tmp_path / UP_STATE).stat().st_mode) == 0o600  # created so, not chmod-ed after
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(60) == 0, up.log()
    wait_until(lambda: gone(children), 30, "every child of `up` to exit")
    assert not (tmp_path / UP_STATE).exists()


def test_ctrl_c_at_a_terminal_drains_the_workers_through_a_live_server(tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches the whole process group, nats-server included unless it has a
    session of its own: then the in-flight task's drain (result, ack) has no server to go to."""
    store = tmp_path / "store"
    up = Up(tmp_path, 1, "--store-dir", str(store), new_session=True)  # a job's own process group
    try:
        up.wait_ready(1)
        sent = agentbus(tmp_path, "publish", "echo", '{"text":"slow","sleep_s":2}', "--tenant", "acme")
        assert sent.returncode == 0, sent.stderr
        (port,) = up.ports
        wait_until(lambda: _inflight(port) == 1, 30, "the task in flight")
        os.killpg(up.proc.pid, signal.SIGINT)
        assert up.proc.wait(60) == 0, up.log()
    finally:
        if up.proc.poll() is None:
            os.killpg(up.proc.pid, signal.SIGKILL)
            up.proc.wait()
    log = up.log()
    assert "draining workers" in log
    assert "restarting it on port" not in log, log

    async def queued() -> int:  # what the next `up` on this store would find
        nc = await connect(server.url, name="test-after-ctrl-c")
        try:
            return int((await nc.jetstream().stream_info(TASKS_STREAM)).state.messages)
        finally:
            await nc.close()

    with EmbeddedNats(store_dir=store) as server:
        assert asyncio.run(queued()) == 0, log  # the drained task was acked, not left for redelivery


def _inflight(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return 0.0
    found = re.search(r'^agentbus_inflight\{kind="echo"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_up_leaves_a_state_file_that_names_another_process(tmp_path: Path, up_factory: Any) -> None:
    """Another `up` took the directory over meanwhile: its up.json is not ours to remove."""
    up: Up = up_factory(1)
    theirs = {"pid": os.getpid(), "nats_url": "nats://127.0.0.1:1", "metrics_ports": {}}
    (tmp_path / UP_STATE).write_text(json.dumps(theirs))
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(60) == 0, up.log()
    assert json.loads((tmp_path / UP_STATE).read_text()) == theirs


def test_up_agents_takes_a_comma_separated_list(tmp_path: Path, up_factory: Any) -> None:
    """``--agents a,b`` as the README shows it: both modules are served."""
    up: Up = up_factory(1, "--agents", "agents.builtin.basic,agents.builtin.orders")
    tasks = {
        "echo": '{"text":"hi"}',
        "summarize": '{"text":"One. Two. Three.","max_words":3}',
        "order": '{"request":"customer U123 buys 1 of PROD-001"}',
    }
    for kind, payload in tasks.items():  # each served: a result comes back
        done = agentbus(tmp_path, "publish", kind, payload, "--tenant", "acme", "--wait")
        assert done.returncode == 0, done.stderr
    # a kind's consumers are its tenants' (docs/fairness.md): status sums them per kind
    status = agentbus(tmp_path, "status", "--json", "--interval-s", "0.1")
    assert status.returncode == 0, status.stderr
    assert sorted(k["kind"] for k in json.loads(status.stdout)["kinds"]) == ["echo", "order", "summarize"]
    assert "died" not in up.log()


def test_up_stops_with_the_error_of_a_worker_that_cannot_start(tmp_path: Path) -> None:
    """A worker exiting 78 (its agent module does not import) stops `up`, not a restart loop."""
    up = Up(tmp_path, 2, "--agents", "agents.builtin.basic,no_such_agents_module")
    try:
        code = up.proc.wait(60)  # without the fix: a restart loop, ended by the stop below
    finally:
        up.stop()
    log = up.log()
    assert code == 78, log
    assert "cannot import agent module 'no_such_agents_module'" in log
    assert re.search(r"worker w\d exited with 78 \(a configuration error\)", log), log
    assert "died" not in log  # never restarted
    assert not (tmp_path / UP_STATE).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--agents", "no_such_agents_module"], "cannot import agent module 'no_such_agents_module'"),
        (["--kind", "echo,no_such_kind"], "unknown agent kinds: no_such_kind"),
    ],
)
def test_a_worker_that_cannot_start_exits_78(tmp_path: Path, args: list[str], message: str) -> None:
    url = f"nats://127.0.0.1:{free_port()}"  # never reached: the error comes first
    done = agentbus(tmp_path, "worker", "--nats-url", url, "--http-port", "-1", *args, timeout_s=30)
    assert done.returncode == 78, done.stderr
    assert message in done.stderr


def test_an_agent_module_that_raises_on_import_exits_78_with_its_traceback(tmp_path: Path) -> None:
    (tmp_path / "broken_agents.py").write_text("raise RuntimeError('boom at import')\n")
    url = f"nats://127.0.0.1:{free_port()}"
    done = agentbus(tmp_path, "worker", "--nats-url", url, "--agents", "broken_agents", timeout_s=30)
    assert done.returncode == 78, done.stderr
    assert "Traceback" in done.stderr
    assert "cannot import agent modules broken_agents: RuntimeError('boom at import')" in done.stderr


def test_up_never_writes_or_shows_the_nats_password(tmp_path: Path, up_factory: Any) -> None:
    """A password in --nats-url stays out of up.json, up's output and every command line."""
    secret = "s3cr3t-pw"
    server = EmbeddedNats(
        store_dir=tmp_path / "nats", extra_config=f'authorization {{ user: agent, password: "{secret}" }}'
    )
    with server:
        full_url = f"nats://agent:{secret}@127.0.0.1:{server.port}"
        up: Up = up_factory(1, "--nats-url", full_url)
        text = (tmp_path / UP_STATE).read_text()
        assert secret not in text
        state = json.loads(text)
        assert state["nats_url"] == server.url
        assert "AGENTBUS_NATS_URL" in state["nats_credentials"]
        assert stat.S_IMODE((tmp_path / UP_STATE).stat().st_mode) == 0o600
        for child in up.descendants():
            assert secret not in " ".join(child.cmdline())
        env = {**_env(), "AGENTBUS_NATS_URL": full_url}
        done = subprocess.run(
            [sys.executable, "-m", "agentbus", "publish", "echo", '{"text":"hi"}', "--wait"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        up.stop()
        assert secret not in up.log()


def test_status_escapes_tenants_and_kinds_from_the_wire(tmp_path: Path) -> None:
    """Rich markup and terminal control sequences in a subject are printed as text, not obeyed."""
    with EmbeddedNats(store_dir=tmp_path / "nats") as server:

        async def publish() -> None:
            nc = await connect(server.url, name="test-status-escape")
            try:
                js = nc.jetstream()
                await ensure_streams(js)
                await js.publish("tasks.[red]evil\x1b[2J.[blue]kind\x07", b"{}")
            finally:
                await nc.close()

        asyncio.run(publish())
        done = agentbus(tmp_path, "status", "--nats-url", server.url, "--interval-s", "0.1")
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout
    assert "\x07" not in done.stdout
    assert "[red]evil?[2J/[blue]kind?" in done.stdout, done.stdout


def test_a_worker_waiting_for_nats_stops_on_sigterm(tmp_path: Path) -> None:
    """No server yet: the worker waits for one (not ready meanwhile), and SIGTERM ends the wait."""
    url, port = f"nats://127.0.0.1:{free_port()}", free_port()
    argv = [sys.executable, "-m", "agentbus", "worker", "--nats-url", url, "--http-port", str(port)]
    proc = subprocess.Popen(
        argv, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_until(lambda: http_status(port, "/healthz") == 200, 30, "the worker's probe server")
        assert http_status(port, "/readyz") == 503  # waiting for NATS: alive, not ready
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert f"stopped while starting (NATS at {url})" in out
    assert "Traceback" not in out
    assert http_status(port, "/healthz") == 0  # the probe server is closed too


def test_worker_help(tmp_path: Path) -> None:
    done = agentbus(tmp_path, "worker", "--help")
    assert done.returncode == 0, done.stderr
    for flag in ("--nats-url", "--http-port", "--max-deliver", "--ack-wait-s", "--kind", "--drain-timeout-s"):
        assert flag in done.stdout


def test_top_level_help_lists_the_commands(tmp_path: Path) -> None:
    done = agentbus(tmp_path, "--help")
    assert done.returncode == 0, done.stderr
    for command in ("up", "worker", "publish", "status", "demo", "scaler"):
        assert command in done.stdout
    version = agentbus(tmp_path, "--version")
    assert version.returncode == 0
    assert version.stdout.startswith("agentbus ")


def test_unknown_command_and_bad_flags_exit_2(tmp_path: Path) -> None:
    assert agentbus(tmp_path, "no-such-command").returncode == 2
    assert agentbus(tmp_path, "worker", "--max-deliver", "many").returncode == 2


@pytest.mark.slow
def test_commands_fail_clearly_without_a_server(tmp_path: Path) -> None:
    """No server at the URL: an error naming it and exit 1 (not a usage error), not a retry loop forever."""
    url = f"nats://127.0.0.1:{free_port()}"
    env = _env()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "agentbus", *args, "--nats-url", url],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in (["publish", "echo", '{"text":"x"}'], ["status", "--json"])
    ]
    for proc in procs:  # both at once: each waits out its connect bound
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err
        assert f"cannot connect to NATS at {url}" in err
