"""Claim, fan out, deliver, retry: the dispatcher.

It runs inside django-q2 tasks (``tasks.py``) and in ``manage.py eventbus_drain``. Every
decision is recorded in our tables; a worker that dies leaves only a lease that expires.
The modules read as the flow: ``fanout`` (events → deliveries), ``claim`` (leases, and
attempts that never finished), ``execute`` (the execution model: each delivery on its own),
``timeout`` (handler time limits), ``retry`` (backoff and dead letters), ``loop``.
"""

from .claim import claim, next_due_in, paused_handlers, reclaim_unfinished, release
from .execute import Counts, deliver, load_event
from .fanout import UNROUTABLE, fan_out, fan_out_leased
from .loop import run, run_once
from .retry import backoff_seconds

__all__ = [
    "UNROUTABLE",
    "Counts",
    "backoff_seconds",
    "claim",
    "deliver",
    "fan_out",
    "fan_out_leased",
    "load_event",
    "next_due_in",
    "paused_handlers",
    "reclaim_unfinished",
    "release",
    "run",
    "run_once",
]
