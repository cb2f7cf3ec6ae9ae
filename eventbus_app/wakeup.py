"""Optional PostgreSQL wake-up (``EVENTBUS['NOTIFY']``): commit → NOTIFY → a listening
dispatcher, in milliseconds, whatever the broker's poll interval.

``emit()`` adds ``pg_notify()`` to its INSERT (PostgreSQL delivers it at commit, once per
transaction). A dispatch task that has run out of work becomes the database's listener, if
no other task is (a session advisory lock decides; it goes with the connection if the worker
dies), and dispatches on each notification until its ``DISPATCH_SECONDS`` are up. The nudge
still goes out as before, so nothing depends on the listener: it only starts work sooner.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from django.db import connections

from .conf import eventbus_settings

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
    another task listens)."""
    connection = connections[using]
    if not _listenable(connection) or seconds <= 0:
        return -1
    deadline = time.monotonic() + seconds
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute(_LOCK_SQL)
        if not cursor.fetchone()[0]:
            return -1
    wakeups = 0
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"LISTEN {CHANNEL}")
        keep_listening = work()  # what committed before LISTEN took effect
        while keep_listening and (left := deadline - time.monotonic()) > 0:
            if not list(connection.connection.notifies(timeout=left, stop_after=1)):
                break
            wakeups += 1
            keep_listening = work()
    finally:
        if connection.is_usable():
            with connection.cursor() as cursor:
                cursor.execute(f"UNLISTEN {CHANNEL}")
                cursor.execute(_UNLOCK_SQL)
    return wakeups
