"""The same workloads on procrastinate (PyPI), a PostgreSQL task queue whose Django
integration's ``defer()`` joins Django's transaction: one job per handler. Imported by
procrastinate's autodiscovery only when ``BENCH_PROCRASTINATE=1`` installs its app."""

from __future__ import annotations

import time

from procrastinate.contrib.django import app

from .models import Mark, Row


@app.task(name="bench.write", queue="bench")
def write(handler: int, ref: int) -> None:
    Row.objects.create(handler=handler, ref=ref)


@app.task(name="bench.ping", queue="bench")
def ping(key: int) -> None:
    Mark.objects.create(key=key, started=time.time())
