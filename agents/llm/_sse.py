"""Server-sent events: bytes in, ``data`` payloads out (the subset Chat Completions streams use).

Lines end in LF, CRLF or CR; ``data:`` lines of one event are joined with LF and the
event is dispatched at the blank line; comments (``:``) and other fields (``event``,
``id``, ``retry``) are ignored, as the OpenAI streams carry everything in ``data``.
A chunk boundary may fall anywhere, even between the CR and LF of one line ending.
"""

from __future__ import annotations

__all__ = ["SSEDecoder"]


class SSEDecoder:
    """Incremental SSE parser: :meth:`feed` returns the ``data`` of every event completed."""

    __slots__ = ("_data", "_pending", "_skip_lf")

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[bytes] = []
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """Consume ``chunk``; the data of each event it completes, in order."""
        if self._skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._skip_lf = False
        buf = self._pending + chunk
        if b"\r" in buf:
            self._skip_lf = buf.endswith(b"\r")
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._pending = lines.pop()
        out: list[bytes] = []
        for line in lines:
            if not line:
                if self._data:
                    out.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        return out

    def close(self) -> list[bytes]:
        """End of stream: an event not followed by a blank line is still dispatched."""
        out = self.feed(b"\n\n") if (self._pending or self._data) else []
        return out
