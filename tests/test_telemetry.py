"""OpenTelemetry: one trace from a web request through two chained handlers, with the
SDK's in-memory exporters; metrics by handler and outcome."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from eventbus_app import Event, emit
from eventbus_app.models import OutboxEvent
from eventbus_app.testing import drain

sdk = pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra (opentelemetry-sdk)")

from opentelemetry import metrics, trace  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

pytestmark = pytest.mark.django_db(transaction=True)

_EXPORTER = InMemorySpanExporter()
_READER = InMemoryMetricReader()


@pytest.fixture(scope="module")
def otel() -> tuple[InMemorySpanExporter, InMemoryMetricReader]:
    """The global providers can be set once per process: the first test module sets them."""
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[_READER]))
    return _EXPORTER, _READER


class Ordered(Event, event_type="t.otel.Ordered"):
    n: int


class Invoiced(Event, event_type="t.otel.Invoiced"):
    n: int


def test_one_trace_from_the_request_through_two_chained_handlers(otel: Any, register: Any) -> None:
    exporter, reader = otel
    exporter.clear()

    @register(Ordered, name="t.otel.invoice")
    def invoice(event: Ordered) -> None:
        emit(Invoiced(n=event.n))

    @register(Invoiced, name="t.otel.render")
    def render(event: Invoiced) -> None: ...

    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("POST /orders/") as request:
        with transaction.atomic():
            record = emit(Ordered(n=1))
        trace_id = request.get_span_context().trace_id
    assert record.traceparent.startswith("00-") and f"{trace_id:032x}" in record.traceparent
    drain()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    first = spans["eventbus deliver t.otel.invoice"]
    second = spans["eventbus deliver t.otel.render"]
    assert {first.context.trace_id, second.context.trace_id} == {trace_id}
    assert first.parent.span_id == spans["POST /orders/"].context.span_id
    assert second.parent.span_id == first.context.span_id  # the chain continues the trace
    assert first.kind == trace.SpanKind.CONSUMER
    assert first.attributes["eventbus.event_type"] == "t.otel.Ordered"
    assert first.attributes["eventbus.event_uuid"] == str(record.uuid)
    assert first.attributes["eventbus.attempt"] == 1
    assert first.attributes["eventbus.outcome"] == "succeeded"
    child = OutboxEvent.objects.get(event_type="t.otel.Invoiced")
    assert f"{first.context.span_id:016x}" in child.traceparent

    data = reader.get_metrics_data()
    points = {
        (m.name, tuple(sorted(p.attributes.items())))
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        for p in m.data.data_points
    }
    names = {name for name, _ in points}
    assert {"eventbus.deliveries", "eventbus.delivery.duration", "eventbus.delivery.lag"} <= names
    assert (
        "eventbus.deliveries",
        (("eventbus.handler", "t.otel.render"), ("eventbus.outcome", "succeeded")),
    ) in points


def test_a_failing_delivery_records_its_error_on_the_span(otel: Any, register: Any) -> None:
    exporter, _ = otel
    exporter.clear()

    @register(Ordered, name="t.otel.fails", max_attempts=1)
    def fails(event: Ordered) -> None:
        raise RuntimeError("the printer is on fire")

    emit(Ordered(n=2))
    drain()
    [span] = [s for s in exporter.get_finished_spans() if s.name == "eventbus deliver t.otel.fails"]
    assert span.attributes["eventbus.outcome"] == "dead"
    assert span.status.status_code == trace.StatusCode.ERROR
    assert any(e.name == "exception" for e in span.events)


def test_a_relays_batch_publishes_in_each_events_trace(
    otel: Any, settings: Any, tmp_path: Any
) -> None:
    """Each relayed event gets a PRODUCER span in its emitter's trace, the refused one with
    its error; the CloudEvent carries the same traceparent on."""
    from eventbus_app.relay.config import install_relays, uninstall_relays

    exporter, _ = otel
    exporter.clear()
    settings.EVENTBUS = {
        **settings.EVENTBUS,
        "NUDGE": False,
        "RELAYS": {
            "out": {
                "BACKEND": "tests.relay.filebackend",
                "PATH": str(tmp_path / "broker.jsonl"),
                "EVENT_TYPES": ["t.otel.*"],
                "REFUSE_TYPES": ["t.otel.Invoiced"],
                "MAX_ATTEMPTS": 1,
            }
        },
    }
    install_relays()
    try:
        tracer = trace.get_tracer("tests")
        with tracer.start_as_current_span("POST /orders") as request:
            emit(Ordered(n=1))
            emit(Invoiced(n=1))
        drain()
    finally:
        uninstall_relays()
    spans = [s for s in exporter.get_finished_spans() if s.name == "eventbus publish relay:out"]
    assert len(spans) == 2
    trace_id = request.get_span_context().trace_id
    assert {s.context.trace_id for s in spans} == {trace_id}
    assert all(s.kind == trace.SpanKind.PRODUCER for s in spans)
    by_type = {s.attributes["eventbus.event_type"]: s for s in spans}
    assert by_type["t.otel.Ordered"].attributes["eventbus.outcome"] == "succeeded"
    refused = by_type["t.otel.Invoiced"]
    assert refused.attributes["eventbus.outcome"] == "dead"
    assert refused.status.status_code == trace.StatusCode.ERROR


def test_an_exception_whose_str_raises_is_still_recorded_on_the_span(
    otel: Any, register: Any
) -> None:
    from eventbus_app.models import Delivery

    exporter, _ = otel
    exporter.clear()

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text for you")

    @register(Ordered, name="t.otel.unprintable", max_attempts=1)
    def unprintable(event: Ordered) -> None:
        raise Unprintable

    emit(Ordered(n=3))
    drain()
    assert Delivery.objects.get(handler="t.otel.unprintable").status == Delivery.Status.DEAD
    [span] = [
        s for s in exporter.get_finished_spans() if s.name == "eventbus deliver t.otel.unprintable"
    ]
    assert span.status.status_code == trace.StatusCode.ERROR
    assert "Unprintable" in (span.status.description or "")
