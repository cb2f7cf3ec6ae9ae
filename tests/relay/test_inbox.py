"""The inbox: once per uuid, local handlers run, unknown types and unreadable messages kept
as dead letters."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from eventbus_app.models import Delivery, OutboxEvent
from eventbus_app.relay import inbox
from eventbus_app.relay.cloudevents import encode
from eventbus_app.testing import drain

from .test_http import Paid as InvoicePaid
from .test_http import cloudevent

pytestmark = pytest.mark.django_db


def test_received_event_runs_local_handlers_and_duplicates_are_dropped(register: Any) -> None:
    seen: list[int] = []

    @register(InvoicePaid, name="test.billing")
    def billing(event: InvoicePaid) -> None:
        seen.append(event.invoice)

    body = encode(cloudevent())
    assert inbox.receive("shop", body) is inbox.Outcome.STORED
    assert inbox.receive("shop", body) is inbox.Outcome.DUPLICATE
    drain()
    assert seen == [9]
    assert Delivery.objects.get(handler="test.billing").status == Delivery.Status.SUCCEEDED


def test_causation_links_to_the_received_cause() -> None:
    cause = cloudevent()
    effect = cloudevent(causationid=cause["id"], subject="invoice-9")
    inbox.receive("shop", encode(cause))
    inbox.receive("shop", encode(effect))
    stored = OutboxEvent.objects.get(uuid=effect["id"])
    assert stored.causation is not None and str(stored.causation.uuid) == cause["id"]
    assert [e.position for e in OutboxEvent.objects.order_by("id")] == [1, 2]


def test_an_unknown_type_is_stored_and_dead_lettered_by_the_dispatcher() -> None:
    body = encode(cloudevent(type="nobody.KnowsMe"))
    assert inbox.receive("shop", body) is inbox.Outcome.STORED
    drain()
    dead = Delivery.objects.get(event__source="shop")
    assert dead.status == Delivery.Status.DEAD
    assert "nobody.KnowsMe" in dead.last_error


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xfe\x00",
        b"[1, 2]",
        encode({**cloudevent(), "specversion": "2.0"}),
        encode({**cloudevent(), "id": "not-a-uuid"}),
        encode({**cloudevent(), "data": "a string"}),
        encode({k: v for k, v in cloudevent().items() if k != "type"}),
        encode({**cloudevent(), "time": "yesterday"}),
        encode({**cloudevent(), "eventversion": 0}),
    ],
)
def test_unreadable_messages_are_kept_raw_as_dead_letters(body: bytes) -> None:
    assert inbox.receive("shop", body) is inbox.Outcome.DEAD
    kept = OutboxEvent.objects.get(source="shop")
    assert kept.payload["bytes"] == len(body)
    assert ("text" in kept.payload) or ("base64" in kept.payload)
    dead = Delivery.objects.get(event=kept)
    assert dead.status == Delivery.Status.DEAD and "Unreadable message" in dead.last_error
    assert inbox.receive("shop", body) is inbox.Outcome.DUPLICATE  # redelivered copy


def test_unreadable_uuid_is_per_source() -> None:
    inbox.receive("a", b"junk")
    inbox.receive("b", b"junk")
    assert OutboxEvent.objects.filter(event_type=inbox.UNREADABLE_TYPE).count() == 2
    assert uuid.UUID(str(OutboxEvent.objects.first().uuid))  # type: ignore[union-attr]


def test_traceparent_goes_out_and_comes_back_in() -> None:
    from eventbus_app import emit
    from eventbus_app.relay.cloudevents import to_cloudevent

    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    record = emit(InvoicePaid(invoice=1))
    OutboxEvent.objects.filter(pk=record.pk).update(traceparent=trace)
    record.refresh_from_db()
    assert to_cloudevent(record, "/shop")["traceparent"] == trace
    assert "traceparent" not in to_cloudevent(emit(InvoicePaid(invoice=2)), "/shop")

    inbox.receive("shop", encode(cloudevent(traceparent=trace)))
    assert OutboxEvent.objects.get(source="shop").traceparent == trace
