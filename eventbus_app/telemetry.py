"""OpenTelemetry, optional (``pip install "eventbus_app[otel]"``): traces and metrics.

* ``emit()`` stores the current trace context (``traceparent``) with the event;
* each delivery runs in a CONSUMER span that continues the trace of the event's emitter
  (attributes: event type, uuid, id, handler, attempt, outcome), so a web request and every
  handler down its chain of events are one trace; a relay's batch opens a PRODUCER span per
  event (``batch_spans``) and puts the same ``traceparent`` in the CloudEvents it publishes;
* metrics through the OTel metrics API: ``eventbus.deliveries`` (counter, by handler and
  outcome), ``eventbus.delivery.duration`` (seconds) and ``eventbus.delivery.lag`` (seconds
  from the event's creation to its delivery's start), both histograms by handler.

Without the ``opentelemetry-api`` package everything here is a no-op (a module-level
check), and so it is, at the cost of one ``isinstance``, while no tracer provider is set.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

try:
    from opentelemetry import metrics, trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the optional extra is not installed
    trace = None  # type: ignore[assignment]
    metrics = None  # type: ignore[assignment]

ENABLED = trace is not None
_propagator: Any = TraceContextTextMapPropagator() if ENABLED else None
_instruments: dict[str, Any] = {}


def _configured() -> bool:
    """Whether an SDK provider is set: the API alone answers with no-op proxies, and the
    dispatcher then skips its spans and metrics altogether (their cost included)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def current_traceparent() -> str:
    """The W3C ``traceparent`` of the current span, or "" (none, or OTel absent)."""
    if not ENABLED:
        return ""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent", "")


def _instrument(name: str) -> Any:
    found = _instruments.get(name)
    if found is None:
        meter = metrics.get_meter("eventbus_app")
        if name == "deliveries":
            found = meter.create_counter(
                "eventbus.deliveries", unit="1", description="Delivery attempts by outcome"
            )
        elif name == "duration":
            found = meter.create_histogram(
                "eventbus.delivery.duration", unit="s", description="Handler run time"
            )
        else:
            found = meter.create_histogram(
                "eventbus.delivery.lag", unit="s", description="Event creation to delivery start"
            )
        _instruments[name] = found
    return found


class Span:
    """What the dispatcher tells the delivery's span (a no-op without OTel)."""

    def __init__(self, span: Any, handler: str) -> None:
        self.span = span
        self.handler = handler
        self.outcome = "succeeded"

    def failed(self, outcome: str, error: BaseException | None = None) -> None:
        self.outcome = outcome
        if self.span is not None and error is not None:
            try:
                text = str(error)
            except Exception:  # an exception whose __str__ raises is still recorded
                text = f"<str() of {type(error).__name__} raised>"
            try:
                self.span.record_exception(error)
            except Exception:  # the SDK formats it with str() too
                self.span.add_event("exception", {"exception.type": type(error).__name__})
            self.span.set_status(trace.Status(trace.StatusCode.ERROR, text[:200]))


@contextmanager
def delivery_span(
    *,
    handler: str,
    event_type: str,
    event_id: int,
    event_uuid: Any,
    attempt: int,
    traceparent: str,
    created_at: datetime | None,
) -> Iterator[Span]:
    """A span around one delivery's run, continuing the emitter's trace."""
    if not ENABLED or not _configured():
        yield Span(None, handler)
        return
    parent = _propagator.extract({"traceparent": traceparent}) if traceparent else None
    tracer = trace.get_tracer("eventbus_app")
    started = time.monotonic()
    attributes: dict[str, Any] = {
        "messaging.system": "eventbus",
        "messaging.operation": "process",
        "eventbus.event_type": event_type,
        "eventbus.event_id": event_id,
        "eventbus.event_uuid": str(event_uuid),
        "eventbus.handler": handler,
        "eventbus.attempt": attempt,
    }
    if created_at is not None:
        from django.utils import timezone

        lag = (timezone.now() - created_at).total_seconds()
        _instrument("lag").record(max(lag, 0.0), {"eventbus.handler": handler})
    with tracer.start_as_current_span(
        f"eventbus deliver {handler}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes=attributes,
    ) as span:
        result = Span(span, handler)
        try:
            yield result
        finally:
            span.set_attribute("eventbus.outcome", result.outcome)
            labels = {"eventbus.handler": handler, "eventbus.outcome": result.outcome}
            _instrument("deliveries").add(1, labels)
            _instrument("duration").record(
                time.monotonic() - started, {"eventbus.handler": handler}
            )


@contextmanager
def batch_spans(handler: str, deliveries: list[Any]) -> Iterator[list[Span]]:
    """One PRODUCER span per delivery of a batch handler (a relay's publish), each in its
    event's emitter trace, all open while the batch runs; the caller marks failures."""
    if not ENABLED or not _configured():
        yield [Span(None, handler) for _ in deliveries]
        return
    tracer = trace.get_tracer("eventbus_app")
    started = time.monotonic()
    spans: list[Span] = []
    for delivery in deliveries:
        event = delivery.event
        traceparent = getattr(event, "traceparent", "")
        parent = _propagator.extract({"traceparent": traceparent}) if traceparent else None
        span = tracer.start_span(
            f"eventbus publish {handler}",
            context=parent,
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "eventbus",
                "messaging.operation": "publish",
                "messaging.batch.message_count": len(deliveries),
                "eventbus.event_type": event.event_type,
                "eventbus.event_id": event.pk,
                "eventbus.event_uuid": str(event.uuid),
                "eventbus.handler": handler,
                "eventbus.attempt": delivery.attempts + 1,
            },
        )
        spans.append(Span(span, handler))
    try:
        yield spans
    finally:
        took = time.monotonic() - started
        for result in spans:
            result.span.set_attribute("eventbus.outcome", result.outcome)
            labels = {"eventbus.handler": handler, "eventbus.outcome": result.outcome}
            _instrument("deliveries").add(1, labels)
            _instrument("duration").record(took, {"eventbus.handler": handler})
            result.span.end()
