"""Signed ``Nats-Msg-Id`` values (bus/msgid.py): their form, parsing, keys and who signs."""

from __future__ import annotations

import re
from pathlib import Path

import nkeys
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client

from agentbus.errors import ConfigError
from bus.admission import MAX_MSG_ID_CHARS, msg_id_problem, task_id_of
from bus.connection import NatsAuth
from bus.messages import msg_id
from bus.msgid import MAC_CHARS, derive_key, key_from_file, key_of, remember_key, signed, split_task_msg_id
from bus.publisher import Publisher
from bus.subjects import is_task_id

tokens = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", fullmatch=True)
task_ids = st.from_regex(r"[A-Za-z0-9_-]{1,128}", fullmatch=True)
keys = st.binary(min_size=1, max_size=64)
_SIGNED = re.compile(r"([^:]+):([^:]+):([^:]+):([A-Za-z0-9_-]{22})")


@given(tenant=tokens, kind=tokens, task_id=task_ids, key=keys)
def test_a_signed_id_round_trips_to_its_tenant_kind_and_task_id(
    tenant: str, kind: str, task_id: str, key: bytes
) -> None:
    value = signed(key, msg_id(tenant, kind, task_id))
    match = _SIGNED.fullmatch(value)
    assert match is not None
    assert match.groups()[:3] == (tenant, kind, task_id)
    assert "." not in value
    assert value.isprintable()
    assert len(value) <= MAX_MSG_ID_CHARS
    assert split_task_msg_id(value) == (tenant, kind, task_id, match[4])
    assert msg_id_problem(value, tenant, kind) == ""  # the worker takes it on its own subject
    assert task_id_of(value, tenant, kind) == task_id  # and names the task in a dead letter


@given(tenant=tokens, kind=tokens, task_id=task_ids, key=keys, other=tokens)
def test_a_signed_id_naming_another_tenant_or_kind_is_refused(
    tenant: str, kind: str, task_id: str, key: bytes, other: str
) -> None:
    value = signed(key, msg_id(tenant, kind, task_id))
    if other != tenant:
        assert "another tenant" in msg_id_problem(value, other, kind)
        assert task_id_of(value, other, kind) == ""
    if other != kind:
        assert "another tenant" in msg_id_problem(value, tenant, other)


@given(value=st.text(alphabet=st.sampled_from("ab:-_Z9 \u00e9"), max_size=60))
def test_any_id_parses_as_scoped_or_not_and_never_raises(value: str) -> None:
    parsed = split_task_msg_id(value)
    if parsed is not None:
        tenant, kind, task_id, mac = parsed
        assert ":".join((tenant, kind, task_id, mac) if mac else (tenant, kind, task_id)) == value
    task = task_id_of(value, "a", "b")
    assert isinstance(task, str)
    if value.startswith("a:b:") and is_task_id(value[4:].partition(":")[0]) and parsed and parsed[3]:
        assert task == parsed[2]


def test_the_longest_signed_id_fits_the_admission_limit() -> None:
    value = signed(b"k", msg_id("t" * 64, "k" * 64, "i" * 128))
    assert len(value) == 64 + 64 + 128 + MAC_CHARS + 3 <= MAX_MSG_ID_CHARS
    assert msg_id_problem(value, "t" * 64, "k" * 64) == ""


def test_the_mac_depends_on_the_key_and_the_whole_id() -> None:
    a, b = derive_key(b"seed-a"), derive_key(b"seed-b")
    assert a != b
    assert len(a) == 32
    assert signed(a, "acme:echo:1") == signed(a, "acme:echo:1")  # one identity: one id, dedupe works
    assert signed(a, "acme:echo:1") != signed(b, "acme:echo:1")  # another identity: another id
    assert signed(a, "acme:echo:1")[-MAC_CHARS:] != signed(a, "acme:echo:2")[-MAC_CHARS:]
    assert signed(a, "replay-DLQ-7").startswith("replay-DLQ-7:")


def test_a_creds_file_and_a_seed_file_of_one_seed_give_one_key(tmp_path: Path) -> None:
    text = nkeys.encode_seed(bytes(range(32)), nkeys.PREFIX_BYTE_USER).decode()
    (tmp_path / "u.nk").write_text(text + "\n")
    (tmp_path / "u.creds").write_text(
        "-----BEGIN NATS USER JWT-----\neyJhbGciOiJlZDI1NTE5In0.e30.sig\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{text}\n------END USER NKEY SEED------\n"
    )
    key = key_from_file(str(tmp_path / "u.nk"))
    assert key == derive_key(text.encode())
    assert key_from_file(str(tmp_path / "u.creds")) == key
    assert NatsAuth(nkey_seed_file=str(tmp_path / "u.nk")).msg_id_key() == key
    assert NatsAuth(creds_file=str(tmp_path / "u.creds")).msg_id_key() == key
    assert NatsAuth(inbox_prefix="_INBOX_acme").msg_id_key() is None  # no secret: ids stay plain
    with pytest.raises(ConfigError):
        key_from_file(str(tmp_path / "missing.nk"))
    (tmp_path / "empty.nk").write_text("\n")
    with pytest.raises(ConfigError):
        key_from_file(str(tmp_path / "empty.nk"))


def _header(pub: Publisher, task_id: str) -> str:
    return pub._prepare("acme", "echo", {}, task_id, None, False, False)[3]["Nats-Msg-Id"]


def test_a_publisher_signs_with_its_connections_key_and_only_then() -> None:
    plain, keyed = Client(), Client()
    key = derive_key(b"acme's seed")
    remember_key(keyed, key)
    assert key_of(plain) is None
    assert key_of(keyed) == key
    assert _header(Publisher(plain), "invoice-1001") == "acme:echo:invoice-1001"
    assert _header(Publisher(keyed), "invoice-1001") == signed(key, "acme:echo:invoice-1001")
