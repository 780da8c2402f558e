"""The ``retrieve`` tool: an LLM agent searches its tenant's knowledge base and cites what it found.

    tools = Toolbox([RetrieveTool("handbook"), ...])   # the KB of AGENTBUS_KB_*, opened at start

The model calls ``retrieve({"query": ..., "k": 4})``; the tool searches the collection of
the task's tenant (``ctx.tenant``, never an argument: a tenant cannot reach another's
documents) and answers with numbered passages, each with its source, document, passage
number and score, and the list of ``citations`` (``[1] refunds.md#0``) for the answer to
quote. The result is recorded in the task's audit trail (the ``step`` event of the call),
so every answer keeps the passages it was given. ``k`` is bounded (``max_k``); a query is
cut at the knowledge base's ``max_query_chars``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from agents.api import Context
from agents.kb.base import KnowledgeBase
from agents.kb.config import KBConfig
from agents.llm.chat import ToolSpec
from agents.llm.tools import Tool, ToolOutcome

__all__ = ["Passage", "Retrieve", "RetrieveTool", "Retrieved"]


class Retrieve(msgspec.Struct, forbid_unknown_fields=True):
    """The arguments: what to look for, and how many passages."""

    query: str
    k: int = 4


class Passage(msgspec.Struct):
    """A passage found, with what a citation needs."""

    cite: str
    source: str
    doc_id: str
    chunk: int
    score: float
    text: str


class Retrieved(msgspec.Struct):
    """The passages, best first, and their citations."""

    passages: list[Passage]
    citations: list[str]


class RetrieveTool:
    """Searches the task tenant's ``collection``; the knowledge base is opened at the worker's start."""

    def __init__(
        self,
        collection: str,
        *,
        kb: KnowledgeBase | None = None,
        config: KBConfig | None = None,
        name: str = "retrieve",
        max_k: int = 8,
    ) -> None:
        self.collection = collection
        self.kb = kb
        self._config = config
        self.max_k = max_k
        self._tool = Tool(
            self._search,
            name=name,
            description=(
                "Search the knowledge base for passages relevant to a question. Cite the passages you"
                f" use by their cite marks, e.g. [1]. k: how many passages (1-{max_k})."
            ),
        )

    @property
    def name(self) -> str:
        """The tool's name, as the model calls it."""
        return self._tool.name

    @property
    def effect(self) -> bool:
        """A search changes nothing: a retried task searches again instead of going through the ledger."""
        return False

    async def start(self) -> None:
        """Open the knowledge base (``AGENTBUS_KB_*`` unless one was given)."""
        if self.kb is None:
            self.kb = (self._config or KBConfig.from_env()).open()

    async def stop(self) -> None:
        """Close the embedder's connections and the store, if they have any to close."""
        if self.kb is None:
            return
        aclose = getattr(self.kb.embedder, "aclose", None)
        if aclose is not None:
            await aclose()
        close = getattr(self.kb.store, "close", None)
        if close is not None:
            close()

    def spec(self) -> ToolSpec:
        """How the model sees the tool."""
        return self._tool.spec()

    async def call(self, ctx: Context, arguments: str) -> ToolOutcome:
        """Decode the arguments strictly and search; failures come back for the model to read."""
        return await self._tool.call(ctx, arguments)

    async def _search(self, ctx: Context, args: Retrieve) -> Any:
        if self.kb is None:
            await self.start()
        assert self.kb is not None
        if not 1 <= args.k <= self.max_k:
            raise ValueError(f"k must be within 1..{self.max_k}")
        hits = await self.kb.search(ctx.tenant, self.collection, args.query, args.k)
        passages = [
            Passage(f"[{n}]", h.source, h.doc_id, h.chunk, h.score, h.text) for n, h in enumerate(hits, 1)
        ]
        return Retrieved(passages, [f"{p.cite} {p.source}#{p.chunk}" for p in passages])
