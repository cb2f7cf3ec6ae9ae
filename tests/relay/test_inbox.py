"""The inbox: once per uuid, local handlers run, unknown types and unreadable messages kept
as dead letters."""

from __future__ import annotations

import json
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


@pytest.mark.parametrize(
    ("case", "body", "why"),
    [
        # Valid JSON whose data decodes to a NUL: PostgreSQL's jsonb refuses it.
        ("escaped NUL in data", encode(cloudevent(data={"note": "a\x00b"})), "data.note"),
        ("escaped NUL in subject", encode(cloudevent(subject="s\x00")), "subject"),
        # (escaped as JSON does by default: \ud800 in ASCII)
        ("lone surrogate", json.dumps(cloudevent(data={"n": "\ud800"})).encode(), "data.n"),
        # A version no integer column holds (SQLite raised OverflowError on it).
        ("huge eventversion", encode(cloudevent(eventversion=2**70)), "eventversion"),
        # Raw bytes: no JSON at all, and a NUL that must be kept escaped, not dropped.
        ("raw NUL byte", b'{"a": "\x00"}', "not JSON"),
    ],
)
def test_what_no_database_can_store_is_kept_as_a_dead_letter_and_blocks_nothing(
    case: str, body: bytes, why: str
) -> None:
    good = encode(cloudevent())
    outcomes = inbox.receive_many("shop", [body, good])
    assert outcomes == [inbox.Outcome.DEAD, inbox.Outcome.STORED], case
    kept = OutboxEvent.objects.get(event_type=inbox.UNREADABLE_TYPE)
    dead = Delivery.objects.get(event=kept)
    assert dead.status == Delivery.Status.DEAD
    assert why in dead.last_error
    if "text" in kept.payload:
        assert "\x00" not in kept.payload["text"]
    assert inbox.receive("shop", body) is inbox.Outcome.DUPLICATE  # redelivered: dropped
    assert OutboxEvent.objects.filter(source="shop").count() == 2


def test_a_batch_is_stored_in_one_transaction() -> None:
    """A failure while storing the second message stores none of the batch (the caller
    has acked nothing; the broker delivers it all again)."""
    from django.db.models.signals import post_save

    first, second = encode(cloudevent()), encode(cloudevent())
    saved: list[int] = []

    def fail_on_second(sender: Any, instance: OutboxEvent, **kwargs: Any) -> None:
        saved.append(instance.pk)
        if len(saved) == 2:
            raise RuntimeError("the second write failed")

    post_save.connect(fail_on_second, sender=OutboxEvent)
    try:
        with pytest.raises(RuntimeError, match="second write"):
            inbox.receive_many("shop", [first, second])
    finally:
        post_save.disconnect(fail_on_second, sender=OutboxEvent)
    assert not OutboxEvent.objects.filter(source="shop").exists()
    assert inbox.receive_many("shop", [first, second]) == [inbox.Outcome.STORED] * 2


def test_a_received_event_with_a_field_this_service_does_not_declare_still_runs(
    register: Any,
) -> None:
    """A tolerant reader for other services' events: the sender may add a field before the
    receiver declares it. A local event with an unknown field is still refused."""
    seen: list[int] = []

    @register(InvoicePaid, name="test.billing")
    def billing(event: InvoicePaid) -> None:
        seen.append(event.invoice)

    inbox.receive("shop", encode(cloudevent(data={"invoice": 7, "currency": "EUR"})))
    local = OutboxEvent.objects.create(
        event_type="httptest.Paid",
        payload={"invoice": 8, "currency": "EUR"},
        correlation_id=uuid.uuid4(),
    )
    drain()
    assert seen == [7]
    refused = Delivery.objects.get(event=local, handler="test.billing")
    assert refused.status == Delivery.Status.DEAD
    assert "['currency'] not in Paid" in refused.last_error


def test_the_console_filters_events_by_source(admin_client: Any, relays: Any) -> None:
    from django.urls import reverse

    relays(sources={"shop": {"BACKEND": "http", "SECRET": "s"}})
    received = cloudevent()
    inbox.receive("shop", encode(received))
    local = OutboxEvent.objects.create(
        event_type="httptest.Paid", payload={"invoice": 1}, correlation_id=uuid.uuid4()
    )
    url = reverse("admin:eventbus_app_outboxevent_changelist")
    page = admin_client.get(url).content.decode()
    assert "local (emitted here)" in page
    mine = admin_client.get(url, {"source": "-"}).content.decode()
    theirs = admin_client.get(url, {"source": "shop"}).content.decode()
    stored = OutboxEvent.objects.get(uuid=received["id"])
    assert f"/{local.pk}/change/" in mine and f"/{stored.pk}/change/" not in mine
    assert f"/{stored.pk}/change/" in theirs and f"/{local.pk}/change/" not in theirs
