"""Claims and leases: which worker may run which delivery, until when.

* **Claim** picks due deliveries by state and due time (never by an id cursor: ids are
  assigned at insert, not at commit) with ``FOR UPDATE SKIP LOCKED`` where the database has
  it, and marks them ``RUNNING`` under a fresh lease token in one statement. The token
  guards every later write, so a worker whose lease expired cannot record an outcome. A
  claim charges no attempt: an attempt is charged when it ends (``execute.py``).
* **Unfinished attempts.** A running delivery whose lease expired while its start marker
  was set (``in_flight``) had started: its worker died or hung. With a marker of 1 it was
  the only one running, so the attempt is charged to it as failed; with a larger marker
  (several handlers that do not use the database share one) nobody is charged. Either way
  it is flagged ``isolate`` and from then on claimed alone, in a batch of its own, until it
  succeeds: a handler that kills its worker cannot take innocent deliveries down again.
  Claimed rows that never started (``in_flight`` 0) are simply claimed again, uncharged.

Due times and leases use the database's clock (``Now()``), so workers with skewed clocks
neither run retries early nor starve them.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from django.db import connections, transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.db.models.functions import Now

from ..conf import eventbus_settings
from ..exceptions import AttemptUnfinished
from ..models import Delivery, DeliveryAttempt, HandlerState, HandlerThrottle, OutboxEvent
from ..registry import all_handlers, get_handler
from .fleet import fleet
from .retry import Failure

logger = logging.getLogger(__name__)

Status = Delivery.Status


def paused_handlers(using: str) -> list[str]:
    return list(
        HandlerState.objects.using(using).filter(paused=True).values_list("handler", flat=True)
    )


def claim(
    using: str = "default",
    limit: int | None = None,
    *,
    isolated: bool = False,
    handler: str | None = None,
) -> tuple[uuid.UUID, list[Delivery]]:
    """Lease up to ``limit`` due deliveries; returns the lease token and the deliveries.

    ``isolated``: claim one delivery flagged to run alone (and only such); otherwise only
    unflagged ones. ``handler``: only that (throttled) handler's; otherwise throttled
    handlers are left to :func:`claim_throttled`. One UPDATE whose subquery picks (and,
    where the database can, locks with SKIP LOCKED) the due rows of unpaused handlers, then
    one SELECT of what it leased.
    """
    limit = 1 if isolated else (limit or eventbus_settings.BATCH_SIZE)
    token = uuid.uuid4()
    lease = timedelta(seconds=eventbus_settings.LEASE_SECONDS)
    due = {"status__in": Delivery.CLAIMABLE, "next_attempt_at__lte": Now(), "isolate": isolated}
    paused = HandlerState.objects.using(using).filter(paused=True).values("handler")
    picked = (
        Delivery.objects.using(using)
        .filter(**due)
        .exclude(handler__in=paused)
        # An expired lease whose attempt had started is settled by reclaim_unfinished().
        .exclude(status=Status.RUNNING, in_flight__gt=0)
    )
    if handler is not None:
        picked = picked.filter(handler=handler)
    elif not isolated:  # one delivery that must run alone is not worth a token
        picked = picked.exclude(handler__in=HandlerThrottle.objects.using(using).values("handler"))
    # Handlers another live worker has and this one does not wait for that worker.
    others = fleet(using).others_handlers
    if others:
        picked = picked.exclude(handler__in=sorted(others))
    ids = (
        _heads_only(picked, using)
        .order_by("next_attempt_at")
        .select_for_update(skip_locked=True)
        .values("pk")[:limit]
    )
    connection = connections[using]
    with transaction.atomic(using=using):
        if connection.vendor == "postgresql":
            # A materialized CTE: PostgreSQL may re-run an ``IN (… LIMIT n)`` subquery per
            # outer row, which with SKIP LOCKED would lease more than ``n`` rows.
            inner, params = ids.query.get_compiler(using=using).as_sql()
            table = connection.ops.quote_name(Delivery._meta.db_table)
            with connection.cursor() as cursor:
                # Our own bookkeeping skips the WAL flush: lost with a crash, the rows are
                # simply claimed again.
                cursor.execute(
                    f"WITH picked AS MATERIALIZED ({inner}) UPDATE {table} SET status = %s, "
                    "lease_token = %s, in_flight = 0, "
                    "next_attempt_at = STATEMENT_TIMESTAMP() + make_interval(secs => %s) "
                    "FROM picked, (SELECT set_config('synchronous_commit', 'off', true)) AS cfg "
                    f"WHERE {table}.id = picked.pk",
                    [*params, Status.RUNNING.value, token, lease.total_seconds()],
                )
                updated = cursor.rowcount
        else:
            # Re-checking the due condition keeps the claim safe where rows are not locked.
            updated = (
                _heads_only(Delivery.objects.using(using).filter(pk__in=ids, **due), using)
                .exclude(status=Status.RUNNING, in_flight__gt=0)
                .update(
                    status=Status.RUNNING,
                    lease_token=token,
                    in_flight=0,
                    next_attempt_at=Now() + lease,
                )
            )
    return token, leased(using, token) if updated else []


def _heads_only(rows: QuerySet[Delivery], using: str) -> QuerySet[Delivery]:
    """Of ordered handlers' stream deliveries, only each stream's first unsettled one: the
    later ones wait while an earlier one is pending, running, failed or dead, or while an
    earlier event of the stream is not fanned out yet."""
    ordered = [spec.name for spec in all_handlers().values() if spec.ordered]
    if not ordered:
        return rows
    earlier = (
        Delivery.objects.using(using)
        .filter(
            handler=OuterRef("handler"),
            stream=OuterRef("stream"),
            position__lt=OuterRef("position"),
        )
        # Spelled out, so that the planner can use the partial index of unsettled stream
        # rows (it cannot infer `stream <> ''` from `stream = outer.stream`); without it
        # each probe scanned the handler's rows and a claim took seconds at 20,000 rows.
        .exclude(stream="")
        .exclude(status__in=Delivery.SETTLED)
    )
    # An earlier event of the stream whose fan-out has not committed yet (another worker's
    # fan-out holds it, SKIP LOCKED passed it by) has no delivery to wait for: it holds the
    # later ones too, until it is dispatched. On the partial index of undispatched stream
    # events, so the probe reads only those.
    unrouted = (
        OutboxEvent.objects.using(using)
        .filter(
            stream=OuterRef("stream"),
            position__lt=OuterRef("position"),
            dispatched_at__isnull=True,
        )
        .exclude(stream="")
    )
    return rows.exclude(
        Q(handler__in=ordered) & ~Q(stream="") & (Exists(earlier) | Exists(unrouted))
    )


def claim_throttled(using: str = "default") -> tuple[list[tuple[uuid.UUID, list[Delivery]]], float]:
    """Claims for throttled handlers, each within what its token bucket allows now. Returns
    the claims and, when throttled work is left waiting, the seconds until the next token
    (else 0). A bucket holds at most one second's worth (and at least one token); its row
    lock (SKIP LOCKED) makes the rate hold across all workers."""
    claims: list[tuple[uuid.UUID, list[Delivery]]] = []
    wait = 0.0
    for handler, rate in HandlerThrottle.objects.using(using).values_list("handler", "rate"):
        with transaction.atomic(using=using):
            bucket = (
                HandlerThrottle.objects.using(using)
                .select_for_update(skip_locked=True)
                .filter(handler=handler)
                .annotate(db_now=Now())
                .first()
            )
            if bucket is None:
                continue  # another worker is spending this bucket right now
            elapsed = max((bucket.db_now - bucket.refilled_at).total_seconds(), 0.0)
            capacity = max(rate, 1.0)
            tokens = min(capacity, bucket.tokens + rate * elapsed)
            token, rows = (
                claim(using, limit=int(tokens), handler=handler) if tokens >= 1 else (None, [])
            )
            tokens -= len(rows)
            HandlerThrottle.objects.using(using).filter(handler=handler).update(
                tokens=tokens, refilled_at=bucket.db_now
            )
        if rows and token is not None:
            claims.append((token, rows))
        elif rate > 0:
            due = Delivery.objects.using(using).filter(
                handler=handler, status__in=Delivery.CLAIMABLE, next_attempt_at__lte=Now()
            )
            if due.exists():
                step = (1.0 - tokens) / rate
                wait = step if not wait else min(wait, step)
    return claims, wait


def leased(using: str, token: uuid.UUID) -> list[Delivery]:
    # Running rows whose lease has not ended: the range keeps this on the partial due index
    # (the lease token alone has no index; a scan of all deliveries grows with history).
    return list(
        Delivery.objects.using(using)
        .filter(lease_token=token, status=Status.RUNNING, next_attempt_at__gt=Now())
        .select_related("event")
        .order_by("pk")
    )


def reclaim_unfinished(using: str = "default", limit: int | None = None) -> int:
    """Settle expired leases of deliveries whose attempt had started (see the module's
    docstring); returns how many. Each is flagged to run alone from now on."""
    limit = limit or eventbus_settings.BATCH_SIZE
    settled = 0
    with transaction.atomic(using=using):
        rows = list(
            Delivery.objects.using(using)
            .filter(status=Status.RUNNING, in_flight__gt=0, next_attempt_at__lte=Now())
            .select_for_update(skip_locked=True)
            .select_related("event")
            .order_by("next_attempt_at")[:limit]
        )
        for delivery in rows:
            settled += 1
            if delivery.in_flight > 1:
                # One of several that shared a marker killed the worker: charge nobody.
                Delivery.objects.using(using).filter(pk=delivery.pk).update(
                    status=Status.PENDING,
                    lease_token=None,
                    in_flight=0,
                    isolate=True,
                    next_attempt_at=Now(),
                )
                continue
            spec = get_handler(delivery.handler)
            attempt = delivery.attempts + 1
            exc = AttemptUnfinished(
                f"Attempt {attempt} started at {delivery.started_at:%Y-%m-%d %H:%M:%S} and "
                "never finished: the worker running it died (killed, crashed, out of memory, "
                "or ended by django-q2's timeout) or hung past its lease. It runs alone from "
                "now on, so it cannot take other deliveries with it."
            )
            failure = Failure.of(exc, attempt, spec)
            Delivery.objects.using(using).filter(pk=delivery.pk).update(
                status=Status.DEAD if failure.dead else Status.FAILED,
                attempts=F("attempts") + 1,
                lease_token=None,
                in_flight=0,
                isolate=True,
                next_attempt_at=None if failure.dead else Now() + timedelta(seconds=failure.delay),
                finished_at=Now() if failure.dead else None,
                last_error=failure.error,
                error_class=failure.error_class,
                traceback="",
            )
            DeliveryAttempt.objects.using(using).create(
                delivery_id=delivery.pk,
                attempt=attempt,
                outcome=DeliveryAttempt.Outcome.DEAD
                if failure.dead
                else DeliveryAttempt.Outcome.FAILED,
                error=failure.error,
                error_class=failure.error_class,
                replays=delivery.replays,
            )
            log = logger.error if failure.dead else logger.warning
            log(
                "Event #%s: handler %s attempt %s did not finish (worker died or hung)%s",
                delivery.event_id,
                delivery.handler,
                attempt,
                "; it is dead" if failure.dead else f"; retrying alone in {failure.delay:.1f}s",
            )
    return settled


def release(using: str, token: uuid.UUID, deliveries: list[Delivery], *, delay: float = 0.0) -> int:
    """Give back claimed deliveries this worker will not run (they were not attempted),
    due again in ``delay`` seconds."""
    return (
        Delivery.objects.using(using)
        .filter(pk__in=[d.pk for d in deliveries], lease_token=token)
        .update(
            status=Status.PENDING,
            lease_token=None,
            in_flight=0,
            next_attempt_at=Now() + timedelta(seconds=delay),
        )
    )


def next_due_in(using: str = "default") -> float | None:
    """Seconds (by the database's clock) until the next pending or failed delivery of an
    unpaused handler is due; ``None`` when there is none."""
    waiting = Delivery.objects.using(using).filter(Q(status__in=(Status.PENDING, Status.FAILED)))
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
