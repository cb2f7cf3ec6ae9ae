"""EVENTBUS['NOTIFY']: emit() notifies, an idle dispatcher listens (PostgreSQL only)."""

from __future__ import annotations

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
