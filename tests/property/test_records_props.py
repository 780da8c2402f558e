"""Hostile bytes and names against the records readers: a stored result, a dead letter and a
DLQ filter either come out valid or are refused with an agentbus error, never anything else."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from agentbus.errors import AgentbusError, RecordNotFoundError
from bus.records import _checked
from bus.redrive import DlqFilter, _stored

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
_result_like = st.fixed_dictionaries(
    {"task_id": st.sampled_from(["t1", "t2", ""]), "tenant": st.sampled_from(["acme", "beta"])},
    optional={"kind": st.text(max_size=5), "ok": _json, "output": _json, "attempts": _json},
)


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(st.binary(max_size=200), _json.map(msgspec.json.encode), _result_like.map(msgspec.json.encode))
)
def test_a_stored_result_is_the_one_asked_for_or_refused(data: bytes) -> None:
    try:
        result = _checked(data, "acme", "t1")
    except RecordNotFoundError:
        return
    assert (result.task_id, result.tenant) == ("t1", "acme")


_letter_like = st.fixed_dictionaries(
    {"reason": st.sampled_from(["rejected", "invalid_payload", "nope", ""]), "detail": st.text(max_size=10)},
    optional={"tenant": _json, "kind": _json, "data": _json, "stream_seq": _json, "task_id": _json},
)


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.binary(max_size=200), _letter_like.map(msgspec.json.encode)))
def test_a_stored_dead_letter_decodes_or_is_skipped(data: bytes) -> None:
    stored = _stored(7, "dlq.acme.k", data, 0.0)
    assert stored is None or stored.seq == 7


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=70), st.text(max_size=70))
def test_a_dlq_filter_never_widens_beyond_one_tenant_and_kind(tenant: str, kind: str) -> None:
    try:
        flt = DlqFilter(tenant=tenant, kind=kind)
    except AgentbusError:
        return
    parts: list[Any] = flt.subject.split(".")
    assert parts == ["dlq", tenant, kind]
    assert not {"*", ">"} & set(tenant + kind)
