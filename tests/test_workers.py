"""Real worker processes: eventbus_drain, concurrent drains, and a real qcluster."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from django.db import transaction
from django.db.models import Count

from eventbus_app import emit
from eventbus_app.models import Delivery, OutboxEvent
from eventbus_app.tasks import SCHEDULE_NAME, ensure_schedule, sweep
from tests.conftest import ON_POSTGRES
from tests.testapp.events import Work
from tests.testapp.models import Effect

pytestmark = pytest.mark.subprocess
Status = Delivery.Status


def emit_committed(n: int, **fields: Any) -> None:
    with transaction.atomic():
        for i in range(n):
            emit(Work(key=f"k{i}", **fields))


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def assert_each_ran_once(events: int, handlers: int = 2) -> None:
    assert Delivery.objects.filter(status=Status.SUCCEEDED).count() == events * handlers
    dupes = Effect.objects.values("event_id", "handler").annotate(n=Count("id")).filter(n__gt=1)
    assert list(dupes) == []
    assert Effect.objects.count() == events * handlers


def test_drain_command_delivers_everything_and_prints_counts(manage: Any, settings: Any) -> None:
    emit_committed(20)
    emit_committed(1, fail_attempts=99)
    result = manage("eventbus_drain")
    assert result.returncode == 0, result.stderr
    assert "fanned out 21 events; delivered 41, failed 4, dead 1" in result.stdout
    assert Effect.objects.filter(handler="testapp.record").count() == 20
    again = manage("eventbus_drain")
    assert "fanned out 0 events; delivered 0, failed 0, dead 0" in again.stdout


def test_concurrent_drain_processes_never_run_a_delivery_twice(spawn: Any) -> None:
    """Two (PostgreSQL: four) eventbus_drain processes race over one backlog."""
    events = 300 if ON_POSTGRES else 120
    emit_committed(events)
    procs = [spawn("eventbus_drain") for _ in range(4 if ON_POSTGRES else 2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert_each_ran_once(events)
    # Each process reports its share; together they add up.
    delivered = [int(o.split("delivered ")[1].split(",")[0]) for o in outputs]
    assert sum(delivered) == events * 2, outputs
    assert len(set(Effect.objects.values_list("pid", flat=True))) >= 1


@pytest.mark.postgres
def test_concurrent_drains_on_postgres_spread_the_work(spawn: Any) -> None:
    emit_committed(300, sleep=0.01)
    procs = [spawn("eventbus_drain") for _ in range(2)]
    for p in procs:
        p.communicate(timeout=240)
    assert_each_ran_once(300)
    per_pid = Counter(Effect.objects.values_list("pid", flat=True))
    assert len(per_pid) == 2, per_pid  # SKIP LOCKED lets both work at once


@pytest.mark.postgres
def test_a_row_that_commits_late_with_a_lower_id_is_still_dispatched(manage: Any) -> None:
    """Ids are assigned at insert, not at commit: no high-water mark may skip them."""
    import psycopg
    from django.db import connection

    params = connection.get_connection_params()
    with psycopg.connect(**params) as late:
        cursor = late.execute(
            "INSERT INTO eventbus_app_outboxevent (event_type, version, payload, "
            "correlation_id, depth, created_at) VALUES ('testapp.Work', 1, "
            '\'{"key": "late"}\', gen_random_uuid(), 0, now()) RETURNING id'
        )
        row = cursor.fetchone()
        assert row is not None
        late_id = row[0]
        early = emit(Work(key="early"))  # autocommit: commits first, with a higher id
        assert early.pk > late_id
        assert manage("eventbus_drain").returncode == 0
        late.commit()
    assert manage("eventbus_drain").returncode == 0
    assert Delivery.objects.filter(event_id=late_id, status=Status.SUCCEEDED).count() == 2


def test_qcluster_delivers_after_commit_without_any_drain(spawn: Any) -> None:
    cluster = spawn("qcluster")
    emit_committed(10)  # the commit nudges the dispatcher through django-q2's ORM broker
    emit_committed(1, fail_attempts=1)  # retried by the running cluster too
    try:
        wait_until(
            lambda: Delivery.objects.filter(status=Status.SUCCEEDED).count() == 22,
            90,
            "qcluster to deliver 22 deliveries",
        )
    except AssertionError:
        cluster.kill()
        print(cluster.communicate()[0][-4000:])
        raise
    assert_each_ran_once(11)


def test_qcluster_sweep_schedule_picks_up_events_whose_nudge_was_lost(
    spawn: Any, settings: Any
) -> None:
    """No nudge at all: only the periodic sweep (django-q2's scheduler) finds the work."""
    from django_q.models import Schedule

    ensure_schedule()
    settings.EVENTBUS = {**settings.EVENTBUS, "NUDGE": False}
    emit_committed(3)
    spawn("qcluster")
    wait_until(
        lambda: Delivery.objects.filter(status=Status.SUCCEEDED).count() == 6,
        120,
        "the sweep schedule to deliver",
    )
    assert Schedule.objects.get(name=SCHEDULE_NAME).func == "eventbus_app.tasks.sweep"


@pytest.mark.django_db
def test_schedule_is_created_idempotently_by_migrate() -> None:
    from django.core.management import call_command
    from django_q.models import Schedule

    call_command("migrate", verbosity=0)  # post_migrate creates or updates it
    assert Schedule.objects.filter(name=SCHEDULE_NAME).count() == 1
    ensure_schedule()
    ensure_schedule()
    schedule = Schedule.objects.get(name=SCHEDULE_NAME)
    assert schedule.schedule_type == Schedule.MINUTES
    assert schedule.repeats == -1


@pytest.mark.django_db(transaction=True)
def test_sweep_task_dispatches_undispatched_events_and_due_retries(settings: Any) -> None:
    settings.EVENTBUS = {**settings.EVENTBUS, "NUDGE": False}
    emit_committed(3)
    result = sweep()
    assert result["default"]["delivered"] == 6
    assert OutboxEvent.objects.filter(dispatched_at__isnull=True).count() == 0


@pytest.fixture
def redis_broker(worker_env: dict[str, str], redis_server: None) -> Any:
    """Switch this process's django-q2 and the workers' to the Redis broker on 127.0.0.1."""
    from django_q.conf import Conf

    from eventbus_app import tasks

    saved = (Conf.ORM, Conf.REDIS, Conf.BROKER_CLASS, tasks._broker)
    Conf.ORM, Conf.BROKER_CLASS = None, None
    Conf.REDIS = {"host": "127.0.0.1", "port": 6379, "db": 0}
    tasks._broker = None
    worker_env["EVENTBUS_TEST_BROKER"] = "redis"
    tasks._get_broker().purge_queue()
    yield
    tasks._get_broker().purge_queue()
    Conf.ORM, Conf.REDIS, Conf.BROKER_CLASS, tasks._broker = saved


@pytest.mark.postgres
def test_qcluster_with_the_redis_broker_delivers(spawn: Any, redis_broker: None) -> None:
    spawn("qcluster")
    emit_committed(10)
    wait_until(
        lambda: Delivery.objects.filter(status=Status.SUCCEEDED).count() == 20,
        90,
        "qcluster (Redis broker) to deliver 20 deliveries",
    )
    assert_each_ran_once(10)


def test_qcluster_runs_a_due_retry_without_waiting_for_the_sweep(
    spawn: Any, worker_env: dict[str, str]
) -> None:
    """A retry due in 2 s runs about then: the worker sets a wake-up, not the sweep."""
    spawn("qcluster", env={**worker_env, "EVENTBUS_TEST_RETRY_BACKOFF": "2"})
    emit_committed(1, fail_attempts=1)
    started = time.monotonic()
    wait_until(
        lambda: Delivery.objects.filter(status=Status.SUCCEEDED).count() == 2,
        28,
        "the retry to run",
    )
    assert time.monotonic() - started < 25  # the sweep would take 30 s or more
    retried = Delivery.objects.get(handler="testapp.record")
    assert retried.attempts == 2
    assert list(retried.history.values_list("outcome", flat=True)) == ["failed"]


@pytest.mark.postgres
def test_one_nudge_on_a_backlog_brings_in_the_other_worker(
    spawn: Any, worker_env: dict[str, str], settings: Any
) -> None:
    """A backlog (nudges lost in an outage, say) woken by one task is shared by both workers:
    the task that finds a full batch enqueues a helper for the cluster's other worker."""
    from django_q.models import Schedule

    from eventbus_app import tasks

    Schedule.objects.all().delete()  # only the one nudge below may start work
    settings.EVENTBUS = {**settings.EVENTBUS, "NUDGE": False}
    with transaction.atomic():
        for i in range(150):
            emit(Work(key=f"k{i}", sleep=0.01))
    assert tasks.nudge() is True
    spawn("qcluster", env={**worker_env, "EVENTBUS_TEST_SETTINGS": '{"BATCH_SIZE": 10}'})
    wait_until(
        lambda: Delivery.objects.filter(status=Status.SUCCEEDED).count() == 300,
        90,
        "qcluster to drain the backlog",
    )
    assert_each_ran_once(150)
    by_pid = Counter(Effect.objects.values_list("pid", flat=True))
    assert len(by_pid) == 2, f"one worker did all the work: {by_pid}"
    assert min(by_pid.values()) >= 20  # the helper did a real share, not a stray batch


@pytest.mark.postgres
def test_notify_wakes_a_listening_dispatcher_without_waiting_for_the_broker_poll(
    spawn: Any, worker_env: dict[str, str], settings: Any
) -> None:
    """EVENTBUS['NOTIFY']: with django-q2's ORM broker polling every 3 s, events still start
    within a fraction of a second: the idle dispatch task listens on PostgreSQL."""
    notify = {"NOTIFY": True, "DISPATCH_SECONDS": 30}
    settings.EVENTBUS = {**settings.EVENTBUS, **notify}
    spawn(
        "qcluster",
        env={**worker_env, "EVENTBUS_TEST_SETTINGS": json.dumps(notify), "EVENTBUS_TEST_POLL": "3"},
    )
    done = Delivery.objects.filter(status=Status.SUCCEEDED)
    emit_committed(1)  # the first one waits for the poll; its task then listens
    wait_until(lambda: done.count() == 2, 60, "the first event")
    time.sleep(0.5)
    waits = []
    for i in range(5):
        started = time.monotonic()
        with transaction.atomic():
            emit(Work(key=f"notified {i}"))
        wait_until(lambda i=i: done.count() == 2 * (i + 2), 30, f"event {i}")
        waits.append(time.monotonic() - started)
    # Polling alone would take 1.5 s on average (up to 3 s) for each.
    assert max(waits) < 1.0, waits
    assert_each_ran_once(6)
