"""Each broker backend, against the real server: published once per event, in order per
stream, with the CloudEvents fields; received into another database's inbox exactly once."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from eventbus_app import Event, emit
from eventbus_app.models import Delivery, OutboxEvent
from eventbus_app.relay import inbox
from eventbus_app.relay.backends import load_backend
from eventbus_app.relay.backends.base import Consumer
from eventbus_app.relay.config import source_options
from eventbus_app.relay.publish import message_for, publisher_for
from eventbus_app.testing import drain

from .conftest import DOWN, need_broker, unique_options

pytestmark = pytest.mark.django_db(databases=["default", "other"])

BROKERS = ["rabbitmq", "nats", "redis"]


class Shipped(Event, event_type="relaytest.Shipped"):
    order: int
    note: str


class Internal(Event, event_type="internal.Audit"):
    what: str


def collect(consumer: Consumer, source: str, want: int, seconds: float = 15) -> list[bytes]:
    """Receive into the "other" database's inbox, ack after each commit, until ``want``
    messages came (then a little longer, to see any extra one)."""
    bodies: list[bytes] = []
    deadline = time.monotonic() + seconds
    quiet_until = None
    while time.monotonic() < deadline:
        batch = consumer.receive(10, 0.5)
        for message in batch:
            inbox.receive(source, message.body, using="other")
            consumer.ack(message)
            bodies.append(message.body)
        if len(bodies) >= want and quiet_until is None:
            quiet_until = time.monotonic() + 1.0
        if quiet_until is not None and time.monotonic() > quiet_until:
            break
    return bodies


@pytest.mark.parametrize("backend", BROKERS)
def test_backend_publishes_each_event_once_and_the_inbox_stores_it_once(
    backend: str, relays: Any
) -> None:
    need_broker(backend)
    options = unique_options(backend)
    relays(
        relays={"out": {**options, "EVENT_TYPES": ["relaytest.*"], "SOURCE": "/shop"}},
        sources={"shop": {**options, "DATABASE": "other"}},
    )
    consumer = load_backend(backend).Consumer("shop", source_options("shop"))
    try:
        sent = [emit(Shipped(order=n, note="é"), stream="order-7") for n in (1, 2, 3)]
        sent.append(emit(Shipped(order=4, note="no stream")))
        emit(Internal(what="not relayed"))  # no pattern matches it
        counts = drain()
        assert counts["dead"] == 0, counts
        relayed = Delivery.objects.filter(handler="relay:out")
        assert relayed.count() == 4
        assert set(relayed.values_list("status", flat=True)) == {Delivery.Status.SUCCEEDED}

        # A re-publish (a confirm lost in transit, a replay): a duplicate at the broker.
        publisher_for("out").publish(message_for(sent[0], "/shop"))

        bodies = collect(consumer, "shop", 4)
    finally:
        consumer.close()

    received = OutboxEvent.objects.using("other").filter(source="shop").order_by("id")
    assert sorted(r.uuid for r in received) == sorted(s.uuid for s in sent)  # once each
    # In order per stream: the stream's events arrived as the sender stored them.
    assert [r.uuid for r in received if r.stream] == [s.uuid for s in sent[:3]]
    assert len(bodies) >= 4  # NATS dropped the re-publish itself (Nats-Msg-Id); others not
    first = received.get(uuid=sent[0].uuid)
    assert (first.event_type, first.payload, first.stream, first.position) == (
        "relaytest.Shipped",
        {"order": 1, "note": "é"},
        "order-7",
        1,
    )
    assert [r.position for r in received if r.stream] == [1, 2, 3]
    assert first.correlation_id == sent[0].correlation_id
    assert first.created_at == sent[0].created_at

    cloudevent = next(c for c in map(json.loads, bodies) if c["id"] == str(sent[0].uuid))
    assert cloudevent["specversion"] == "1.0"
    assert cloudevent["id"] == str(sent[0].uuid)
    assert cloudevent["source"] == "/shop"
    assert cloudevent["type"] == "relaytest.Shipped"
    assert cloudevent["subject"] == "order-7"
    assert cloudevent["sequence"] == "1"
    assert cloudevent["dataschema"] == "urn:eventbus:relaytest.Shipped:1"
    assert cloudevent["datacontenttype"] == "application/json"
    assert cloudevent["correlationid"] == str(sent[0].correlation_id)
    assert cloudevent["time"].endswith("Z")


@pytest.mark.parametrize("backend", [*BROKERS, "http"])
def test_a_broker_that_is_down_fails_only_the_relays_deliveries(
    backend: str, relays: Any, register: Any
) -> None:
    if backend != "http":
        pytest.importorskip({"rabbitmq": "pika", "nats": "nats", "redis": "redis"}[backend])
    relays(
        relays={"down": {"BACKEND": backend, "URL": DOWN[backend], "TIMEOUT": 2, "MAX_ATTEMPTS": 2}}
    )
    ran: list[int] = []

    @register(Shipped, name="test.local_handler")
    def local_handler(event: Shipped) -> None:
        ran.append(event.order)

    emit(Shipped(order=1, note=""), stream="order-1")
    emit(Shipped(order=2, note=""), stream="order-1")
    emit(Shipped(order=3, note=""))
    drain()

    assert sorted(ran) == [1, 2, 3]  # local work is unaffected
    local = Delivery.objects.filter(handler="test.local_handler")
    assert set(local.values_list("status", flat=True)) == {Delivery.Status.SUCCEEDED}
    relayed = {d.event.payload["order"]: d for d in Delivery.objects.filter(handler="relay:down")}
    for order in (1, 3):  # retried, then dead, with the connection error kept
        assert relayed[order].status == Delivery.Status.DEAD
        assert relayed[order].attempts == 2
        assert relayed[order].last_error
    # The stream's later event waits behind its dead predecessor (per-stream order).
    assert relayed[2].status == Delivery.Status.PENDING
