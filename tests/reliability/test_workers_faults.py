"""Scenarios 1-3: concurrent workers, kill -9, database connections terminated mid-drain."""

from __future__ import annotations

import random
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.db.models.functions import Now

from eventbus_app.models import Delivery
from tests.testapp.models import Effect

from .conftest import (
    LEASE_SECONDS,
    Status,
    Workers,
    emit_many,
    kill,
    our_backends,
    report,
    sized,
    status_counts,
    tally,
    wait_until,
)
from .events import Job

pytestmark = [pytest.mark.postgres, pytest.mark.reliability, pytest.mark.subprocess]

TX = ["rel.tx_a", "rel.tx_b", "rel.tx_async"]
HANDLERS = 4


def log_of(rel_env: dict[str, str]) -> Path:
    return Path(rel_env["EVENTBUS_REL_LOG"])


def finish(workers: Workers, total: int, timeout: float) -> float:
    """Run drains (as cron would) until every delivery has finished."""

    def done() -> bool:
        if Delivery.objects.filter(status=Status.SUCCEEDED).count() >= total:
            return True
        if not any(p.poll() is None for p in workers.procs):
            workers.drain()
        return False

    return wait_until(done, timeout, f"{total} deliveries to succeed")


def test_four_workers_drain_a_backlog_each_delivery_once(workers: Workers, rel_env: Any) -> None:
    events = sized(1000, 5000)
    emit_many(Job, 0, events)
    started = time.monotonic()
    procs = [workers.drain() for _ in range(4)]
    for proc in procs:
        proc.wait(timeout=900)
    elapsed = time.monotonic() - started
    assert [p.returncode for p in procs] == [0] * 4, [workers.output(p) for p in procs]
    assert status_counts() == {Status.SUCCEEDED: events * HANDLERS}
    result = tally(events, TX, log_of(rel_env))
    assert (result.lost, result.twice_tx, result.twice_file) == (0, 0, 0)
    assert not Effect.objects.filter(note="past lease").exists()
    per_pid = Counter(Effect.objects.values_list("pid", flat=True))
    for line in log_of(rel_env).read_text().splitlines():
        per_pid[int(line.split()[3])] += 1
    shares = sorted(per_pid.values())
    assert len(shares) == 4, per_pid  # SKIP LOCKED lets all four work at once
    report(
        "concurrent workers",
        events=events,
        deliveries=events * HANDLERS,
        faults="4 drain processes at once",
        lost=result.lost,
        twice_tx=result.twice_tx,
        twice_file=result.twice_file,
        seconds=round(elapsed, 1),
        per_process=shares,
        spread=f"{min(shares) / sum(shares):.1%}-{max(shares) / sum(shares):.1%}",
    )


def test_kill_9_at_random_moments_loses_nothing(workers: Workers, rel_env: Any) -> None:
    """SIGKILL a random worker at random moments while a backlog drains; restart it."""
    wave = sized(500, 2000)
    kills_wanted = sized(20, 60)
    rng = random.Random(4)
    emit_many(Job, 0, wave, sleep=0.002)
    events = wave
    live = [workers.drain() for _ in range(4)]
    kills = 0
    started = time.monotonic()
    overdue_seen = 0
    while kills < kills_wanted:
        time.sleep(rng.uniform(0.3, 1.2))
        victim = rng.choice(live)
        if victim.poll() is None:
            kill(victim)
            kills += 1
        live = [p for p in live if p.poll() is None]
        live += [workers.drain() for _ in range(4 - len(live))]
        # Expired leases are claimable again; they wait their turn in due-time order.
        overdue_seen = max(
            overdue_seen,
            Delivery.objects.filter(
                status=Status.RUNNING,
                next_attempt_at__lt=Now() - timedelta(seconds=5),
            ).count(),
        )
        if Delivery.objects.exclude(status=Status.SUCCEEDED).count() < 400:
            emit_many(Job, events, wave, sleep=0.002)  # keep a backlog to kill into
            events += wave
    for proc in live:
        proc.wait(timeout=300)
    drained = finish(workers, events * HANDLERS, timeout=300)
    elapsed = time.monotonic() - started
    counts = status_counts()
    result = tally(events, TX, log_of(rel_env))
    attempts = Counter(Delivery.objects.values_list("attempts", flat=True))
    report(
        "kill -9",
        events=events,
        deliveries=events * HANDLERS,
        faults=f"{kills} SIGKILLs",
        lost=result.lost,
        twice_tx=result.twice_tx,
        twice_file=result.twice_file,
        seconds=round(elapsed, 1),
        drain_after_last_kill=round(drained, 1),
        attempts=dict(sorted(attempts.items())),
        expired_leases_waiting_over_5s=overdue_seen,
    )
    assert counts == {Status.SUCCEEDED: events * HANDLERS}, counts
    assert (result.lost, result.twice_tx) == (0, 0)
    assert not Delivery.objects.filter(status=Status.RUNNING).exists()
    # No handler ran on an expired lease (its effect would have raced another worker's).
    assert not Effect.objects.filter(note="past lease").exists()


def test_terminated_database_connections_mid_drain(workers: Workers, rel_env: Any) -> None:
    """pg_terminate_backend() on the workers' connections (this test database only),
    repeatedly, while they drain; the workers carry on by themselves."""
    events = sized(1000, 3000)
    terminations_wanted = sized(15, 40)
    rng = random.Random(3)
    emit_many(Job, 0, events, sleep=0.002)
    started = time.monotonic()
    procs = [workers.drain() for _ in range(3)]
    terminated = rounds = 0
    while terminated < terminations_wanted:
        time.sleep(rng.uniform(0.2, 0.8))
        pids = our_backends()
        with connection.cursor() as cursor:
            for pid in pids:
                cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
                terminated += bool(cursor.fetchone()[0])
        rounds += 1
        # A drain exits once nothing is due (a killed batch's rows wait for their lease);
        # like cron, start another while the storm lasts.
        live = [p for p in procs if p.poll() is None]
        procs += [workers.drain() for _ in range(3 - len(live))]
    for proc in procs:
        proc.wait(timeout=300)
    outputs = [workers.output(p) for p in procs]
    assert {p.returncode for p in procs} == {0}, outputs
    # Each drain kept working between the drops: none gave up with work left.
    assert not [o for o in outputs if "stopped with work remaining" in o], outputs
    drained = finish(workers, events * HANDLERS, timeout=120)
    elapsed = time.monotonic() - started
    result = tally(events, TX, log_of(rel_env))
    errors = sum(
        int(o.split("database errors ")[1].split()[0]) for o in outputs if "database errors" in o
    )
    report(
        "connection loss",
        events=events,
        deliveries=events * HANDLERS,
        faults=f"{terminated} backends terminated in {rounds} rounds",
        lost=result.lost,
        twice_tx=result.twice_tx,
        twice_file=result.twice_file,
        seconds=round(elapsed, 1),
        errors_recovered=errors,
        drain_after_last=round(drained, 1),
    )
    assert status_counts() == {Status.SUCCEEDED: events * HANDLERS}
    assert (result.lost, result.twice_tx) == (0, 0)
    assert not Effect.objects.filter(note="past lease").exists()
    assert terminated >= terminations_wanted
    assert LEASE_SECONDS
