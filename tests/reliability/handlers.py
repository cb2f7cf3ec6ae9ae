"""Handlers of the reliability suite. Each one records every run that commits.

Transactional effects are ``Effect`` rows written in the handler's transaction: they must
exist exactly once per delivery. The non-transactional effect is a line appended to the file
named by ``EVENTBUS_REL_LOG`` (an external side effect: at-least-once, duplicates counted).
"""

from __future__ import annotations

import os
import time

from django.db.models.functions import Now

from eventbus_app import current_delivery, handler
from eventbus_app.models import Delivery
from tests.testapp.models import Effect

from .events import (
    NEW_CODE,
    Clean,
    Crash,
    Deploy,
    Hang,
    Job,
    Misbehave,
    Paced,
    Poisoned,
    SignedUp,
    Step,
    Tick,
)


def record(name: str) -> None:
    """The effect row, noting "past lease" if the delivery's lease had expired by the
    database's clock while the handler ran (another worker could have claimed it)."""
    ctx = current_delivery()
    assert ctx is not None
    leased = (
        Delivery.objects.using(ctx.using)
        .filter(pk=ctx.delivery_id, next_attempt_at__gt=Now())
        .exists()
    )
    Effect.objects.using(ctx.using).create(
        handler=name,
        event_id=ctx.event_id,
        attempt=ctx.attempt,
        pid=os.getpid(),
        note="" if leased else "past lease",
    )


def append_line(name: str) -> None:
    path = os.environ.get("EVENTBUS_REL_LOG")
    ctx = current_delivery()
    assert ctx is not None
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{name} {ctx.event_id} {ctx.attempt} {os.getpid()}\n".encode())
        finally:
            os.close(fd)


@handler(Job, name="rel.tx_a")
def tx_a(event: Job) -> None:
    if event.sleep:
        time.sleep(event.sleep)
    record("rel.tx_a")


@handler(Job, name="rel.tx_b")
def tx_b(event: Job) -> None:
    record("rel.tx_b")


@handler(Job, name="rel.tx_async")
async def tx_async(event: Job) -> None:
    from asgiref.sync import sync_to_async

    await sync_to_async(record)("rel.tx_async")


@handler(Job, name="rel.file")
def file_effect(event: Job) -> None:
    append_line("rel.file")


@handler(Clean, name="rel.clean_a")
def clean_a(event: Clean) -> None:
    record("rel.good_a")


@handler(Clean, name="rel.clean_b")
def clean_b(event: Clean) -> None:
    record("rel.good_b")


@handler(Poisoned, name="rel.poisoned_a")
def poisoned_a(event: Poisoned) -> None:
    record("rel.good_a")


@handler(Poisoned, name="rel.poisoned_b")
def poisoned_b(event: Poisoned) -> None:
    record("rel.good_b")


@handler(Poisoned, name="rel.poison", max_attempts=3, retry_backoff=0.2, retry_backoff_max=1)
def poison(event: Poisoned) -> None:
    raise RuntimeError(f"poison message {event.n}")


@handler(SignedUp, name="rel.welcome")
def welcome(event: SignedUp) -> None:
    record("rel.welcome")


@handler(Tick, name="rel.flaky", max_attempts=3, retry_backoff=12, retry_backoff_max=12)
def flaky(event: Tick) -> None:
    """Fails its first attempt; the retry records when it ran by the database's clock."""
    from django.db import connections

    ctx = current_delivery()
    assert ctx is not None
    if ctx.attempt == 1:
        raise RuntimeError(f"first attempt of tick {event.n} fails")
    with connections[ctx.using].cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        ran_at = cursor.fetchone()[0]
    Effect.objects.using(ctx.using).create(
        handler="rel.flaky",
        event_id=ctx.event_id,
        attempt=ctx.attempt,
        pid=os.getpid(),
        note=ran_at.isoformat(),
    )


# --- isolation: one misbehaving handler next to a good one on the same event type ----------

VICTIM = 7


@handler(Hang, name="rel.hang_good")
def hang_good(event: Hang) -> None:
    record("rel.hang_good")


@handler(Hang, name="rel.hangs", timeout=2)
def hangs(event: Hang) -> None:
    record("rel.hangs")
    if event.n == VICTIM:
        time.sleep(10**6)


@handler(Crash, name="rel.crash_good")
def crash_good(event: Crash) -> None:
    record("rel.crash_good")


@handler(Crash, name="rel.crashes")
def crashes(event: Crash) -> None:
    """Kills its worker as a segfaulting C extension or the OOM killer would: no cleanup."""
    if event.n == VICTIM:
        os._exit(70)
    record("rel.crashes")


# --- rolling deploys: old and new code side by side -----------------------------------------


@handler(Deploy, name="rel.deploy_both")
def deploy_both(event: Deploy) -> None:
    record("rel.deploy_both")


if NEW_CODE:

    @handler(Deploy, name="rel.deploy_new_only")
    def deploy_new_only(event: Deploy) -> None:
        record("rel.deploy_new_only")


# --- ordered handlers under kill -9 ---------------------------------------------------------


@handler(Step, name="rel.ordered", ordered=True)
def ordered_step(event: Step) -> None:
    """Records (stream, position) in its transaction: the effects' ids give the order."""
    from eventbus_app.models import OutboxEvent

    ctx = current_delivery()
    assert ctx is not None
    row = OutboxEvent.objects.using(ctx.using).only("stream", "position").get(pk=ctx.event_id)
    # REL_ORDERED_SECONDS: how long a run takes (a test that needs workers to overlap sets
    # it long enough that one worker cannot finish before the others have started).
    time.sleep(float(os.environ.get("REL_ORDERED_SECONDS", "0.002")))
    Effect.objects.using(ctx.using).create(
        handler="rel.ordered",
        event_id=ctx.event_id,
        attempt=ctx.attempt,
        pid=os.getpid(),
        note=f"{row.stream}:{row.position}",
    )


# --- the faults a batch transaction used to spread (one misbehaving handler each) ----------

BAD = 3  # the event each misbehaving handler misbehaves on (all others: it behaves)


@handler(Misbehave, name="rel.mis_good")
def mis_good(event: Misbehave) -> None:
    """The neighbour: it also checks that no transaction-scoped state reached it."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(current_setting('app.tenant', true), ''), "
            "current_setting('statement_timeout'), "
            "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
            "AND pid = pg_backend_pid())"
        )
        tenant, timeout, locks = cursor.fetchone()
    ctx = current_delivery()
    assert ctx is not None
    Effect.objects.create(
        handler="rel.mis_good",
        event_id=ctx.event_id,
        attempt=ctx.attempt,
        pid=os.getpid(),
        note=f"{tenant}|{timeout}|{locks}",
    )


@handler(Misbehave, name="rel.mis_deferred_fk", max_attempts=2)
def mis_deferred_fk(event: Misbehave) -> None:
    from tests.testapp.models import Child

    record("rel.mis_deferred_fk")
    if event.n == BAD:
        Child.objects.create(parent_id=10**12)  # fails at COMMIT only


@handler(Misbehave, name="rel.mis_nul", max_attempts=2)
def mis_nul(event: Misbehave) -> None:
    if event.n == BAD:
        raise ValueError("a NUL \x00 in the message")
    record("rel.mis_nul")


@handler(Misbehave, name="rel.mis_state")
def mis_state(event: Misbehave) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('app.tenant', 'acme', true)")
        cursor.execute("SET LOCAL statement_timeout = '4321s'")
        cursor.execute("SELECT pg_advisory_xact_lock(4242)")
    record("rel.mis_state")


@handler(Misbehave, name="rel.mis_on_commit")
def mis_on_commit(event: Misbehave) -> None:
    from django.db import transaction

    record("rel.mis_on_commit")

    def broker_down() -> None:
        raise ConnectionError("broker down")

    transaction.on_commit(broker_down)


# --- a throttled handler shared by several workers -------------------------------------------


@handler(Paced, name="rel.throttled", max_attempts=1)
def throttled(event: Paced) -> None:
    """Records when it started, by the database's clock (workers' clocks may differ)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT extract(epoch from clock_timestamp())")
        started = float(cursor.fetchone()[0])
    ctx = current_delivery()
    assert ctx is not None
    Effect.objects.create(
        handler="rel.throttled", event_id=ctx.event_id, pid=os.getpid(), note=f"{started:.6f}"
    )
