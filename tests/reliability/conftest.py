"""Shared parts of the fault-injection suite (PostgreSQL, real worker processes).

``EVENTBUS_RELIABILITY_SIZE=quick`` (the default, what CI runs) or ``full`` (the sizes of
docs/RELIABILITY.md). Each scenario appends its figures, one JSON object a line, to
``EVENTBUS_RELIABILITY_REPORT`` (default: a file in the temp directory) and prints them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models import Count

from eventbus_app import emit
from eventbus_app.models import Delivery
from tests.conftest import ROOT
from tests.testapp.models import Effect

SIZE = os.environ.get("EVENTBUS_RELIABILITY_SIZE", "quick")
FULL = SIZE == "full"
LEASE_SECONDS = 3
# Fits a few times in the short lease: a batch runs about 2 s before it gives the rest back.
HANDLER_TIMEOUT = 1
REPORT = Path(
    os.environ.get("EVENTBUS_RELIABILITY_REPORT")
    or Path(tempfile.gettempdir())
    / f"eventbus_reliability_{os.environ.get('EVENTBUS_TEST_SUFFIX', 'main')}_{SIZE}.jsonl"
)
Status = Delivery.Status


def sized(quick: int, full: int) -> int:
    return full if FULL else quick


@pytest.fixture
def rel_env(worker_env: dict[str, str], tmp_path: Path, settings: Any) -> dict[str, str]:
    """Worker environment: short leases, the non-transactional effect log; no nudges here
    (the backlog is written before workers start)."""
    settings.EVENTBUS = {
        **settings.EVENTBUS,
        "NUDGE": False,
        "LEASE_SECONDS": LEASE_SECONDS,
        "HANDLER_TIMEOUT": HANDLER_TIMEOUT,
    }
    worker_env["EVENTBUS_REL_LOG"] = str(tmp_path / "effects.log")
    worker_env["EVENTBUS_TEST_SETTINGS"] = json.dumps(
        {"LEASE_SECONDS": LEASE_SECONDS, "DISPATCH_SECONDS": 5, "HANDLER_TIMEOUT": HANDLER_TIMEOUT}
    )
    return worker_env


def emit_many(cls: Any, start: int, n: int, chunk: int = 500, **fields: Any) -> None:
    for first in range(start, start + n, chunk):
        with transaction.atomic():
            for i in range(first, min(first + chunk, start + n)):
                emit(cls(n=i, **fields))


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll; returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def status_counts(**filters: Any) -> Counter[str]:
    rows = Delivery.objects.filter(**filters).values_list("status").annotate(n=Count("id"))
    return Counter({status: n for status, n in rows})


@dataclass
class Tally:
    """Losses and duplicates, counted from the recorded effects."""

    expected: int
    lost: int
    twice_tx: int
    twice_file: int = 0
    file_lines: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


def tally(events: int, tx_handlers: list[str], log: Path | None = None) -> Tally:
    """Per transactional handler: exactly one Effect per event; the file handler: at least
    one line per event (duplicates counted)."""
    dupes = (
        Effect.objects.filter(handler__in=tx_handlers)
        .values("handler", "event_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .count()
    )
    distinct = (
        Effect.objects.filter(handler__in=tx_handlers).values("handler", "event_id").distinct()
    ).count()
    expected = events * len(tx_handlers)
    lost = expected - distinct
    result = Tally(expected=expected, lost=lost, twice_tx=dupes)
    if log is not None:
        lines = log.read_text().splitlines() if log.exists() else []
        per_event = Counter(line.split()[1] for line in lines)
        result.file_lines = len(lines)
        result.lost += events - len(per_event)
        result.twice_file = sum(1 for n in per_event.values() if n > 1)
        result.expected += events
    return result


def report(scenario: str, **figures: Any) -> None:
    line = {"scenario": scenario, "size": SIZE, **figures}
    print("\nRELIABILITY", json.dumps(line))
    with REPORT.open("a") as f:
        f.write(json.dumps(line) + "\n")


def kill(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def our_backends() -> list[int]:
    """PostgreSQL backends of this test database, except this process's own."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        return [row[0] for row in cursor.fetchall()]


class Workers:
    """Real ``django-admin`` processes whose output goes to files (a pipe nobody reads would
    block a worker that logs a lot); each is killed with its process group at teardown."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        log = (self.logs / f"worker-{len(self.procs)}.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "django", *args],
            env=env or self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        log.close()
        proc.log_path = log.name  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def drain(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return self.start("eventbus_drain", *args, env=env)

    def output(self, proc: subprocess.Popen[str]) -> str:
        return Path(proc.log_path).read_text()  # type: ignore[attr-defined]

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                kill(proc)


@pytest.fixture
def workers(rel_env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    logs = tmp_path / "logs"
    logs.mkdir()
    pool = Workers(rel_env, logs)
    yield pool
    pool.stop_all()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The full size runs for minutes per scenario: lift pytest-timeout's 300 s for it."""
    if FULL:
        for item in items:
            if "reliability" in item.keywords:
                item.add_marker(pytest.mark.timeout(1200))
