"""``echo`` and ``summarize``: the smallest useful agents."""

from __future__ import annotations

import asyncio
import re
from collections import Counter

import msgspec

from agentbus.errors import Reject, Retry
from agents.api import Context, agent

__all__ = ["EchoIn", "EchoOut", "SummarizeIn", "SummarizeOut", "echo", "summarize"]


class EchoIn(msgspec.Struct):
    """What to echo, and optional behaviour for demos and tests."""

    text: str
    sleep_s: float = 0.0
    """Pretend to work this long (I/O-bound: the worker runs other tasks meanwhile)."""
    fail: str = ""
    """``"always"`` raises on every attempt (poison); ``"once"`` fails the first attempt."""


class EchoOut(msgspec.Struct):
    """The echoed text and the tenant the handler ran for."""

    text: str
    tenant: str
    attempt: int


@agent(kind="echo", input=EchoIn, output=EchoOut, max_inflight=256, timeout_s=30)
async def echo(ctx: Context, task: EchoIn) -> EchoOut:
    """Return the text, after ``sleep_s``; fail as asked."""
    if task.fail == "always":
        raise RuntimeError("poison task: fails on every attempt")
    if task.fail == "once" and ctx.attempt == 1:
        raise Retry("transient failure on the first attempt", delay_s=0.2)
    if task.fail == "reject":
        raise Reject("the task asked to be rejected")
    if task.sleep_s > 0:
        await asyncio.sleep(task.sleep_s)
    return EchoOut(text=task.text, tenant=ctx.tenant, attempt=ctx.attempt)


class SummarizeIn(msgspec.Struct):
    """A text to summarise."""

    text: str
    max_words: int = 12


class SummarizeOut(msgspec.Struct):
    """An extractive summary: the top sentence and keywords."""

    summary: str
    keywords: list[str]
    words: int


_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")
_STOP = frozenset(
    [
        "the",
        "a",
        "an",
        "and",
        "or",
        "of",
        "to",
        "in",
        "is",
        "are",
        "was",
        "were",
        "be",
        "for",
        "on",
        "with",
        "as",
        "at",
        "by",
        "it",
        "this",
        "that",
        "from",
    ]
)


@agent(kind="summarize", input=SummarizeIn, output=SummarizeOut, max_inflight=64, timeout_s=10)
async def summarize(ctx: Context, task: SummarizeIn) -> SummarizeOut:
    """CPU-light extractive summary: score sentences by keyword frequency."""
    words = [w.lower() for w in _WORD.findall(task.text)]
    freq = Counter(w for w in words if w not in _STOP)
    sentences = [s for s in _SENTENCE.split(task.text.strip()) if s]
    if not sentences:
        return SummarizeOut(summary="", keywords=[], words=0)
    best = max(sentences, key=lambda s: sum(freq[w.lower()] for w in _WORD.findall(s)))
    summary = " ".join(best.split()[: task.max_words])
    return SummarizeOut(summary=summary, keywords=[w for w, _ in freq.most_common(3)], words=len(words))
