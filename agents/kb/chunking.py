"""Documents cut into passages: paragraphs packed up to ``max_chars``, long ones split at words.

A passage is what a citation points at, so it should be small enough to quote and large
enough to answer from: paragraphs are kept whole when they fit, packed together while
the passage stays under ``max_chars``, and a paragraph longer than that is cut at the
last space before the bound (or at the bound, for text without spaces).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Document", "chunk_text"]

_PARAGRAPH = re.compile(r"\n\s*\n")


@dataclass(frozen=True, slots=True)
class Document:
    """A text to add: ``doc_id`` (unique in its collection), ``source`` (shown in citations)."""

    doc_id: str
    text: str
    source: str = ""


def _split_long(text: str, max_chars: int) -> list[str]:
    out = []
    while len(text) > max_chars:
        cut = text.rfind(" ", 0, max_chars + 1)
        if cut <= 0:
            cut = max_chars
        out.append(text[:cut].strip())
        text = text[cut:].strip()
    if text:
        out.append(text)
    return out


def chunk_text(text: str, max_chars: int = 800) -> list[str]:
    """Passages of at most ``max_chars`` characters covering ``text``'s words in order."""
    if max_chars < 16:
        raise ValueError("max_chars must be >= 16")
    pieces: list[str] = []
    for para in _PARAGRAPH.split(text):
        para = " ".join(para.split())
        if para:
            pieces += _split_long(para, max_chars)
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        if current and len(current) + 2 + len(piece) <= max_chars:
            current += "\n\n" + piece
        else:
            if current:
                chunks.append(current)
            current = piece
    if current:
        chunks.append(current)
    return chunks
