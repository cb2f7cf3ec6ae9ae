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
