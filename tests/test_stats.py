"""manage.py eventbus_stats: figures for on-call, and --fail-if for health checks."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from eventbus_app import emit
from eventbus_app.models import DeliveryAttempt
from eventbus_app.stats import collect, parse_conditions
from tests.factories import (
    DeadLetterFactory,
    DeliveryAttemptFactory,
    DeliveryFactory,
    FailedDeliveryFactory,
    OutboxEventFactory,
    SucceededDeliveryFactory,
)
from tests.testapp.events import Work

pytestmark = pytest.mark.django_db


def stats(*args: str) -> tuple[str, dict[str, Any]]:
    out = StringIO()
    call_command("eventbus_stats", "--json", *args, stdout=out)
    return out.getvalue(), json.loads(out.getvalue())


def test_counts_lag_oldest_pending_and_delayed() -> None:
    now = timezone.now()
    DeliveryFactory(next_attempt_at=now - timedelta(minutes=5), created_at=now)
    FailedDeliveryFactory(next_attempt_at=now + timedelta(minutes=5))  # not due: no lag
    DeadLetterFactory()
    SucceededDeliveryFactory()
    emit(Work(key="later"), deliver_after=timedelta(hours=1))
    _, figures = stats()
    d = figures["deliveries"]
    assert (d["pending"], d["failed"], d["dead"], d["succeeded"]) == (1, 1, 1, 1)
    assert 295 <= figures["lag_seconds"] <= 330
    assert figures["oldest_pending"] is not None
    assert figures["delayed_events"] == 1
    # The delayed event is not fanned out yet, but it is not late either.
    assert figures["events_not_fanned_out"] >= 1


def test_an_event_not_fanned_out_counts_as_lag() -> None:
    OutboxEventFactory(created_at=timezone.now() - timedelta(minutes=2))
    assert 115 <= collect()["lag_seconds"] <= 150


def test_per_handler_hour_and_day() -> None:
    now = timezone.now()
    SucceededDeliveryFactory(handler="testapp.record", finished_at=now - timedelta(minutes=5))
    SucceededDeliveryFactory(handler="testapp.record", finished_at=now - timedelta(hours=3))
    dead = DeadLetterFactory(handler="testapp.record")
    DeliveryAttemptFactory(delivery=dead, outcome=DeliveryAttempt.Outcome.FAILED)
    old = DeliveryAttemptFactory(delivery=dead, outcome=DeliveryAttempt.Outcome.DEAD, attempt=2)
    DeliveryAttempt.objects.filter(pk=old.pk).update(recorded_at=now - timedelta(hours=5))
    figures = collect()["handlers"]["testapp.record"]
    assert figures["hour"] == {"succeeded": 1, "failed": 1, "dead": 0}
    assert figures["day"] == {"succeeded": 2, "failed": 1, "dead": 1}
    # Registered handlers that did nothing are listed too, with zeros.
    assert collect()["handlers"]["testapp.record_async"]["day"]["succeeded"] == 0


def test_held_streams_are_those_whose_head_is_failed_or_dead() -> None:
    def credit(stream: str, position: int, **state: Any) -> None:
        event = OutboxEventFactory(
            event_type="testapp.Credited", payload={"amount": 1}, stream=stream, position=position
        )
        DeliveryFactory(event=event, handler="testapp.balances", **state)

    credit("acct-1", 1, succeeded=True)
    credit("acct-1", 2, dead=True)  # the head: held
    credit("acct-1", 3)  # waits behind it
    credit("acct-2", 1, failed=True)  # held too
    credit("acct-3", 1)  # pending head: not held
    credit("acct-3", 2, failed=True)  # not the head
    credit("acct-4", 1, discarded=True)  # settled
    credit("acct-4", 2, succeeded=True)
    held = collect()["held_streams"]
    assert [(h["stream"], h["position"], h["status"]) for h in held] == [
        ("acct-1", 2, "dead"),
        ("acct-2", 1, "failed"),
    ]
    out = StringIO()
    call_command("eventbus_stats", stdout=out)
    assert "held streams: 2" in out.getvalue()
    assert "testapp.balances acct-1 at position 2: dead after 5 attempts" in out.getvalue()


def test_fail_if_exits_2_naming_the_conditions_that_hold() -> None:
    DeadLetterFactory()
    stats("--fail-if", "lag>60s,failed>0")  # neither holds: exit 0
    with pytest.raises(CommandError) as failed:
        stats("--fail-if", "dead>0,lag>60s")
    assert failed.value.returncode == 2
    assert str(failed.value) == "eventbus_stats --fail-if: dead>0 (is 1)"


@pytest.mark.subprocess
def test_fail_if_sets_the_process_exit_status(manage: Any) -> None:
    done = manage("eventbus_stats", "--fail-if", "dead>0")
    assert done.returncode == 0, done.stderr
    DeadLetterFactory()
    done = manage("eventbus_stats", "--fail-if", "dead>0,held>0")
    assert done.returncode == 2
    assert "dead>0 (is 1)" in done.stderr and "held" not in done.stderr
    assert "deliveries: pending 0" in done.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dead", r"is not NAME OP NUMBER\[UNIT\]"),
        ("deaths>0", r"unknown name 'deaths'"),
        ("dead>1m", r"dead is a count, not a duration"),
        (",", r"--fail-if is empty"),
    ],
)
def test_bad_conditions_say_what_to_write(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_conditions(text)
    with pytest.raises(CommandError, match=message):
        stats("--fail-if", text)


def test_durations_take_units() -> None:
    assert [c.threshold for c in parse_conditions("lag>2m, oldest_pending>=1h,lag>5")] == [
        120,
        3600,
        5,
    ]
