"""The rules a worker checks on a task from the wire before anything runs (bus.admission)."""

from __future__ import annotations

import json
import math

import pytest

from agentbus.errors import ConfigError
from agents.config import WorkerConfig
from bus.admission import (
    EPOCH_MAX_S,
    MAX_MSG_ID_CHARS,
    MAX_NESTING,
    check_reply_prefix,
    msg_id_problem,
    reply_problem,
    task_id_of,
    time_problem,
    too_deep,
)
from bus.messages import msg_id
from bus.subjects import INVALID_TOKEN, shown, split_task_subject, subject_problem

INBOX = ("_INBOX.",)


def nested(depth: int, opener: str = "[", closer: str = "]") -> bytes:
    return (opener * depth + closer * depth).encode()


@pytest.mark.parametrize(
    ("subject", "tenant", "kind"),
    [
        ("tasks.acme.echo", "acme", "echo"),
        ("tasks.\ufffd\ufffd.echo", INVALID_TOKEN, "echo"),
        ("tasks._sys.echo", INVALID_TOKEN, "echo"),
        ("tasks." + "t" * 65 + ".echo", INVALID_TOKEN, "echo"),
        ("tasks.acme.\x1b[31m", INVALID_TOKEN, INVALID_TOKEN),
        ("tasks.\xff.\xfe", INVALID_TOKEN, INVALID_TOKEN),
        ("tasks.a.b.c", INVALID_TOKEN, INVALID_TOKEN),
    ],
)
def test_task_subject_tokens_are_checked(subject: str, tenant: str, kind: str) -> None:
    assert split_task_subject(subject) == (tenant, kind)
    assert bool(subject_problem(subject)) == (INVALID_TOKEN in (tenant, kind))


def test_a_subject_problem_names_the_token_escaped_and_cut() -> None:
    problem = subject_problem("tasks.\ufffd\ufffd.echo")
    assert problem.startswith("tenant token '\\ufffd\\ufffd' ")
    assert problem.isascii()
    long = subject_problem("tasks.acme." + "\x1b" * 5000)
    assert "kind token '\\x1b" in long
    assert "\x1b" not in long
    assert len(long) < 200


def test_shown_is_ascii_and_bounded() -> None:
    assert shown("ok") == "'ok'"
    assert shown("a\nb\x1b") == "'a\\nb\\x1b'"
    assert len(shown("\U0001f600" * 1000)) == 100
    assert len(shown("x" * 5000)) == 100


def test_scoped_msg_ids_of_this_tenant_and_kind_pass() -> None:
    assert msg_id("acme", "echo", "t-1") == "acme:echo:t-1"
    assert msg_id_problem("acme:echo:t-1", "acme", "echo") == ""
    assert task_id_of("acme:echo:t-1", "acme", "echo") == "t-1"


@pytest.mark.parametrize(
    "value",
    [
        "order-42",
        "a b c",
        "urn:x",
        "x" * MAX_MSG_ID_CHARS,
        "dlq-TASKS-7",
        "replay-DLQ-7:" + "M" * 22,
        "ünï",
        "a:b:c:d",
    ],
)
def test_a_publishers_own_msg_id_keeps_working(value: str) -> None:
    assert msg_id_problem(value, "acme", "echo") == ""
    assert task_id_of(value, "acme", "echo") == value


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("globex:echo:order-42", "another tenant or kind"),
        ("acme:summarize:order-42", "another tenant or kind"),
        ("x" * (MAX_MSG_ID_CHARS + 1), "printable"),
        ("globex:echo:order-42:" + "M" * 22, "another tenant or kind"),  # signed (bus.msgid)
        ("a\x00b", "printable"),
        ("a\x1b[2Jb", "printable"),
    ],
)
def test_refused_msg_ids(value: str, says: str) -> None:
    problem = msg_id_problem(value, "acme", "echo")
    assert says in problem
    assert problem.isascii()
    assert len(problem) < 250
    assert task_id_of(value, "acme", "echo") == ""


@pytest.mark.parametrize("reply", ["_INBOX.abc", "_INBOX.Xy12.order-42", "_INBOX." + "a" * 248])
def test_plain_replies_under_the_prefix_pass(reply: str) -> None:
    assert reply_problem(reply, INBOX) == ""


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        ("dlq.globex.echo", "allowed reply prefix"),
        ("tasks.globex.echo", "allowed reply prefix"),
        ("results.globex.t1", "allowed reply prefix"),
        ("_INBOXX.a", "allowed reply prefix"),
        ("_INBOX.a b", "plain subject"),
        ("_INBOX.*", "plain subject"),
        ("_INBOX.>", "plain subject"),
        ("_INBOX..a", "plain subject"),
        ("_INBOX.a.", "plain subject"),
        ("_INBOX.\u00e9", "plain subject"),
        ("_INBOX." + "a" * 249, "plain subject"),
    ],
)
def test_refused_replies(reply: str, says: str) -> None:
    assert says in reply_problem(reply, INBOX)


def test_no_prefix_allows_no_reply() -> None:
    assert "allowed reply prefix (none)" in reply_problem("_INBOX.a", ())


def test_reply_prefixes_in_the_config_are_normalized_and_checked() -> None:
    assert WorkerConfig().reply_prefixes == ("_INBOX.",)
    assert WorkerConfig(reply_prefixes=("_INBOX", "acme.replies.")).reply_prefixes == (
        "_INBOX.",
        "acme.replies.",
    )
    env = {"AGENTBUS_REPLY_PREFIXES": "_INBOX,_R_.x"}
    assert WorkerConfig.from_env(env).reply_prefixes == ("_INBOX.", "_R_.x.")
    assert WorkerConfig.from_env({"AGENTBUS_REPLY_PREFIXES": ""}).reply_prefixes == ()
    for bad in ("*", "a b", "_INBOX.>", ".x", ""):
        with pytest.raises(ConfigError):
            WorkerConfig(reply_prefixes=(bad,))
    assert check_reply_prefix(" _INBOX ") == "_INBOX."


@pytest.mark.parametrize("value", [0.0, 1.0, 1_795_238_056.6, EPOCH_MAX_S])
def test_epoch_seconds_pass(value: float) -> None:
    assert time_problem("deadline", value) == ""


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (math.nan, "finite"),
        (math.inf, "finite"),
        (-math.inf, "finite"),
        (-1.0, "epoch seconds"),
        (1_795_238_056_600.0, "milliseconds"),
        (1e300, "epoch seconds"),
    ],
)
def test_times_that_are_no_epoch_seconds_are_refused(value: float, says: str) -> None:
    assert says in time_problem("deadline", value)


def test_depth_at_the_bound_passes_one_more_does_not() -> None:
    assert not too_deep(nested(MAX_NESTING))
    assert too_deep(nested(MAX_NESTING + 1))
    assert too_deep(b'{"a":' * (MAX_NESTING + 1) + b"1" + b"}" * (MAX_NESTING + 1))
    assert too_deep(b'{"id":"x","payload":' + nested(2000) + b"}")


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"id": "x", "payload": {"text": "[" * 500 + '\\"{' * 100 + "\\" * 7}}).encode()
    assert not too_deep(text)
    many = json.dumps({"payload": [[{"a": [1]}] for _ in range(1000)]}).encode()  # wide, not deep
    assert not too_deep(many)
