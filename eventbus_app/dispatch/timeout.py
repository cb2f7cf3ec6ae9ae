"""Handler timeouts: interrupt a run that is over its time, and leave the worker usable.

In the main thread (django-q2 workers, ``eventbus_drain``) the timer is ``SIGALRM``, which
also interrupts ``time.sleep()`` and socket waits. django-q2 enforces its own task
``timeout`` with the same signal (``django_q/timeout.py``: ``signal.alarm``, raising
``TimeoutException``, a ``SystemExit``, after which the worker is replaced). So the outer
alarm is read, paused while the handler runs, never outlived (the limit is the smaller of
the two), and re-armed with the time it had left. The dispatcher also starts a delivery
only if its whole timeout fits in what is left of django-q2's (``dispatch/execute.py``).

When time is up during a database query, the query is cancelled (it then fails inside the
handler, which unwinds as usual); otherwise :class:`Interrupt` is raised where the handler
is. It derives from ``BaseException`` so that ``except Exception`` in handler code does not
swallow it; a handler that swallows it anyway still fails (the timer's flag says so), and a
second alarm a moment later interrupts it again. Outside the main thread a watchdog thread
does the same with ``PyThreadState_SetAsyncExc`` (it cannot interrupt a blocking C call).
A handler stuck where no signal reaches is ended with its process by django-q2's guard; the
lease then expires and the attempt is charged to that delivery alone (``claim.py``).
"""

from __future__ import annotations

import ctypes
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connections

# After the first interrupt, a handler that keeps running is interrupted again this often.
REPEAT_SECONDS = 1.0


class Interrupt(BaseException):
    """Raised inside a handler whose time is up."""


class Timer:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.fired = False


def outer_alarm_left() -> float | None:
    """Seconds until the enclosing alarm (django-q2's task timeout) fires, if one is set."""
    if threading.current_thread() is not threading.main_thread():
        return None
    left = signal.getitimer(signal.ITIMER_REAL)[0]
    return left or None


def _cancel_query(using: str) -> bool:
    """Cancel the statement running on ``using``'s connection; True if one was running."""
    connection = connections[using]
    raw = connection.connection
    if raw is None or connection.vendor != "postgresql":
        return False
    try:
        from psycopg.pq import TransactionStatus

        if raw.info.transaction_status != TransactionStatus.ACTIVE:
            return False
        raw.cancel()
    except Exception:
        return False
    return True


@contextmanager
def time_limit(seconds: float, using: str) -> Iterator[Timer]:
    """Interrupt the block after ``seconds``; ``timer.fired`` tells whether it was."""
    timer = Timer(seconds)
    if threading.current_thread() is threading.main_thread():
        with _alarm(timer, using):
            yield timer
    else:
        with _watchdog(timer, using):
            yield timer


@contextmanager
def _alarm(timer: Timer, using: str) -> Iterator[None]:
    def fire(signum: int, frame: Any) -> None:
        first = not timer.fired
        timer.fired = True
        signal.setitimer(signal.ITIMER_REAL, REPEAT_SECONDS)
        if first and _cancel_query(using):
            return  # the query fails by itself; the handler unwinds from there
        raise Interrupt

    outer_handler = signal.getsignal(signal.SIGALRM)
    outer_left = signal.setitimer(signal.ITIMER_REAL, 0)[0]
    started = time.monotonic()
    limit = min(timer.seconds, outer_left) if outer_left else timer.seconds
    signal.signal(signal.SIGALRM, fire)
    try:
        signal.setitimer(signal.ITIMER_REAL, max(limit, 0.001))
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, outer_handler)
        if outer_left:
            left = outer_left - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))


@contextmanager
def _watchdog(timer: Timer, using: str) -> Iterator[None]:
    thread_id = ctypes.c_ulong(threading.get_ident())
    done = threading.Event()
    lock = threading.Lock()  # no interrupt is sent once the block has ended

    def watch() -> None:
        wait = timer.seconds
        while not done.wait(wait):
            with lock:
                if done.is_set():
                    return
                first = not timer.fired
                timer.fired = True
                wait = REPEAT_SECONDS
                if first and _cancel_query(using):
                    continue
                ctypes.pythonapi.PyThreadState_SetAsyncExc(thread_id, ctypes.py_object(Interrupt))

    watcher = threading.Thread(target=watch, name="eventbus-timeout", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        with lock:
            done.set()
            if timer.fired:  # clear an interrupt sent but not raised yet
                ctypes.pythonapi.PyThreadState_SetAsyncExc(thread_id, None)
        watcher.join()
