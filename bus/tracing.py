"""OpenTelemetry tracing: W3C trace context in NATS headers, and nothing at all when it is off.

Tracing is on when the process installed a real tracer provider
(``opentelemetry.trace.set_tracer_provider(TracerProvider(...))``, or the
``opentelemetry-instrument`` launcher); exporters are the application's choice.
:func:`enabled` answers that, and callers ask it once (a worker at start, a
publisher when built), so with tracing off the hot path does not even call into
OpenTelemetry. Spans of one task: ``publish`` (producer, its context injected as
``traceparent`` into the task's headers) -> ``receive`` (consumer, parented on it)
-> the handler's spans (the LLM agent: ``plan``, ``tool``, ``answer``) -> ``ack``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

__all__ = ["enabled", "extract", "inject", "span"]


def enabled() -> bool:
    """True when a real tracer provider is installed (not the API's no-op or proxy default)."""
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - opentelemetry-api is a dependency
        return False
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def inject(headers: dict[str, str]) -> None:
    """Add the current span's context (``traceparent``, ``tracestate``) to ``headers``."""
    from opentelemetry import propagate

    propagate.inject(headers)


def extract(headers: Mapping[str, str] | None) -> Any:
    """The context carried by ``headers`` (an empty one if there is none)."""
    from opentelemetry import propagate

    return propagate.extract(dict(headers or {}))


def span(
    name: str, *, kind: str = "internal", context: Any = None, **attributes: Any
) -> AbstractContextManager[Any]:
    """A span named ``name`` (current span as parent unless ``context``); yields the span."""
    return _span(name, kind, context, attributes)


@contextmanager
def _span(name: str, kind: str, context: Any, attributes: dict[str, Any]) -> Iterator[Any]:
    from opentelemetry import trace

    kinds = {
        "internal": trace.SpanKind.INTERNAL,
        "producer": trace.SpanKind.PRODUCER,
        "consumer": trace.SpanKind.CONSUMER,
        "client": trace.SpanKind.CLIENT,
    }
    tracer = trace.get_tracer("agentbus")
    with tracer.start_as_current_span(name, context=context, kind=kinds[kind], attributes=attributes) as s:
        yield s
