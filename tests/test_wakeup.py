"""EVENTBUS['NOTIFY']: emit() notifies, an idle dispatcher listens (PostgreSQL only)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.db import connection, transaction

from eventbus_app import emit
from eventbus_app.wakeup import CHANNEL, listen
from tests.testapp.events import Work

pytestmark = [pytest.mark.django_db(transaction=True)]


def _other_session() -> Any:
    import psycopg

    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    return psycopg.connect(**params, autocommit=True)


@pytest.mark.postgres
def test_emit_notifies_once_per_transaction_at_commit(settings: Any) -> None:
    settings.EVENTBUS = {**settings.EVENTBUS, "NOTIFY": True}
    with _other_session() as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        with transaction.atomic():
            emit(Work(key="a"))
            emit(Work(key="b"))
            assert list(listener.notifies(timeout=0.2)) == []  # nothing before the commit
        got = list(listener.notifies(timeout=1.0))
        assert [n.channel for n in got] == [CHANNEL]  # one per transaction


@pytest.mark.postgres
def test_no_notify_by_default() -> None:
    with _other_session() as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        with transaction.atomic():
            emit(Work(key="a"))
        assert list(listener.notifies(timeout=0.3)) == []


@pytest.mark.postgres
def test_one_listener_per_database(settings: Any) -> None:
    settings.EVENTBUS = {**settings.EVENTBUS, "NOTIFY": True}
    with _other_session() as other:
        other.execute("SELECT pg_advisory_lock(hashtext('eventbus_app.listener'))")
        assert listen("default", 5, lambda: True) == -1  # another task listens: at once
    calls: list[int] = []

    def work() -> bool:
        calls.append(1)
        return len(calls) < 2

    with _other_session() as emitter:
        emitter.execute(f"NOTIFY {CHANNEL}")  # sent before LISTEN: not seen
        assert listen("default", 0.3, work) == 0  # work() ran once, after LISTEN
    assert calls == [1]


def test_listen_is_a_no_op_without_notify_or_postgresql() -> None:
    assert listen("default", 5, lambda: True) == -1


def _notify_until(stop: Any, seconds: float = 4.0) -> None:
    """NOTIFY every 50 ms from another session until ``stop`` is set."""
    with _other_session() as emitter:
        end = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < end:
            emitter.execute(f"NOTIFY {CHANNEL}")
            time.sleep(0.05)


def _backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


@pytest.mark.postgres
def test_a_listener_whose_connection_is_terminated_listens_again(settings: Any) -> None:
    settings.EVENTBUS = {**settings.EVENTBUS, "NOTIFY": True}
    pids: list[int] = []
    stop = threading.Event()

    def kill_then_notify() -> None:
        time.sleep(0.3)  # the listener is waiting by now
        with _other_session() as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [pids[0]])
        _notify_until(stop)

    def work() -> bool:
        pids.append(_backend_pid())
        return len(pids) < 3  # 1: after LISTEN; 2: listening again; 3: a notification

    thread = threading.Thread(target=kill_then_notify)
    started = time.monotonic()
    thread.start()
    try:
        wakeups = listen("default", 8, work)
    finally:
        stop.set()
        thread.join()
    assert wakeups == 1
    assert pids[1] != pids[0] and pids[2] == pids[1]  # a new session, and it heard NOTIFY
    assert time.monotonic() - started < 6
    with _other_session() as other:  # the new session holds the lock again until it ends
        locked = other.execute(
            "SELECT pg_try_advisory_lock(hashtext('eventbus_app.listener'))"
        ).fetchone()
        assert locked == (True,)


@pytest.mark.postgres
@pytest.mark.parametrize("reconnect", [False, True], ids=["closed", "reconnected"])
def test_a_listener_whose_work_replaced_the_connection_listens_on_the_new_one(
    settings: Any, reconnect: bool
) -> None:
    """The dispatcher closes a connection it found broken, and the next query opens a new
    one: that session never ran LISTEN (and connection.connection was None in between)."""
    settings.EVENTBUS = {**settings.EVENTBUS, "NOTIFY": True}
    calls: list[int] = []
    stop = threading.Event()

    def work() -> bool:
        calls.append(1)
        if len(calls) == 1:
            connection.close()
            if reconnect:
                connection.ensure_connection()
        return len(calls) < 3

    thread = threading.Thread(target=_notify_until, args=(stop,))
    thread.start()
    try:
        wakeups = listen("default", 5, work)
    finally:
        stop.set()
        thread.join()
    assert wakeups == 1 and len(calls) == 3
