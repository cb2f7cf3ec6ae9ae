"""The hand-written baseline: one django-q2 task per handler, enqueued on commit.

What users write without an outbox::

    with transaction.atomic():
        order = Order.objects.create(...)
        for func in HANDLERS:
            transaction.on_commit(lambda f=func: async_task(f, order.pk))
"""

from __future__ import annotations

import time

from .models import Mark


def noop1(order_id: int) -> None:
    pass


def noop2(order_id: int) -> None:
    pass


def noop3(order_id: int) -> None:
    pass


def noop4(order_id: int) -> None:
    pass


def ping(key: int) -> None:
    Mark.objects.create(key=key, started=time.time())


HANDLERS = [
    "benchmarks.benchapp.baseline.noop1",
    "benchmarks.benchapp.baseline.noop2",
    "benchmarks.benchapp.baseline.noop3",
    "benchmarks.benchapp.baseline.noop4",
]
