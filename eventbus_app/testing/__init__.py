"""Helpers for projects testing code that emits events: the pytest plugin (fixture
``eventbus``, in ``plugin.py``, installed with the package), factory-boy factories
(``eventbus_app.testing.factories``) and these two functions.

``drain()`` runs the dispatcher in-process, so a test can emit, drain and assert on what
the handlers did, inside Django's ``TestCase`` transaction or outside it::

    from eventbus_app.testing import capture_events, drain

    with capture_events() as events:
        register_user(...)
    assert [type(e) for e in events] == [UserRegistered]
    drain()
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import DEFAULT_DB_ALIAS

from ..events import Event
from ..signals import event_emitted
from .recorder import EventBusRecorder

__all__ = ["EventBusRecorder", "capture_events", "drain"]


def drain(using: str = DEFAULT_DB_ALIAS) -> dict[str, Any]:
    """Fan out and deliver, in this process, everything due now on ``using``, until nothing
    is; returns the counts (``fanned_out``, ``delivered``, ``failed``, ``dead``, ...).

    Events emitted by the handlers and retries due at once run in the same call; a retry
    whose backoff has not passed is not waited for (set ``EVENTBUS['RETRY_BACKOFF'] = 0`` in
    tests, or call it again). Inside a test's transaction it runs in that transaction."""
    from ..dispatch import run

    return run(using).as_dict()


@contextmanager
def capture_events() -> Iterator[list[Event]]:
    """Collect every Event emitted inside the block (whether or not it commits)."""
    captured: list[Event] = []

    def receiver(sender: type[Event], *, event: Event, **kwargs: Any) -> None:
        captured.append(event)

    event_emitted.connect(receiver, weak=False)
    try:
        yield captured
    finally:
        event_emitted.disconnect(receiver)
