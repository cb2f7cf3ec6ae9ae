"""Retention: manage.py eventbus_prune and EVENTBUS["RETENTION"] (retention.apply_retention)."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from eventbus_app.models import Delivery, DeliveryAttempt, OperatorAction, OutboxEvent
from eventbus_app.retention import apply_retention, parse_age, prune
from tests.factories import (
    DeadLetterFactory,
    DeliveryAttemptFactory,
    DeliveryFactory,
    FailedDeliveryFactory,
    OutboxEventFactory,
    SucceededDeliveryFactory,
)

pytestmark = pytest.mark.django_db


def old(days: int = 40, **fields: Any) -> OutboxEvent:
    fields.setdefault("dispatched_at", timezone.now())
    return OutboxEventFactory(created_at=timezone.now() - timedelta(days=days), **fields)


def prune_cmd(*args: str) -> str:
    out = StringIO()
    call_command("eventbus_prune", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_prunes_old_finished_events_and_keeps_everything_else() -> None:
    done = old()
    SucceededDeliveryFactory(event=done)
    DeliveryAttemptFactory(delivery=SucceededDeliveryFactory(event=done, handler="h2"))
    discarded = old()
    DeliveryFactory(event=discarded, discarded=True)
    no_deliveries = old()  # fanned out to no handler
    keep = {
        "recent": SucceededDeliveryFactory(event=old(days=5)).event,
        "dead": DeadLetterFactory(event=old()).event,
        "pending": DeliveryFactory(event=old()).event,
        "running": DeliveryFactory(event=old(), running=True).event,
        "failed": FailedDeliveryFactory(event=old()).event,
        "not fanned out": old(dispatched_at=None),
        "stream": SucceededDeliveryFactory(event=old(stream="acct-1", position=1)).event,
    }
    SucceededDeliveryFactory(event=keep["dead"], handler="other")
    child = old(days=1, causation=done)
    out = prune_cmd("--older-than", "30d")
    assert "deleted 3 events, 3 deliveries and 1 attempts" in out
    remaining = set(OutboxEvent.objects.values_list("pk", flat=True))
    assert not remaining & {done.pk, discarded.pk, no_deliveries.pk}
    assert {e.pk for e in keep.values()} <= remaining
    assert Delivery.objects.filter(event=keep["dead"]).count() == 2  # kept whole
    child.refresh_from_db()
    assert child.causation_id is None


def test_streams_only_when_asked() -> None:
    stream_event = SucceededDeliveryFactory(event=old(stream="acct-1", position=1)).event
    prune_cmd("--older-than", "30d")
    assert OutboxEvent.objects.filter(pk=stream_event.pk).exists()
    prune_cmd("--older-than", "30d", "--streams")
    assert not OutboxEvent.objects.filter(pk=stream_event.pk).exists()


def test_keep_failures_keeps_what_failed_was_discarded_or_acted_on() -> None:
    clean = SucceededDeliveryFactory(event=old()).event
    retried = SucceededDeliveryFactory(event=old())
    DeliveryAttemptFactory(delivery=retried)  # failed once, then succeeded
    discarded = DeliveryFactory(event=old(), discarded=True).event
    replayed = SucceededDeliveryFactory(event=old()).event
    OperatorAction.objects.create(kind="replay", actor="ada", event=replayed)
    prune_cmd("--older-than", "30d", "--keep-failures")
    assert set(OutboxEvent.objects.values_list("pk", flat=True)) == {
        retried.event_id,
        discarded.pk,
        replayed.pk,
    }
    assert not OutboxEvent.objects.filter(pk=clean.pk).exists()
    prune_cmd("--older-than", "30d")
    assert not OutboxEvent.objects.exists()
    assert not DeliveryAttempt.objects.exists() and not OperatorAction.objects.exists()


def test_dry_run_counts_and_deletes_nothing() -> None:
    for _ in range(3):
        SucceededDeliveryFactory(event=old())
    assert "would delete 3 events" in prune_cmd("--older-than", "30d", "--dry-run")
    assert OutboxEvent.objects.count() == 3


def test_chunks_are_bounded() -> None:
    for _ in range(7):
        SucceededDeliveryFactory(event=old())
    seen: list[int] = []
    result = prune(timezone.now() - timedelta(days=30), chunk=3, progress=seen.append)
    assert seen == [3, 3, 1] and result.chunks == 3 and result.events == 7


def test_bad_ages_say_what_to_write() -> None:
    with pytest.raises(CommandError, match=r"--older-than '30 days' is not an age"):
        prune_cmd("--older-than", "30 days")
    with pytest.raises(ValueError, match=r"must be a positive age"):
        parse_age("0d", "RETENTION")


def test_retention_setting_is_applied_with_a_time_budget(settings: Any) -> None:
    SucceededDeliveryFactory(event=old(days=3))
    recent = SucceededDeliveryFactory(event=old(days=1)).event
    assert apply_retention() is None  # default: keep everything
    assert OutboxEvent.objects.count() == 2
    settings.EVENTBUS = {**settings.EVENTBUS, "RETENTION": "2d"}
    result = apply_retention(seconds=5)
    assert result is not None and result.events == 1 and not result.more
    assert list(OutboxEvent.objects.values_list("pk", flat=True)) == [recent.pk]
    settings.EVENTBUS = {**settings.EVENTBUS, "RETENTION": timedelta(hours=1)}
    assert apply_retention(seconds=0).more is True  # out of time before the first chunk
    assert apply_retention().events == 1


def test_a_bad_retention_setting_is_refused(settings: Any) -> None:
    settings.EVENTBUS = {**settings.EVENTBUS, "RETENTION": "a month"}
    with pytest.raises(ValueError, match=r"""EVENTBUS\["RETENTION"\] 'a month' is not an age"""):
        apply_retention()


def test_the_sweep_applies_retention(settings: Any) -> None:
    from eventbus_app.tasks import sweep

    settings.EVENTBUS = {**settings.EVENTBUS, "RETENTION": "30d", "DATABASES": ["default"]}
    gone = SucceededDeliveryFactory(event=old()).event
    kept = DeadLetterFactory(event=old()).event
    sweep()
    assert list(OutboxEvent.objects.values_list("pk", flat=True)) == [kept.pk]
    assert not Delivery.objects.filter(event_id=gone.pk).exists()


def test_the_sweep_logs_a_bad_retention_and_goes_on(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from eventbus_app.tasks import sweep

    settings.EVENTBUS = {**settings.EVENTBUS, "RETENTION": "soon", "DATABASES": ["default"]}
    SucceededDeliveryFactory(event=old())
    sweep()
    assert "EVENTBUS['RETENTION'] is invalid" in caplog.text
    assert OutboxEvent.objects.count() == 1
