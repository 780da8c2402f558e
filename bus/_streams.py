"""Create or update a JetStream stream: the one way topology, records and edge provision theirs."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError

__all__ = ["ensure_stream"]


async def ensure_stream(js: JetStreamContext, config: StreamConfig, *, keep_sources: bool = False) -> None:
    """Add the stream ``config`` names, or update it to ``config`` (idempotent).

    ``keep_sources``: an existing stream keeps the sources it has (an edge site's, added by
    :func:`bus.edge.source_edge`) instead of ``config``'s.
    """
    assert config.name is not None
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
        return
    if keep_sources:
        config.sources = info.config.sources
    await js.update_stream(config)
