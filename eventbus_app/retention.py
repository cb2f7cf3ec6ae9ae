"""Retention: delete old, finished events with their deliveries and history, in bounded
chunks (``manage.py eventbus_prune``, and ``EVENTBUS["RETENTION"]`` through the sweep).

Never pruned: events not fanned out yet (delayed ones included), events with a live
delivery (pending, running, failed) or a dead letter; events of a stream (event sourcing:
the stream *is* the data) unless ``streams=True``. With ``keep_failures`` also events
that ever failed (an attempt failed or died), were discarded, or that an operator acted on.

Each chunk is one short transaction: it locks its events with ``SKIP LOCKED`` (a row a
dispatcher holds is left for the next run), locks their deliveries, checks again that
they are all finished, then deletes history, audit rows, deliveries and events with one
statement each. So no lock is held longer than one chunk, and a concurrent retry or replay
either waits for that chunk or keeps its event."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from .models import Delivery, DeliveryAttempt, OperatorAction, OutboxEvent

Status = Delivery.Status
LIVE = (Status.PENDING, Status.RUNNING, Status.FAILED, Status.DEAD)
CHUNK = 1000

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(value: object, what: str) -> timedelta:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"2w"`` (or a ``timedelta``) → a timedelta;
    ValueError naming ``what`` otherwise."""
    if isinstance(value, timedelta):
        if value <= timedelta(0):
            raise ValueError(f"{what} must be a positive age, got {value!r}")
        return value
    match = _AGE.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(
            f"{what} {value!r} is not an age: use a number and a unit, s/m/h/d/w "
            "(for example '30d' or '12h')"
        )
    age = timedelta(**{_UNITS[match.group(2).lower()]: float(match.group(1))})
    if age <= timedelta(0):
        raise ValueError(f"{what} must be a positive age, got {value!r}")
    return age


def prunable(
    cutoff: datetime,
    *,
    using: str = DEFAULT_DB_ALIAS,
    keep_failures: bool = False,
    streams: bool = False,
) -> QuerySet[OutboxEvent]:
    """The events older than ``cutoff`` that retention may delete (see the module)."""
    live = Delivery.objects.using(using).filter(event=OuterRef("pk"), status__in=LIVE)
    events = (
        OutboxEvent.objects.using(using)
        .filter(created_at__lt=cutoff, dispatched_at__isnull=False)
        .exclude(Exists(live))
    )
    if not streams:
        events = events.filter(stream="")
    if keep_failures:
        failed = DeliveryAttempt.objects.using(using).filter(
            delivery__event=OuterRef("pk"),
            outcome__in=(DeliveryAttempt.Outcome.FAILED, DeliveryAttempt.Outcome.DEAD),
        )
        discarded = Delivery.objects.using(using).filter(
            event=OuterRef("pk"), status=Status.DISCARDED
        )
        acted = OperatorAction.objects.using(using).filter(
            Q(event=OuterRef("pk")) | Q(delivery__event=OuterRef("pk"))
        )
        events = events.exclude(Exists(failed)).exclude(Exists(discarded)).exclude(Exists(acted))
    return events


@dataclass
class PruneResult:
    events: int = 0
    deliveries: int = 0
    attempts: int = 0
    chunks: int = 0
    more: bool = False  # stopped by the time budget with prunable events left
    chunk_seconds: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        times = sorted(self.chunk_seconds)
        return {
            "events": self.events,
            "deliveries": self.deliveries,
            "attempts": self.attempts,
            "chunks": self.chunks,
            "more": self.more,
            "longest_chunk_seconds": round(times[-1], 4) if times else 0.0,
        }


def prune(
    cutoff: datetime,
    *,
    using: str = DEFAULT_DB_ALIAS,
    keep_failures: bool = False,
    streams: bool = False,
    chunk: int = CHUNK,
    seconds: float | None = None,
    progress: Callable[[int], object] | None = None,
) -> PruneResult:
    """Delete what :func:`prunable` selects, ``chunk`` events per transaction, until none
    is left (or ``seconds`` have passed: then ``more`` is True). ``progress(n)`` is
    called after each chunk with the number of events it deleted."""
    result = PruneResult()
    deadline = time.monotonic() + seconds if seconds is not None else None
    selection = prunable(cutoff, using=using, keep_failures=keep_failures, streams=streams)
    # Keyset pagination in (created_at, id) order: each chunk starts after the last row the
    # previous one looked at, so rows that are kept (dead letters) or were just deleted
    # (dead index entries until VACUUM) are not read again and again.
    after: tuple[datetime, int] | None = None
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            result.more = _after(selection, after).exists()
            return result
        started = time.monotonic()
        deleted, after = _prune_chunk(_after(selection, after), using, chunk, result)
        result.chunk_seconds.append(time.monotonic() - started)
        if deleted is None:
            return result
        result.chunks += 1
        result.events += deleted
        if progress is not None:
            progress(deleted)


def _after(
    selection: QuerySet[OutboxEvent], key: tuple[datetime, int] | None
) -> QuerySet[OutboxEvent]:
    if key is None:
        return selection
    created_at, pk = key
    return selection.filter(Q(created_at__gt=created_at) | Q(created_at=created_at, pk__gt=pk))


def _prune_chunk(
    selection: QuerySet[OutboxEvent], using: str, chunk: int, result: PruneResult
) -> tuple[int | None, tuple[datetime, int] | None]:
    """One transaction: the number of events deleted (None when nothing is left) and the
    key of the last one it looked at."""
    with transaction.atomic(using=using):
        keys = list(
            selection.order_by("created_at", "id")
            .select_for_update(skip_locked=True)
            .values_list("created_at", "pk")[:chunk]
        )
        if not keys:
            return None, None
        last = keys[-1]
        ids = [pk for _, pk in keys]
        deliveries = Delivery.objects.using(using).filter(event_id__in=ids)
        # Their deliveries, locked: a retry or replay of one of them now waits for this
        # transaction; one that committed in between shows in the check below.
        list(deliveries.select_for_update().values_list("pk", flat=True))
        ids = list(selection.filter(pk__in=ids).values_list("pk", flat=True))
        if not ids:
            return 0, last
        if connections[using].vendor == "postgresql":
            _delete_postgresql(using, ids, result)
            return len(ids), last
        deliveries = Delivery.objects.using(using).filter(event_id__in=ids)
        # Children outlive their cause (causation is SET_NULL); the ORM's cascade would
        # read every row into Python, so each table gets one statement.
        OutboxEvent.objects.using(using).filter(causation_id__in=ids).update(causation=None)
        result.attempts += (
            DeliveryAttempt.objects.using(using)
            .filter(delivery__event_id__in=ids)
            ._raw_delete(using)
        )
        OperatorAction.objects.using(using).filter(
            Q(event_id__in=ids) | Q(delivery__event_id__in=ids)
        )._raw_delete(using)
        _clear_canaries(using, ids)
        result.deliveries += deliveries._raw_delete(using)
        return OutboxEvent.objects.using(using).filter(pk__in=ids)._raw_delete(using), last


def _delete_postgresql(using: str, ids: list[int], result: PruneResult) -> None:
    """The same deletes as the generic path, in one statement with the ids as one array
    parameter (a chunk's IN lists cost more than the deletes). Foreign keys are checked at
    COMMIT (Django makes them deferrable), and a child event that is deleted too is not
    also updated (one statement may not change a row twice)."""
    qn = connections[using].ops.quote_name
    ev, dl = qn(OutboxEvent._meta.db_table), qn(Delivery._meta.db_table)
    at, op = qn(DeliveryAttempt._meta.db_table), qn(OperatorAction._meta.db_table)
    from .models import RetryCampaign

    rc = qn(RetryCampaign._meta.db_table)
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"WITH d AS (SELECT id FROM {dl} WHERE event_id = ANY(%(ids)s)), "
            f"c AS (UPDATE {ev} SET causation_id = NULL WHERE causation_id = ANY(%(ids)s) "
            "AND NOT (id = ANY(%(ids)s)) RETURNING 1), "
            f"a AS (DELETE FROM {at} WHERE delivery_id IN (SELECT id FROM d) RETURNING 1), "
            f"o AS (DELETE FROM {op} WHERE event_id = ANY(%(ids)s) "
            "OR delivery_id IN (SELECT id FROM d) RETURNING 1), "
            f"r AS (UPDATE {rc} SET canary_id = NULL WHERE canary_id IN (SELECT id FROM d) "
            "RETURNING 1), "
            f"x AS (DELETE FROM {dl} WHERE id IN (SELECT id FROM d) RETURNING 1), "
            f"e AS (DELETE FROM {ev} WHERE id = ANY(%(ids)s) RETURNING 1) "
            "SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM x), "
            "(SELECT count(*) FROM c), (SELECT count(*) FROM o), (SELECT count(*) FROM r), "
            "(SELECT count(*) FROM e)",
            {"ids": ids},
        )
        row = cursor.fetchone()
    result.attempts += row[0]
    result.deliveries += row[1]


def _clear_canaries(using: str, ids: list[int]) -> None:
    from .models import RetryCampaign

    RetryCampaign.objects.using(using).filter(canary__event_id__in=ids).update(canary=None)


def apply_retention(using: str = DEFAULT_DB_ALIAS, seconds: float = 2.0) -> PruneResult | None:
    """``EVENTBUS["RETENTION"]`` for the sweep: prune what is older than it, for at most
    about ``seconds`` (a chunk in progress finishes); the next sweep goes on. None when
    retention is off. Streams and failures are kept: pruning those is a decision for
    ``manage.py eventbus_prune``."""
    from .conf import eventbus_settings

    retention = eventbus_settings.RETENTION
    if retention is None:
        return None
    age = parse_age(retention, 'EVENTBUS["RETENTION"]')
    return prune(timezone.now() - age, using=using, seconds=seconds)
