"""Optional PostgreSQL wake-up (``EVENTBUS['NOTIFY']``): commit → NOTIFY → a listening
dispatcher, in milliseconds, whatever the broker's poll interval.

``emit()`` adds ``pg_notify()`` to its INSERT (PostgreSQL delivers it at commit, once per
transaction). A dispatch task that has run out of work becomes the database's listener, if
no other task is (a session advisory lock decides; it goes with the connection if the worker
dies), and dispatches on each notification until its ``DISPATCH_SECONDS`` are up. The nudge
still goes out as before, so nothing depends on the listener: it only starts work sooner.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from django.db import DatabaseError, connections

from .conf import eventbus_settings

logger = logging.getLogger(__name__)

CHANNEL = "eventbus"
# pg_try_advisory_lock key of the listener: hashtext('eventbus_app.listener').
_LOCK_SQL = "SELECT pg_try_advisory_lock(hashtext('eventbus_app.listener'))"
_UNLOCK_SQL = "SELECT pg_advisory_unlock(hashtext('eventbus_app.listener'))"


def notifies(connection: Any) -> bool:
    """Whether emit() sends NOTIFY on this connection."""
    return bool(eventbus_settings.NOTIFY) and connection.vendor == "postgresql"


def _listenable(connection: Any) -> bool:
    if not notifies(connection) or connection.in_atomic_block:
        return False
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    return is_psycopg3  # notifies(timeout=…) is psycopg 3's


def listen(using: str, seconds: float, work: Callable[[], bool]) -> int:
    """Be the listener for up to ``seconds``: call ``work()`` (dispatch until idle; False
    ends the listening) after LISTEN and on every notification. Returns the number of
    wake-ups, or -1 when this task is not the listener (NOTIFY off, not PostgreSQL, or
    another task listens).

    LISTEN and the listener's lock belong to one database session. When it ends (the server
    dropped it, or ``work()`` closed a broken connection and opened a new one), this task
    listens again on the new session, or stops if another task has become the listener or
    the database cannot be reached: waiting on a session that never ran LISTEN would wait
    for nothing."""
    connection = connections[using]
    if not _listenable(connection) or seconds <= 0:
        return -1
    deadline = time.monotonic() + seconds
    session = _become_listener(connection)
    if session is None:
        return -1
    wakeups = 0
    try:
        keep_listening = work()  # what committed before LISTEN took effect
        while keep_listening and (left := deadline - time.monotonic()) > 0:
            if connection.connection is not session:
                session = _become_listener(connection)
                if session is None:
                    break
                keep_listening = work()  # what committed while nobody listened
                continue
            try:
                notified = list(session.notifies(timeout=left, stop_after=1))
            except _session_errors():
                logger.info("eventbus listener on %r lost its connection; listening again", using)
                connection.close()  # a new session (and LISTEN) on the next turn
                continue
            if not notified:
                break
            wakeups += 1
            keep_listening = work()
    finally:
        if session is not None and connection.connection is session and connection.is_usable():
            with connection.cursor() as cursor:
                cursor.execute(f"UNLISTEN {CHANNEL}")
                cursor.execute(_UNLOCK_SQL)
    return wakeups


def _become_listener(connection: Any) -> Any:
    """Take the listener's lock and LISTEN on this (new) session; returns the driver's
    connection, or None if another task listens or the database cannot be reached."""
    try:
        connection.ensure_connection()
        with connection.cursor() as cursor:
            cursor.execute(_LOCK_SQL)
            if not cursor.fetchone()[0]:
                return None
            cursor.execute(f"LISTEN {CHANNEL}")
    except DatabaseError:
        logger.info("eventbus listener could not listen on %r", connection.alias, exc_info=True)
        connection.close()
        return None
    return connection.connection


def _session_errors() -> tuple[type[BaseException], ...]:
    import psycopg

    return (psycopg.Error,)
