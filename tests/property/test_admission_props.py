"""Properties of the admission rules (Hypothesis): the depth check agrees with a real parser."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bus.admission import MAX_MSG_ID_CHARS, msg_id_problem, task_id_of, too_deep
from bus.messages import msg_id
from bus.subjects import is_token

_TEXT = st.text(alphabet=st.sampled_from('ab[]{}"\\:, \n\u00e9'), max_size=8)
json_values = st.recursive(
    st.none() | st.integers() | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=40,
)
tokens = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,10}", fullmatch=True)
ids = st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


@given(value=json_values, limit=st.integers(0, 8), ascii_only=st.booleans())
def test_too_deep_agrees_with_the_parsed_depth(value: Any, limit: int, ascii_only: bool) -> None:
    data = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert too_deep(data, limit) == (depth(json.loads(data)) > limit)


@given(tenant=tokens, kind=tokens, task_id=ids, other=tokens)
def test_scoped_ids_pass_only_for_their_own_tenant_and_kind(
    tenant: str, kind: str, task_id: str, other: str
) -> None:
    own = msg_id(tenant, kind, task_id)
    assert msg_id_problem(own, tenant, kind) == ""
    assert task_id_of(own, tenant, kind) == task_id
    assert is_token(other)
    if other != tenant:
        assert msg_id_problem(own, other, kind)
    if other != kind:
        assert msg_id_problem(own, tenant, other)


@given(value=st.text(max_size=MAX_MSG_ID_CHARS + 40))
def test_any_msg_id_is_accepted_or_refused_never_raises(value: str) -> None:
    problem = msg_id_problem(value, "acme", "echo")
    assert problem.isascii()
    if value.isprintable() and len(value) <= MAX_MSG_ID_CHARS and value.count(":") not in (2, 3):
        assert problem == ""
