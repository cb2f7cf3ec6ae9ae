"""Isolation with real worker processes: a handler that hangs under ``qcluster`` and one
that kills its ``eventbus_drain`` worker. Each sits next to a well-behaved handler on the
same event type; the well-behaved deliveries must all succeed, exactly once, charged one
attempt, in bounded time, and the misbehaving one must end dead with its real error.
(The faults one process can show, a write failing at COMMIT, transaction-scoped state,
raising on-commit callbacks, unstorable error text, are in tests/test_isolation.py.)"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from django.db import transaction
from django.db.models import Count, Max

from eventbus_app import emit
from eventbus_app.models import Delivery
from tests.testapp.models import Effect

from .conftest import Status, Workers, report, wait_until
from .events import Crash, Hang
from .handlers import VICTIM

pytestmark = [pytest.mark.postgres, pytest.mark.reliability, pytest.mark.subprocess]

EVENTS = 50


def exactly_once(name: str) -> dict[int, int]:
    """Effect rows per event of handler ``name``, for events that do not have exactly one."""
    per_event = dict(
        Effect.objects.filter(handler=name)
        .values("event_id")
        .annotate(n=Count("id"))
        .values_list("event_id", "n")
    )
    return {event: n for event, n in per_event.items() if n != 1}


def assert_good_deliveries(name: str) -> None:
    rows = Delivery.objects.filter(handler=name)
    assert rows.count() == EVENTS
    assert set(rows.values_list("status", "attempts")) == {(Status.SUCCEEDED, 1)}
    assert Effect.objects.filter(handler=name).count() == EVENTS
    assert exactly_once(name) == {}


def test_a_hung_handler_times_out_alone_under_qcluster(
    workers: Workers, rel_env: dict[str, str], settings: Any
) -> None:
    """50 events x 2 handlers; one hangs for ever on one event (ORM broker, django-q2
    timeout 10 s, lease 30 s, 3 attempts, 2 workers)."""
    env = dict(
        rel_env,
        EVENTBUS_TEST_SETTINGS=json.dumps(
            {
                "LEASE_SECONDS": 30,
                "DISPATCH_SECONDS": 3,
                "HANDLER_TIMEOUT": 3,
                "MAX_ATTEMPTS": 3,
            }
        ),
        EVENTBUS_TEST_Q_CLUSTER=json.dumps({"timeout": 10, "retry": 20, "workers": 2}),
    )
    # Emitting here nudges the cluster: django-q2's ORM broker row rides in the commit.
    settings.EVENTBUS = {**settings.EVENTBUS, "NUDGE": True, "NUDGE_BACKGROUND": False}
    cluster = workers.start("qcluster", env=env)
    time.sleep(2)
    started = time.monotonic()
    with transaction.atomic():
        for n in range(EVENTS):
            emit(Hang(n=n))
    victim = Delivery.objects.filter(handler="rel.hangs", event__payload__n=VICTIM)

    good_done = wait_until(
        lambda: (
            Delivery.objects.filter(handler="rel.hang_good", status=Status.SUCCEEDED).count()
            == EVENTS
        ),
        60,
        "the good handler's deliveries",
    )
    wait_until(lambda: victim.filter(status=Status.DEAD).exists(), 90, "the hung delivery")
    elapsed = time.monotonic() - started
    assert cluster.poll() is None, workers.output(cluster)

    assert_good_deliveries("rel.hang_good")
    others = Delivery.objects.filter(handler="rel.hangs").exclude(pk=victim.get().pk)
    assert set(others.values_list("status", "attempts")) == {(Status.SUCCEEDED, 1)}
    dead = victim.get()
    assert dead.attempts == 3
    assert dead.error_class == "eventbus_app.exceptions.HandlerTimeout"
    assert "timed out after 2 s" in dead.last_error
    assert [h.error_class for h in dead.history.all()] == [dead.error_class] * 3
    # Its timed-out runs rolled back; it never took its worker down (nothing unfinished).
    assert exactly_once("rel.hangs") == {}
    assert Effect.objects.filter(handler="rel.hangs").count() == EVENTS - 1
    assert not Delivery.objects.filter(error_class__endswith="AttemptUnfinished").exists()
    report(
        "hung handler (qcluster)",
        events=EVENTS,
        deliveries=EVENTS * 2,
        faults="1 handler sleeps for ever on 1 event; timeout=2 s, django-q2 timeout 10 s",
        lost=0,
        twice_tx=0,
        twice_file=None,
        good_done_s=round(good_done, 1),
        hung_dead_s=round(elapsed, 1),
    )


def test_a_handler_that_kills_its_worker_is_charged_alone(
    workers: Workers, rel_env: dict[str, str]
) -> None:
    """50 events x 2 handlers; one calls os._exit() on one event, every time it runs.
    Drains are restarted as cron would (lease 3 s, 3 attempts)."""
    env = dict(
        rel_env,
        EVENTBUS_TEST_SETTINGS=json.dumps(
            {"LEASE_SECONDS": 3, "DISPATCH_SECONDS": 5, "HANDLER_TIMEOUT": 1, "MAX_ATTEMPTS": 3}
        ),
    )
    with transaction.atomic():
        for n in range(EVENTS):
            emit(Crash(n=n))
    victim = Delivery.objects.filter(handler="rel.crashes", event__payload__n=VICTIM)
    started = time.monotonic()
    deaths = 0

    def done() -> bool:
        nonlocal deaths
        if (
            victim.filter(status=Status.DEAD).exists()
            and not Delivery.objects.exclude(status__in=[Status.SUCCEEDED, Status.DEAD]).exists()
        ):
            return True
        live = [p for p in workers.procs if p.poll() is None]
        deaths = sum(1 for p in workers.procs if p.returncode == 70)
        for _ in range(2 - len(live)):
            workers.drain(env=env)
        return False

    wait_until(done, 120, "every delivery to finish")
    elapsed = time.monotonic() - started
    for proc in workers.procs:
        proc.wait(timeout=60)
    deaths = sum(1 for p in workers.procs if p.returncode == 70)

    assert_good_deliveries("rel.crash_good")
    dead = victim.get()
    others = Delivery.objects.filter(handler="rel.crashes").exclude(pk=dead.pk)
    assert set(others.values_list("status", "attempts")) == {(Status.SUCCEEDED, 1)}
    assert dead.attempts == 3 and dead.isolate
    assert dead.error_class == "eventbus_app.exceptions.AttemptUnfinished"
    assert "never finished" in dead.last_error
    assert dead.history.count() == 3
    assert deaths == 3  # once per attempt: it never took a worker down with others again
    good_finished = Delivery.objects.filter(handler="rel.crash_good").aggregate(
        last=Max("finished_at")
    )["last"]
    first_created = Delivery.objects.aggregate(first=Max("created_at"))["first"]
    report(
        "killed worker (eventbus_drain)",
        events=EVENTS,
        deliveries=EVENTS * 2,
        faults=f"1 handler calls os._exit() on 1 event: {deaths} worker deaths",
        lost=0,
        twice_tx=0,
        twice_file=None,
        good_done_after_first_delivery_s=round((good_finished - first_created).total_seconds(), 1),
        crasher_dead_s=round(elapsed, 1),
    )
