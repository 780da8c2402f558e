"""Typed tools: a Python function whose arguments are a msgspec Struct.

::

    class Lookup(msgspec.Struct, forbid_unknown_fields=True):
        sku: str
        quantity: int

    @tool
    async def check_inventory(ctx: Context, args: Lookup) -> dict[str, int]:
        "How many of a SKU the tenant has in stock."
        ...

The JSON schema the model sees comes from ``msgspec.json.schema(Lookup)``; the
arguments the model sends are decoded strictly with a decoder built once (no
``"10"`` for an int; with ``forbid_unknown_fields`` no invented fields either). A
call never raises to the agent loop: malformed JSON, an unknown tool, invalid
arguments or an exception inside the tool come back as a failed
:class:`ToolOutcome` whose ``error`` is written for the model to read and correct.
Only the task's fate exceptions (``Retry``, ``Reject``) and cancellation pass through.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from agentbus.errors import ConfigError, TaskFate
from agents.api import Context
from agents.llm.chat import FunctionSpec, ToolSpec

__all__ = ["AnyTool", "Tool", "ToolOutcome", "Toolbox", "tool"]

ToolFn = Callable[[Context, Any], Any | Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """The result of one tool call: ``result`` (JSON-able) when ``ok``, else ``error`` for the model."""

    ok: bool
    result: Any = None
    error: str = ""


class AnyTool(Protocol):
    """What a toolbox holds: a local :class:`Tool` or another source's (an MCP server's)."""

    @property
    def name(self) -> str: ...

    @property
    def effect(self) -> bool:
        """Whether a call changes something: then it runs once per task and step (``Context.once``)."""
        ...

    def spec(self) -> ToolSpec: ...

    async def call(self, ctx: Context, arguments: str) -> ToolOutcome: ...


class Tool:
    """A named, described, typed function the model may call."""

    __slots__ = ("_decoder", "args_type", "description", "effect", "fn", "is_async", "name", "schema")

    def __init__(
        self, fn: ToolFn, *, name: str | None = None, description: str | None = None, effect: bool = True
    ) -> None:
        hints = typing.get_type_hints(fn)
        params = list(inspect.signature(fn).parameters)
        if len(params) != 2:
            raise ConfigError(f"tool {fn.__name__}: expected (ctx, args), got ({', '.join(params)})")
        args_type = hints.get(params[1])
        if not (isinstance(args_type, type) and issubclass(args_type, msgspec.Struct)):
            raise ConfigError(
                f"tool {fn.__name__}: the args parameter must be annotated with a msgspec Struct"
            )
        self.fn = fn
        self.name = name or fn.__name__
        self.description = description or inspect.getdoc(fn) or ""
        self.args_type = args_type
        self.is_async = inspect.iscoroutinefunction(fn)
        self.schema = _inline_schema(args_type)
        self._decoder = msgspec.json.Decoder(args_type)
        self.effect = effect
        """The tool changes something: a retried task gets its recorded outcome back instead of
        running it again (``Context.once``). ``effect=False`` for reads that may simply run again."""

    def spec(self) -> ToolSpec:
        """How the model sees the tool."""
        return ToolSpec(FunctionSpec(name=self.name, description=self.description, parameters=self.schema))

    async def call(self, ctx: Context, arguments: str) -> ToolOutcome:
        """Decode ``arguments`` strictly and run the tool; failures become a failed outcome."""
        try:
            args = self._decoder.decode(arguments or "{}")
        except msgspec.ValidationError as exc:
            return ToolOutcome(False, error=f"invalid arguments for {self.name}: {exc}")
        except msgspec.DecodeError as exc:
            return ToolOutcome(False, error=f"arguments of {self.name} are not valid JSON: {exc}")
        try:
            result = self.fn(ctx, args)
            if self.is_async:
                result = await result
            return ToolOutcome(True, msgspec.to_builtins(result))
        except TaskFate:
            raise
        except Exception as exc:
            return ToolOutcome(False, error=f"{self.name} failed: {type(exc).__name__}: {exc}")


@typing.overload
def tool(
    fn: ToolFn, *, name: str | None = None, description: str | None = None, effect: bool = True
) -> Tool: ...


@typing.overload
def tool(
    fn: None = None, *, name: str | None = None, description: str | None = None, effect: bool = True
) -> Callable[[ToolFn], Tool]: ...


def tool(
    fn: ToolFn | None = None, *, name: str | None = None, description: str | None = None, effect: bool = True
) -> Tool | Callable[[ToolFn], Tool]:
    """Make a :class:`Tool` of ``fn(ctx, args: Struct)``; usable bare or with arguments.

    ``effect=False`` marks a read-only tool: it is not recorded in the effects ledger."""
    if fn is None:
        return lambda f: Tool(f, name=name, description=description, effect=effect)
    return Tool(fn, name=name, description=description, effect=effect)


class Toolbox:
    """The tools of one agent, by name; their specs are built once."""

    def __init__(self, tools: Iterable[AnyTool] = ()) -> None:
        self._tools: dict[str, AnyTool] = {}
        for t in tools:
            if t.name in self._tools:
                raise ConfigError(f"two tools named {t.name!r}")
            self._tools[t.name] = t
        self.specs = [t.spec() for t in self._tools.values()]
        self.specs_json = msgspec.Raw(msgspec.json.encode(self.specs)) if self.specs else None
        """The specs encoded once: every model call sends them."""

    async def start(self) -> None:
        """Run the ``start()`` of every tool that has one (a tool that opens a store or a client)."""
        for t in self._tools.values():
            start = getattr(t, "start", None)
            if start is not None:
                await start()

    async def stop(self) -> None:
        """Run the ``stop()`` of every tool that has one."""
        for t in self._tools.values():
            stop = getattr(t, "stop", None)
            if stop is not None:
                await stop()

    def extended(self, tools: Iterable[AnyTool]) -> Toolbox:
        """A new toolbox with these tools and ``tools`` (a name clash is a ConfigError)."""
        return Toolbox([*self._tools.values(), *tools])

    @property
    def names(self) -> list[str]:
        """Tool names, in registration order."""
        return list(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def has_effect(self, name: str) -> bool:
        """Whether tool ``name`` exists and changes something (see :attr:`Tool.effect`)."""
        found = self._tools.get(name)
        return found is not None and found.effect

    def __len__(self) -> int:
        return len(self._tools)

    async def call(self, ctx: Context, name: str, arguments: str) -> ToolOutcome:
        """Run tool ``name``; an unknown name is a failed outcome listing the known ones."""
        found = self._tools.get(name)
        if found is None:
            known = ", ".join(self._tools) or "none"
            return ToolOutcome(False, error=f"unknown tool {name!r}; the tools are: {known}")
        return await found.call(ctx, arguments)


def _inline_schema(args_type: type) -> dict[str, Any]:
    """The Struct's JSON schema with the top-level ``$ref`` resolved (models want an object schema)."""
    schema = msgspec.json.schema(args_type)
    defs: dict[str, Any] = schema.get("$defs", {})
    ref = schema.get("$ref", "")
    if not ref.startswith("#/$defs/"):
        return schema
    top: dict[str, Any] = dict(defs.pop(ref.removeprefix("#/$defs/")))
    if defs:
        top["$defs"] = defs
    return top
