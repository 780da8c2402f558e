"""Subject tokens: no wildcard, separator or empty token can cross into another tenant's space."""

from __future__ import annotations

import pytest

from agentbus.errors import BusError, InvalidSubjectError
from bus.subjects import (
    check_task_id,
    check_token,
    dlq_subject,
    result_subject,
    split_task_subject,
    task_subject,
)

VALID = ["acme", "a", "A-Z_09", "tenant-1", "x" * 64, "0_", "a-"]
INVALID = ["", "a.b", "*", ">", "a*", "a b", "tab\t", "new\nline", "x" * 65, "ünïcode", "a/b", "$SYS"]
INVALID += ["_", "-", "_invalid", "-a"]  # a leading _ is the system's (dlq._invalid.<kind>)


@pytest.mark.parametrize("token", VALID)
def test_valid_tokens_pass_through(token: str) -> None:
    assert check_token("tenant", token) == token


@pytest.mark.parametrize("token", INVALID)
def test_invalid_tokens_raise_with_data(token: str) -> None:
    with pytest.raises(InvalidSubjectError) as info:
        check_token("tenant", token)
    assert info.value.field == "tenant"
    assert info.value.value == token
    assert isinstance(info.value, BusError)


def test_task_subject() -> None:
    assert task_subject("acme", "echo") == "tasks.acme.echo"


@pytest.mark.parametrize(("tenant", "kind"), [("a.b", "echo"), ("*", "echo"), ("acme", ">"), ("acme", "")])
def test_task_subject_validates_both_tokens(tenant: str, kind: str) -> None:
    with pytest.raises(InvalidSubjectError):
        task_subject(tenant, kind)


def test_task_subject_names_the_bad_field() -> None:
    with pytest.raises(InvalidSubjectError) as info:
        task_subject("acme", "no.dots")
    assert info.value.field == "kind"


def test_split_task_subject_round_trips() -> None:
    assert split_task_subject(task_subject("acme", "echo")) == ("acme", "echo")


def test_result_and_dlq_subjects() -> None:
    assert result_subject("acme", "t1") == "results.acme.t1"
    assert dlq_subject("acme", "echo") == "dlq.acme.echo"


@pytest.mark.parametrize("task_id", ["abc", "x" * 128, "0123-abc_DEF"])
def test_valid_task_ids(task_id: str) -> None:
    assert check_task_id(task_id) == task_id


@pytest.mark.parametrize("task_id", ["", "x" * 129, "a.b", "a*", "a b", ">"])
def test_invalid_task_ids(task_id: str) -> None:
    with pytest.raises(InvalidSubjectError):
        check_task_id(task_id)
