"""The Chat Completions wire types (the OpenAI-compatible API), as msgspec Structs.

Only the fields agentbus reads or sends. Decoding is tolerant (unknown fields are
ignored, as every server adds its own), and tool-call ``arguments`` may arrive as a
JSON string (the spec) or, from some servers, as an object: both are accepted. The
Structs hold no reference cycles, so they are ``gc=False``: thousands of them in
flight do not lengthen the garbage collector's passes.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "ChatChunk",
    "ChatRequest",
    "ChatResponse",
    "Completion",
    "CompletionBuilder",
    "FunctionCall",
    "FunctionSpec",
    "Message",
    "ToolCall",
    "ToolSpec",
    "Usage",
]


class FunctionCall(msgspec.Struct, omit_defaults=True, gc=False):
    """The function a tool call names, with its arguments as JSON text."""

    name: str = ""
    arguments: str | dict[str, Any] = ""

    @property
    def arguments_json(self) -> str:
        """The arguments as JSON text, whichever form the server sent."""
        args = self.arguments
        return args if isinstance(args, str) else msgspec.json.encode(args).decode()


class ToolCall(msgspec.Struct, omit_defaults=True, gc=False):
    """One tool call of an assistant message."""

    id: str = ""
    type: str = "function"
    function: FunctionCall = msgspec.field(default_factory=FunctionCall)


class Message(msgspec.Struct, omit_defaults=True, gc=False):
    """A chat message: ``system``, ``user``, ``assistant`` (maybe with tool calls) or ``tool``."""

    role: str
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionSpec(msgspec.Struct, omit_defaults=True, gc=False):
    """A tool as the model sees it: name, description, JSON schema of the arguments."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)


class ToolSpec(msgspec.Struct, gc=False):
    """``{"type": "function", "function": ...}``."""

    function: FunctionSpec
    type: str = "function"


class _StreamOptions(msgspec.Struct, gc=False):
    include_usage: bool = True


class ChatRequest(msgspec.Struct, omit_defaults=True, gc=False):
    """The body of ``POST /chat/completions``."""

    model: str
    messages: list[Message]
    tools: list[ToolSpec] | msgspec.Raw | None = None
    """The specs, or the same already encoded (``Toolbox.specs_json``; sent as is)."""
    stream: bool = False
    stream_options: _StreamOptions | None = None
    temperature: float | None = None
    max_tokens: int | None = None


class Usage(msgspec.Struct, omit_defaults=True, gc=False):
    """Tokens a call spent."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class _Choice(msgspec.Struct, gc=False):
    message: Message
    index: int = 0
    finish_reason: str | None = None


class ChatResponse(msgspec.Struct, gc=False):
    """A non-streamed answer."""

    choices: list[_Choice]
    usage: Usage | None = None
    model: str = ""


class _FunctionDelta(msgspec.Struct, gc=False):
    name: str | None = None
    arguments: str | dict[str, Any] | None = None


class _ToolCallDelta(msgspec.Struct, gc=False):
    index: int = 0
    id: str | None = None
    function: _FunctionDelta | None = None


class _Delta(msgspec.Struct, gc=False):
    content: str | None = None
    tool_calls: list[_ToolCallDelta] | None = None


class _ChunkChoice(msgspec.Struct, gc=False):
    delta: _Delta = msgspec.field(default_factory=_Delta)
    index: int = 0
    finish_reason: str | None = None


class ChatChunk(msgspec.Struct, gc=False):
    """One ``data:`` event of a streamed answer."""

    choices: list[_ChunkChoice] = msgspec.field(default_factory=list)
    usage: Usage | None = None


class Completion(msgspec.Struct, gc=False):
    """What one model call produced, streamed or not: text, tool calls, usage."""

    content: str
    tool_calls: list[ToolCall]
    usage: Usage
    finish_reason: str | None = None
    model: str = ""
    """The model asked (a fallback endpoint may ask for its own); set by the client."""


class CompletionBuilder:
    """Accumulates stream deltas (content and tool calls by index) into a :class:`Completion`."""

    __slots__ = ("_calls", "_parts", "finish_reason", "usage")

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._calls: dict[int, list[Any]] = {}  # index -> [id, name, argument parts]
        self.usage = Usage()
        self.finish_reason: str | None = None

    def add(self, chunk: ChatChunk) -> str:
        """Fold one chunk in; returns its content text ('' if none)."""
        text = ""
        if chunk.usage is not None:
            self.usage = chunk.usage
        for choice in chunk.choices:
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
            delta = choice.delta
            if delta.content:
                text += delta.content
                self._parts.append(delta.content)
            for call in delta.tool_calls or ():
                slot = self._calls.setdefault(call.index, ["", "", []])
                if call.id:
                    slot[0] = call.id
                fn = call.function
                if fn is not None:
                    if fn.name:
                        slot[1] += fn.name
                    if fn.arguments:
                        args = fn.arguments
                        slot[2].append(args if isinstance(args, str) else msgspec.json.encode(args).decode())
        return text

    def build(self) -> Completion:
        """The accumulated completion."""
        calls = [
            ToolCall(id=cid or f"call_{i}", function=FunctionCall(name=name, arguments="".join(parts)))
            for i, (cid, name, parts) in sorted(self._calls.items())
        ]
        return Completion("".join(self._parts), calls, self.usage, self.finish_reason)
