"""A broker restarted under a relay (the test's own redis-server / nats-server / RabbitMQ
node, whose app is stopped and started with rabbitmqctl): the relay's deliveries fail while
it is down, others run, and once it is back the retried deliveries publish: nothing lost,
order per stream kept."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from eventbus_app import emit
from eventbus_app.models import Delivery, OutboxEvent
from eventbus_app.operations import retry_deliveries
from eventbus_app.relay.backends import load_backend
from eventbus_app.relay.config import source_options
from eventbus_app.testing import drain

from .conftest import unique_options
from .test_backends import Shipped, collect

pytestmark = pytest.mark.django_db(databases=["default", "other"])


@pytest.mark.parametrize("kind", ["redis", "nats", "rabbitmq"])
def test_relay_survives_a_broker_restart(
    kind: str, relays: Any, register: Any, own_server: Callable[[str], Any]
) -> None:
    server = own_server(kind)
    options = unique_options(kind, url=server.url)
    relays(
        relays={"out": {**options, "EVENT_TYPES": ["relaytest.*"], "MAX_ATTEMPTS": 2}},
        sources={"in": {**options, "DATABASE": "other"}},
    )
    local: list[int] = []

    @register(Shipped, name="test.local")
    def handle(event: Shipped) -> None:
        local.append(event.order)

    consumer = load_backend(kind).Consumer("in", source_options("in"))
    consumer.close()  # it made the group / durable consumer; the messages wait for it
    sent = [emit(Shipped(order=1, note=""), stream="o-1")]
    drain()

    server.stop()
    sent += [emit(Shipped(order=n, note=""), stream="o-1") for n in (2, 3)]
    drain()
    relayed = Delivery.objects.filter(handler="relay:out").order_by("position")
    statuses = [d.status for d in relayed]
    assert statuses == [Delivery.Status.SUCCEEDED, Delivery.Status.DEAD, Delivery.Status.PENDING]
    assert sorted(local) == [1, 2, 3]  # the broker being down held only the relay

    server.start()
    time.sleep(0.5)
    retry_deliveries(relayed.filter(status=Delivery.Status.DEAD), actor="test")
    drain()
    assert set(relayed.values_list("status", flat=True)) == {Delivery.Status.SUCCEEDED}

    for attempt in range(5):  # the restarted server may still be recovering its streams
        try:
            consumer = load_backend(kind).Consumer("in", source_options("in"))
            break
        except Exception:
            if attempt == 4:
                raise
            time.sleep(1)
    try:
        collect(consumer, "in", 3)
    finally:
        consumer.close()
    received = OutboxEvent.objects.using("other").filter(source="in").order_by("position")
    assert [r.uuid for r in received] == [s.uuid for s in sent]
