from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.db.models.functions import Now
from django.dispatch import receiver
from django.utils import timezone

from eventbus_app import Event, current_delivery, emit, signals
from eventbus_app.dispatch import (
    UNROUTABLE,
    backoff_seconds,
    claim,
    deliver,
    fan_out,
    reclaim_unfinished,
    run,
)
from eventbus_app.events import _types
from eventbus_app.models import Delivery, HandlerState, OutboxEvent
from eventbus_app.registry import get_handler, handlers_for
from eventbus_app.testing import drain
from tests.factories import OutboxEventFactory
from tests.testapp.events import UserRegistered, Work
from tests.testapp.models import Effect

pytestmark = pytest.mark.django_db
Status = Delivery.Status


def test_handlers_modules_are_autodiscovered() -> None:
    assert get_handler("testapp.record") is not None
    assert get_handler("testapp.record_async").is_async  # type: ignore[union-attr]
    assert {s.name for s in handlers_for(Work)} == {"testapp.record", "testapp.record_async"}


def test_fan_out_creates_one_delivery_per_handler_once() -> None:
    record = emit(Work(key="a"))
    assert fan_out() == 1
    assert fan_out() == 0
    assert sorted(record.deliveries.values_list("handler", flat=True)) == [
        "testapp.record",
        "testapp.record_async",
    ]
    record.refresh_from_db()
    assert record.dispatched_at is not None


def test_event_without_handlers_is_marked_dispatched() -> None:
    record = emit(UserRegistered(user_id=1, email="a"))
    assert fan_out() == 1
    record.refresh_from_db()
    assert record.dispatched_at is not None
    assert not record.deliveries.exists()


def test_deliveries_succeed_with_effects_committed_once() -> None:
    record = emit(Work(key="a"))
    counts = drain()
    assert counts["delivered"] == 2
    assert set(record.deliveries.values_list("status", flat=True)) == {Status.SUCCEEDED}
    assert Effect.objects.filter(event_id=record.pk).count() == 2
    d = record.deliveries.get(handler="testapp.record")
    assert d.attempts == 1
    assert d.finished_at is not None
    assert d.lease_token is None


def test_failure_rolls_back_handler_effects_and_schedules_a_retry(settings: Any) -> None:
    settings.EVENTBUS = {**settings.EVENTBUS, "RETRY_BACKOFF": 30, "RETRY_JITTER": False}
    record = emit(Work(key="flaky", fail_attempts=1))
    drain()
    d = record.deliveries.get(handler="testapp.record")
    assert d.status == Status.FAILED
    assert d.attempts == 1
    assert "RuntimeError: flaky flaky attempt 1" in d.last_error
    assert "Traceback" in d.traceback
    assert d.error_class == "builtins.RuntimeError"
    # The effect written before the exception rolled back with it.
    assert not Effect.objects.filter(handler="testapp.record", note="rolled back").exists()
    # Backoff is measured by the database clock.
    delay = (d.next_attempt_at - OutboxEvent.objects.annotate(now=Now()).get().now).total_seconds()
    assert 25 < delay <= 30
    # Not due yet: a drain does nothing for it.
    assert drain()["delivered"] == 0
    Delivery.objects.filter(pk=d.pk).update(next_attempt_at=Now())
    drain()
    d.refresh_from_db()
    assert d.status == Status.SUCCEEDED
    assert d.attempts == 2
    assert d.last_error == ""
    assert list(d.history.values_list("attempt", "outcome")) == [(1, "failed")]


def test_retries_then_dead_with_error_and_traceback_kept(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.EVENTBUS = {**settings.EVENTBUS, "MAX_ATTEMPTS": 3}
    record = emit(Work(key="doomed", fail_attempts=99))
    with caplog.at_level(logging.ERROR, logger="eventbus_app.dispatch"):
        counts = drain()
    assert counts["failed"] == 2
    assert counts["dead"] == 1
    d = record.deliveries.get(handler="testapp.record")
    assert d.status == Status.DEAD
    assert d.attempts == 3
    assert "flaky doomed attempt 3" in d.last_error
    assert "raise RuntimeError" in d.traceback
    assert d.next_attempt_at is None
    assert [h.outcome for h in d.history.all()] == ["failed", "failed", "dead"]
    # The other handler of the same event is unaffected.
    assert record.deliveries.get(handler="testapp.record_async").status == Status.SUCCEEDED
    # One ERROR line per failed attempt, naming event, handler and attempt.
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(
        f"Event #{record.pk} (testapp.Work): handler testapp.record failed on attempt 3/3" in line
        for line in lines
    )
    assert all(r.exc_info for r in caplog.records if r.levelno == logging.ERROR)


def test_per_handler_max_attempts_and_backoff(register: Any, settings: Any) -> None:
    class Ping(Event, event_type="t.Ping"):
        n: int

    @register(Ping, name="t.ping", max_attempts=2, retry_backoff=0)
    def ping(event: Ping) -> None:
        raise RuntimeError("nope")

    emit(Ping(n=1))
    drain()
    d = Delivery.objects.get(handler="t.ping")
    assert (d.status, d.attempts) == (Status.DEAD, 2)


def test_permanent_error_dead_letters_at_once() -> None:
    record = emit(Work(key="p", permanent=True))
    drain()
    d = record.deliveries.get(handler="testapp.record")
    assert (d.status, d.attempts) == (Status.DEAD, 1)
    assert "permanent" in d.last_error


def test_signals_are_sent_after_each_outcome(settings: Any) -> None:
    settings.EVENTBUS = {**settings.EVENTBUS, "MAX_ATTEMPTS": 2}
    got: list[tuple[str, str, int | None]] = []

    def make(kind: str) -> Any:
        def on(sender: Any, *, delivery: Delivery, handler: str, **kw: Any) -> None:
            assert sender is Delivery
            got.append((kind, handler, kw.get("attempt")))

        return on

    receivers = {
        signals.delivery_succeeded: make("ok"),
        signals.delivery_failed: make("failed"),
        signals.delivery_dead: make("dead"),
    }
    for signal, func in receivers.items():
        signal.connect(func, weak=False)
    try:
        emit(Work(key="s", fail_attempts=5))
        drain()
    finally:
        for signal, func in receivers.items():
            signal.disconnect(func)
    assert ("failed", "testapp.record", 1) in got
    assert ("dead", "testapp.record", 2) in got
    assert ("ok", "testapp.record_async", None) in got


def test_a_raising_signal_receiver_does_not_break_dispatch() -> None:
    @receiver(signals.delivery_succeeded, weak=False)
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    try:
        emit(Work(key="a"))
        assert drain()["delivered"] == 2
    finally:
        signals.delivery_succeeded.disconnect(broken)


def test_handler_context_and_idempotency_key_stable_across_retries(register: Any) -> None:
    class Pay(Event, event_type="t.Pay"):
        amount: int

    seen: list[Any] = []

    @register(Pay, name="t.pay")
    def pay(event: Pay) -> None:
        ctx = current_delivery()
        seen.append(ctx)
        if ctx is not None and ctx.attempt < 3:
            raise RuntimeError("gateway timeout")

    record = emit(Pay(amount=5))
    drain()
    assert [c.attempt for c in seen] == [1, 2, 3]
    assert len({c.idempotency_key for c in seen}) == 1
    assert all(c.event_id == record.pk for c in seen)
    assert all(c.correlation_id == record.correlation_id for c in seen)
    assert seen[0].handler == "t.pay"


def test_async_handlers_write_in_the_delivery_transaction(register: Any) -> None:
    class Note(Event, event_type="t.Note"):
        fail: bool

    @register(Note, name="t.note_async")
    async def note(event: Note) -> None:
        await Effect.objects.acreate(handler="t.note_async", event_id=0)
        if event.fail:
            raise RuntimeError("after the write")

    emit(Note(fail=True))
    emit(Note(fail=False))
    drain()
    assert Effect.objects.filter(handler="t.note_async").count() == 1


def test_unknown_event_type_is_dead_lettered_and_routed_once_restored() -> None:
    stored = OutboxEventFactory(event_type="gone.Vanished", payload={"x": 1})
    drain()
    d = Delivery.objects.get(event=stored)
    assert d.handler == UNROUTABLE
    assert d.status == Status.DEAD
    assert "No Event class is registered for event_type 'gone.Vanished'" in d.last_error

    class Vanished(Event, event_type="gone.Vanished"):
        x: int

    try:
        Delivery.objects.filter(pk=d.pk).update(status=Status.PENDING, next_attempt_at=Now())
        drain()
        d.refresh_from_db()
        assert d.status == Status.SUCCEEDED  # routed; Vanished has no handlers
    finally:
        _types.pop("gone.Vanished", None)


def test_unknown_handler_is_dead_lettered_without_blocking_others() -> None:
    record = emit(Work(key="a"))
    fan_out()
    Delivery.objects.filter(event=record, handler="testapp.record").update(handler="old.renamed")
    counts = drain()
    gone = Delivery.objects.get(handler="old.renamed")
    assert gone.status == Status.DEAD
    assert "No handler named 'old.renamed'" in gone.last_error
    assert counts["delivered"] == 1


def test_payload_that_no_longer_fits_is_dead_lettered() -> None:
    bad = OutboxEventFactory(event_type="testapp.Work", payload={"key": 5})
    good = emit(Work(key="fine"))
    drain()
    assert set(bad.deliveries.values_list("status", flat=True)) == {Status.DEAD}
    assert "no longer fits" in bad.deliveries.first().last_error  # type: ignore[union-attr]
    assert set(good.deliveries.values_list("status", flat=True)) == {Status.SUCCEEDED}


def test_expired_lease_is_claimed_again_and_the_stale_worker_cannot_record() -> None:
    emit(Work(key="a"))
    fan_out()
    token1, first = claim()
    assert len(first) == 2
    # Nothing else is claimable while the lease holds.
    assert claim()[1] == []
    # The lease expires (by the database clock).
    Delivery.objects.update(next_attempt_at=Now() - timedelta(seconds=1))
    token2, second = claim()
    assert {d.pk for d in second} == {d.pk for d in first}
    # Claimed but never started: a claim charges no attempt.
    assert all(d.attempts == 0 for d in second)
    # The first worker finishes late: its outcomes are refused and its effects roll back.
    counts = deliver("default", token1, first)
    assert counts.lease_lost == 2
    assert counts.delivered == 0
    assert not Effect.objects.exists()
    # The current holder records normally.
    assert deliver("default", token2, second).delivered == 2
    assert Effect.objects.count() == 2


def test_a_delivery_whose_worker_keeps_dying_is_dead_after_max_attempts(settings: Any) -> None:
    """An attempt that started (its start marker is set) and never finished is charged to
    that delivery alone when its lease expires; the delivery then runs alone."""
    settings.EVENTBUS = {**settings.EVENTBUS, "MAX_ATTEMPTS": 2}
    emit(Work(key="crashy"))
    fan_out()
    crashy = Delivery.objects.get(handler="testapp.record")
    for attempt in (1, 2):  # the worker "died" while running it: marker set, lease expires
        _, claimed = claim(isolated=attempt > 1)
        assert crashy.pk in {d.pk for d in claimed}
        Delivery.objects.filter(pk=crashy.pk).update(
            in_flight=1, started_at=Now(), next_attempt_at=Now() - timedelta(seconds=1)
        )
        Delivery.objects.exclude(pk=crashy.pk).update(
            status=Status.PENDING, lease_token=None, next_attempt_at=Now()
        )
        assert reclaim_unfinished() == 1
        crashy.refresh_from_db()
        assert crashy.attempts == attempt
        assert crashy.isolate
    drain()
    crashy.refresh_from_db()
    assert crashy.status == Status.DEAD
    assert "never finished" in crashy.last_error
    assert crashy.history.count() == 2
    # Its neighbour was never charged for it.
    other = Delivery.objects.get(handler="testapp.record_async")
    assert (other.status, other.attempts) == (Status.SUCCEEDED, 1)


def test_an_unfinished_attempt_that_shared_its_marker_charges_nobody() -> None:
    """Several deliveries of handlers that do not use the database share a start marker; if
    their worker dies, none of them is charged, and each then runs alone."""
    emit(Work(key="a"))
    fan_out()
    claim()
    Delivery.objects.update(
        in_flight=2, started_at=Now(), next_attempt_at=Now() - timedelta(seconds=1)
    )
    drain()
    assert set(Delivery.objects.values_list("status", "attempts", "isolate")) == {
        (Status.SUCCEEDED, 1, False)
    }
    assert not Effect.objects.filter(note="").exclude(attempt=1).exists()


def test_paused_handler_waits_and_resumes() -> None:
    HandlerState.objects.create(handler="testapp.record", paused=True)
    record = emit(Work(key="a"))
    drain()
    assert record.deliveries.get(handler="testapp.record").status == Status.PENDING
    assert record.deliveries.get(handler="testapp.record_async").status == Status.SUCCEEDED
    HandlerState.objects.filter(handler="testapp.record").update(paused=False)
    drain()
    assert record.deliveries.get(handler="testapp.record").status == Status.SUCCEEDED


def test_claim_picks_by_due_time_not_by_id() -> None:
    """A row with a lower id that becomes due later is still claimed (no id cursor)."""
    early = emit(Work(key="early"))
    late = emit(Work(key="late"))
    fan_out()
    Delivery.objects.filter(event=early).update(next_attempt_at=Now() + timedelta(hours=1))
    drain()
    assert set(late.deliveries.values_list("status", flat=True)) == {Status.SUCCEEDED}
    Delivery.objects.filter(event=early).update(next_attempt_at=Now())
    drain()
    assert set(early.deliveries.values_list("status", flat=True)) == {Status.SUCCEEDED}


def test_backoff_is_exponential_capped_and_jittered(settings: Any) -> None:
    settings.EVENTBUS = {
        **settings.EVENTBUS,
        "RETRY_BACKOFF": 2,
        "RETRY_BACKOFF_MAX": 20,
        "RETRY_JITTER": False,
    }
    assert [backoff_seconds(n) for n in (1, 2, 3, 4, 5, 6, 500)] == [2, 4, 8, 16, 20, 20, 20]
    settings.EVENTBUS = {**settings.EVENTBUS, "RETRY_JITTER": True}
    samples = [backoff_seconds(3) for _ in range(200)]
    assert all(4 <= s <= 8 for s in samples)
    assert len(set(samples)) > 1
    settings.EVENTBUS = {**settings.EVENTBUS, "RETRY_BACKOFF": 0}
    assert backoff_seconds(9) == 0


def test_run_respects_its_time_budget() -> None:
    for i in range(5):
        emit(Work(key=f"k{i}", sleep=0.05))
    counts = run(seconds=0.01)
    assert counts.more is True
    assert run().more is False
    assert Delivery.objects.filter(status=Status.SUCCEEDED).count() == 10


def test_many_events_in_batches(settings: Any) -> None:
    settings.EVENTBUS = {**settings.EVENTBUS, "BATCH_SIZE": 7}
    with transaction.atomic():
        for i in range(30):
            emit(Work(key=f"k{i}"))
    counts = drain()
    assert counts["fanned_out"] == 30
    assert counts["delivered"] == 60
    assert Effect.objects.count() == 60


def test_handlers_registered_for_a_base_class_see_subclass_events(register: Any) -> None:
    class Base(Event, event_type="t.Base"):
        x: int

    class Child(Base, event_type="t.Child"):
        y: int = 0

    seen: list[Any] = []

    @register(Base, name="t.audit")
    def audit(event: Base) -> None:
        seen.append(event)

    emit(Child(x=1, y=2))
    drain()
    assert seen == [Child(x=1, y=2)]


def test_registry_rejects_duplicates_and_bad_arguments(register: Any) -> None:
    from eventbus_app import HandlerRegistrationError, handler

    with pytest.raises(HandlerRegistrationError, match=r"'testapp\.record' is taken"):

        @handler(Work, name="testapp.record")
        def impostor(event: Work) -> None: ...

    with pytest.raises(HandlerRegistrationError, match="Event subclass"):
        handler(dict)  # type: ignore[arg-type]
    with pytest.raises(HandlerRegistrationError, match="max_attempts"):
        handler(Work, max_attempts=0)

    @handler(Work)
    def default_named(event: Work) -> None: ...

    from eventbus_app.registry import unregister

    expected = (
        f"{__name__}.test_registry_rejects_duplicates_and_bad_arguments.<locals>.default_named"
    )
    try:
        assert get_handler(expected) is not None
    finally:
        unregister(expected)


def test_lease_token_is_cleared_and_claims_are_exclusive() -> None:
    emit(Work(key="a"))
    fan_out()
    t1, a = claim(limit=1)
    t2, b = claim(limit=5)
    assert len(a) == 1 and len(b) == 1
    assert a[0].pk != b[0].pk
    assert isinstance(t1, uuid.UUID) and t1 != t2
    deliver("default", t1, a)
    deliver("default", t2, b)
    assert not Delivery.objects.exclude(lease_token=None).exists()


def test_now_is_the_database_clock() -> None:
    """Due times compare against the database's clock, not this process's."""
    emit(Work(key="a"))
    fan_out()
    db_now = OutboxEvent.objects.annotate(now=Now()).values_list("now", flat=True).first()
    assert db_now is not None
    assert abs((db_now - timezone.now()).total_seconds()) < 5


def test_a_batch_never_outlives_its_lease(settings: Any, register: Any) -> None:
    """Deliveries the batch cannot start within its lease are given back, unrun."""
    settings.EVENTBUS = {**settings.EVENTBUS, "LEASE_SECONDS": 1}

    class Slow(Event, event_type="t.Slow"):
        n: int

    ran: list[int] = []

    @register(Slow, name="t.slow", timeout=0.4)
    def slow(event: Slow) -> None:
        import time

        time.sleep(0.3)
        ran.append(event.n)

    for n in range(6):
        emit(Slow(n=n))
    fan_out()
    token, claimed = claim()
    counts = deliver("default", token, claimed)
    # Lease 1 s: a run starts only while its whole 0.4 s timeout fits in what is left.
    assert 2 <= counts.delivered <= 3
    assert counts.released == 6 - counts.delivered
    waiting = Delivery.objects.filter(status=Status.PENDING)
    assert waiting.count() == counts.released
    assert all(d.attempts == 0 and d.lease_token is None for d in waiting)
    drain()
    assert sorted(ran) == list(range(6))  # each ran exactly once


@pytest.mark.django_db(transaction=True)
def test_each_delivery_commits_on_its_own(register: Any) -> None:
    """A handler that uses the database commits with its success before the next one
    starts; successes of handlers that do not are recorded within FLUSH_SECONDS."""
    from django.db import connections

    from eventbus_app.dispatch.execute import FLUSH_SECONDS

    class Tick(Event, event_type="t.Tick"):
        n: int

    observer = connections.create_connection("default")  # sees only committed rows

    def committed(handler: str) -> int:
        with observer.cursor() as cursor:
            cursor.execute(
                "SELECT COUNT(*) FROM eventbus_app_delivery WHERE handler = %s AND status = %s",
                [handler, "succeeded"],
            )
            return int(cursor.fetchone()[0])

    seen_db: list[int] = []
    seen_plain: list[int] = []

    @register(Tick, name="t.writes")
    def writes(event: Tick) -> None:
        seen_db.append(committed("t.writes"))
        Effect.objects.create(handler="t.writes", event_id=current_delivery().event_id)  # type: ignore[union-attr]

    @register(Tick, name="t.plain")
    def plain(event: Tick) -> None:
        import time

        seen_plain.append(committed("t.plain"))
        time.sleep(FLUSH_SECONDS / 2)

    try:
        with transaction.atomic():
            for n in range(6):
                emit(Tick(n=n))
        drain()
    finally:
        observer.close()
    assert Delivery.objects.filter(status=Status.SUCCEEDED).count() == 12
    assert seen_db == [0, 1, 2, 3, 4, 5]
    assert seen_plain[0] == 0 and seen_plain[-1] >= 2  # flushed as they went, not at the end


def test_fan_out_leases_fresh_deliveries_to_itself_except_paused_handlers() -> None:
    """The dispatcher runs what it fans out without a second claim; paused handlers wait."""
    from eventbus_app import operations
    from eventbus_app.dispatch import fan_out_leased

    operations.pause_handler("testapp.record_async", actor="t")
    emit(Work(key="a"))
    count, token, leased = fan_out_leased()
    assert count == 1
    assert [d.handler for d in leased] == ["testapp.record"]
    assert all(
        (d.status, d.lease_token, d.attempts) == (Delivery.Status.RUNNING, token, 0) for d in leased
    )
    assert leased[0].event.event_type == Work.event_type  # loaded with its event
    paused = Delivery.objects.get(handler="testapp.record_async")
    assert (paused.status, paused.lease_token) == (Delivery.Status.PENDING, None)
    assert claim()[1] == []  # leased rows are not claimable again; the paused one waits
    assert deliver("default", token, leased).delivered == 1
    assert Effect.objects.filter(handler="testapp.record").count() == 1


def test_retry_on_and_dead_on_choose_which_errors_retry(register: Any) -> None:
    from django.core.exceptions import ValidationError

    from eventbus_app import HandlerRegistrationError, handler

    class Charge(Event, event_type="t.Charge"):
        kind: str

    @register(Charge, name="t.charge", dead_on=(ValidationError,), retry_on=(TimeoutError,))
    def charge(event: Charge) -> None:
        if event.kind == "invalid":
            raise ValidationError("card number is not valid")
        if event.kind == "slow":
            raise TimeoutError("the provider did not answer")
        raise KeyError("unexpected")

    invalid, slow, other = (emit(Charge(kind=k)) for k in ("invalid", "slow", "other"))
    from eventbus_app.dispatch import fan_out_leased

    _, token, leased = fan_out_leased()
    deliver("default", token, leased)
    by_event = {d.event_id: d for d in Delivery.objects.filter(handler="t.charge")}
    assert (by_event[invalid.pk].status, by_event[invalid.pk].attempts) == (Status.DEAD, 1)
    assert "in t.charge's dead_on" in by_event[invalid.pk].last_error
    assert by_event[slow.pk].status == Status.FAILED  # retried
    assert by_event[other.pk].status == Status.DEAD
    assert "not in t.charge's retry_on" in by_event[other.pk].last_error
    with pytest.raises(HandlerRegistrationError, match="retry_on takes a tuple"):
        handler(Charge, retry_on=TimeoutError)  # type: ignore[arg-type]


@pytest.mark.django_db(transaction=True)
def test_a_throttled_handler_runs_at_most_its_rate_and_its_neighbours_do_not_wait(
    register: Any,
) -> None:
    import itertools
    import time as clock
    from io import StringIO

    from django.core.management import call_command

    from eventbus_app.models import OperatorAction

    class Call(Event, event_type="t.Call"):
        n: int

    started: list[float] = []

    @register(Call, name="t.api")
    def api(event: Call) -> None:
        started.append(clock.monotonic())

    @register(Call, name="t.local")
    def local(event: Call) -> None: ...

    call_command("eventbus_throttle", "t.api", "--rate", "5", stdout=StringIO())
    with transaction.atomic():
        for n in range(8):
            emit(Call(n=n))
    began = clock.monotonic()
    counts = drain()
    assert counts["delivered"] == 16
    # 8 runs at 5/s with a one-second bucket: the last starts about 0.6 s or more later.
    assert started[-1] - started[0] >= 0.5
    gaps = [b - a for a, b in itertools.pairwise(started[1:])]
    assert max(gaps) >= 0.1
    assert clock.monotonic() - began < 10
    local_done = Delivery.objects.filter(handler="t.local", status=Status.SUCCEEDED).count()
    assert local_done == 8
    assert OperatorAction.objects.filter(kind="throttle", handler="t.api").exists()
    call_command("eventbus_throttle", "t.api", "--off", stdout=StringIO())
    from eventbus_app.throttle import throttles

    assert throttles() == {}


def test_a_delayed_event_is_fanned_out_but_not_run_before_its_time() -> None:
    record = emit(Work(key="later"), deliver_after=timedelta(hours=1))
    counts = drain()
    assert counts["fanned_out"] == 1 and counts["delivered"] == 0
    waiting = list(record.deliveries.all())
    assert {d.status for d in waiting} == {Status.PENDING}
    assert all(d.next_attempt_at == record.deliver_after for d in waiting)
    Delivery.objects.filter(event=record).update(next_attempt_at=Now())  # its time comes
    assert drain()["delivered"] == 2
