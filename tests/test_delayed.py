"""emit(deliver_after=) stores when an event's handlers may run (OutboxEvent.deliver_after);
emit() inside a handler records which handler emitted it (OutboxEvent.emitted_by)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone

from eventbus_app import EventBusError, aemit, emit
from eventbus_app.models import OutboxEvent
from eventbus_app.testing import drain
from tests.testapp.events import Chain, Work

pytestmark = pytest.mark.django_db


def test_a_timedelta_is_from_now_and_stored() -> None:
    before = timezone.now()
    record = emit(Work(key="later"), deliver_after=timedelta(hours=2))
    stored = OutboxEvent.objects.get(pk=record.pk)
    assert stored.deliver_after == record.deliver_after
    assert (
        before + timedelta(hours=2) <= stored.deliver_after <= timezone.now() + timedelta(hours=2)
    )


def test_an_aware_datetime_is_stored_as_given() -> None:
    at = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    record = emit(Work(key="then"), deliver_after=at)
    assert OutboxEvent.objects.get(pk=record.pk).deliver_after == at


def test_without_it_the_column_is_empty() -> None:
    record = emit(Work(key="now"))
    assert OutboxEvent.objects.get(pk=record.pk).deliver_after is None


def test_aemit_passes_it_on() -> None:
    record = async_to_sync(aemit)(Work(key="async"), deliver_after=timedelta(minutes=1))
    assert OutboxEvent.objects.get(pk=record.pk).deliver_after is not None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (timedelta(seconds=-1), r"a negative delay; pass a timedelta of 0 or more"),
        (datetime(2031, 1, 1), r"a naive datetime is ambiguous; pass an aware one"),
        (60, r"takes a timedelta or an aware datetime, got int 60"),
    ],
)
def test_bad_values_are_refused_before_anything_is_written(value: object, message: str) -> None:
    with pytest.raises(EventBusError, match=message):
        emit(Work(key="bad"), deliver_after=value)  # type: ignore[arg-type]
    assert not OutboxEvent.objects.exists()


def test_emitted_by_names_the_handler_that_emitted_it() -> None:
    first = emit(Chain(n=1))
    drain()
    child = OutboxEvent.objects.get(causation=first)
    assert child.emitted_by == "testapp.chain"
    assert OutboxEvent.objects.get(pk=first.pk).emitted_by == ""
