from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from typing import Any

import pytest
from django.db import transaction
from django.dispatch import receiver
from django.utils import timezone

from eventbus_app import EventBusError, current_delivery, emit, signals
from eventbus_app.models import Delivery, OutboxEvent
from eventbus_app.outbox import _Nudge
from eventbus_app.testing import capture_events, drain
from tests.conftest import ROOT
from tests.testapp.events import Chain, UserRegistered, Work
from tests.testapp.models import Account, Effect

pytestmark = pytest.mark.django_db


def test_emit_returns_the_stored_row_in_the_callers_transaction() -> None:
    with transaction.atomic():
        account = Account.objects.create(email="a@example.com")
        record = emit(UserRegistered(user_id=account.pk, email=account.email))
        assert isinstance(record, OutboxEvent)
        assert record.pk is not None
    record.refresh_from_db()
    assert record.event_type == "testapp.UserRegistered"
    assert record.version == 1
    assert record.payload == {"user_id": account.pk, "email": "a@example.com", "name": ""}
    assert isinstance(record.correlation_id, uuid.UUID)
    assert record.causation_id is None
    assert record.depth == 0


def test_rollback_leaves_no_row_and_no_handler_runs() -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        Account.objects.create(email="a@example.com")
        emit(Work(key="gone"))
        raise RuntimeError("domain write failed")
    assert not OutboxEvent.objects.exists()
    drain()
    assert not Delivery.objects.exists()
    assert not Effect.objects.exists()


def test_savepoint_rollback_drops_only_its_event() -> None:
    with transaction.atomic():
        emit(Work(key="kept"))
        try:
            with transaction.atomic():
                emit(Work(key="dropped"))
                raise ValueError
        except ValueError:
            pass
    assert [e.payload["key"] for e in OutboxEvent.objects.all()] == ["kept"]


def test_emit_uses_the_given_correlation_id() -> None:
    cid = uuid.uuid4()
    assert emit(Work(key="a"), correlation_id=cid).correlation_id == cid
    assert emit(Work(key="b"), correlation_id=str(cid)).correlation_id == cid
    with pytest.raises(EventBusError, match="correlation_id must be a UUID"):
        emit(Work(key="c"), correlation_id="nope")


def test_emit_rejects_non_events() -> None:
    with pytest.raises(EventBusError, match="takes an Event instance, got dict"):
        emit({"user_id": 1})  # type: ignore[arg-type]


def test_event_emitted_is_sent_inside_the_transaction() -> None:
    seen: list[tuple[Any, Any, bool]] = []

    @receiver(signals.event_emitted, sender=UserRegistered, weak=False)
    def on_emit(sender: Any, *, event: Any, outbox_event: Any, using: str, **kw: Any) -> None:
        seen.append((sender, event, transaction.get_connection(using).in_atomic_block))
        Account.objects.create(email=f"audit-{event.user_id}")  # atomic with the emit

    try:
        with pytest.raises(RuntimeError), transaction.atomic():
            emit(UserRegistered(user_id=7, email="x"))
            assert Account.objects.filter(email="audit-7").exists()
            raise RuntimeError
        assert not Account.objects.filter(email="audit-7").exists()
        assert seen[0][0] is UserRegistered
        assert seen[0][1] == UserRegistered(user_id=7, email="x")
        assert seen[0][2] is True
    finally:
        signals.event_emitted.disconnect(on_emit, sender=UserRegistered)


def test_capture_events_collects_emitted_events() -> None:
    with capture_events() as events:
        emit(Work(key="a"))
    assert events == [Work(key="a")]


def test_one_nudge_per_transaction_after_commit(django_capture_on_commit_callbacks: Any) -> None:
    with django_capture_on_commit_callbacks() as callbacks, transaction.atomic():
        emit(Work(key="a"))
        emit(Work(key="b"))
        with transaction.atomic():
            emit(Work(key="c"))
    nudges = [c for c in callbacks if isinstance(c, _Nudge)]
    assert len(nudges) == 1


def test_sibling_savepoint_rollback_keeps_a_nudge(django_capture_on_commit_callbacks: Any) -> None:
    with django_capture_on_commit_callbacks() as callbacks, transaction.atomic():
        try:
            with transaction.atomic():
                emit(Work(key="rolled back"))
                raise ValueError
        except ValueError:
            pass
        with transaction.atomic():
            emit(Work(key="kept"))
    assert len([c for c in callbacks if isinstance(c, _Nudge)]) == 1


def test_no_nudge_when_disabled(settings: Any, django_capture_on_commit_callbacks: Any) -> None:
    settings.EVENTBUS = {**settings.EVENTBUS, "NUDGE": False}
    with django_capture_on_commit_callbacks() as callbacks, transaction.atomic():
        emit(Work(key="a"))
    assert not [c for c in callbacks if isinstance(c, _Nudge)]


@pytest.mark.parametrize("background", [True, False], ids=["background", "at-commit"])
def test_a_failing_nudge_is_logged_and_never_raises(
    background: bool,
    settings: Any,
    caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: Any,
) -> None:
    """The broker is really down: a Redis broker pointed at a closed loopback port. From
    the nudger thread (the default) or from the committing thread."""
    import socket

    from django_q.conf import Conf

    from eventbus_app import tasks

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    saved = (Conf.ORM, Conf.REDIS, Conf.BROKER_CLASS, tasks._broker)
    Conf.ORM, Conf.BROKER_CLASS = None, None
    Conf.REDIS = {"host": "127.0.0.1", "port": closed_port, "socket_connect_timeout": 1}
    tasks._broker = None
    settings.EVENTBUS = {**settings.EVENTBUS, "NUDGE_BACKGROUND": background}
    try:
        with caplog.at_level(logging.WARNING, logger="eventbus_app.tasks"):
            with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
                record = emit(Work(key="kept"))
            assert OutboxEvent.objects.filter(pk=record.pk).exists()
            deadline = time.monotonic() + 10
            while "Could not enqueue" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.01)  # the nudger thread reports it
        assert "Could not enqueue the eventbus dispatcher" in caplog.text
        # Found by tests/reliability (broker outage): each failed nudge cost its request
        # redis-py's connection retries (3.5 s). Now the next nudges skip the dead broker.
        started = time.monotonic()
        assert tasks.nudge() is False
        assert time.monotonic() - started < 0.5
    finally:
        Conf.ORM, Conf.REDIS, Conf.BROKER_CLASS, tasks._broker = saved
        tasks._nudges_paused_until = 0.0


def test_nudge_enqueues_a_dispatch_task_with_the_orm_broker(
    django_capture_on_commit_callbacks: Any,
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django_q.models import OrmQ
    from django_q.signing import SignedPackage

    with (
        django_capture_on_commit_callbacks(execute=True),
        transaction.atomic(),
        CaptureQueriesContext(connection) as queries,
    ):
        emit(Work(key="a"))
        emit(Work(key="b"))  # one task per transaction
    [queued] = OrmQ.objects.all()
    task = SignedPackage.loads(queued.payload)
    assert task["func"] == "eventbus_app.tasks.dispatch"
    assert task["args"] == ("default",)  # an alias, never a payload
    assert queued.lock is not None and queued.lock <= timezone.now()  # available at once
    # On PostgreSQL the queue row rides in the event's INSERT; SQLite needs a statement.
    inserts = [q["sql"] for q in queries.captured_queries if "INSERT" in q["sql"]]
    assert len(inserts) == (2 if connection.vendor == "postgresql" else 3)
    with transaction.atomic():
        emit(Work(key="rolled back"))
        transaction.set_rollback(True)
    assert OrmQ.objects.count() == 1  # the task rolled back with its event


def test_chained_emit_records_causation_correlation_and_depth() -> None:
    first = emit(Chain(n=2))
    drain()
    events = list(OutboxEvent.objects.order_by("id"))
    assert [e.depth for e in events] == [0, 1, 2]
    assert events[1].causation_id == first.pk
    assert events[2].causation_id == events[1].pk
    assert {e.correlation_id for e in events} == {first.correlation_id}
    assert Effect.objects.filter(handler="testapp.chain").count() == 3


def test_chain_beyond_max_depth_is_dead_lettered_at_once(settings: Any) -> None:
    settings.EVENTBUS = {**settings.EVENTBUS, "MAX_CHAIN_DEPTH": 2, "MAX_ATTEMPTS": 5}
    emit(Chain(n=10))
    drain()
    assert OutboxEvent.objects.count() == 3  # depths 0, 1, 2
    dead = Delivery.objects.get(status=Delivery.Status.DEAD)
    assert dead.event.depth == 2
    assert dead.attempts == 1  # permanent: not retried
    assert "ChainDepthExceeded" in dead.last_error
    assert "MAX_CHAIN_DEPTH" in dead.last_error
    assert "permanent" in dead.last_error
    # The handler's own effects rolled back with the failure.
    assert Effect.objects.filter(event_id=dead.event_id).count() == 0


def test_outside_a_handler_there_is_no_delivery_context() -> None:
    assert current_delivery() is None


def test_aemit_chains_from_an_async_handler(register: Any) -> None:
    from eventbus_app import Event, aemit

    class Start(Event, event_type="t.Start"):
        n: int

    class Next(Event, event_type="t.Next"):
        n: int

    @register(Start, name="t.start_async")
    async def start(event: Start) -> None:
        await aemit(Next(n=event.n + 1))

    first = emit(Start(n=1))
    drain()
    child = OutboxEvent.objects.get(event_type="t.Next")
    assert child.causation_id == first.pk
    assert child.correlation_id == first.correlation_id
    assert child.payload == {"n": 2}


def test_a_handler_cannot_swallow_the_chain_depth_error(register: Any, settings: Any) -> None:
    from eventbus_app import ChainDepthExceeded, Event

    settings.EVENTBUS = {**settings.EVENTBUS, "MAX_CHAIN_DEPTH": 1}

    class Loop(Event, event_type="t.Loop"):
        n: int

    @register(Loop, name="t.loop_swallowing")
    def loop(event: Loop) -> None:
        with contextlib.suppress(ChainDepthExceeded):  # a careless handler
            emit(Loop(n=event.n + 1))

    emit(Loop(n=0))
    drain()
    assert OutboxEvent.objects.filter(event_type="t.Loop").count() == 2
    dead = Delivery.objects.get(status=Delivery.Status.DEAD)
    assert dead.event.depth == 1
    assert "ChainDepthExceeded" in dead.last_error


@pytest.mark.django_db(transaction=True)
def test_background_nudge_reaches_the_redis_broker_after_commit(
    settings: Any, redis_server: None
) -> None:
    """EVENTBUS['NUDGE_BACKGROUND']: the nudger thread enqueues the dispatch task (real Redis
    on 127.0.0.1:6379, this run's own queue key)."""
    import time

    from django_q.brokers import get_broker
    from django_q.conf import Conf
    from django_q.signing import SignedPackage

    from eventbus_app import tasks

    settings.EVENTBUS = {**settings.EVENTBUS, "NUDGE_BACKGROUND": True}
    saved = (Conf.ORM, Conf.REDIS, Conf.BROKER_CLASS, tasks._broker)
    Conf.ORM, Conf.BROKER_CLASS = None, None
    Conf.REDIS = {"host": "127.0.0.1", "port": 6379, "db": 0}
    tasks._broker = None
    broker = get_broker()
    broker.purge_queue()
    import threading

    from django_q.signals import pre_enqueue

    senders: list[str] = []

    def seen(sender: Any, task: dict[str, Any], **kwargs: Any) -> None:
        senders.append(threading.current_thread().name)

    pre_enqueue.connect(seen)
    try:
        with transaction.atomic():
            emit(Work(key="a"))
            emit(Work(key="b"))
        deadline = time.monotonic() + 10
        while broker.queue_size() < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        assert broker.queue_size() == 1  # one nudge for the transaction
        task = SignedPackage.loads(broker.dequeue()[0][1])
        assert (task["func"], task["args"]) == ("eventbus_app.tasks.dispatch", ("default",))
        assert senders == ["eventbus-nudger"]  # not the committing thread

        # While a push is slow, the commits that land meanwhile share the next nudge.
        send = tasks.nudge
        sending = threading.Event()

        def slow_nudge(using: str = "default") -> bool:
            sending.set()
            time.sleep(0.5)  # two of these fit in the exit flush's 2 s
            return send(using)

        tasks.nudge = slow_nudge  # type: ignore[assignment]
        try:
            with transaction.atomic():
                emit(Work(key="first"))
            assert sending.wait(10)  # the thread is pushing the first commit's nudge
            for i in range(9):
                with transaction.atomic():
                    emit(Work(key=f"burst {i}"))
            tasks._flush_at_exit()  # waits for the thread to send what is pending
        finally:
            tasks.nudge = send  # type: ignore[assignment]
        assert broker.queue_size() == 2  # the first commit's nudge, then one for the rest
    finally:
        pre_enqueue.disconnect(seen)
        broker.purge_queue()
        Conf.ORM, Conf.REDIS, Conf.BROKER_CLASS, tasks._broker = saved


EXIT_SCRIPT = """
import time
import django
django.setup()
from django.db import transaction
from eventbus_app import emit, tasks
from tests.testapp.events import Work

send = tasks.nudge
def slow_nudge(using):  # a slow broker: the process is exiting before the push is done
    time.sleep(0.5)
    return send(using)
tasks.nudge = slow_nudge
with transaction.atomic():
    emit(Work(key="emitted by a script that exits at once"))
"""


def test_a_process_that_exits_right_after_commit_still_sends_its_background_nudge(
    worker_env: dict[str, str], redis_server: None
) -> None:
    """The default background nudge is flushed at exit (real process, real Redis)."""
    import subprocess
    import sys

    import redis

    env = {
        **worker_env,
        "EVENTBUS_TEST_BROKER": "redis",
        "EVENTBUS_TEST_SUFFIX": f"{os.environ.get('EVENTBUS_TEST_SUFFIX', 'main')}-exit",
    }
    key = f"django_q:eventbus-test-{env['EVENTBUS_TEST_SUFFIX']}:q"  # django-q2's list
    client = redis.Redis(host="127.0.0.1", port=6379)
    client.delete(key)
    try:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", EXIT_SCRIPT],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert client.llen(key) == 1, "the nudge was lost when the process exited"
        assert time.monotonic() - started < 30
    finally:
        client.delete(key)


def test_a_forked_child_gets_a_fresh_nudger_state() -> None:
    """Found in review: a process that forks while its nudger thread holds the lock (a
    preloading server master) must not leave the child's nudges hanging on it."""
    from eventbus_app import tasks

    with tasks._pending_lock:
        tasks._in_flight += 1
        try:
            pid = os.fork()
            if pid == 0:  # the child: only plain checks, then leave at once
                ok = tasks._pending_lock.acquire(timeout=2) and tasks._in_flight == 0
                os._exit(0 if ok else 1)
        finally:
            tasks._in_flight -= 1
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_every_event_gets_its_own_uuid_stored_with_it() -> None:
    first, second = emit(Work(key="a")), emit(Work(key="b"))
    assert isinstance(first.uuid, uuid.UUID) and first.uuid.version == 4
    assert first.uuid != second.uuid
    assert OutboxEvent.objects.get(pk=first.pk).uuid == first.uuid


def test_a_raw_insert_that_leaves_out_the_uuid_gets_one_from_the_database() -> None:
    """Bulk loads and hand-written SQL (benchmarks/, tests/test_workers.py) omit it."""
    from django.db import connection

    now = "now()" if connection.vendor == "postgresql" else "'2026-01-01 00:00:00'"
    with connection.cursor() as cursor:
        for key in ("a", "b"):
            cursor.execute(
                "INSERT INTO eventbus_app_outboxevent (event_type, version, payload, "
                f"correlation_id, depth, created_at) VALUES ('testapp.Work', 1, %s, %s, 0, {now})",
                [f'{{"key": "{key}"}}', uuid.uuid4().hex],
            )
    made = list(OutboxEvent.objects.values_list("uuid", flat=True))
    assert len(made) == 2 and len(set(made)) == 2
    assert all(isinstance(u, uuid.UUID) and u.version == 4 for u in made)


def test_idempotency_keys_come_from_the_event_uuid_not_the_database_id() -> None:
    from eventbus_app import DeliveryContext

    def context(event_uuid: uuid.UUID, replays: int = 0, attempt: int = 1) -> DeliveryContext:
        return DeliveryContext(
            delivery_id=1,
            event_id=1,  # event #1 exists in every database and every environment
            event_type="testapp.Work",
            handler="payments.charge",
            attempt=attempt,
            correlation_id=uuid.uuid4(),
            causation_id=None,
            depth=0,
            replays=replays,
            using="default",
            event_uuid=event_uuid,
        )

    staging, production = uuid.uuid4(), uuid.uuid4()
    assert context(staging).idempotency_key != context(production).idempotency_key
    assert context(staging).idempotency_key == context(staging, attempt=3).idempotency_key
    assert context(staging).idempotency_key != context(staging, replays=1).idempotency_key


def test_a_handler_sees_its_event_uuid(register: Any) -> None:
    from eventbus_app import DeliveryContext

    seen: list[DeliveryContext] = []

    @register(Work, name="t.uuid_seen")
    def uuid_seen(event: Work) -> None:
        ctx = current_delivery()
        assert ctx is not None
        seen.append(ctx)
        if ctx.attempt == 1:
            raise RuntimeError("retry me")

    record = emit(Work(key="u"))
    drain()
    assert [c.event_uuid for c in seen] == [record.uuid, record.uuid]
    assert seen[0].idempotency_key == seen[1].idempotency_key  # stable across retries


@pytest.mark.django_db(transaction=True)
def test_the_migration_gives_existing_events_distinct_uuids() -> None:
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    leaf = executor.loader.graph.leaf_nodes("eventbus_app")
    executor.migrate([("eventbus_app", "0003_delivery_start_marker")])
    try:
        now = "now()" if connection.vendor == "postgresql" else "'2026-01-01 00:00:00'"
        with connection.cursor() as cursor:
            for key in ("a", "b", "c"):
                cursor.execute(
                    "INSERT INTO eventbus_app_outboxevent (event_type, version, payload, "
                    "correlation_id, depth, created_at) "
                    f"VALUES ('testapp.Work', 1, %s, %s, 0, {now})",
                    [f'{{"key": "{key}"}}', uuid.uuid4().hex],
                )
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(leaf)
    made = list(OutboxEvent.objects.values_list("uuid", flat=True))
    assert len(made) == 3 and len(set(made)) == 3 and None not in made


@pytest.mark.django_db(databases=["default", "other"])
def test_a_handler_emitting_on_another_database_nudges_it(
    register: Any, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    """The dispatcher running the handler drains only its own database; nothing else would
    look at the other one (the sweep serves EVENTBUS['DATABASES'] only)."""
    from eventbus_app import Event, tasks

    nudged: list[str] = []
    monkeypatch.setattr(tasks, "nudge", lambda using="default": nudged.append(using))
    monkeypatch.setattr(tasks, "nudge_in_background", lambda using="default": nudged.append(using))

    class Elsewhere(Event, event_type="t.Elsewhere"):
        using: str

    @register(Elsewhere, name="t.emit_elsewhere")
    def emit_elsewhere(event: Elsewhere) -> None:
        emit(Work(key="chained"), using=event.using)

    with transaction.atomic():
        emit(Elsewhere(using="default"))
        emit(Elsewhere(using="other"))
    # The test's transactions never commit: run the callbacks "other" would run at commit.
    with django_capture_on_commit_callbacks(using="other", execute=True):
        drain()
    assert nudged == ["other"]  # the event on "default" is drained by this dispatcher
    chained = OutboxEvent.objects.using("other").get(event_type="testapp.Work")
    parent = OutboxEvent.objects.get(event_type="t.Elsewhere", payload__using="other")
    assert chained.correlation_id == parent.correlation_id and chained.depth == 1
    assert chained.causation_id is None  # a foreign key cannot point into another database
    here = OutboxEvent.objects.get(event_type="testapp.Work")
    assert here.causation_id is not None  # same database: chained as before


def test_drain_returns_its_counts_and_runs_chains_and_due_retries_in_one_call() -> None:
    """What README's testing section says drain() does."""
    emit(Work(key="ok"))
    emit(Work(key="flaky", fail_attempts=1))  # RETRY_BACKOFF is 0 in the test settings
    emit(Chain(n=1))
    counts = drain()
    assert counts["fanned_out"] == 4  # the chained event too
    assert counts["delivered"] == 6 and counts["failed"] == 1 and counts["dead"] == 0
    assert drain()["delivered"] == 0  # nothing left


def test_drain_does_not_wait_for_a_retry_whose_backoff_has_not_passed(settings: Any) -> None:
    settings.EVENTBUS = {**settings.EVENTBUS, "RETRY_BACKOFF": 60, "RETRY_JITTER": False}
    emit(Work(key="flaky", fail_attempts=1))
    started = time.monotonic()
    counts = drain()
    assert time.monotonic() - started < 10
    assert counts["failed"] == 1 and counts["delivered"] == 1  # record_async succeeded
    assert Delivery.objects.filter(status=Delivery.Status.FAILED).count() == 1
