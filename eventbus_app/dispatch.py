"""Claim, fan out, deliver, retry: the dispatcher.

It runs inside django-q2 tasks (``tasks.py``) and in ``manage.py eventbus_drain``. Every
decision is recorded in our tables; a worker that dies leaves only a lease that expires.

* **Fan-out** claims undispatched events (``dispatched_at IS NULL``) and creates one
  ``Delivery`` per registered handler. The dispatcher loop creates them already leased to
  itself (``fan_out_leased``) and runs them at once: fresh work needs no separate claim. On
  PostgreSQL that is one INSERT from arrays whose RETURNING gives the leased rows.
* **Claim** picks due deliveries by state and due time (never by an id cursor: ids are
  assigned at insert, not at commit) with ``FOR UPDATE SKIP LOCKED`` where the database has
  it, and marks them ``RUNNING`` under a fresh lease token in one statement (``UPDATE …
  WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED LIMIT n)``). The token guards every later
  write, so a worker whose lease expired cannot record an outcome.
* **Deliver** runs a batch in chunks of about a second, each one transaction on PostgreSQL:
  the chunk locks its leased rows, runs every handler in its own savepoint (sent only if the
  handler uses the database: ``savepoint.py``) and marks the successes in one UPDATE before
  it commits. SQLite commits per delivery, so that one batch never holds its write lock for
  long.

Due times and leases use the database's clock (``Now()``), so workers with skewed clocks
neither run retries early nor starve them.
"""

from __future__ import annotations

import logging
import random
import time
import traceback as tb
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django.db import DatabaseError, connections, transaction
from django.db.models import DateTimeField, ExpressionWrapper, F
from django.db.models.functions import Now

from . import signals
from .conf import eventbus_settings
from .context import DeliveryContext, _current, _stopped
from .events import Event, event_class
from .exceptions import (
    EventBusError,
    LeaseLost,
    PermanentError,
    UnknownEventType,
    UnknownHandler,
)
from .models import Delivery, DeliveryAttempt, HandlerState, OutboxEvent
from .registry import HandlerSpec, get_handler, handlers_for
from .savepoint import lazy_savepoint

logger = logging.getLogger(__name__)

# Pseudo-handler of an event whose type has no class here: delivering it routes the event
# once the class exists again, and dead-letters it (with the reason) until then.
UNROUTABLE = "eventbus_app.unroutable"

Status = Delivery.Status


class AttemptsExhausted(PermanentError):
    """A delivery was claimed more often than its handler's max_attempts allows."""


@dataclass
class Counts:
    fanned_out: int = 0
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    lease_lost: int = 0
    released: int = 0
    errors: int = 0
    more: bool = False  # stopped by the time budget with work still due
    full: bool = False  # a batch came back full: a backlog more workers could share

    def add(self, other: Counts) -> None:
        for name in (
            "fanned_out",
            "delivered",
            "failed",
            "dead",
            "lease_lost",
            "released",
            "errors",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class _Outcome:
    delivery: Delivery
    status: str
    error: str = ""


def backoff_seconds(attempt: int, spec: HandlerSpec | None = None) -> float:
    """Delay before the retry that follows failed ``attempt`` (1-based)."""
    base = eventbus_settings.RETRY_BACKOFF
    cap = eventbus_settings.RETRY_BACKOFF_MAX
    if spec is not None:
        base = spec.retry_backoff if spec.retry_backoff is not None else base
        cap = spec.retry_backoff_max if spec.retry_backoff_max is not None else cap
    if base <= 0:
        return 0.0
    delay = min(float(cap), float(base) * 2.0 ** min(attempt - 1, 64))
    if eventbus_settings.RETRY_JITTER:
        delay = random.uniform(delay / 2, delay)
    return delay


def _batch_transactions(using: str) -> bool:
    # SQLite has one writer: a batch-long transaction would hold it for the whole batch.
    return connections[using].vendor != "sqlite"


# --- fan-out -----------------------------------------------------------------------------


def fan_out(using: str = "default", limit: int | None = None) -> int:
    """Create the deliveries of up to ``limit`` undispatched events; returns events done."""
    return _fan_out(using, limit, None)[0]


def fan_out_leased(
    using: str = "default", limit: int | None = None
) -> tuple[int, uuid.UUID, list[Delivery]]:
    """:func:`fan_out`, creating the new deliveries already leased to this worker (paused
    handlers' stay pending): it saves the claim round trip for fresh work. Returns events
    done, the lease token and the leased deliveries (with their events)."""
    token = uuid.uuid4()
    count, leased = _fan_out(using, limit, token)
    return count, token, leased


def _fan_out(using: str, limit: int | None, token: uuid.UUID | None) -> tuple[int, list[Delivery]]:
    limit = limit or eventbus_settings.BATCH_SIZE
    lease_ends = ExpressionWrapper(
        Now() + timedelta(seconds=eventbus_settings.LEASE_SECONDS), output_field=DateTimeField()
    )
    postgres = connections[using].vendor == "postgresql"
    with transaction.atomic(using=using):
        # On PostgreSQL the whole rows: the leased deliveries are built from them and from
        # the INSERT's RETURNING, without reading them back.
        picked = (
            OutboxEvent.objects.using(using)
            .filter(dispatched_at__isnull=True)
            .order_by("id")
            .select_for_update(skip_locked=True)
            .annotate(lease_ends=lease_ends)
        )
        events = list(picked[:limit] if postgres else picked.only("pk", "event_type")[:limit])
        if not events:
            return 0, []
        paused = set(paused_handlers(using)) if token is not None else set()
        rows: list[tuple[int, str, bool]] = []  # (event, handler, leased to this worker)
        names_by_type: dict[str, list[str]] = {}  # resolve each event type once per batch
        for event in events:
            names = names_by_type.get(event.event_type)
            if names is None:
                cls = event_class(event.event_type)
                names = [s.name for s in handlers_for(cls)] if cls is not None else [UNROUTABLE]
                names_by_type[event.event_type] = names
            rows.extend((event.pk, n, token is not None and n not in paused) for n in names)
        # The database's clock, read once: an expression per row costs more than the INSERT.
        lease_end = events[0].lease_ends
        if postgres:
            leased = _insert_deliveries(using, rows, token, lease_end, events)
        else:
            _bulk_create_deliveries(using, rows, token, lease_end)
        OutboxEvent.objects.using(using).filter(
            pk__in=[e.pk for e in events], dispatched_at__isnull=True
        ).update(dispatched_at=Now())
    if not postgres:
        leased = _leased(using, token) if token is not None else []
    return len(events), leased


def _bulk_create_deliveries(
    using: str, rows: list[tuple[int, str, bool]], token: uuid.UUID | None, lease_end: Any
) -> None:
    lease = {"status": Status.RUNNING, "lease_token": token, "attempts": 1}
    Delivery.objects.using(using).bulk_create(
        [
            Delivery(event_id=pk, handler=name, next_attempt_at=lease_end, **lease)
            if mine
            else Delivery(event_id=pk, handler=name)
            for pk, name, mine in rows
        ],
        ignore_conflicts=True,
    )


def _insert_deliveries(
    using: str,
    rows: list[tuple[int, str, bool]],
    token: uuid.UUID | None,
    lease_end: Any,
    events: Sequence[OutboxEvent],
) -> list[Delivery]:
    """PostgreSQL: one INSERT from three arrays (``bulk_create`` binds 12 parameters a row
    and was most of a batch's time), returning what it created; returns the deliveries it
    leased to this worker, with their events attached, in id order."""
    if not rows:
        return []
    connection = connections[using]
    table = connection.ops.quote_name(Delivery._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (event_id, handler, status, attempts, last_error, error_class, "
            "traceback, next_attempt_at, lease_token, replays) "
            "SELECT e, h, CASE WHEN l THEN %s ELSE %s END, CASE WHEN l THEN 1 ELSE 0 END, "
            "'', '', '', CASE WHEN l THEN %s ELSE STATEMENT_TIMESTAMP() END, "
            "CASE WHEN l THEN %s::uuid END, 0 "
            "FROM unnest(%s::bigint[], %s::text[], %s::boolean[]) AS t(e, h, l) "
            "ON CONFLICT DO NOTHING RETURNING id, event_id, handler, status",
            [
                Status.RUNNING.value,
                Status.PENDING.value,
                lease_end,
                token,
                [r[0] for r in rows],
                [r[1] for r in rows],
                [r[2] for r in rows],
            ],
        )
        created = cursor.fetchall()
    by_id = {event.pk: event for event in events}
    leased = []
    for pk, event_id, handler, status in sorted(created):
        if status != Status.RUNNING:
            continue  # a paused handler's: it waits, pending
        delivery = Delivery(
            id=pk,
            handler=handler,
            status=Status.RUNNING,
            attempts=1,
            next_attempt_at=lease_end,
            lease_token=token,
        )
        delivery.event = by_id[event_id]
        delivery._state.adding = False
        delivery._state.db = using
        leased.append(delivery)
    return leased


def _leased(using: str, token: uuid.UUID) -> list[Delivery]:
    # Running rows whose lease has not ended: the range keeps this on the partial due index
    # (the lease token alone has no index; a scan of all deliveries grows with history).
    return list(
        Delivery.objects.using(using)
        .filter(lease_token=token, status=Status.RUNNING, next_attempt_at__gt=Now())
        .select_related("event")
        .order_by("pk")
    )


# --- claim -------------------------------------------------------------------------------


def paused_handlers(using: str) -> list[str]:
    return list(
        HandlerState.objects.using(using).filter(paused=True).values_list("handler", flat=True)
    )


def claim(using: str = "default", limit: int | None = None) -> tuple[uuid.UUID, list[Delivery]]:
    """Lease up to ``limit`` due deliveries; returns the lease token and the deliveries.

    One UPDATE whose subquery picks (and, where the database can, locks with SKIP LOCKED)
    the due rows of unpaused handlers, then one SELECT of what it leased.
    """
    limit = limit or eventbus_settings.BATCH_SIZE
    token = uuid.uuid4()
    lease = timedelta(seconds=eventbus_settings.LEASE_SECONDS)
    due = {"status__in": Delivery.CLAIMABLE, "next_attempt_at__lte": Now()}
    paused = HandlerState.objects.using(using).filter(paused=True).values("handler")
    picked = (
        Delivery.objects.using(using)
        .filter(**due)
        .exclude(handler__in=paused)
        .order_by("next_attempt_at")
        .select_for_update(skip_locked=True)
        .values("pk")[:limit]
    )
    connection = connections[using]
    with transaction.atomic(using=using):
        if connection.vendor == "postgresql":
            # A materialized CTE: PostgreSQL may re-run an ``IN (… LIMIT n)`` subquery per
            # outer row, which with SKIP LOCKED would lease more than ``n`` rows.
            inner, params = picked.query.get_compiler(using=using).as_sql()
            table = connection.ops.quote_name(Delivery._meta.db_table)
            with connection.cursor() as cursor:
                cursor.execute(
                    f"WITH picked AS MATERIALIZED ({inner}) UPDATE {table} SET status = %s, "
                    "lease_token = %s, "
                    "next_attempt_at = STATEMENT_TIMESTAMP() + make_interval(secs => %s), "
                    f"attempts = {table}.attempts + 1 FROM picked WHERE {table}.id = picked.pk",
                    [*params, Status.RUNNING.value, token, lease.total_seconds()],
                )
                updated = cursor.rowcount
        else:
            # Re-checking the due condition keeps the claim safe where rows are not locked.
            updated = (
                Delivery.objects.using(using)
                .filter(pk__in=picked, **due)
                .update(
                    status=Status.RUNNING,
                    lease_token=token,
                    next_attempt_at=Now() + lease,
                    attempts=F("attempts") + 1,
                )
            )
    return token, _leased(using, token) if updated else []


# --- deliver -----------------------------------------------------------------------------


def _load_event(record: OutboxEvent) -> Event:
    cls = event_class(record.event_type)
    if cls is None:
        raise UnknownEventType(
            f"No Event class is registered for event_type {record.event_type!r} (event "
            f"#{record.pk}). Restore the class (or one with event_type={record.event_type!r}), "
            "then retry this dead letter."
        )
    return cls.from_json(record.payload, record.version)


def _route_again(delivery: Delivery, using: str) -> None:
    """Deliver the UNROUTABLE pseudo-handler: fan the event out now that its class exists."""
    cls = event_class(delivery.event.event_type)
    if cls is None:
        _load_event(delivery.event)  # raises UnknownEventType with the explanation
        return
    Delivery.objects.using(using).bulk_create(
        [Delivery(event_id=delivery.event_id, handler=s.name) for s in handlers_for(cls)],
        ignore_conflicts=True,
    )


def _succeeded() -> dict[str, Any]:
    """The columns of a delivery that succeeded (the raw UPDATE in _mark_all_succeeded
    writes the same)."""
    return {
        "status": Status.SUCCEEDED,
        "lease_token": None,
        "next_attempt_at": None,
        "finished_at": Now(),
        "last_error": "",
        "error_class": "",
        "traceback": "",
    }


def _mark_succeeded(delivery: Delivery, token: uuid.UUID, using: str) -> None:
    updated = (
        Delivery.objects.using(using)
        .filter(pk=delivery.pk, lease_token=token)
        .update(**_succeeded())
    )
    if not updated:
        raise LeaseLost(
            f"Lease on delivery #{delivery.pk} ({delivery.handler}) expired and another worker "
            "claimed it; this run's effects are rolled back."
        )


def _record_failure(
    delivery: Delivery, token: uuid.UUID, using: str, exc: BaseException, spec: HandlerSpec | None
) -> _Outcome:
    max_attempts = (spec.max_attempts if spec else None) or eventbus_settings.MAX_ATTEMPTS
    permanent = isinstance(exc, PermanentError)
    dead = permanent or delivery.attempts >= max_attempts
    error = f"{type(exc).__name__}: {exc}"
    if permanent and not isinstance(exc, AttemptsExhausted):
        error += "\n(This error is permanent: retrying cannot help, so it was not retried.)"
    error_class = f"{type(exc).__module__}.{type(exc).__qualname__}"
    trace = "".join(tb.format_exception(exc))
    delay = 0.0 if dead else backoff_seconds(delivery.attempts, spec)
    with transaction.atomic(using=using):
        updated = (
            Delivery.objects.using(using)
            .filter(pk=delivery.pk, lease_token=token)
            .update(
                status=Status.DEAD if dead else Status.FAILED,
                lease_token=None,
                next_attempt_at=None if dead else Now() + timedelta(seconds=delay),
                finished_at=Now() if dead else None,
                last_error=error,
                error_class=error_class,
                traceback=trace,
            )
        )
        if not updated:
            logger.warning(
                "Lease on delivery #%s (%s) was lost before its failure was recorded",
                delivery.pk,
                delivery.handler,
            )
            return _Outcome(delivery, "lease_lost")
        DeliveryAttempt.objects.using(using).create(
            delivery_id=delivery.pk,
            attempt=delivery.attempts,
            outcome=DeliveryAttempt.Outcome.DEAD if dead else DeliveryAttempt.Outcome.FAILED,
            error=error,
            error_class=error_class,
            traceback=trace,
            replays=delivery.replays,
        )
    logger.error(
        "Event #%s (%s): handler %s failed on attempt %s/%s%s: %s",
        delivery.event_id,
        delivery.event.event_type,
        delivery.handler,
        delivery.attempts,
        max_attempts,
        " and is dead" if dead else f", retrying in {delay:.1f}s",
        error.splitlines()[0],
        exc_info=exc,
    )
    delivery.status = Status.DEAD if dead else Status.FAILED
    delivery.last_error, delivery.error_class, delivery.traceback = error, error_class, trace
    return _Outcome(delivery, delivery.status, error)


def _deliver_one(
    delivery: Delivery,
    token: uuid.UUID,
    using: str,
    cache: dict[int, Event],
    *,
    locked: bool = False,
) -> _Outcome:
    """Run one delivery. ``locked``: this transaction holds the delivery's row lock, so the
    lease cannot change under it, and the caller marks successes in bulk before commit."""
    spec = get_handler(delivery.handler)
    try:
        if delivery.handler == UNROUTABLE:
            with transaction.atomic(using=using):
                _route_again(delivery, using)
                if not locked:
                    _mark_succeeded(delivery, token, using)
            delivery.status = Status.SUCCEEDED
            return _Outcome(delivery, Status.SUCCEEDED)
        if spec is None:
            raise UnknownHandler(
                f"No handler named {delivery.handler!r} is registered in this process (removed "
                "or renamed?). Register it again under that name, or leave this dead letter."
            )
        max_attempts = spec.max_attempts or eventbus_settings.MAX_ATTEMPTS
        if delivery.attempts > max_attempts:
            raise AttemptsExhausted(
                f"Claimed for attempt {delivery.attempts} of {max_attempts}: earlier attempts "
                "did not finish (the worker died or its lease expired)."
            )
        if delivery.event_id not in cache:
            cache[delivery.event_id] = _load_event(delivery.event)
        event = cache[delivery.event_id]
        ctx = DeliveryContext(
            delivery_id=delivery.pk,
            event_id=delivery.event_id,
            event_type=delivery.event.event_type,
            handler=delivery.handler,
            attempt=delivery.attempts,
            correlation_id=delivery.event.correlation_id,
            causation_id=delivery.event.causation_id,
            depth=delivery.event.depth,
            replays=delivery.replays,
            using=using,
        )
        reset = _current.set(ctx)
        stopped: list[Exception] = []
        reset_stopped = _stopped.set(stopped)
        try:
            # In a batch transaction the handler gets a savepoint only if it uses this
            # database (savepoint.py); alone, it runs in a transaction of its own.
            with lazy_savepoint(using) if locked else transaction.atomic(using=using):
                if spec.is_async:
                    async_to_sync(spec.func)(event)
                else:
                    spec.func(event)
                if stopped:  # the handler caught ChainDepthExceeded: it still stops here
                    raise stopped[0]
                if not locked:
                    _mark_succeeded(delivery, token, using)
        finally:
            _stopped.reset(reset_stopped)
            _current.reset(reset)
    except LeaseLost as exc:
        logger.warning("%s", exc)
        return _Outcome(delivery, "lease_lost")
    except Exception as exc:
        if isinstance(exc, DatabaseError) and connections[using].needs_rollback:
            raise  # the outer transaction is broken: give the batch back to its lease
        if isinstance(exc, DatabaseError) and not connections[using].is_usable():
            raise
        return _record_failure(delivery, token, using, exc, spec)
    delivery.status = Status.SUCCEEDED
    return _Outcome(delivery, Status.SUCCEEDED)


# A batch transaction commits after this long even if the batch is not done, so slow
# handlers do not hold locks for long and a crash loses little finished work.
CHUNK_SECONDS = 1.0
# Stop starting deliveries once this share of the lease is used up: a batch never outlives
# its lease (which would let another worker run the same deliveries).
LEASE_SHARE = 0.8


def deliver(
    using: str,
    token: uuid.UUID,
    deliveries: list[Delivery],
    *,
    claimed_at: float | None = None,
    counts: Counts | None = None,
) -> Counts:
    """Run a claimed batch; returns what happened. Signals are sent after each commit.

    ``claimed_at`` is the ``time.monotonic()`` of the claim (default: now). ``counts``, if
    given, is updated after each commit, so it keeps the progress of a batch that fails later.
    """
    counts = Counts() if counts is None else counts
    cache: dict[int, Event] = {}
    started = time.monotonic() if claimed_at is None else claimed_at
    lease_budget = eventbus_settings.LEASE_SECONDS * LEASE_SHARE
    batched = _batch_transactions(using)
    remaining = list(reversed(deliveries))
    while remaining:
        outcomes: list[_Outcome] = []
        chunk_started = time.monotonic()
        with transaction.atomic(using=using) if batched else nullcontext():
            if batched:
                remaining = _lock_leased(using, token, remaining, outcomes)
            while remaining:
                now = time.monotonic()
                if now - started > lease_budget:
                    break
                if batched and outcomes and now - chunk_started > CHUNK_SECONDS:
                    break
                outcome = _deliver_one(remaining.pop(), token, using, cache, locked=batched)
                outcomes.append(outcome)
            if batched:
                _mark_all_succeeded(using, token, outcomes)
        _count_and_signal(outcomes, counts)
        if remaining and time.monotonic() - started > lease_budget:
            counts.released += release(using, token, remaining)
            break
    return counts


def _lock_leased(
    using: str, token: uuid.UUID, deliveries: list[Delivery], outcomes: list[_Outcome]
) -> list[Delivery]:
    """Lock this worker's still-leased rows for the chunk's transaction.

    While the lock is held nobody can claim them again, so each success needs no guarded
    UPDATE of its own: one bulk UPDATE marks them all before commit. A row whose lease was
    lost (expired and claimed by another worker) is dropped unrun.
    """
    # By the token, not by an id list (which costs a parameter per row): every row still
    # leased to this batch is in ``deliveries``. The range keeps it on the partial due index.
    mine = set(
        Delivery.objects.using(using)
        .select_for_update()
        .filter(lease_token=token, status=Status.RUNNING, next_attempt_at__gt=Now())
        .values_list("pk", flat=True)
    )
    for lost in (d for d in deliveries if d.pk not in mine):
        logger.warning("Lease on delivery #%s (%s) was lost before it ran", lost.pk, lost.handler)
        outcomes.append(_Outcome(lost, "lease_lost"))
    return [d for d in deliveries if d.pk in mine]


def _mark_all_succeeded(using: str, token: uuid.UUID, outcomes: list[_Outcome]) -> None:
    ids = [o.delivery.pk for o in outcomes if o.status == Status.SUCCEEDED]
    connection = connections[using]
    if ids and connection.vendor == "postgresql":
        # The ids as one array parameter: ``pk__in`` binds (and the driver parses) one per row.
        table = connection.ops.quote_name(Delivery._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} SET status = %s, lease_token = NULL, next_attempt_at = NULL, "
                "finished_at = STATEMENT_TIMESTAMP(), last_error = '', error_class = '', "
                "traceback = '' WHERE id = ANY(%s::bigint[]) AND lease_token = %s",
                [Status.SUCCEEDED.value, ids, token],
            )
    elif ids:
        Delivery.objects.using(using).filter(pk__in=ids, lease_token=token).update(**_succeeded())


def release(using: str, token: uuid.UUID, deliveries: list[Delivery]) -> int:
    """Give back claimed deliveries this worker will not run (they were not attempted)."""
    released = (
        Delivery.objects.using(using)
        .filter(pk__in=[d.pk for d in deliveries], lease_token=token)
        .update(
            status=Status.PENDING,
            lease_token=None,
            next_attempt_at=Now(),
            attempts=F("attempts") - 1,
        )
    )
    logger.warning(
        "Released %s claimed deliveries unrun: the batch used %.0f%% of its %ss lease",
        released,
        LEASE_SHARE * 100,
        eventbus_settings.LEASE_SECONDS,
    )
    return released


def _count_and_signal(outcomes: list[_Outcome], counts: Counts) -> None:
    for outcome in outcomes:
        d = outcome.delivery
        if outcome.status == Status.SUCCEEDED:
            counts.delivered += 1
            _send(signals.delivery_succeeded, delivery=d, handler=d.handler)
        elif outcome.status in (Status.FAILED, Status.DEAD):
            dead = outcome.status == Status.DEAD
            if dead:
                counts.dead += 1
            else:
                counts.failed += 1
            signal = signals.delivery_dead if dead else signals.delivery_failed
            _send(signal, delivery=d, handler=d.handler, error=outcome.error, attempt=d.attempts)
        else:
            counts.lease_lost += 1


def _send(signal: Any, **kwargs: Any) -> None:
    for receiver, result in signal.send_robust(sender=Delivery, **kwargs):
        if isinstance(result, Exception):
            logger.error("Receiver %r of an eventbus signal raised", receiver, exc_info=result)


# --- the loop ----------------------------------------------------------------------------


@contextmanager
def _recovering(using: str, counts: Counts) -> Iterator[None]:
    """Survive a lost database connection: log it, drop the connection, carry on later."""
    try:
        yield
    except (DatabaseError, EventBusError) as exc:
        counts.errors += 1
        logger.warning("eventbus dispatcher on %r hit %s: %s", using, type(exc).__name__, exc)
        conn = connections[using]
        if conn.in_atomic_block:
            raise
        conn.close()


def run_once(using: str = "default", counts: Counts | None = None) -> Counts:
    """One claimed batch of due deliveries (retries, resumed handlers, expired leases), then
    one fan-out batch whose deliveries are leased to this worker and run at once.

    ``counts`` (if given) is updated as work commits, so it shows the progress made before
    an error."""
    counts = Counts() if counts is None else counts
    claimed_at = time.monotonic()
    token, claimed = claim(using)
    if claimed:
        deliver(using, token, claimed, claimed_at=claimed_at, counts=counts)
    claimed_at = time.monotonic()
    fanned_out, token, fresh = fan_out_leased(using)
    counts.fanned_out += fanned_out
    if fresh:
        deliver(using, token, fresh, claimed_at=claimed_at, counts=counts)
    counts.more = bool(counts.fanned_out or claimed)
    batch = eventbus_settings.BATCH_SIZE
    counts.full = counts.full or len(claimed) >= batch or fanned_out >= batch
    return counts


def run(
    using: str = "default",
    *,
    seconds: float | None = None,
    max_errors: int = 5,
    on_backlog: Callable[[], None] | None = None,
) -> Counts:
    """Work until nothing is due (or ``seconds`` have passed; then ``more`` is True).

    ``on_backlog`` is called once, after the first batch that came back full: the caller
    may ask more workers to share the backlog."""
    total = Counts()
    deadline = time.monotonic() + seconds if seconds is not None else None
    consecutive_errors = 0
    while True:
        before = total.errors
        step = Counts()
        with _recovering(using, total):
            run_once(using, step)
        total.add(step)
        if step.full and not total.full:
            total.full = True
            if on_backlog is not None:
                on_backlog()
        if total.errors > before:
            # Errors count as consecutive only while no work commits: a worker whose
            # connection keeps dropping but who gets work done between drops keeps going.
            progressed = step.fanned_out or step.delivered or step.failed or step.dead
            consecutive_errors = 1 if progressed else consecutive_errors + 1
            if consecutive_errors >= max_errors:
                total.more = True
                return total
            time.sleep(min(0.1 * 2**consecutive_errors, 2.0))
            continue
        consecutive_errors = 0
        if not step.more:
            total.more = False
            return total
        if deadline is not None and time.monotonic() >= deadline:
            total.more = True
            return total


def next_due_in(using: str = "default") -> float | None:
    """Seconds (by the database's clock) until the next pending or failed delivery of an
    unpaused handler is due; ``None`` when there is none."""
    waiting = Delivery.objects.using(using).filter(status__in=(Status.PENDING, Status.FAILED))
    paused = paused_handlers(using)
    if paused:
        waiting = waiting.exclude(handler__in=paused)
    row = (
        waiting.order_by("next_attempt_at")
        .annotate(db_now=Now())
        .values_list("next_attempt_at", "db_now")
        .first()
    )
    if row is None or row[0] is None:
        return None
    return (row[0] - row[1]).total_seconds()
