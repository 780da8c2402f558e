"""The MCP tool's argument gate, fuzzed: whatever text a model sends, the call returns an
outcome (never raises), and only arguments valid against the server's schema are sent.
The server here is a recording stand-in for the session; the real servers are in
tests/integration/test_mcp_client.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema.exceptions import SchemaError

from agents.llm.mcp import MCPConnection, MCPTool
from agents.llm.mcp_config import MCPServerConfig
from agents.testing import bare_context

SCHEMA = {
    "type": "object",
    "properties": {"sku": {"type": "string", "maxLength": 20}, "quantity": {"type": "integer", "minimum": 1}},
    "required": ["sku", "quantity"],
    "additionalProperties": False,
}


class _Recording(MCPConnection):
    def __init__(self) -> None:
        super().__init__(MCPServerConfig(name="inv", command=("unused",)))
        self.sent: list[dict[str, Any]] = []

    async def call(self, tool: str, arguments: dict[str, Any], timeout_s: float) -> Any:
        self.sent.append(arguments)
        text = SimpleNamespace(text="ok")
        return SimpleNamespace(is_error=False, content=[text], structured_content={"result": "ok"})


def _valid(args: Any) -> bool:
    return (
        isinstance(args, dict)
        and set(args) == {"sku", "quantity"}
        and isinstance(args["sku"], str)
        and len(args["sku"]) <= 20
        and type(args["quantity"]) is int
        and args["quantity"] >= 1
    )


CONN = _Recording()
TOOL = MCPTool(CONN, SimpleNamespace(name="check", description="Check stock.", input_schema=SCHEMA))
CTX = bare_context("t")


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One loop for every example: a loop per example costs more than the test."""
    new = asyncio.new_event_loop()
    yield new
    new.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
objects = st.fixed_dictionaries(
    {"sku": json_values, "quantity": json_values}, optional={"extra": json_values}
)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.text(max_size=200),
        json_values.map(lambda v: msgspec.json.encode(v).decode()),
        objects.map(lambda v: msgspec.json.encode(v).decode()),
    )
)
def test_any_argument_text_gives_an_outcome_and_only_valid_arguments_are_sent(
    loop: asyncio.AbstractEventLoop, text: str
) -> None:
    CONN.sent.clear()
    outcome = loop.run_until_complete(TOOL.call(CTX, text))
    try:
        decoded = msgspec.json.decode(text)
    except msgspec.DecodeError:
        decoded = None
    if _valid(decoded):
        assert outcome.ok
        assert CONN.sent == [decoded]
    else:
        assert not outcome.ok
        assert outcome.error
        assert CONN.sent == []


def test_the_tool_schema_of_an_agent_kind_is_an_object() -> None:
    from agentbus.cli.mcp import tool_schema
    from agents.api import AgentSpec
    from agents.builtin.basic import echo

    schema = tool_schema(echo)
    assert schema["type"] == "object"
    assert schema["required"] == ["text"]

    async def handler(ctx: Any, n: int) -> int:
        return n

    scalar: AgentSpec[int, int] = AgentSpec(kind="double", input=int, output=int, handler=handler)
    assert tool_schema(scalar) == {
        "type": "object",
        "properties": {"input": {"type": "integer"}},
        "required": ["input"],
    }


def test_a_tool_whose_schema_is_huge_or_no_schema_is_refused() -> None:
    huge = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(5000)}}
    with pytest.raises(ValueError, match="larger than"):
        MCPTool(CONN, SimpleNamespace(name="huge", description="", input_schema=huge))
    with pytest.raises(SchemaError, match="is not of type"):
        MCPTool(
            CONN, SimpleNamespace(name="bad", description="", input_schema={"type": "object", "required": 3})
        )


def test_only_a_tool_its_server_declares_read_only_runs_again_on_a_retry() -> None:
    """An MCP tool goes through the effects ledger (Context.once) unless its server says it only
    reads (``readOnlyHint``); the retrieve tool is a read."""
    from mcp.types import ToolAnnotations

    from agents.llm.retrieval import RetrieveTool
    from agents.llm.tools import Toolbox

    def listed(name: str, annotations: ToolAnnotations | None) -> SimpleNamespace:
        return SimpleNamespace(name=name, description="", input_schema=SCHEMA, annotations=annotations)

    box = Toolbox(
        [
            MCPTool(CONN, listed("plain", None)),
            MCPTool(CONN, listed("reads", ToolAnnotations(read_only_hint=True))),
            MCPTool(CONN, listed("writes", ToolAnnotations(read_only_hint=False, destructive_hint=True))),
            RetrieveTool("handbook"),
        ]
    )
    assert [n for n in box.names if box.has_effect(n)] == ["inv__plain", "inv__writes"]
