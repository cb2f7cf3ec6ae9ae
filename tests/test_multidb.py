"""emit() and the dispatcher use the caller's database alias."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from eventbus_app import emit
from eventbus_app.models import Delivery, OutboxEvent
from eventbus_app.testing import drain
from tests.testapp.events import Chain, Work
from tests.testapp.models import Effect

pytestmark = pytest.mark.django_db(databases=["default", "other"])


def test_emit_writes_to_the_given_alias_in_its_transaction() -> None:
    with pytest.raises(RuntimeError), transaction.atomic(using="other"):
        emit(Work(key="rolled back"), using="other")
        raise RuntimeError
    with transaction.atomic(using="other"):
        record = emit(Work(key="kept"), using="other")
    assert record._state.db == "other"
    assert OutboxEvent.objects.using("other").count() == 1
    assert OutboxEvent.objects.count() == 0


def test_drain_of_an_alias_delivers_there_and_chains_stay_there(settings: Any) -> None:
    emit(Work(key="a"), using="other")
    emit(Chain(n=1), using="other")
    drain("other")
    assert Delivery.objects.using("other").filter(status="succeeded").count() == 4
    assert Effect.objects.using("other").count() == 4
    assert OutboxEvent.objects.using("other").filter(depth=1).count() == 1
    assert not Delivery.objects.exists()
    assert drain()["delivered"] == 0


def test_events_with_one_id_in_two_databases_get_different_idempotency_keys() -> None:
    """Event #N exists in every database (and in staging and production): keys must not
    come from the id, or a payment provider answers one with the other's cached reply."""
    a, b = emit(Work(key="a")), emit(Work(key="b"), using="other")
    same_id = max(a.pk, b.pk) + 1000
    OutboxEvent.objects.filter(pk=a.pk).update(id=same_id)
    OutboxEvent.objects.using("other").filter(pk=b.pk).update(id=same_id)
    drain()
    drain("other")
    key_a = Effect.objects.get(handler="testapp.record").idempotency_key
    key_b = Effect.objects.using("other").get(handler="testapp.record").idempotency_key
    assert Effect.objects.get(handler="testapp.record").event_id == same_id
    assert Effect.objects.using("other").get(handler="testapp.record").event_id == same_id
    assert key_a != key_b
