"""OpenTelemetry tracing: W3C trace context in NATS headers, and nothing at all when it is off.

Tracing is on when the process installed a real tracer provider
(``opentelemetry.trace.set_tracer_provider(TracerProvider(...))``, or the
``opentelemetry-instrument`` launcher); exporters are the application's choice.
:func:`enabled` answers that, and callers ask it once (a worker at start, a
publisher when built), so with tracing off the hot path does not even call into
OpenTelemetry. Spans of one task: ``publish`` (producer, its context injected as
``traceparent`` into the task's headers) -> ``receive`` (consumer, parented on it)
-> the handler's spans (the LLM agent: ``plan``, ``tool``, ``answer``) -> ``ack``.

The ``receive`` span carries the task (``agentbus.tenant``, ``agentbus.kind``,
``agentbus.task_id``, ``agentbus.attempt``) and its fate (``agentbus.fate``: ``ok``,
``retry``, ``dead_letter``, ``handed_back``; ``agentbus.dead_letter.reason``); a retry or a
dead letter sets the span's status to error with the reason.

:func:`configure_from_env` is what the ``agentbus`` command runs at start: when the
standard ``OTEL_*`` variables ask for traces (``OTEL_TRACES_EXPORTER``, or an
``OTEL_EXPORTER_OTLP_*ENDPOINT``), it installs the SDK's tracer provider with that
exporter (``pip install 'agentbus[otel]'``; the image has it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from agentbus.env import Env
from agentbus.errors import ConfigError

__all__ = ["annotate", "configure_from_env", "enabled", "extract", "fail", "inject", "span"]


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


def annotate(**attributes: Any) -> None:
    """Set ``attributes`` on the current span (names with dots: pass them as ``**{...}``)."""
    from opentelemetry import trace

    trace.get_current_span().set_attributes(attributes)


def fail(description: str, exc: BaseException | None = None) -> None:
    """Mark the current span as failed with ``description`` (and record ``exc`` if given)."""
    from opentelemetry import trace

    current = trace.get_current_span()
    if exc is not None:
        current.record_exception(exc)
    current.set_status(trace.Status(trace.StatusCode.ERROR, description))


def configure_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """Install the SDK's tracer provider when ``OTEL_*`` asks for traces; True if it did.

    ``OTEL_TRACES_EXPORTER`` is ``otlp`` (the default once an OTLP endpoint is set),
    ``console`` or ``none``; ``OTEL_SDK_DISABLED=true`` turns it all off; the service
    name, resource and exporter settings are the SDK's own ``OTEL_*`` variables. A
    provider installed already (``opentelemetry-instrument``) is kept.
    """
    env = Env(environ)
    if env.flag("OTEL_SDK_DISABLED") or enabled():
        return False
    endpoint = env.text("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.text("OTEL_EXPORTER_OTLP_ENDPOINT")
    name = (env.text("OTEL_TRACES_EXPORTER") or ("otlp" if endpoint else "none")).strip().lower()
    if name == "none":
        return False
    if name not in ("otlp", "console"):
        raise env.error("OTEL_TRACES_EXPORTER", "otlp, console or none")
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

        exporter: SpanExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            exporter = ConsoleSpanExporter()
    except ImportError as exc:
        raise ConfigError(
            f"OTEL_* asks for {name} traces but {exc.name} is not installed: pip install 'agentbus[otel]'"
        ) from exc
    provider = TracerProvider()  # its resource reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    provider.add_span_processor(BatchSpanProcessor(exporter))  # flushed at exit (atexit)
    trace.set_tracer_provider(provider)
    return True
