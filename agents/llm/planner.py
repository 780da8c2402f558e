"""Brains: what decides, turn by turn, which tools to call and when to answer.

A :class:`Brain` gets the :class:`Run` so far (the request, every earlier plan and
its tool results) and returns the next :class:`Plan`: the tool calls to make (its
typed steps, as JSON arguments), or none and the answer. Two implement it:

* :class:`ModelBrain` asks an OpenAI-compatible model. The plan is the model's tool
  calls (several in one turn are parallel tool calls); each earlier turn goes back
  as an assistant message with its tool calls and one ``tool`` message per result,
  errors included, which is how the model learns that an argument was wrong.
* :class:`OfflineBrain` runs deterministic rules (a function of the run), streams
  its answer word by word and estimates tokens (4 characters each), so everything
  downstream, the budget included, behaves as with a model. It is the default.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from agents.llm.chat import ChatRequest, FunctionCall, Message, ToolCall, _StreamOptions
from agents.llm.client import ChatClient, TokenSink
from agents.llm.config import LLMConfig
from agents.llm.tools import Toolbox, ToolOutcome

__all__ = [
    "SYSTEM_PROMPT",
    "Brain",
    "ModelBrain",
    "OfflineBrain",
    "Plan",
    "PlannedCall",
    "Run",
    "Turn",
    "planned_call",
]

SYSTEM_PROMPT = (
    "You are a task agent working for tenant {tenant}. Use the tools to do what the request asks: "
    "call them (several at once when they are independent), read their results, then answer in "
    "plain text. If a tool reports an error, correct the call. Do not invent tools or arguments."
)


class PlannedCall(msgspec.Struct, gc=False):
    """One step of a plan: a tool name and its arguments as JSON text (unvalidated)."""

    id: str
    tool: str
    arguments: str


@dataclass(slots=True)
class Plan:
    """A brain's decision: ``calls`` to make next, or none and ``text`` is the answer."""

    calls: list[PlannedCall]
    text: str = ""
    tokens: int = 0
    brain: str = ""
    """Who decided, when not the agent's brain (a fallback endpoint's own model)."""


@dataclass(slots=True)
class Turn:
    """A plan and the outcomes of its calls (in the plan's order)."""

    plan: Plan
    outcomes: list[ToolOutcome]


@dataclass(slots=True)
class Run:
    """What a brain sees: the request and the turns so far."""

    request: str
    tenant: str
    tools: Toolbox
    on_token: TokenSink
    deadline: float | None = None
    """In ``loop.time()`` terms; model calls do not outlive it."""
    turns: list[Turn] = field(default_factory=list)
    nudge: str = ""
    """Set by the agent loop when the last turn was unusable (said nothing, called nothing)."""
    memo: list[Any] = field(default_factory=list)
    """A brain's own per-run state (the model brain keeps the conversation built so far)."""
    streaming: bool = False
    """Someone follows the task's stream: worth asking the model for tokens as they come."""


class Brain(Protocol):
    """Decides the next plan of a run."""

    name: str

    async def plan(self, run: Run) -> Plan:
        """The next tool calls, or the answer; stream answer text to ``run.on_token``."""
        ...


def _name(model: str) -> str:
    """How the audit trail names a model as the brain that decided."""
    return f"model:{model}"


class ModelBrain:
    """A brain that asks an OpenAI-compatible model, with the toolbox as its tools."""

    def __init__(self, client: ChatClient, config: LLMConfig, *, system_prompt: str = SYSTEM_PROMPT) -> None:
        self.client = client
        self.config = config
        self.system_prompt = system_prompt
        self.name = _name(config.model)
        self._system: dict[str, Message] = {}

    def messages(self, run: Run) -> list[Message]:
        """The conversation for the next turn (built incrementally in ``run.memo``)."""
        if not run.memo:
            system = self._system.get(run.tenant)
            if system is None:  # one per tenant, shared by its runs (never changed)
                if len(self._system) >= 4096:
                    self._system.clear()
                system = Message("system", self.system_prompt.format(tenant=run.tenant))
                self._system[run.tenant] = system
            run.memo += [0, [system, Message("user", run.request)]]
        done: int = run.memo[0]
        msgs: list[Message] = run.memo[1]
        if msgs[-1].role == "user" and len(msgs) > 2:  # drop the previous nudge
            msgs.pop()
        for turn in run.turns[done:]:
            calls = [ToolCall(id=c.id, function=FunctionCall(c.tool, c.arguments)) for c in turn.plan.calls]
            msgs.append(Message("assistant", turn.plan.text or None, tool_calls=calls or None))
            for call, outcome in zip(turn.plan.calls, turn.outcomes, strict=True):
                content = (
                    msgspec.json.encode(outcome.result).decode() if outcome.ok else f"error: {outcome.error}"
                )
                msgs.append(Message("tool", content, tool_call_id=call.id))
        run.memo[0] = len(run.turns)
        if run.nudge:
            msgs.append(Message("user", run.nudge))
        return msgs

    async def plan(self, run: Run) -> Plan:
        """One model call: its tool calls are the plan, or its text is the answer."""
        cfg = self.config
        stream = cfg.stream and run.streaming  # SSE costs parsing: only for a task someone follows
        request = ChatRequest(
            model=cfg.model,
            messages=self.messages(run),
            tools=run.tools.specs_json,
            stream=stream,
            stream_options=_StreamOptions() if stream else None,
            temperature=cfg.temperature,
            max_tokens=cfg.max_tokens,
        )
        done = await self.client.chat(request, deadline=run.deadline, on_token=run.on_token)
        usage = done.usage
        calls = [
            PlannedCall(
                id=c.id or f"call_{len(run.turns)}_{i}",
                tool=c.function.name,
                arguments=c.function.arguments_json,
            )
            for i, c in enumerate(done.tool_calls)
        ]
        if not stream and done.content and not calls:
            await run.on_token(done.content)  # a non-streamed answer still reaches the stream, whole
        tokens = usage.total_tokens or usage.prompt_tokens + usage.completion_tokens
        other = _name(done.model) if done.model and done.model != cfg.model else ""
        return Plan(calls, done.content, tokens, other)


Rules = Callable[[Run], Plan]
"""Deterministic planning: the run so far -> the next plan."""

_WORDS = re.compile(r"\S+\s*|\s+")


class OfflineBrain:
    """A brain of deterministic rules: no model, same interface, streamed answers."""

    def __init__(self, rules: Rules, *, name: str = "offline") -> None:
        self.rules = rules
        self.name = name

    async def plan(self, run: Run) -> Plan:
        """Apply the rules; stream a final answer word by word."""
        plan = self.rules(run)
        if not plan.calls:
            for word in _WORDS.findall(plan.text):
                await run.on_token(word)
        if not plan.tokens:
            history = sum(len(c.arguments) for t in run.turns for c in t.plan.calls)
            plan.tokens = max(1, (len(run.request) + history + len(plan.text)) // 4)
        return plan


def planned_call(tool: str, args: Any, *, id: str) -> PlannedCall:
    """A planned call of ``tool`` with ``args`` (a Struct or JSON-able) encoded as JSON text."""
    return PlannedCall(id=id, tool=tool, arguments=msgspec.json.encode(args).decode())
