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


class Limiter:
    """Time limits for the runs of one batch: installed once (the signal handler, or the
    watchdog thread), then armed and disarmed per run, which costs two system calls."""

    def __init__(self, using: str) -> None:
        self.using = using
        self.timer: Timer | None = None
        self.main = threading.current_thread() is threading.main_thread()
        self._outer_handler: Any = None
        self._outer_left = 0.0
        self._installed_at = 0.0
        self._deadline = 0.0
        self._thread_id = ctypes.c_ulong(threading.get_ident())
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._done = False
        self._watcher: threading.Thread | None = None

    def __enter__(self) -> Limiter:
        if self.main:
            self._outer_handler = signal.getsignal(signal.SIGALRM)
            self._outer_left = signal.setitimer(signal.ITIMER_REAL, 0)[0]
            self._installed_at = time.monotonic()
            signal.signal(signal.SIGALRM, self._fire)
        else:
            self._watcher = threading.Thread(
                target=self._watch, name="eventbus-timeout", daemon=True
            )
            self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.main:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._outer_handler)
            if self._outer_left:  # django-q2's alarm, with the time it had left
                left = self._outer_left - (time.monotonic() - self._installed_at)
                signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))
        else:
            with self._lock:
                self._done = True
                self._wake.set()
            if self._watcher is not None:
                self._watcher.join()

    def outer_left(self) -> float | None:
        """Seconds until the enclosing alarm (django-q2's task timeout) would fire."""
        if not self._outer_left:
            return None
        return self._outer_left - (time.monotonic() - self._installed_at)

    @contextmanager
    def limit(self, seconds: float) -> Iterator[Timer]:
        """Interrupt the block after ``seconds``; ``timer.fired`` tells whether it was."""
        timer = Timer(seconds)
        outer = self.outer_left()
        limit = min(seconds, outer) if outer is not None else seconds
        if self.main:
            self.timer = timer
            signal.setitimer(signal.ITIMER_REAL, max(limit, 0.001))
            try:
                yield timer
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                self.timer = None
        else:
            with self._lock:
                self.timer = timer
                self._deadline = time.monotonic() + limit
                self._wake.set()
            try:
                yield timer
            finally:
                with self._lock:
                    self.timer = None
                    if timer.fired:  # clear an interrupt sent but not raised yet
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(self._thread_id, None)

    def _expire(self, timer: Timer) -> bool:
        """Time is up for ``timer``: True when a cancelled query will end the run."""
        first = not timer.fired
        timer.fired = True
        return first and _cancel_query(self.using)

    def _fire(self, signum: int, frame: Any) -> None:
        timer = self.timer
        if timer is None:
            return  # between runs: nothing to interrupt
        signal.setitimer(signal.ITIMER_REAL, REPEAT_SECONDS)
        if not self._expire(timer):
            raise Interrupt

    def _watch(self) -> None:
        while True:
            with self._lock:
                if self._done:
                    return
                timer, wait = self.timer, None
                if timer is not None:
                    wait = self._deadline - time.monotonic()
                    if wait <= 0:
                        self._deadline = time.monotonic() + REPEAT_SECONDS
                        wait = REPEAT_SECONDS
                        if not self._expire(timer):
                            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                                self._thread_id, ctypes.py_object(Interrupt)
                            )
                self._wake.clear()
            self._wake.wait(wait)
