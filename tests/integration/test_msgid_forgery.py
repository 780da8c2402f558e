"""No tenant can make another tenant's publish a duplicate (bus/msgid.py), on a real server
running ``agentbus up --auth`` with one worker.

JetStream de-duplicates ``Nats-Msg-Id`` across every subject of ``TASKS`` and permissions cannot
look at headers: a tenant that publishes, on its own subject, the id another tenant's next task
carries had that task answered ``duplicate`` and dropped. A tenant's publisher now signs its ids
with a key of its own seed, a worker's follow-ups carry the worker's MAC, and the operator signs
the ids of its DLQ replays.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import ROOT, stop_process, wait_until
from helpers_a import dead_letters, poll
from nats.aio.client import Client

from agents.builtin.pipeline import JoinOut, SplitIn, join_id
from agents.config import nats_auth_from_env
from bus.authdir import AuthDir
from bus.connection import connect
from bus.messages import HDR_MSG_ID, HDR_REPLY, DlqReason, Task, encode, now
from bus.msgid import key_from_file, key_of, signed
from bus.publisher import Publisher
from bus.redrive import DlqFilter, Redrive
from bus.topology import TASKS_STREAM

pytestmark = pytest.mark.integration


@dataclass
class Up:
    root: Path
    auth: AuthDir
    url: str = ""
    ports: dict[str, int] = field(default_factory=dict)


def _settings(auth: AuthDir, name: str) -> dict[str, str]:
    """What ``set -a; . DIR/<name>.env`` sets."""
    pairs = (shlex.split(line)[0].split("=", 1) for line in auth.env_file(name).read_text().splitlines())
    return dict(pairs)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    root = tmp_path_factory.mktemp("msgid-up")
    auth = AuthDir.init(root / "auth", ["acme", "globex"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")} | {"PYTHONPATH": str(ROOT)}
    with open(root / "up.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentbus", "up", "--workers", "1", "--auth", str(auth.path),
             "--agents", "agents.builtin,agents.builtin.pipeline"],
            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    u = Up(root, auth)
    state_file = root / ".agentbus" / "up.json"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"agentbus up exited {proc.returncode}:\n{(root / 'up.log').read_text()}")
        if not state_file.exists():
            return False
        state = json.loads(state_file.read_text())
        u.url, u.ports = state["nats_url"], state["metrics_ports"]
        return len(u.ports) == 1 and all(_ready(p) for p in u.ports.values())

    try:
        wait_until(ready, 60, "agentbus up --auth with a ready worker")
        yield u
    finally:
        stop_process(proc, 60)


@pytest.fixture
async def conns(up: Up) -> AsyncIterator[dict[str, Client]]:
    """A connection per identity, made as every agentbus process makes it (``bus.connection``)."""
    out: dict[str, Client] = {}
    try:
        for name in ("acme", "globex", "operator"):
            out[name] = await connect(
                up.url, name=f"test-{name}", auth=nats_auth_from_env(_settings(up.auth, name)),
                first_connect_timeout_s=10,
            )  # fmt: skip
        yield out
    finally:
        for nc in out.values():
            await nc.close()


async def test_a_tenant_cannot_drop_another_tenants_task_by_publishing_its_id_first(
    up: Up, conns: dict[str, Client]
) -> None:
    acme, globex, operator = conns["acme"], conns["globex"], conns["operator"]
    scoped = "acme:echo:invoice-1001"  # acme's predictable business id, as its publisher scoped it
    globex_key = key_of(globex)
    assert globex_key is not None
    forged = [scoped, signed(globex_key, scoped)]  # the old form, and the attacker's own MAC over it
    for value in forged:  # on its own subject: the server allows it, JetStream stores it
        ack = await globex.jetstream().publish(
            "tasks.globex.echo",
            encode(Task(id="invoice-1001", payload={"text": "x"})),
            headers={HDR_MSG_ID: value},
        )
        assert not ack.duplicate

    pub = Publisher(acme)
    ref = await pub.submit("acme", "echo", {"text": "pay"}, task_id="invoice-1001")
    assert not ref.duplicate, "acme's task was dropped as a duplicate of globex's forgery"
    result = await pub.result("invoice-1001", tenant="acme", timeout_s=30)
    assert result.ok
    assert result.output is not None
    assert result.output["text"] == "pay"

    async def forgeries_dead_lettered() -> bool:
        letters = [d for d in await dead_letters(operator) if (d.tenant, d.kind) == ("globex", "echo")]
        return len(letters) == 2

    await poll(forgeries_dead_lettered, what="globex's forged tasks dead-lettered")
    for letter in await dead_letters(operator):
        if (letter.tenant, letter.kind) == ("globex", "echo"):
            assert letter.reason == DlqReason.INVALID_ENVELOPE
            assert "names another tenant" in letter.detail


async def test_a_tenants_ids_carry_its_own_mac_and_its_retries_still_deduplicate(
    up: Up, conns: dict[str, Client]
) -> None:
    acme, operator = conns["acme"], conns["operator"]
    # a kind no worker serves keeps the task in the stream, so the operator can read its header
    first = await Publisher(acme).submit("acme", "unserved", {}, task_id="peek-1")
    raw = await operator.jetstream().get_msg(TASKS_STREAM, first.seq)
    header = (raw.headers or {})[HDR_MSG_ID]
    assert re.fullmatch(r"acme:unserved:peek-1:[A-Za-z0-9_-]{22}", header)
    assert header == signed(key_from_file(str(up.auth.seed_file("acme"))), "acme:unserved:peek-1")
    await operator.jetstream().delete_msg(TASKS_STREAM, first.seq)

    # another process of the same tenant (its own connection, the same seed) computes the same id
    again = await connect(up.url, auth=nats_auth_from_env(_settings(up.auth, "acme")))
    try:
        one = await Publisher(acme).submit("acme", "echo", {"text": "once"}, task_id="invoice-2002")
        two = await Publisher(again).submit("acme", "echo", {"text": "twice"}, task_id="invoice-2002")
    finally:
        await again.close()
    assert not one.duplicate
    assert two.duplicate
    assert two.seq == one.seq
    result = await Publisher(acme).result("invoice-2002", tenant="acme", timeout_s=30)
    assert result.output is not None
    assert result.output["text"] == "once"


async def test_a_tenant_cannot_preempt_the_operators_replay_of_a_dead_letter(
    up: Up, conns: dict[str, Client]
) -> None:
    acme, globex, operator = conns["acme"], conns["globex"], conns["operator"]
    task = Task(id="replay-target", payload={"text": "again"}, created_at=now())
    headers = {HDR_MSG_ID: "acme:echo:replay-target", HDR_REPLY: "_INBOX_globex.x"}  # refused reply
    await acme.jetstream().publish("tasks.acme.echo", encode(task), headers=headers)
    redrive = Redrive(operator)

    async def dead_letter_seq() -> int:
        async for stored in redrive.letters(DlqFilter(tenant="acme", kind="echo"), limit=None):
            if stored.letter.task_id == "replay-target":
                return stored.seq
        return 0

    await poll(dead_letter_seq, what="acme's task dead-lettered")
    seq = await dead_letter_seq()
    # DLQ sequences count up: globex publishes the replay's id first, on its own subject
    ack = await globex.jetstream().publish(
        "tasks.globex.unserved", b"{}", headers={HDR_MSG_ID: f"replay-DLQ-{seq}"}
    )
    assert not ack.duplicate
    ref = await redrive.replay(seq)
    assert not ref.duplicate, "the replay was dropped as a duplicate of globex's publish"
    pub = Publisher(acme)

    async def replayed() -> bool:  # the dead letter stored a failed result first
        result = await pub.result("replay-target", tenant="acme", timeout_s=5)
        return result.ok and result.output is not None and result.output["text"] == "again"

    await poll(replayed, what="the replayed task's result stored")
    await operator.jetstream().delete_msg(TASKS_STREAM, ack.seq)


async def test_a_tenant_cannot_drop_a_follow_up_the_worker_queues_for_another_tenant(
    up: Up, conns: dict[str, Client]
) -> None:
    acme, globex = conns["acme"], conns["globex"]
    join = join_id("split-job-1")  # follow-up ids are derived from the parent's: anyone can compute them
    scoped = f"acme:doc_join:{join}"
    globex_key = key_of(globex)
    assert globex_key is not None
    forged = []
    for value in (scoped, signed(globex_key, scoped)):
        ack = await globex.jetstream().publish("tasks.globex.unserved", b"{}", headers={HDR_MSG_ID: value})
        assert not ack.duplicate
        forged.append(ack.seq)
    pub = Publisher(acme)
    await pub.submit("acme", "doc_split", SplitIn(text="a bb ccc dddd", chunk_words=2), task_id="split-job-1")
    joined = await pub.result(join, tenant="acme", timeout_s=30, output_type=JoinOut)
    assert joined.ok, joined.error
    assert joined.output == JoinOut(job="split-job-1", parts=2, words=4, longest="dddd")
    for seq in forged:
        await conns["operator"].jetstream().delete_msg(TASKS_STREAM, seq)
