"""Embedders: text -> unit vectors, offline by default or through ``/v1/embeddings``.

:class:`HashEmbedder` is the default and needs no model: each text becomes the
signed, hashed counts of its words and of the character trigrams inside them
(the "hashing trick"), weighted by ``1 + log(count)`` and scaled to unit length. It
is deterministic across processes and machines (CRC-32, not Python's salted
``hash``), so vectors written by ``agentbus kb add`` match the queries of a worker
started a week later. It finds passages that share words with the question, which
is what a small domain knowledge base mostly needs; a model finds paraphrases too.

:class:`OpenAIEmbedder` posts batches of ``batch_size`` texts to an
OpenAI-compatible ``POST <base_url>/embeddings`` (vLLM, Ollama, llama.cpp server,
LiteLLM, hosted APIs) and scales what comes back to unit length. A collection
remembers which embedder filled it, and the store refuses to mix two.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from typing import Protocol

import msgspec

from agentbus.errors import EmbeddingError
from agents._eager import in_own_task

__all__ = ["Embedder", "HashEmbedder", "OpenAIEmbedder", "normalize"]

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


class Embedder(Protocol):
    """Turns texts into unit vectors of ``dim`` floats; ``name`` identifies the vector space."""

    name: str
    dim: int

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit vector per text, in order."""
        ...


def normalize(vector: Sequence[float]) -> list[float]:
    """``vector`` scaled to length 1 (a zero vector stays zero)."""
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else [0.0] * len(vector)


class HashEmbedder:
    """Hashed words and character trigrams: deterministic, offline, no model."""

    def __init__(self, dim: int = 512) -> None:
        if not 16 <= dim <= 65_536:
            raise ValueError("HashEmbedder dim must be within 16..65536")
        self.dim = dim
        self.name = f"hash-v1-{dim}"

    def vector(self, text: str) -> list[float]:
        """The unit vector of one text."""
        counts: dict[int, int] = {}
        for word in _WORD.findall(text.lower()):
            grams = [f"w:{word}"]
            padded = f"<{word}>"
            grams += [padded[i : i + 3] for i in range(len(padded) - 2)]
            for gram in grams:
                h = zlib.crc32(gram.encode())
                slot = (h >> 1) % self.dim
                sign = 1 if h & 1 else -1
                counts[slot] = counts.get(slot, 0) + sign
        vec = [0.0] * self.dim
        for slot, n in counts.items():
            if n:
                vec[slot] = math.copysign(1.0 + math.log(abs(n)), n)
        return normalize(vec)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Unit vectors of ``texts`` (computed in place: a few microseconds per word)."""
        return [self.vector(t) for t in texts]


class _Item(msgspec.Struct):
    embedding: list[float]
    index: int = 0


class _Answer(msgspec.Struct):
    data: list[_Item]


_answer = msgspec.json.Decoder(_Answer)


class OpenAIEmbedder:
    """``POST <base_url>/embeddings`` in batches; vectors scaled to unit length."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str = "",
        batch_size: int = 64,
        timeout_s: float = 30.0,
        max_text_chars: int = 32_768,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.batch_size = batch_size
        self.name = f"openai:{model}"
        self.dim = 0
        """Learnt from the first answer; every later answer must have it too."""
        self._max_text_chars = max_text_chars
        import httpx  # here: the offline default needs no HTTP client

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(timeout=timeout_s, headers=headers)
        self._errors: tuple[type[Exception], ...] = (httpx.HTTPError,)
        self.requests = 0

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Unit vectors of ``texts``, ``batch_size`` per request."""
        out: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = [t[: self._max_text_chars] for t in texts[start : start + self.batch_size]]
            out += await self._batch(batch)
        return out

    async def _batch(self, batch: list[str]) -> list[list[float]]:
        self.requests += 1
        try:
            # httpx's anyio scopes need a task of their own (a handler's first step runs eagerly)
            resp = await in_own_task(
                self._client.post(f"{self.base_url}/embeddings", json={"model": self.model, "input": batch})
            )
        except self._errors as exc:
            raise EmbeddingError(f"embeddings endpoint unreachable: {type(exc).__name__}") from exc
        if resp.status_code != 200:
            raise EmbeddingError(f"embeddings endpoint answered {resp.status_code}")
        try:
            items = sorted(_answer.decode(resp.content).data, key=lambda item: item.index)
        except msgspec.DecodeError as exc:
            raise EmbeddingError(f"unreadable embeddings answer: {exc}") from exc
        if len(items) != len(batch) or [i.index for i in items] != list(range(len(batch))):
            raise EmbeddingError(f"asked for {len(batch)} embeddings, got {len(items)}")
        dim = self.dim or len(items[0].embedding)
        if not 1 <= dim <= 65_536 or any(len(i.embedding) != dim for i in items):
            raise EmbeddingError(f"embeddings of unequal or unusable length (expected {dim})")
        # inf, NaN, or values whose squares overflow: no length to scale by
        if any(not math.isfinite(sum(x * x for x in i.embedding)) for i in items):
            raise EmbeddingError("an embedding's length is not a finite number")
        self.dim = dim
        return [normalize(i.embedding) for i in items]

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._client.aclose()
