"""The tenant boundary on a real nats-server running the config ``agentbus auth init`` wrote.

One ``agentbus up --auth DIR --workers 2`` (the embedded server includes ``DIR/auth.conf``;
the workers run with the worker credential) serves every test here, in order:

* a tenant's credential is refused every subject outside its own: another tenant's tasks,
  results and inbox, results it would forge, dead letters, gossip, the state query,
  ``agentbus.>``, ``$JS.EVENT.>``, ``$JS.ACK.>``, pulling tasks and reading messages through
  the JetStream API; each attempt is a permissions violation reported by the server, and the
  connection still publishes the tenant's own tasks (the pub ack reaches its ``_INBOX_<tenant>``);
* ``publish --wait`` and ``--wait --stream`` work with a tenant's settings file;
* a task cannot send its result into another tenant's inbox (nor a worker's): it is
  dead-lettered, and the operator reads that dead letter;
* the operator's ``status`` works and a worker answers its state query; the two workers gossip
  under the worker credential; the scaler reads consumer info and nothing else; ``up`` gave its
  workers the worker identity and the cluster key;
* a Locust user publishes and calls with a tenant credential (``--tenant``);
* ``publish`` and ``status`` beside ``up --auth`` take their identity from its directory;
* records under these roles: a tenant reads its own stored results (``Publisher.result``,
  ``agentbus result``) and no other tenant's, and may not write results, audit records or KV;
  under the worker credential ``ctx.once`` and ``ctx.kv`` work and audit records are stored
  (``AGENTBUS_AUDIT_TASKS=1`` here, and the LLM agent's own); the operator runs
  ``agentbus audit`` and ``agentbus dlq ls`` / ``replay`` (once);
* ``agentbus auth add-tenant`` reloads the server: the same worker processes answer the new
  tenant; ``remove-tenant`` closes its connection and a copy of its seed is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import psutil
import pytest
from conftest import ROOT, stop_process, wait_until
from helpers_a import dead_letters, poll
from nats.aio.client import Client
from nats.aio.msg import Msg

from agentbus.cli import main
from agentbus.cli.status import query_state
from agentbus.errors import ConfigError, RecordNotFoundError
from agents.config import nats_auth_from_env
from bus.authdir import AuthDir
from bus.messages import HDR_MSG_ID, HDR_REPLY, Task, encode, msg_id, now
from bus.publisher import Publisher
from bus.records import audit_records

pytestmark = pytest.mark.integration


@dataclass
class Cluster:
    root: Path
    auth: AuthDir
    proc: subprocess.Popen[bytes]
    url: str = ""
    ports: dict[str, int] = field(default_factory=dict)

    def log(self) -> str:
        return (self.root / "up.log").read_text(errors="replace")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
    return env | {"PYTHONPATH": str(ROOT)} | extra


def _settings(auth: AuthDir, name: str) -> dict[str, str]:
    """What ``set -a; . DIR/<name>.env`` sets: the file ``auth init`` wrote, read as a shell would."""
    pairs = (shlex.split(line)[0].split("=", 1) for line in auth.env_file(name).read_text().splitlines())
    return dict(pairs)


def _http(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except OSError:
        return 0, ""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("auth-up")
    auth = AuthDir.init(root / "auth", ["acme", "beta", "globex"])
    with open(root / "up.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentbus", "up", "--workers", "2", "--auth", str(auth.path),
             "--gossip-preset", "test", "--agents", "agents.builtin,agents.builtin.assistant"],
            cwd=root, env=_env(AGENTBUS_AUDIT_TASKS="1"), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    c = Cluster(root, auth, proc)
    state_file = root / ".agentbus" / "up.json"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"agentbus up exited {proc.returncode}:\n{c.log()}")
        if not state_file.exists():
            return False
        state = json.loads(state_file.read_text())
        c.url, c.ports = state["nats_url"], state["metrics_ports"]
        return len(c.ports) == 2 and all(_http(p, "/readyz")[0] == 200 for p in c.ports.values())

    try:
        wait_until(up, 60, "agentbus up --auth with two ready workers")
        yield c
    finally:
        stop_process(proc, 60)


async def _connect(c: Cluster, name: str) -> tuple[Client, list[str]]:
    """A plain nats-py client with identity ``name``'s settings; the errors the server reports."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    options = nats_auth_from_env(_settings(c.auth, name)).options()
    nc = await nats.connect(c.url, error_cb=on_error, max_reconnect_attempts=0, **options)
    return nc, errors


def _violation(action: str, subject: str) -> str:
    return f'permissions violation for {action} to "{subject.lower()}"'


DENIED_PUBLISH = (
    "tasks.globex.echo",  # another tenant's tasks
    "results.acme.forged",  # a result no worker wrote
    "results.globex.x",
    "dlq.acme.echo",
    "agentbus.gossip.w1",
    "agentbus.state.query",
    "$JS.EVENT.ADVISORY.API",
    "$JS.ACK.TASKS.echo.1.1.1.1700000000000000000.0",  # settling somebody's task
    "$JS.API.STREAM.MSG.GET.TASKS",
    "$JS.API.DIRECT.GET.TASKS",
    "$JS.API.CONSUMER.CREATE.TASKS",
    "$JS.API.CONSUMER.MSG.NEXT.TASKS.echo",  # pulling the workers' tasks
    "$JS.API.DIRECT.GET.DLQ",
    "$JS.API.STREAM.INFO.TASKS",
    "_INBOX.pull",  # a worker's pull inbox: a forged delivery
    "_INBOX_globex.x",
    "audit.acme.forged",  # an audit record no worker wrote
    "audit.globex.x",
    "$JS.API.DIRECT.GET.RESULTS.results.globex.x",  # another tenant's stored result
    "$JS.API.DIRECT.GET.RESULTS.results.*.x",  # a wildcard where the tenant goes
    "$JS.API.DIRECT.GET.RESULTS",  # the JSON form names any subject in its body
    "$JS.API.DIRECT.GET.AUDIT.audit.acme.x",  # audit records are the operator's
    "$JS.API.DIRECT.GET.KV_agentbus_kv.$KV.agentbus_kv.globex.stock",
    "$KV.agentbus_kv.acme.stock.PROD-001",  # ctx.kv and the ledger are the workers'
    "$KV.agentbus_once.acme.x.create_order",
    "$KV.agentbus_redrive.dlq-1",  # a replay marker: the operator's
)
DENIED_SUBSCRIBE = (
    "results.globex.>",
    "_INBOX_globex.>",
    "_INBOX.>",
    "dlq.>",
    "dlq.acme.>",
    "agentbus.gossip.>",
    "agentbus.state.query",
    "$JS.EVENT.>",
    "$JS.API.>",
    "tasks.globex.>",
    "audit.>",
    "audit.acme.>",
    ">",
)


async def test_a_tenant_is_refused_every_subject_outside_its_own(cluster: Cluster) -> None:
    nc, errors = await _connect(cluster, "acme")
    try:
        for subject in DENIED_PUBLISH:
            await nc.publish(subject, b"{}", reply="_INBOX_acme.r")
        for subject in DENIED_SUBSCRIBE:
            await nc.subscribe(subject)
        expected = [_violation("publish", s) for s in DENIED_PUBLISH]
        expected += [_violation("subscription", s) for s in DENIED_SUBSCRIBE]
        await nc.flush()
        await poll(lambda: all(any(e in err for err in errors) for e in expected), what="every violation")
        assert not nc.is_closed
        # the same connection still does what a tenant may: its own task, acked on its own inbox
        ref = await Publisher(nc).submit("acme", "echo", {"text": "mine"})
        assert ref.subject == "tasks.acme.echo"
        assert ref.seq > 0
        assert not any('"tasks.acme.' in e for e in errors)
    finally:
        await nc.close()


def test_up_gives_its_workers_the_worker_identity_and_the_cluster_key(cluster: Cluster) -> None:
    workers = [
        child
        for child in psutil.Process(cluster.proc.pid).children(recursive=True)
        if "worker" in child.cmdline()
    ]
    assert len(workers) == 2
    for worker in workers:
        env = worker.environ()
        assert env["AGENTBUS_NATS_NKEY_SEED"] == str(cluster.auth.seed_file("worker"))
        assert env["AGENTBUS_CLUSTER_KEY_FILE"] == str(cluster.auth.cluster_key_file)
        assert env["AGENTBUS_REPLY_PREFIXES"] == "_INBOX_{tenant}."
        assert env["AGENTBUS_NATS_INBOX_PREFIX"] == "_INBOX"  # nats-py's, whatever the shell had


def _cli(c: Cluster, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentbus", *args, "--nats-url", c.url],
        cwd=c.root,
        env=_env(**_settings(c.auth, name)),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_publish_wait_and_stream_work_with_a_tenant_credential(cluster: Cluster) -> None:
    done = _cli(cluster, "acme", "publish", "echo", '{"text":"as acme"}', "--tenant", "acme", "--wait")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["output"]["text"] == "as acme"

    request = '{"request": "customer U9 buys 3 of PROD-002"}'
    streamed = _cli(
        cluster, "globex", "publish", "assistant", request, "--tenant", "globex", "--wait", "--stream"
    )
    assert streamed.returncode == 0, streamed.stderr
    *events, result = [json.loads(line) for line in streamed.stdout.splitlines()]
    assert result["ok"] is True
    assert result["tenant"] == "globex"
    assert events
    assert events[-1] == {"type": "done", "seq": len(events), "ok": True}


async def test_a_result_cannot_be_sent_into_another_inbox(cluster: Cluster) -> None:
    acme, acme_errors = await _connect(cluster, "acme")
    beta, _ = await _connect(cluster, "beta")  # a name as long as acme's: a prefix check must not count
    operator, _ = await _connect(cluster, "operator")
    stolen: list[bytes] = []
    mine: asyncio.Queue[bytes] = asyncio.Queue()
    try:

        async def steal(msg: Msg) -> None:
            stolen.append(msg.data)

        async def receive(msg: Msg) -> None:
            mine.put_nowait(msg.data)

        await beta.subscribe("_INBOX_beta.>", cb=steal)
        await acme.subscribe("_INBOX_acme.mine.>", cb=receive)
        js = acme.jetstream()
        replies = {"steal": "_INBOX_beta.steal.x", "worker": "_INBOX.w1.x", "mine": "_INBOX_acme.mine.x"}
        for task_id, reply in replies.items():
            task = Task(id=task_id, payload={"text": task_id}, created_at=now())
            headers = {HDR_MSG_ID: msg_id("acme", "echo", task_id), HDR_REPLY: reply}
            await js.publish("tasks.acme.echo", encode(task), headers=headers)
        got = await asyncio.wait_for(mine.get(), 30)
        assert json.loads(got)["output"]["text"] == "mine"

        async def refused() -> bool:
            letters = {d.task_id: d for d in await dead_letters(operator)}
            return {"steal", "worker"} <= letters.keys()

        await poll(refused, what="both misdirected tasks dead-lettered")
        letters = {d.task_id: d for d in await dead_letters(operator) if d.task_id in ("steal", "worker")}
        for letter in letters.values():
            assert letter.reason == "invalid_envelope"
            assert letter.tenant == "acme"
            assert "not under an allowed reply prefix (_INBOX_{tenant}.)" in letter.detail
        await beta.flush()
        assert stolen == []
        assert acme_errors == []
    finally:
        for nc in (acme, beta, operator):
            await nc.close()


async def test_operator_status_and_the_scaler_read_what_they_need_only(cluster: Cluster) -> None:
    status = _cli(cluster, "operator", "status", "--json", "--interval-s", "0.2")
    assert status.returncode == 0, status.stderr
    snap = json.loads(status.stdout)  # stream and consumer info through the JetStream API
    assert any(k.startswith("acme/") for k in snap["dead_letters"])

    operator, _ = await _connect(cluster, "operator")
    try:  # a worker answers the state query, and the two gossip under the worker credential

        async def gossiping() -> bool:
            report = await query_state(operator)
            return report is not None and report.peers >= 1

        await poll(gossiping, what="a worker with a gossip peer")
    finally:
        await operator.close()

    scaler, errors = await _connect(cluster, "scaler")
    try:
        js = scaler.jetstream()
        consumers = await js.consumers_info("TASKS")
        assert any("echo" in (c.config.filter_subject or "") for c in consumers)
        assert (await js.stream_info("TASKS")).config.name == "TASKS"
        await scaler.publish("$JS.API.STREAM.MSG.GET.TASKS", b'{"seq":1}', reply="_INBOX_scaler.x")
        await scaler.subscribe("results.>")
        await scaler.flush()
        wanted = [
            _violation("publish", "$JS.API.STREAM.MSG.GET.TASKS"),
            _violation("subscription", "results.>"),
        ]
        await poll(lambda: all(any(w in e for e in errors) for w in wanted), what="the scaler's violations")
    finally:
        await scaler.close()


def _local(c: Cluster, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """A command run beside ``agentbus up --auth`` (its directory, no AGENTBUS_* settings)."""
    return subprocess.run(
        [sys.executable, "-m", "agentbus", *args],
        cwd=c.root, env=_env(**env), capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip


def test_commands_beside_up_auth_take_their_identity_from_its_directory(cluster: Cluster) -> None:
    done = _local(cluster, "publish", "echo", '{"text":"local"}', "--tenant", "globex", "--wait")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tenant"] == "globex"
    status = _local(cluster, "status", "--json", "--interval-s", "0.1")
    assert status.returncode == 0, status.stderr  # as the operator: a tenant may not read stream info
    assert "tasks_total" in json.loads(status.stdout)


async def test_a_tenant_reads_its_own_stored_results_and_no_other_tenants(cluster: Cluster) -> None:
    acme, errors = await _connect(cluster, "acme")
    globex, _ = await _connect(cluster, "globex")
    answers: list[bytes] = []
    try:
        mine = await Publisher(acme).submit("acme", "echo", {"text": "kept"})  # nobody waits for it
        theirs = await Publisher(globex).submit("globex", "echo", {"text": "secret"})
        stored = await Publisher(globex).result(theirs.task_id, tenant="globex", timeout_s=30)
        assert stored.output is not None
        assert stored.output["text"] == "secret"
        # later, by the direct get alone (the --wait path subscribes results.acme.<id> as well)
        await poll(lambda: _stored(acme, mine.task_id), what="acme's result stored")
        result = await Publisher(acme).result(mine.task_id, tenant="acme")
        assert (result.ok, result.tenant) == (True, "acme")
        assert result.output is not None
        assert result.output["text"] == "kept"
        waited = await Publisher(acme).result(mine.task_id, tenant="acme", timeout_s=30)
        assert waited.output == result.output

        async def answer(msg: Msg) -> None:
            answers.append(msg.data)

        await acme.subscribe("_INBOX_acme.peek.>", cb=answer)
        get = "$JS.API.DIRECT.GET.RESULTS"
        denied = (
            f"{get}.results.globex.{theirs.task_id}",
            f"{get}.results.*.{theirs.task_id}",
            f"{get}.results.>",
            get,
            f"results.acme.{mine.task_id}",  # overwriting its own stored result
        )
        for subject in denied:
            body = json.dumps({"last_by_subj": f"results.globex.{theirs.task_id}"}) if subject == get else ""
            await acme.publish(subject, body.encode(), reply="_INBOX_acme.peek.1")
        await acme.flush()
        expected = [_violation("publish", s) for s in denied]
        await poll(lambda: all(any(e in err for err in errors) for e in expected), what="every violation")
        await acme.flush()
        assert not any(b"secret" in a for a in answers)
        again = await Publisher(acme).result(mine.task_id, tenant="acme")
        assert again.output == result.output  # not overwritten
    finally:
        for nc in (acme, globex):
            await nc.close()
    shown = _cli(cluster, "acme", "result", mine.task_id, "--tenant", "acme")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["output"]["text"] == "kept"


async def _stored(nc: Client, task_id: str) -> bool:
    try:
        await Publisher(nc).result(task_id, tenant="acme")
    except RecordNotFoundError:
        return False
    return True


async def test_once_kv_and_audit_work_under_the_worker_credential(cluster: Cluster) -> None:
    acme, _ = await _connect(cluster, "acme")
    operator, _ = await _connect(cluster, "operator")
    try:
        publisher = Publisher(acme)
        order = await publisher.call(
            "acme", "order", {"request": "customer U1 buys 2 of PROD-003"}, timeout_s=30
        )  # ctx.kv (the stock) and ctx.once (the order step)
        assert order.ok, order.error
        assert order.output is not None
        assert order.output["status"] == "created"
        assert order.output["order_id"] == f"acme-{order.task_id}"
        assert order.output["steps"][1]["result"]["remaining"] == 3  # 5 in stock, from KV
        once = await operator.jetstream().key_value("agentbus_once")
        entry = await once.get(f"acme.{order.task_id}.create_order")
        assert entry.value is not None
        assert json.loads(entry.value)["state"] == "done"

        request = {"request": "customer U2 buys 1 of PROD-001"}
        brain = await publisher.call("acme", "assistant", request, timeout_s=30)
        assert brain.ok, brain.error
        records = await audit_records(operator.jetstream(), "acme", brain.task_id)
        assert [r.fate for r in records] == ["ok"]
        assert "create_order" in encode(records[0]).decode()  # the tool call, through ctx.once
    finally:
        for nc in (acme, operator):
            await nc.close()
    audit = _cli(cluster, "operator", "audit", order.task_id, "--tenant", "acme")
    assert audit.returncode == 0, audit.stderr
    (line,) = audit.stdout.splitlines()  # the generic record, AGENTBUS_AUDIT_TASKS=1
    record = json.loads(line)
    assert (record["kind"], record["fate"], record["attempt"]) == ("order", "ok", 1)
    assert record["worker"]
    refused = [line for line in cluster.log().splitlines() if "nats error" in line and "violation" in line]
    assert refused == []  # no worker was refused a publish (audit, KV) on the way


async def test_the_operator_lists_and_replays_a_dead_letter_once(cluster: Cluster) -> None:
    acme, _ = await _connect(cluster, "acme")
    operator, _ = await _connect(cluster, "operator")
    try:  # a task whose reply names another tenant's inbox is dead-lettered
        task = Task(id="redrive-me", payload={"text": "again"}, created_at=now())
        headers = {HDR_MSG_ID: msg_id("acme", "echo", task.id), HDR_REPLY: "_INBOX_globex.x"}
        await acme.jetstream().publish("tasks.acme.echo", encode(task), headers=headers)

        async def dead() -> bool:
            return any(d.task_id == "redrive-me" for d in await dead_letters(operator))

        await poll(dead, what="the task dead-lettered")
        listed = _local(cluster, "dlq", "ls", "--tenant", "acme", "--kind", "echo")  # as the operator
        assert listed.returncode == 0, listed.stderr
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        (seq,) = [row["seq"] for row in rows if row["task_id"] == "redrive-me"]
        replay = _cli(cluster, "operator", "dlq", "replay", str(seq))
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert json.loads(replay.stdout)["subject"] == "tasks.acme.echo"
        twice = _cli(cluster, "operator", "dlq", "replay", str(seq))
        assert twice.returncode == 1
        assert json.loads(twice.stdout)["type"] == "AlreadyReplayedError"

        async def replayed() -> bool:
            try:
                return (await Publisher(acme).result("redrive-me", tenant="acme")).ok
            except RecordNotFoundError:
                return False

        await poll(replayed, what="the replayed task's result stored")  # read by the tenant itself
    finally:
        for nc in (acme, operator):
            await nc.close()


def test_a_tenants_cli_reads_no_dead_letter_audit_record_or_other_result(cluster: Cluster) -> None:
    commands = (
        ("dlq", "ls", "--tenant", "acme"),
        ("audit", "redrive-me", "--tenant", "acme"),
        ("result", "redrive-me", "--tenant", "globex"),  # another tenant's stored result
    )
    running = [  # all at once: each waits out its request timeout
        subprocess.Popen(
            [sys.executable, "-m", "agentbus", *args, "--nats-url", cluster.url],
            cwd=cluster.root,
            env=_env(**_settings(cluster.auth, "acme")),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    for proc in running:
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 1, out + err
        assert out == ""  # redrive-me has dead letters and audit records (the test above)
        assert "refused by the server's permissions" in err or "needs the operator credential" in err


def _start_times(c: Cluster) -> dict[str, str]:
    out = {}
    for name, port in c.ports.items():
        status, body = _http(port, "/metrics")
        assert status == 200
        match = re.search(r"^process_start_time_seconds (\S+)$", body, re.M)
        assert match is not None
        out[name] = match[1]
    return out


async def _echo_as(c: Cluster, tenant: str, text: str) -> str:
    """One echo task through the cluster with ``tenant``'s settings file; the echoed text."""
    nc, _ = await _connect(c, tenant)
    try:
        result = await Publisher(nc).call(tenant, "echo", {"text": text}, timeout_s=30)
    finally:
        await nc.close()
    assert result.ok, result.error
    assert result.output is not None
    return str(result.output["text"])


async def test_add_tenant_reloads_the_server_and_the_same_workers_serve_it(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _start_times(cluster)
    assert main(["auth", "add-tenant", str(cluster.auth.path), "initech"]) == 0
    assert "reloaded nats-server" in capsys.readouterr().out
    assert await _echo_as(cluster, "initech", "new") == "new"  # a worker replied into _INBOX_initech
    assert _start_times(cluster) == before  # no worker restarted


_LOCUST_USER = """
import json, sys
from argparse import Namespace
import locust  # monkey-patches the process with gevent, as the locustfile's import does
from locust.env import Environment
from loadtest.locust_nats import NatsBridge

env = Environment(parsed_options=Namespace(tenant="acme"))
seen = []
def record(request_type, name, exception, **_):
    seen.append([request_type, name, repr(exception) if exception else None])
env.events.request.add_listener(record)
bridge = NatsBridge(env)
bridge.start(sys.argv[1])
bridge.submit("globex", "echo", {"text": "a"})  # a scenario's draw: --tenant makes it acme's
bridge.call("noisy", "echo", {"text": "b"}, result_timeout_s=20)
bridge.close()
print(json.dumps(seen))
"""


def test_a_locust_user_publishes_and_calls_with_a_tenant_credential(cluster: Cluster) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _LOCUST_USER, cluster.url],
        env=_env(**_settings(cluster.auth, "acme")), capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [
        ["submit", "acme/echo", None],
        ["call", "acme/echo", None],
    ]


async def _refused(url: str, **options: Any) -> None:
    """Every connection with ``options`` fails, and the server says why: nats-py sometimes sees
    the socket close before it reads the server's ``-ERR 'Authorization Violation'``, so a few
    tries, each of which must fail, until one reports it."""

    async def on_error(exc: Exception) -> None:
        pass

    reasons = []
    for _ in range(5):
        client = Client()
        try:
            await client.connect(url, allow_reconnect=False, error_cb=on_error, **options)
        except Exception as exc:
            reasons.append(str(exc))
        else:
            raise AssertionError("the server accepted the connection")
        finally:
            with contextlib.suppress(OSError):
                await client.close()  # nats-py leaves the refused socket open otherwise
        if re.search(r"(?i)authorization violation", reasons[-1]):
            return
    raise AssertionError(f"refused, but never for authorization: {reasons}")


async def test_remove_tenant_revokes_a_leaked_seed(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leaked = tmp_path / "initech.nk"  # a copy of the seed of the tenant added by the test above
    leaked.write_bytes(cluster.auth.seed_file("initech").read_bytes())
    options: dict[str, Any] = {"nkeys_seed": str(leaked), "inbox_prefix": "_INBOX_initech"}
    dropped = asyncio.Event()

    async def on_disconnect() -> None:
        dropped.set()

    async def on_error(exc: Exception) -> None:
        pass

    nc = await nats.connect(cluster.url, disconnected_cb=on_disconnect, error_cb=on_error, **options)
    try:
        assert main(["auth", "remove-tenant", str(cluster.auth.path), "initech"]) == 0
        assert "its connections are closed" in capsys.readouterr().out
        assert not cluster.auth.seed_file("initech").exists()
        await asyncio.wait_for(dropped.wait(), 30)  # the reloaded server closed the connection
    finally:
        await nc.close()
    await _refused(cluster.url, **options)
    assert await _echo_as(cluster, "acme", "still here") == "still here"  # the others keep working


async def test_rotate_refuses_the_old_key_and_the_new_one_works(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    old_seed = cluster.auth.seed_file("globex").read_bytes()
    assert main(["auth", "rotate", str(cluster.auth.path), "globex"]) == 0
    assert "the old key is refused" in capsys.readouterr().out
    assert cluster.auth.seed_file("globex").read_bytes() != old_seed
    await _refused(cluster.url, nkeys_seed_str=old_seed.decode().strip())
    assert await _echo_as(cluster, "globex", "rotated") == "rotated"  # the settings file, new key


async def test_a_configuration_the_server_refuses_to_reload_is_an_error_and_the_old_one_stays(
    cluster: Cluster,
) -> None:
    good = cluster.auth.config_file.read_bytes()
    cluster.auth.config_file.write_bytes(good + b"\nauthorization { users = [ { nkey: UNCLOSED\n")
    try:
        with pytest.raises(ConfigError, match="did not reload"):
            cluster.auth.reload_server(timeout_s=2)
    finally:
        cluster.auth.config_file.write_bytes(good)
    assert cluster.auth.reload_server() is not None  # the good one reloads again
    assert await _echo_as(cluster, "acme", "kept") == "kept"
