"""Isolation in one process: what a handler does to its transaction, its connection or its
time fails its own delivery, with its real error, and no other (on SQLite and PostgreSQL;
the PostgreSQL-only transaction state is marked). The worker-process faults (a hang under
qcluster, a killed worker) are in tests/reliability/test_isolation.py."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import pytest
from django.db import connection, transaction

from eventbus_app import Event, current_delivery, emit
from eventbus_app.models import Delivery
from eventbus_app.testing import drain
from tests.testapp.models import Child, Effect

pytestmark = pytest.mark.django_db(transaction=True)
Status = Delivery.Status
ON_POSTGRES = connection.vendor == "postgresql"


class Probe(Event, event_type="t.Probe"):
    n: int


def record(name: str, note: str = "") -> None:
    ctx = current_delivery()
    assert ctx is not None
    Effect.objects.create(handler=name, event_id=ctx.event_id, attempt=ctx.attempt, note=note)


@pytest.fixture
def good(register: Any) -> str:
    """The well-behaved neighbour: registered first, so it runs before and after the
    misbehaving handler's deliveries of the batch."""

    @register(Probe, name="t.good")
    def good_handler(event: Probe) -> None:
        record("t.good")

    return "t.good"


def emit_probes(n: int) -> None:
    with transaction.atomic():
        for i in range(n):
            emit(Probe(n=i))


def assert_neighbour_unharmed(name: str, events: int) -> None:
    rows = Delivery.objects.filter(handler=name)
    assert set(rows.values_list("status", "attempts")) == {(Status.SUCCEEDED, 1)}
    assert rows.count() == events
    assert Effect.objects.filter(handler=name).count() == events  # each exactly once


def test_a_write_that_fails_at_commit_fails_only_its_delivery(
    register: Any, good: str, settings: Any
) -> None:
    settings.EVENTBUS = {**settings.EVENTBUS, "MAX_ATTEMPTS": 2}

    @register(Probe, name="t.dangling")
    def dangling(event: Probe) -> None:
        record("t.dangling")
        if event.n == 3:
            Child.objects.create(parent_id=10**12)  # passes; the FK is checked at COMMIT

    emit_probes(8)
    drain()
    assert_neighbour_unharmed(good, 8)
    bad = Delivery.objects.get(handler="t.dangling", event__payload__n=3)
    assert (bad.status, bad.attempts) == (Status.DEAD, 2)
    assert "IntegrityError" in bad.last_error and "FOREIGN KEY" in bad.last_error.upper()
    assert "committing" in bad.last_error
    assert Delivery.objects.filter(handler="t.dangling", status=Status.SUCCEEDED).count() == 7
    # Its rolled-back runs left nothing; the other events' runs of it committed once.
    assert Effect.objects.filter(handler="t.dangling").count() == 7
    assert not Child.objects.exists()


def test_an_error_text_the_database_cannot_store_is_escaped(register: Any, good: str) -> None:
    @register(Probe, name="t.nul", max_attempts=1)
    def nul(event: Probe) -> None:
        raise ValueError(f"bad byte \x00 and a lone surrogate \udcff in event {event.n}")

    emit_probes(4)
    drain()
    assert_neighbour_unharmed(good, 4)
    dead = list(Delivery.objects.filter(handler="t.nul"))
    assert {d.status for d in dead} == {Status.DEAD}
    assert all("bad byte \\x00 and a lone surrogate \\udcff" in d.last_error for d in dead)
    assert all("\\x00" in d.traceback for d in dead)
    assert all(d.history.get().error == d.last_error for d in dead)


def test_a_handler_over_its_timeout_fails_as_timed_out_and_the_batch_goes_on(
    register: Any, good: str, settings: Any
) -> None:
    settings.EVENTBUS = {**settings.EVENTBUS, "MAX_ATTEMPTS": 2}

    @register(Probe, name="t.hangs", timeout=0.5)
    def hangs(event: Probe) -> None:
        record("t.hangs")
        if event.n == 1:
            while True:  # swallows what it can: the timeout still wins
                with contextlib.suppress(Exception):
                    time.sleep(60)

    @register(Probe, name="t.hangs_async", timeout=0.5)
    async def hangs_async(event: Probe) -> None:
        import asyncio

        if event.n == 2:
            await asyncio.sleep(60)

    started = time.monotonic()
    emit_probes(5)
    drain()
    assert time.monotonic() - started < 15
    assert_neighbour_unharmed(good, 5)
    for name, n in (("t.hangs", 1), ("t.hangs_async", 2)):
        bad = Delivery.objects.get(handler=name, event__payload__n=n)
        assert (bad.status, bad.attempts) == (Status.DEAD, 2), bad.last_error
        assert bad.error_class == "eventbus_app.exceptions.HandlerTimeout"
        assert "timed out after 0.5 s" in bad.last_error
        others = Delivery.objects.filter(handler=name).exclude(pk=bad.pk)
        assert set(others.values_list("status", flat=True)) == {Status.SUCCEEDED}
    # The timed-out runs' writes rolled back.
    assert not Effect.objects.filter(handler="t.hangs", event_id__in=[]).exists()
    assert Effect.objects.filter(handler="t.hangs").count() == 4


@pytest.mark.postgres
def test_a_query_over_the_timeout_is_cancelled(register: Any, good: str) -> None:
    @register(Probe, name="t.slow_query", timeout=0.5, max_attempts=1)
    def slow_query(event: Probe) -> None:
        if event.n == 0:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_sleep(60)")

    started = time.monotonic()
    emit_probes(3)
    drain()
    assert time.monotonic() - started < 15
    assert_neighbour_unharmed(good, 3)
    bad = Delivery.objects.get(handler="t.slow_query", event__payload__n=0)
    assert bad.status == Status.DEAD
    assert "timed out after 0.5 s" in bad.last_error
    assert "canceling statement due to user request" in bad.traceback  # cancelled, not abandoned


def test_a_raising_on_commit_callback_is_logged_against_its_delivery_only(
    register: Any, caplog: Any
) -> None:
    ran: list[str] = []
    succeeded: list[int] = []

    from eventbus_app import signals

    def on_success(sender: Any, delivery: Delivery, **kwargs: Any) -> None:
        succeeded.append(delivery.pk)

    signals.delivery_succeeded.connect(on_success)

    @register(Probe, name="t.good_callbacks")
    def good_callbacks(event: Probe) -> None:
        record("t.good_callbacks")
        transaction.on_commit(lambda: ran.append(f"good {event.n}"))

    @register(Probe, name="t.bad_callback")
    def bad_callback(event: Probe) -> None:
        record("t.bad_callback")

        def broker_down() -> None:
            raise ConnectionError("broker down")

        transaction.on_commit(broker_down)
        transaction.on_commit(lambda: ran.append(f"after {event.n}"))

    try:
        emit_probes(3)
        with caplog.at_level(logging.ERROR, logger="eventbus_app.dispatch"):
            counts = drain()
    finally:
        signals.delivery_succeeded.disconnect(on_success)
    assert counts["delivered"] == 6
    assert set(Delivery.objects.values_list("status", flat=True)) == {Status.SUCCEEDED}
    assert sorted(ran) == sorted([f"good {n}" for n in range(3)] + [f"after {n}" for n in range(3)])
    assert len(succeeded) == 6
    logged = [r for r in caplog.records if "on-commit callback" in r.getMessage()]
    assert len(logged) == 3 and all("t.bad_callback" in r.getMessage() for r in logged)


@pytest.mark.parametrize("how", ["orm", "cursor"])
def test_a_handler_that_swallows_a_database_error_fails_and_its_neighbours_do_not(
    register: Any, good: str, how: str
) -> None:
    from django.db import IntegrityError

    if how == "cursor" and not ON_POSTGRES:
        pytest.skip("SQLite rolls back only the failed statement: the handler may carry on")

    @register(Probe, name="t.swallows", max_attempts=1)
    def swallows(event: Probe) -> None:
        record("t.swallows")
        if event.n == 0:
            try:
                if how == "orm":
                    Effect.objects.create(handler=None)
                else:
                    with connection.cursor() as cursor:
                        cursor.execute("INSERT INTO testapp_effect (handler) VALUES (NULL)")
            except IntegrityError:
                pass  # carries on in a transaction that must roll back

    emit_probes(3)
    drain()
    assert_neighbour_unharmed(good, 3)
    bad = Delivery.objects.get(handler="t.swallows", event__payload__n=0)
    assert bad.status == Status.DEAD
    assert bad.error_class == "eventbus_app.exceptions.HandlerBrokeTransaction"
    assert "transaction.atomic()" in bad.last_error
    assert Effect.objects.filter(handler="t.swallows").count() == 2


def test_a_handler_that_closes_the_connection_fails_only_its_delivery(
    register: Any, good: str
) -> None:
    @register(Probe, name="t.closes", max_attempts=1)
    def closes(event: Probe) -> None:
        record("t.closes")
        if event.n == 1:
            connection.close()

    emit_probes(3)
    drain()
    assert_neighbour_unharmed(good, 3)
    bad = Delivery.objects.get(handler="t.closes", event__payload__n=1)
    assert bad.status == Status.DEAD
    assert "closed the database connection" in bad.last_error


@pytest.mark.postgres
def test_transaction_scoped_state_never_reaches_the_next_handler(register: Any) -> None:
    """set_config(…, true), SET LOCAL ROLE / statement_timeout, SET CONSTRAINTS and
    transaction-level advisory locks of one handler end with its own transaction."""
    with connection.cursor() as cursor:
        cursor.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'eventbus_tenant')"
            " THEN CREATE ROLE eventbus_tenant; END IF; END $$"
        )
        cursor.execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO eventbus_tenant")
        cursor.execute("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO eventbus_tenant")
        cursor.execute("SELECT current_user")
        owner = cursor.fetchone()[0]

    @register(Probe, name="t.sets_state")
    def sets_state(event: Probe) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('app.tenant', 'acme', true)")
            cursor.execute("SET LOCAL ROLE eventbus_tenant")
            cursor.execute("SET LOCAL statement_timeout = '4321s'")
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute("SELECT pg_advisory_xact_lock(4242)")
        record("t.sets_state")

    @register(Probe, name="t.observes")
    def observes(event: Probe) -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT coalesce(current_setting('app.tenant', true), ''), current_user, "
                "current_setting('statement_timeout'), "
                "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                "AND pid = pg_backend_pid())"
            )
            tenant, user, timeout, locks = cursor.fetchone()
        record("t.observes", note=f"{tenant}|{user}|{timeout}|{locks}")
        # A deferred check still waits for COMMIT here: SET CONSTRAINTS did not leak.
        Child.objects.create(parent_id=10**12)
        Child.objects.filter(parent_id=10**12).delete()

    emit_probes(6)
    drain()
    assert set(Delivery.objects.values_list("status", flat=True)) == {Status.SUCCEEDED}
    notes = set(Effect.objects.filter(handler="t.observes").values_list("note", flat=True))
    assert notes == {f"|{owner}|0|0"}
    assert Effect.objects.filter(handler="t.sets_state").count() == 6


def test_timeouts_work_outside_the_main_thread(register: Any, good: str) -> None:
    """Where SIGALRM cannot be used (a dispatcher run from a thread), a watchdog thread
    interrupts the handler instead."""
    import threading

    @register(Probe, name="t.spins", timeout=0.5, max_attempts=1)
    def spins(event: Probe) -> None:
        if event.n == 1:
            while True:
                time.sleep(0.01)

    emit_probes(3)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            drain()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            from django.db import connections

            connections.close_all()

    thread = threading.Thread(target=work)
    started = time.monotonic()
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive() and not errors, errors
    assert time.monotonic() - started < 15
    assert_neighbour_unharmed(good, 3)
    bad = Delivery.objects.get(handler="t.spins", event__payload__n=1)
    assert bad.status == Status.DEAD and "timed out after 0.5 s" in bad.last_error


def test_sys_exit_and_an_unprintable_error_fail_only_their_delivery(
    register: Any, good: str
) -> None:
    import sys

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text for you")

    @register(Probe, name="t.exits", max_attempts=1)
    def exits(event: Probe) -> None:
        if event.n == 1:
            sys.exit(3)

    @register(Probe, name="t.unprintable", max_attempts=1)
    def unprintable(event: Probe) -> None:
        if event.n == 2:
            raise Unprintable

    emit_probes(4)
    drain()
    assert_neighbour_unharmed(good, 4)
    exited = Delivery.objects.get(handler="t.exits", event__payload__n=1)
    assert exited.status == Status.DEAD and exited.last_error.startswith("SystemExit: 3")
    bad = Delivery.objects.get(handler="t.unprintable", event__payload__n=2)
    assert bad.status == Status.DEAD
    assert "Unprintable: <str() of the exception raised RuntimeError>" in bad.last_error
    for name in ("t.exits", "t.unprintable"):
        others = Delivery.objects.filter(handler=name).exclude(status=Status.DEAD)
        assert set(others.values_list("status", flat=True)) == {Status.SUCCEEDED}
