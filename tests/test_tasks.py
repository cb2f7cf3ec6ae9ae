"""tasks.py: the sweep's time budget (issue 10, defect 6) and a short-lived process's exit
with the broker down (defect 10)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Any

import pytest
from django.db import transaction

from eventbus_app import emit, tasks
from eventbus_app.models import Delivery
from tests.testapp.events import Work

from .conftest import ROOT


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_the_sweep_fits_in_django_q2s_timeout_and_serves_every_database(
    settings: Any, register: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two databases with a backlog each, DISPATCH_SECONDS 5, Q_CLUSTER timeout 4: the old
    sweep spent 5 s on the first database (django-q2 would have killed it there) and never
    reached the second."""
    from django_q.conf import Conf

    settings.EVENTBUS = {
        **settings.EVENTBUS,
        "DATABASES": ["default", "other"],
        "DISPATCH_SECONDS": 5,
        "BATCH_SIZE": 10,
    }
    monkeypatch.setattr(Conf, "TIMEOUT", 4)

    @register(Work, name="test.slow")
    def slow(event: Work) -> None:
        time.sleep(0.05)

    with transaction.atomic():
        for i in range(150):
            emit(Work(key=f"d{i}"))
    with transaction.atomic(using="other"):
        for i in range(150):
            emit(Work(key=f"o{i}"), using="other")
    started = time.monotonic()
    tasks.sweep()
    elapsed = time.monotonic() - started
    assert elapsed < 4, f"the sweep took {elapsed:.1f} s, over django-q2's 4 s timeout"
    for using in ("default", "other"):
        done = Delivery.objects.using(using).filter(handler="test.slow", status="succeeded")
        assert done.exists(), f"the sweep never served {using!r}"
    assert tasks.sweep_budget() == pytest.approx(4 * (1 - tasks.SWEEP_RESERVE) - 1)


def test_the_sweep_budget_without_a_timeout_is_dispatch_seconds_per_database(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django_q.conf import Conf

    settings.EVENTBUS = {**settings.EVENTBUS, "DATABASES": ["default", "other"]}
    monkeypatch.setattr(Conf, "TIMEOUT", None)
    assert tasks.sweep_budget() == 2 * settings.EVENTBUS["DISPATCH_SECONDS"]


EXIT_SCRIPT = """
import sys, time
import django
django.setup()
from django.db import transaction
from eventbus_app import emit
from tests.testapp.events import Work
with transaction.atomic():
    emit(Work(key="emitted by a script that exits at once"))
print("emitted", time.time(), flush=True)
"""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_script_exiting_with_the_broker_down_logs_the_lost_nudge_and_exits_soon(
    worker_env: dict[str, str],
) -> None:
    """Found by a newcomer: with Redis down, a script that emits and exits waited 2.6 s at
    exit and logged nothing, although README says a failed nudge is logged."""
    env = {
        **worker_env,
        "EVENTBUS_TEST_BROKER": "redis",
        "EVENTBUS_TEST_REDIS_PORT": str(_closed_port()),  # nothing listens: the broker is down
    }
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    ended = time.time()
    assert done.returncode == 0, done.stderr
    emitted = float(done.stdout.split("emitted", 1)[1].split()[0])
    # The flush waits EXIT_FLUSH_SECONDS at most (the push itself would take ~3 s of
    # redis-py retries); interpreter shutdown and a loaded machine get a second on top.
    assert ended - emitted < tasks.EXIT_FLUSH_SECONDS + 1.0, "the exit waited too long"
    assert "Exiting before the broker took the eventbus nudge" in done.stderr
    assert "the sweep schedule will dispatch" in done.stderr


def test_no_wait_at_exit_while_the_broker_is_known_to_be_down(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a failed nudge (nudges paused), the exit flush does not wait at all."""
    import threading

    hold = threading.Event()
    thread = threading.Thread(target=hold.wait, daemon=True)
    thread.start()
    monkeypatch.setattr(tasks, "_nudger", (os.getpid(), thread))
    monkeypatch.setattr(tasks, "_nudges_paused_until", time.monotonic() + 60)
    tasks._pending.add("default")
    try:
        started = time.monotonic()
        with caplog.at_level("WARNING", logger="eventbus_app.tasks"):
            tasks._flush_at_exit()
        assert time.monotonic() - started < 0.2
        assert "the broker was down a moment ago" in caplog.text
        assert not tasks._pending
    finally:
        hold.set()
        tasks._pending.discard("default")
