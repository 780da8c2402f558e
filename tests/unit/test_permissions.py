"""The permission table and the credentials directory, without a server (the real server's
verdicts are in tests/integration/test_auth_bus.py).

Subject matching below is NATS's (``*`` one token, ``>`` one or more trailing tokens), so
the properties say what nats-server would allow for any tenant names."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from agentbus.cli._connection import nats_connection
from agentbus.errors import ConfigError
from agents.config import nats_auth_from_env
from bus.admission import check_reply_prefix, reply_problem
from bus.authdir import AuthDir, server_auth_config
from bus.connection import NatsAuth
from bus.permissions import (
    TENANT_REPLY_PREFIX,
    Identity,
    Permissions,
    Role,
    inbox_prefix,
    permissions,
    render_config,
)

tokens = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,15}", fullmatch=True)
rests = st.lists(st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True), min_size=1, max_size=3).map(".".join)


def matches(pattern: str, subject: str) -> bool:
    """Whether NATS subject ``pattern`` (wildcards ``*`` and ``>``) matches ``subject``."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def tenant(name: str) -> Identity:
    return Identity(name, Role.TENANT, "U" + "A" * 55)


def test_subject_matching_is_natss() -> None:
    assert matches("tasks.acme.>", "tasks.acme.echo")
    assert not matches("tasks.acme.>", "tasks.acme")
    assert matches("$JS.API.CONSUMER.INFO.*.*", "$JS.API.CONSUMER.INFO.TASKS.echo")
    assert not matches("$JS.API.STREAM.INFO.*", "$JS.API.STREAM.INFO.TASKS.x")


@given(a=tokens, b=tokens, rest=rests)
def test_no_tenant_may_touch_another_tenants_subjects(a: str, b: str, rest: str) -> None:
    if a == b or "worker" in (a, b) or "scaler" in (a, b) or "operator" in (a, b):
        return
    p = permissions(tenant(a), [a, b])
    others = (f"tasks.{b}.{rest}", f"results.{b}.{rest}", f"_INBOX_{b}.{rest}")
    internal: tuple[str, ...] = (
        f"$JS.API.{rest}",  # 1-3 tokens: never the tenant's own DIRECT.GET.RESULTS.results.<a>.<id>
        f"$JS.ACK.{rest}",
        f"$JS.EVENT.{rest}",
        f"agentbus.{rest}",
        f"dlq.{a}.{rest}",
    )
    internal += (f"_INBOX.{rest}", f"results.{a}.{rest}")  # forging a result: publish only
    for subject in (*others, *internal):
        assert not any(matches(allow, subject) for allow in p.publish), subject
    for subject in (*others, *internal[:-1]):
        assert not any(matches(allow, subject) for allow in p.subscribe), subject
    assert any(matches(allow, f"tasks.{a}.{rest}") for allow in p.publish)
    assert any(matches(allow, f"{inbox_prefix(tenant(a))}.{rest}") for allow in p.subscribe)


@given(a=tokens, b=tokens, rest=rests)
def test_a_tenant_reads_its_own_stored_results_and_no_other_record(a: str, b: str, rest: str) -> None:
    if "worker" in (a, b) or "scaler" in (a, b) or "operator" in (a, b):
        return
    p = permissions(tenant(a), [a, b])

    def may_publish(subject: str) -> bool:
        return any(matches(allow, subject) for allow in p.publish)

    get = "$JS.API.DIRECT.GET"
    assert may_publish(f"{get}.RESULTS.results.{a}.{rest}")  # Publisher.result, `agentbus result`
    denied = [
        f"{get}.RESULTS",  # the JSON form: its body could name any subject
        f"{get}.RESULTS.results.*.{rest}",  # a wildcard where the tenant goes
        f"{get}.RESULTS.results.>",
        f"{get}.RESULTS.{rest}",
        f"{get}.AUDIT.audit.{a}.{rest}",  # audit records: operator only
        f"{get}.AUDIT.audit.{b}.{rest}",
        f"{get}.AUDIT",
        f"{get}.DLQ.dlq.{a}.{rest}",
        f"{get}.KV_agentbus_kv.$KV.agentbus_kv.{a}.{rest}",
        f"{get}.{rest}.results.{a}.{rest}",  # another stream than RESULTS
        "$JS.API.STREAM.MSG.GET.RESULTS",
        "$JS.API.STREAM.MSG.GET.AUDIT",
        f"$JS.API.CONSUMER.CREATE.RESULTS.{rest}",
        f"results.{a}.{rest}",  # forging a result or an audit record
        f"audit.{a}.{rest}",
        f"audit.{b}.{rest}",
        f"$KV.agentbus_once.{a}.{rest}",  # the ledger and KV are the workers'
        f"$KV.agentbus_kv.{a}.{rest}",
        f"$KV.agentbus_redrive.{rest}",
    ]
    if a != b:
        denied.append(f"{get}.RESULTS.results.{b}.{rest}")
    for subject in denied:
        assert not may_publish(subject), subject
    for subject in (f"audit.{a}.{rest}", f"audit.{b}.{rest}", f"$KV.agentbus_kv.{a}.{rest}"):
        assert not any(matches(allow, subject) for allow in p.subscribe), subject


def test_workers_and_operators_write_only_the_records_and_buckets_they_use() -> None:
    worker = permissions(Identity("worker", Role.WORKER, "U"), ["acme"])

    def may(perms: Permissions, subject: str) -> bool:
        return any(matches(allow, subject) for allow in perms.publish)

    for subject in (
        "results.acme.t1",
        "audit.acme.t1",
        "$KV.agentbus_once.acme.t1.create_order",
        "$KV.agentbus_kv.acme.stock.PROD-001",
        "$JS.API.DIRECT.GET.KV_agentbus_once.$KV.agentbus_once.acme.t1.create_order",
    ):
        assert may(worker, subject), subject
    for subject in ("$KV.agentbus_redrive.dlq-1", "$KV.other.x", "$KV.agentbus_oncex.y"):
        assert not may(worker, subject), subject
    operator = permissions(Identity("operator", Role.OPERATOR, "U"))
    for subject in (
        "$KV.agentbus_redrive.dlq-7",
        "$JS.API.DIRECT.GET.AUDIT",  # `agentbus audit`: every attempt, JSON body
        "$JS.API.STREAM.MSG.GET.DLQ",
        "$JS.API.STREAM.PURGE.DLQ",
        "tasks.acme.echo",  # a replay
    ):
        assert may(operator, subject), subject
    for subject in (
        "$KV.agentbus_once.acme.t1.x",
        "$KV.agentbus_kv.acme.k",
        "results.acme.t",
        "audit.acme.t",
    ):
        assert not may(operator, subject), subject


@given(a=tokens, b=tokens, rest=rests)
def test_a_task_can_direct_its_result_only_into_its_own_tenants_inbox(a: str, b: str, rest: str) -> None:
    prefixes = (check_reply_prefix(TENANT_REPLY_PREFIX),)
    assert reply_problem(f"_INBOX_{a}.{rest}", prefixes, a) == ""
    if a != b:
        assert "not under an allowed reply prefix" in reply_problem(f"_INBOX_{b}.{rest}", prefixes, a)
    assert reply_problem(f"_INBOX.{rest}", prefixes, a) != ""
    assert reply_problem(f"_INBOX_{a}", prefixes, a) != ""  # the prefix itself is no inbox
    assert reply_problem(f"_INBOX_{a}.x", prefixes, "") != ""  # no tenant, no match


def test_reply_prefix_templates_are_checked() -> None:
    assert check_reply_prefix("_INBOX_{tenant}") == "_INBOX_{tenant}."
    assert check_reply_prefix("r.{tenant}.x") == "r.{tenant}.x."
    for bad in ("{tenant}{tenant}", "r.{tenants}", "{tenant}.>", "r.*.{tenant}"):
        with pytest.raises(ValueError, match="not a plain subject"):
            check_reply_prefix(bad)


def test_the_worker_may_answer_every_tenant_and_the_scaler_reads_no_message() -> None:
    worker = permissions(Identity("worker", Role.WORKER, "U"), ["acme", "globex"])
    assert {"_INBOX_acme.>", "_INBOX_globex.>", "$JS.ACK.>", "agentbus.>"} <= set(worker.publish)
    scaler = permissions(Identity("scaler", Role.SCALER, "U"))
    for subject in (
        "$JS.API.STREAM.MSG.GET.TASKS",
        "$JS.API.DIRECT.GET.TASKS",
        "$JS.API.CONSUMER.CREATE.TASKS",
    ):
        assert not any(matches(allow, subject) for allow in scaler.publish)
    assert any(matches(allow, "$JS.API.CONSUMER.INFO.TASKS.echo") for allow in scaler.publish)
    operator = permissions(Identity("operator", Role.OPERATOR, "U"))
    assert any(matches(allow, "agentbus.state.query") for allow in operator.publish)
    assert not any(matches(allow, "agentbus.gossip.w1") for allow in operator.publish)


def test_init_writes_private_files_and_a_cluster_key(tmp_path: Path) -> None:
    d = AuthDir.init(tmp_path / "auth", ["acme", "globex"])
    assert stat.S_IMODE(d.path.stat().st_mode) == 0o700
    names = sorted(p.name for p in d.path.iterdir())
    for name in ("worker", "scaler", "operator", "acme", "globex"):
        assert f"{name}.nk" in names
        assert f"{name}.env" in names
        assert d.seed_file(name).read_text().startswith("SU")
    for path in d.path.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert re.fullmatch(r"[0-9a-f]{64}\n", d.cluster_key_file.read_text())
    assert AuthDir.init(tmp_path / "other", []).cluster_key_file.read_text() != d.cluster_key_file.read_text()
    config = d.config_file.read_text()
    for identity in d.identities():
        assert config.count(identity.nkey) == 1
        assert d.seed_file(identity.name).read_text().strip() not in config  # public keys only
    assert d.environment("acme") == {
        "AGENTBUS_NATS_NKEY_SEED": str(d.seed_file("acme")),
        "AGENTBUS_NATS_INBOX_PREFIX": "_INBOX_acme",
    }
    worker = d.environment("worker")
    assert worker["AGENTBUS_NATS_INBOX_PREFIX"] == "_INBOX"  # said, so a shell's tenant prefix is replaced
    assert worker["AGENTBUS_REPLY_PREFIXES"] == "_INBOX_{tenant}."
    assert worker["AGENTBUS_CLUSTER_KEY_FILE"] == str(d.cluster_key_file)
    assert "'_INBOX_{tenant}.'" in d.env_file("worker").read_text()  # quoted for a shell
    chart = yaml.safe_load(d.nats_values_file.read_text())  # for the official NATS chart
    assert chart["config"]["merge"] == {"$include": "auth.conf"}
    assert chart["configMap"]["merge"]["data"]["auth.conf"] == config


def test_init_and_add_tenant_refuse_what_would_collide(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="share a name with the worker role"):
        AuthDir.init(tmp_path / "a", ["worker"])
    with pytest.raises(ConfigError, match="not a subject token"):
        AuthDir.init(tmp_path / "b", ["ac.me"])
    with pytest.raises(ConfigError, match="named twice"):
        AuthDir.init(tmp_path / "c", ["acme", "acme"])
    d = AuthDir.init(tmp_path / "d", ["acme"])
    with pytest.raises(ConfigError, match="initialized already"):
        AuthDir.init(d.path, ["globex"])
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "x").write_text("")
    with pytest.raises(ConfigError, match="not empty"):
        AuthDir.init(tmp_path / "e", [])
    with pytest.raises(ConfigError, match="exists already"):
        d.add_tenant("acme")
    with pytest.raises(ConfigError, match="holds no credentials"):
        AuthDir(tmp_path / "none").add_tenant("acme")
    d.add_tenant("globex")
    assert d.tenants() == ["acme", "globex"]
    assert '"_INBOX_globex.>"' in d.config_file.read_text()  # the workers may answer the new tenant
    for name in ("worker", "umbrella"):
        with pytest.raises(ConfigError, match="no tenant"):
            d.remove_tenant(name)
    old = d.identity("worker")
    with pytest.raises(ConfigError, match="no identity 'umbrella'"):
        d.rotate("umbrella")
    new = d.rotate("worker")
    assert new.role is Role.WORKER
    assert new.nkey != old.nkey
    assert old.nkey not in d.config_file.read_text()
    assert d.config_file.read_text().count(new.nkey) == 1
    d.remove_tenant("globex")
    assert d.tenants() == ["acme"]
    assert "_INBOX_globex" not in d.config_file.read_text()
    assert not d.seed_file("globex").exists()
    assert not d.env_file("globex").exists()


def test_reload_signals_only_a_nats_server(tmp_path: Path) -> None:
    d = AuthDir.init(tmp_path / "auth", [])
    assert d.reload_server() is None  # no pid file
    hups: list[int] = []
    previous = signal.signal(signal.SIGHUP, lambda n, f: hups.append(n))
    try:
        d.pid_file.write_text(f"{os.getpid()}\n")  # a live process that is no nats-server
        assert d.reload_server() is None
        d.pid_file.write_text("not a pid\n")
        assert d.reload_server() is None
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert hups == []


def test_the_server_include_is_relative_to_the_servers_config(tmp_path: Path) -> None:
    d = AuthDir.init(tmp_path / "auth", [])
    lines = server_auth_config(d, tmp_path / "store" / "nats")
    assert lines.splitlines()[0] == 'include "../../auth/auth.conf"'
    assert str(d.pid_file) in lines


def test_render_config_lists_roles_first() -> None:
    identities = [
        tenant("acme"),
        Identity("worker", Role.WORKER, "UW"),
        Identity("operator", Role.OPERATOR, "UO"),
    ]
    text = render_config(identities)
    assert text.index("# worker worker") < text.index("# operator operator") < text.index("# tenant acme")


def test_the_inbox_prefix_setting(tmp_path: Path) -> None:
    assert nats_auth_from_env({"AGENTBUS_NATS_INBOX_PREFIX": "_INBOX_acme"}).options() == {
        "inbox_prefix": "_INBOX_acme"
    }
    assert nats_auth_from_env({"AGENTBUS_NATS_INBOX_PREFIX": ""}) == NatsAuth()
    for bad in ("_INBOX.>", "a b", "a..b", "*"):
        with pytest.raises(ConfigError, match="AGENTBUS_NATS_INBOX_PREFIX"):
            nats_auth_from_env({"AGENTBUS_NATS_INBOX_PREFIX": bad})


def test_commands_take_an_identity_from_up_auth_only_for_its_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = AuthDir.init(tmp_path / "auth", ["acme"])
    monkeypatch.chdir(tmp_path)
    state = tmp_path / ".agentbus" / "up.json"
    state.parent.mkdir()
    url = "nats://127.0.0.1:4999"
    state.write_text(json.dumps({"pid": os.getpid(), "nats_url": url, "auth_dir": str(d.path)}))
    assert nats_connection(None, "acme", {}) == (url, nats_auth_from_env(d.environment("acme")))
    assert nats_connection(None, "operator", {})[1].nkey_seed_file == str(d.seed_file("operator"))
    with pytest.raises(ConfigError, match="no identity 'globex'"):
        nats_connection(None, "globex", {})
    # a URL named another way, or an identity chosen already, gets nothing from the directory
    assert nats_connection(url, "acme", {}) == (url, NatsAuth())
    assert nats_connection(None, "acme", {"AGENTBUS_NATS_URL": url}) == (url, NatsAuth())
    mine = {"AGENTBUS_NATS_NKEY_SEED": str(d.seed_file("operator"))}
    assert nats_connection(None, "acme", mine) == (
        url,
        NatsAuth(nkey_seed_file=mine["AGENTBUS_NATS_NKEY_SEED"]),
    )
    state.write_text(json.dumps({"pid": os.getpid(), "nats_url": url}))  # up without --auth
    assert nats_connection(None, "acme", {}) == (url, NatsAuth())
