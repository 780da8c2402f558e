"""Properties of the wire format and subject rules (Hypothesis)."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentbus.errors import InvalidSubjectError
from agents.runner import RetryPolicy
from bus.messages import DeadLetter, DlqReason, Result, Task, decoder_for, encode
from bus.subjects import check_token, split_task_subject, task_subject

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
tokens = st.from_regex(_TOKEN, fullmatch=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(task_id=tokens, payload=json_values, deadline=st.none() | st.floats(0, 2e9))
def test_task_round_trips(task_id: str, payload: Any, deadline: float | None) -> None:
    task = Task(id=task_id, payload=payload, created_at=1.5, deadline=deadline)
    assert decoder_for(Any).decode(encode(task)) == task


@given(tenant=tokens, kind=tokens)
def test_task_subject_splits_back(tenant: str, kind: str) -> None:
    assert split_task_subject(task_subject(tenant, kind)) == (tenant, kind)


@given(value=st.text(max_size=80))
def test_only_plain_tokens_are_accepted(value: str) -> None:
    if _TOKEN.fullmatch(value):
        assert check_token("tenant", value) == value
    else:
        with pytest.raises(InvalidSubjectError):
            check_token("tenant", value)


@given(reason=st.sampled_from(list(DlqReason)), data=st.binary(max_size=300), seq=st.integers(0, 2**40))
def test_dead_letter_keeps_original_bytes(reason: DlqReason, data: bytes, seq: int) -> None:
    letter = DeadLetter(reason=reason, detail="d", tenant="t", kind="k", stream_seq=seq, data=data)
    back = msgspec.json.decode(encode(letter), type=DeadLetter)
    assert back == letter


@given(ok=st.booleans(), output=json_values)
def test_result_round_trips(ok: bool, output: Any) -> None:
    result = Result(task_id="x", tenant="t", kind="k", ok=ok, output=output)
    assert msgspec.json.decode(encode(result), type=Result[Any]) == result


@given(base=st.floats(0.001, 10), cap=st.floats(0.001, 100), attempt=st.integers(1, 200))
def test_retry_delay_is_jittered_within_its_ceiling(base: float, cap: float, attempt: int) -> None:
    cap = max(cap, base)
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 30))
    delay = RetryPolicy(base, cap).delay_s(attempt)
    assert ceiling / 2 <= delay <= ceiling
