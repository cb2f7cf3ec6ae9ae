"""The execution model: how a claimed batch runs, one delivery at a time, each on its own.

* **Its own transaction.** Each delivery's handler runs in a ``transaction.atomic()`` of its
  own. If the handler used the database (it left a transaction open, or registered an
  on-commit callback), the UPDATE that records its success runs in that transaction before
  it commits: its writes commit if and only if the success does. Nothing transaction-scoped
  (``SET LOCAL``, ``set_config(…, true)``, advisory xact locks, deferred constraints) crosses
  to the next handler, and a failure at COMMIT (a deferred foreign key, a serialization
  failure, a dropped connection) is this delivery's failure, with that error recorded.
* **Handlers that do not use the database** leave an empty transaction, which costs no
  round trip. Their successes are recorded together, with the next bookkeeping write (at
  most ``FLUSH_SECONDS`` or ``SEGMENT`` deliveries later): a worker killed in between runs
  them again (at-least-once, as for any effect outside the database).
* **Start markers and attempts.** Before a handler runs, its delivery carries a start marker
  (``in_flight``) in the database. It rides on the previous delivery's commit when there is
  one; otherwise a short bookkeeping transaction writes it (several deliveries of handlers
  known not to use the database share one marker). An attempt is charged when it ends, to
  that delivery only; one that never ends (the worker died) is settled by ``claim.py``.
* **Time limits.** A run gets ``@handler(timeout=)`` or ``EVENTBUS['HANDLER_TIMEOUT']``
  seconds (``timeout.py``), and starts only if that fits in what is left of the batch's
  lease and of django-q2's task timeout; deliveries that do not fit are given back unrun.
* **On-commit callbacks** a handler registers run after its own commit; one that raises is
  logged against that delivery and stops nothing else.
* **Batch handlers** (relays: ``HandlerSpec.batch``) run no user code and no transaction of
  their own: after the batch's other deliveries, each one's claimed deliveries go to it
  together (one publish, one wait for the broker's confirms), then one bookkeeping write
  records every confirmed one and each refused one fails alone. The group shares one
  start marker: a worker killed mid-publish charges none of them, and they are claimed
  again, each alone, and published again (the receiver's inbox drops the copy); one that
  kills its worker once more is then charged, alone. Deliveries the time limit left unsent
  (``NotAttempted``) are given back uncharged.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from asgiref.sync import async_to_sync
from django.db import DatabaseError, connections, transaction
from django.db.models import F
from django.db.models.functions import Now

from .. import signals, telemetry
from ..conf import eventbus_settings
from ..context import DeliveryContext, _current, _stopped
from ..events import Event, event_class
from ..exceptions import (
    HandlerBrokeTransaction,
    HandlerTimeout,
    LeaseLost,
    NotAttempted,
    UnknownEventType,
    UnknownHandler,
)
from ..models import Delivery, DeliveryAttempt
from ..registry import HandlerSpec, get_handler, handlers_for
from .claim import release
from .fanout import UNROUTABLE
from .fleet import fleet
from .retry import Failure, describe, max_attempts
from .timeout import Interrupt, Limiter

logger = logging.getLogger("eventbus_app.dispatch")

Status = Delivery.Status

# Successes of handlers that do not use the database wait at most this long, or for this
# many deliveries, before they are recorded; a start marker covers at most SEGMENT of them.
FLUSH_SECONDS = 0.5
SEGMENT = 50
# Time kept free at the end of a lease (or of django-q2's task timeout) for recording the
# last outcome: a run never outlives the lease it was started under.
ALARM_MARGIN = 1.0

# A delivery this worker's code does not know waits this long before it is due again, so
# that a worker whose code knows it claims it meanwhile.
LEAVE_SECONDS = 2.0

# Per handler name, in this process: whether its last run used the database. Unknown
# handlers get a start marker of their own.
_uses_db: dict[str, bool] = {}


@dataclass
class Counts:
    fanned_out: int = 0
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    lease_lost: int = 0
    released: int = 0
    settled: int = 0  # unfinished attempts found and settled (claim.reclaim_unfinished)
    errors: int = 0
    throttle_wait: float = 0.0  # throttled work waits this long for its next token
    more: bool = False  # stopped by the time budget with work still due
    full: bool = False  # a batch came back full: a backlog more workers could share

    _SUMS = (
        "fanned_out",
        "delivered",
        "failed",
        "dead",
        "lease_lost",
        "released",
        "settled",
        "errors",
    )

    def add(self, other: Counts) -> None:
        for name in self._SUMS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def handler_timeout(spec: HandlerSpec | None) -> float:
    timeout = spec.timeout if spec is not None else None
    return float(timeout or eventbus_settings.HANDLER_TIMEOUT)


def lease_margin() -> float:
    return min(1.0, eventbus_settings.LEASE_SECONDS * 0.1)


def deliver(
    using: str,
    token: uuid.UUID,
    deliveries: Sequence[Delivery],
    *,
    claimed_at: float | None = None,
    counts: Counts | None = None,
) -> Counts:
    """Run a claimed batch; returns what happened. Signals are sent after each commit.

    ``claimed_at`` is the ``time.monotonic()`` of the claim (default: now). ``counts``, if
    given, is updated as outcomes commit, so it keeps the progress of a batch that fails
    later.
    """
    batch = _Batch(using, token, list(deliveries), claimed_at, counts or Counts())
    with batch.limiter:
        batch.run()
    return batch.counts


class _Batch:
    def __init__(
        self,
        using: str,
        token: uuid.UUID,
        todo: list[Delivery],
        claimed_at: float | None,
        counts: Counts,
    ) -> None:
        self.using = using
        self.token = token
        self.todo = todo
        self.counts = counts
        self.connection = connections[using]
        self.postgres = self.connection.vendor == "postgresql"
        started = time.monotonic() if claimed_at is None else claimed_at
        self.lease_ends = started + eventbus_settings.LEASE_SECONDS - lease_margin()
        self.events: dict[int, Event] = {}
        # Deliveries of batch handlers (relays) run together, after the others.
        self.groups: dict[str, list[Delivery]] = {}
        for delivery in todo:
            spec = get_handler(delivery.handler)
            if spec is not None and spec.batch is not None:
                self.groups.setdefault(delivery.handler, []).append(delivery)
        if self.groups:
            todo[:] = [d for d in todo if d.handler not in self.groups]
        # Fan-out (on PostgreSQL) writes the first delivery's start marker itself.
        self.marked: set[int] = {d.pk for d in todo if d.in_flight == 1}
        todo.sort(key=lambda d: d.pk not in self.marked)  # stable: id order otherwise
        self.pending: list[Delivery] = []  # successes not recorded yet (no database use)
        self.pending_since = 0.0
        self.ran = 0
        self.limiter = Limiter(using)
        self._span = telemetry.Span(None, "")
        # What the delivery's transaction records besides its own success (the pending
        # ones, a start marker); it counts only once that transaction has committed.
        self.riding: tuple[list[Delivery], set[int]] = ([], set())

    # --- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        position = 0
        while position < len(self.todo):
            delivery = self.todo[position]
            spec = get_handler(delivery.handler)
            seconds = self._time_for(spec)
            if seconds is None:
                self._write(mark=[])
                unrun = self.todo[position:] + [d for g in self.groups.values() for d in g]
                self.counts.released += release(self.using, self.token, unrun)
                logger.info(
                    "Gave back %s claimed deliveries unrun: the next one's timeout does not fit "
                    "in what is left of the lease or of the task",
                    len(unrun),
                )
                return
            if delivery.pk not in self.marked or self._flush_due():
                self._write(mark=self._segment(position))
                if delivery.pk not in self.marked:
                    self._lost(delivery, "before it ran")
                    position += 1
                    continue
            self.ran += 1
            self._run_one(delivery, spec, seconds, position)
            position += 1
        self._write(mark=[])
        for name, group in self.groups.items():
            self._run_group(name, group)

    def _time_for(self, spec: HandlerSpec | None) -> float | None:
        """The run's time limit, or None when it does not fit and should be given back."""
        wanted = handler_timeout(spec)
        left = self.lease_ends - time.monotonic()
        alarm = self.limiter.outer_left()
        if alarm is not None:
            left = min(left, alarm - ALARM_MARGIN)
        if wanted <= left:
            return wanted
        if self.ran:
            return None
        # The first of its batch: cut to what is left (checks W013 and W017 flag such settings).
        return max(left, 0.1)

    def _segment(self, position: int) -> list[Delivery]:
        """The deliveries one start marker covers from ``position``: one, or a run of
        handlers known not to use the database."""
        if position >= len(self.todo) or self.todo[position].pk in self.marked:
            return []
        segment = [self.todo[position]]
        if _uses_db.get(segment[0].handler, True):
            return segment
        for delivery in self.todo[position + 1 : position + SEGMENT]:
            if _uses_db.get(delivery.handler, True) or delivery.pk in self.marked:
                break
            segment.append(delivery)
        return segment

    def _flush_due(self) -> bool:
        return bool(self.pending) and (
            len(self.pending) >= SEGMENT or time.monotonic() - self.pending_since > FLUSH_SECONDS
        )

    # --- one delivery ----------------------------------------------------------------------

    def _context(self, delivery: Delivery) -> DeliveryContext:
        event = delivery.event
        return DeliveryContext(
            delivery_id=delivery.pk,
            event_id=delivery.event_id,
            event_type=event.event_type,
            handler=delivery.handler,
            attempt=delivery.attempts + 1,
            correlation_id=event.correlation_id,
            causation_id=event.causation_id,
            depth=event.depth,
            replays=delivery.replays,
            using=self.using,
            event_uuid=event.uuid,
        )

    def _run_one(
        self, delivery: Delivery, spec: HandlerSpec | None, seconds: float, position: int
    ) -> None:
        event = delivery.event
        with telemetry.delivery_span(
            handler=delivery.handler,
            event_type=event.event_type,
            event_id=event.pk,
            event_uuid=event.uuid,
            attempt=delivery.attempts + 1,
            traceparent=getattr(event, "traceparent", ""),
            created_at=event.created_at,
        ) as span:
            self._span = span
            self._run(delivery, spec, seconds, position)

    def _run(
        self, delivery: Delivery, spec: HandlerSpec | None, seconds: float, position: int
    ) -> None:
        connection = self.connection
        committing = False
        used_db = True
        try:
            if delivery.handler == UNROUTABLE:
                with transaction.atomic(using=self.using):
                    _route_again(delivery, self.using)
                    committing = True
                    self._commit_success(delivery, position)
                self._committed(delivery)
                return
            view = fleet(self.using)
            if spec is None:
                if delivery.handler in view.others_handlers:
                    self._leave(delivery, "its handler runs only on other workers")
                    return
                raise UnknownHandler(
                    f"No handler named {delivery.handler!r} is registered in this process, "
                    "nor in any worker seen in the last "
                    f"{eventbus_settings.REGISTRY_GRACE_SECONDS:g} s (removed or renamed?). "
                    "Register it again under that name, or leave this dead letter."
                )
            cls = event_class(delivery.event.event_type)
            stored = delivery.event.version
            if (
                cls is not None
                and stored > cls.version
                and view.newer_version_known(cls.event_type, stored)
            ):
                self._leave(
                    delivery,
                    f"it was stored by version {stored} of {cls.event_type}, and this "
                    f"worker has version {cls.version}",
                )
                return
            event = self._event(delivery)
            reset = _current.set(self._context(delivery))
            stopped: list[Exception] = []
            reset_stopped = _stopped.set(stopped)
            try:
                with transaction.atomic(using=self.using):
                    callbacks_before = len(connection.run_on_commit)
                    _call(spec, event, seconds, self.limiter)
                    if stopped:  # the handler caught ChainDepthExceeded: it still stops
                        raise stopped[0]
                    _check_transaction(connection, spec)
                    # (sids, func, robust) since Django 4.2; the stubs know two of them.
                    hooks: list[Any] = cast(Any, connection).run_on_commit
                    registered = hooks[callbacks_before:]
                    used_db = bool(registered) or _in_transaction(connection)
                    _uses_db[delivery.handler] = used_db
                    if used_db:
                        hooks[callbacks_before:] = [
                            (sids, _Logged(func, delivery), True) for sids, func, _ in registered
                        ]
                        committing = True
                        self._commit_success(delivery, position)
            finally:
                _stopped.reset(reset_stopped)
                _current.reset(reset)
        except LeaseLost as exc:
            logger.warning("%s", exc)
            self._span.failed("lease_lost")
            self._lost(delivery, "while it ran")
            return
        except (Exception, SystemExit) as exc:
            if isinstance(exc, SystemExit) and _stops_the_worker(exc):
                raise
            # A handler's sys.exit() is its own failure, not its worker's end.
            self._failed(delivery, spec, exc, position, at_commit=committing)
            self._span.failed(delivery.status, exc)
            return
        if used_db:
            self._committed(delivery)
        else:
            delivery.attempts += 1
            if not self.pending:
                self.pending_since = time.monotonic()
            self.pending.append(delivery)

    def _run_group(self, name: str, group: list[Delivery]) -> None:
        """A batch handler's deliveries (see the module's docstring), after the others: no
        other delivery's start marker is set while it runs."""
        spec = get_handler(name)
        seconds = self._time_for(spec)
        if spec is None or spec.batch is None or seconds is None:
            self.counts.released += release(self.using, self.token, group)
            return
        # One marker shared by the group: a worker killed mid-batch charges none of them,
        # and they run alone from then on, so one that kills its worker again is found.
        self._write(mark=group)
        lost = [d for d in group if d.pk not in self.marked]
        for delivery in lost:
            self._lost(delivery, "before it ran")
        group = [d for d in group if d.pk in self.marked]
        if not group:
            return
        self.ran += 1
        with telemetry.batch_spans(name, group) as spans:
            outcomes: list[Exception | None]
            try:
                with self.limiter.limit(seconds) as timer:
                    try:
                        outcomes = list(spec.batch(group, self.using, seconds))
                    except Interrupt as exc:
                        raise _timed_out(spec, seconds) from exc
                if timer.fired:
                    raise _timed_out(spec, seconds)
                if len(outcomes) != len(group):
                    raise RuntimeError(
                        f"{name} returned {len(outcomes)} outcomes for {len(group)} deliveries"
                    )
            except Exception as exc:
                outcomes = [exc] * len(group)
            ok = [d for d, outcome in zip(group, outcomes, strict=True) if outcome is None]
            if ok:
                self._write_successes(ok)
            unsent = [
                d for d, o in zip(group, outcomes, strict=True) if isinstance(o, NotAttempted)
            ]
            if unsent:  # the time limit came before they were sent: uncharged
                self.counts.released += release(self.using, self.token, unsent)
            position = len(self.todo)  # past the end: a failure marks no next delivery
            for delivery, outcome, span in zip(group, outcomes, spans, strict=True):
                if isinstance(outcome, NotAttempted):
                    span.failed("released")
                elif outcome is not None:
                    self._failed(delivery, spec, outcome, position, at_commit=False)
                    span.failed(delivery.status, outcome)

    def _write_successes(self, ok: list[Delivery]) -> None:
        """Record confirmed deliveries (and any pending successes) in one write."""
        for delivery in ok:
            delivery.attempts += 1
        self.pending.extend(ok)
        self._write(mark=[])
        for delivery in ok:
            if delivery.status != Status.SUCCEEDED:  # another worker holds it now
                self._lost(delivery, "before its confirm was recorded")

    def _event(self, delivery: Delivery) -> Event:
        event = self.events.get(delivery.event_id)
        if event is None:
            event = self.events[delivery.event_id] = load_event(delivery.event)
        return event

    def _commit_success(self, delivery: Delivery, position: int) -> None:
        """Inside the delivery's transaction: record its success (and the pending ones, and
        the next start marker), so that they commit together with its work."""
        succeeded, marked = self._write_in_transaction(
            ok=[delivery, *self.pending],
            mark=self._segment(position + 1),
            synchronous=eventbus_settings.HANDLER_SYNCHRONOUS_COMMIT,
        )
        if delivery.pk not in succeeded:
            raise LeaseLost(
                f"Lease on delivery #{delivery.pk} ({delivery.handler}) expired and another "
                "worker claimed it; this run's effects are rolled back."
            )
        self.riding = ([d for d in self.pending if d.pk in succeeded], marked)

    def _committed(self, delivery: Delivery) -> None:
        """The delivery's transaction committed: what rode on it counts now."""
        flushed, marked = self.riding
        self.riding = ([], set())
        self.marked |= marked
        self.pending = [d for d in self.pending if d not in flushed]
        delivery.attempts += 1
        self._succeeded([delivery, *flushed])

    def _succeeded(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            delivery.status = Status.SUCCEEDED
            self.counts.delivered += 1
            _send(signals.delivery_succeeded, delivery=delivery, handler=delivery.handler)

    def _failed(
        self,
        delivery: Delivery,
        spec: HandlerSpec | None,
        exc: BaseException,
        position: int,
        *,
        at_commit: bool,
    ) -> None:
        # Whatever the handler did to its transaction and connection, the atomic block has
        # ended: the work is rolled back, and what rode on it (pending successes, a start
        # marker) did not commit; this write records them.
        self.riding = ([], set())
        if isinstance(exc, DatabaseError) and at_commit:
            note = (
                "\n(Raised while the handler's transaction was committing: its work was "
                "rolled back.)"
            )
            failure = Failure.of(exc, delivery.attempts + 1, spec, error=f"{describe(exc)}{note}")
        else:
            failure = Failure.of(exc, delivery.attempts + 1, spec)
        self._reconnect_if_broken()
        recorded = self._write(mark=self._segment(position + 1), failure=(delivery, failure))
        if not recorded:
            logger.warning(
                "Lease on delivery #%s (%s) was lost before its failure was recorded",
                delivery.pk,
                delivery.handler,
            )
            self.counts.lease_lost += 1
            return
        delivery.attempts += 1
        delivery.status = Status.DEAD if failure.dead else Status.FAILED
        delivery.last_error = failure.error
        delivery.error_class = failure.error_class
        delivery.traceback = failure.traceback
        log = logger.error if failure.dead else logger.warning
        log(
            "Event #%s (%s): handler %s failed on attempt %s/%s%s: %s",
            delivery.event_id,
            delivery.event.event_type,
            delivery.handler,
            delivery.attempts,
            max_attempts(spec),
            " and is dead" if failure.dead else f", retrying in {failure.delay:.1f}s",
            failure.error.splitlines()[0] if failure.error else "",
            exc_info=exc if failure.dead else None,
        )
        if failure.dead:
            self.counts.dead += 1
            signal = signals.delivery_dead
        else:
            self.counts.failed += 1
            signal = signals.delivery_failed
        _send(
            signal,
            delivery=delivery,
            handler=delivery.handler,
            error=failure.error,
            attempt=delivery.attempts,
        )

    def _leave(self, delivery: Delivery, why: str) -> None:
        """Give a delivery back unrun and uncharged, for a worker whose code knows it."""
        self._span.failed("left")
        self._write(mark=[])
        self.counts.released += release(self.using, self.token, [delivery], delay=LEAVE_SECONDS)
        logger.info(
            "Left delivery #%s (%s) to another worker: %s", delivery.pk, delivery.handler, why
        )

    def _lost(self, delivery: Delivery, when: str) -> None:
        logger.warning(
            "Lease on delivery #%s (%s) was lost %s", delivery.pk, delivery.handler, when
        )
        self.counts.lease_lost += 1

    def _reconnect_if_broken(self) -> None:
        connection = self.connection
        if connection.in_atomic_block or connection.connection is None:
            return
        if not connection.is_usable():
            connection.close()  # the next query reconnects

    # --- writes ----------------------------------------------------------------------------

    def _write(
        self, *, mark: list[Delivery], failure: tuple[Delivery, Failure] | None = None
    ) -> bool:
        """A bookkeeping transaction of our own: the pending successes, the next start
        marker, a failure. Returns whether the failure (if any) was recorded. A dropped
        connection is retried once on a new one (every write is guarded by the lease)."""
        if not self.pending and not mark and failure is None:
            return True
        for retry in (False, True):
            try:
                with transaction.atomic(using=self.using):
                    recorded = True
                    if failure is not None:
                        recorded = _record_failure(self.using, self.token, *failure)
                    succeeded, marked = self._write_in_transaction(
                        ok=self.pending, mark=mark, synchronous=False
                    )
                break
            except DatabaseError:
                if retry or self.connection.in_atomic_block:
                    raise
                self.connection.close()
        self.marked |= marked
        flushed = [d for d in self.pending if d.pk in succeeded]
        self.pending = []
        self._succeeded(flushed)
        return recorded

    def _write_in_transaction(
        self, *, ok: list[Delivery], mark: list[Delivery], synchronous: bool = True
    ) -> tuple[set[int], set[int]]:
        """Mark ``ok`` succeeded (charging their attempt) and ``mark`` started, in the open
        transaction; returns the ids of each that were still leased to this batch."""
        ok_ids = [d.pk for d in ok]
        mark_ids = [d.pk for d in mark]
        if not ok_ids and not mark_ids:
            return set(), set()
        if self.postgres:
            table = self.connection.ops.quote_name(Delivery._meta.db_table)
            # Our own bookkeeping may skip the WAL flush: lost with a database crash, it
            # only makes work run again.
            config = "" if synchronous else ", set_config('synchronous_commit', 'off', true)"
            with self.connection.cursor() as cursor:
                cursor.execute(
                    f"WITH ok AS (UPDATE {table} SET status = %s, attempts = attempts + 1, "
                    "lease_token = NULL, next_attempt_at = NULL, in_flight = 0, isolate = false, "
                    "finished_at = STATEMENT_TIMESTAMP(), last_error = '', error_class = '', "
                    "traceback = '' WHERE id = ANY(%s::bigint[]) AND lease_token = %s "
                    "RETURNING id), "
                    f"mark AS (UPDATE {table} SET in_flight = %s, "
                    "started_at = STATEMENT_TIMESTAMP() WHERE id = ANY(%s::bigint[]) AND "
                    "lease_token = %s AND status = %s RETURNING id) "
                    f"SELECT ARRAY(SELECT id FROM ok), ARRAY(SELECT id FROM mark){config}",
                    [
                        Status.SUCCEEDED.value,
                        ok_ids,
                        self.token,
                        len(mark_ids),
                        mark_ids,
                        self.token,
                        Status.RUNNING.value,
                    ],
                )
                row = cursor.fetchone()
            succeeded, marked = set(row[0]), set(row[1])
        else:
            rows = Delivery.objects.using(self.using)
            succeeded = set(
                rows.filter(pk__in=ok_ids, lease_token=self.token).values_list("pk", flat=True)
            )
            if succeeded:
                rows.filter(pk__in=succeeded).update(
                    **succeeded_columns(), attempts=F("attempts") + 1
                )
            marked = set(
                rows.filter(
                    pk__in=mark_ids, lease_token=self.token, status=Status.RUNNING
                ).values_list("pk", flat=True)
            )
            if marked:
                rows.filter(pk__in=marked).update(in_flight=len(mark_ids), started_at=Now())
        return succeeded, marked


def succeeded_columns() -> dict[str, Any]:
    """The columns of a delivery that succeeded (the raw UPDATE above writes the same)."""
    return {
        "status": Status.SUCCEEDED,
        "lease_token": None,
        "next_attempt_at": None,
        "in_flight": 0,
        "isolate": False,
        "finished_at": Now(),
        "last_error": "",
        "error_class": "",
        "traceback": "",
    }


def _record_failure(using: str, token: uuid.UUID, delivery: Delivery, failure: Failure) -> bool:
    updated = (
        Delivery.objects.using(using)
        .filter(pk=delivery.pk, lease_token=token)
        .update(
            status=Status.DEAD if failure.dead else Status.FAILED,
            attempts=F("attempts") + 1,
            lease_token=None,
            in_flight=0,
            next_attempt_at=None if failure.dead else Now() + timedelta(seconds=failure.delay),
            finished_at=Now() if failure.dead else None,
            last_error=failure.error,
            error_class=failure.error_class,
            traceback=failure.traceback,
        )
    )
    if updated:
        DeliveryAttempt.objects.using(using).create(
            delivery_id=delivery.pk,
            attempt=delivery.attempts + 1,
            outcome=DeliveryAttempt.Outcome.DEAD
            if failure.dead
            else DeliveryAttempt.Outcome.FAILED,
            error=failure.error,
            error_class=failure.error_class,
            traceback=failure.traceback,
            replays=delivery.replays,
        )
    return bool(updated)


# --- calling the handler -------------------------------------------------------------------


def _call(spec: HandlerSpec, event: Event, seconds: float, limiter: Limiter) -> None:
    """Run the handler under its time limit; a run over it raises HandlerTimeout."""
    interrupted: BaseException | None = None
    # An async handler's coroutine is cancelled at its limit; the alarm is a backstop for
    # one that blocks its event loop.
    limit = seconds + 1.0 if spec.is_async else seconds
    with limiter.limit(limit) as timer:
        try:
            if spec.is_async:
                async_to_sync(_call_async)(spec.func, event, seconds)
            else:
                spec.func(event)
        except Interrupt as exc:
            interrupted = exc
        except Exception as exc:
            if not timer.fired:
                raise
            interrupted = exc  # what the time limit caused (a cancelled query, say)
    if interrupted is not None or timer.fired:
        raise _timed_out(spec, seconds) from interrupted


def _timed_out(spec: HandlerSpec, seconds: float) -> HandlerTimeout:
    return HandlerTimeout(
        f"Handler {spec.name} timed out after {seconds:g} s (its timeout=, or "
        "EVENTBUS['HANDLER_TIMEOUT']); it was interrupted and its work rolled back."
    )


async def _call_async(func: Callable[[Any], Any], event: Event, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds) as scope:
            await func(event)
    except TimeoutError:
        if scope.expired():
            raise Interrupt from None
        raise


def _stops_the_worker(exc: SystemExit) -> bool:
    """django-q2's TimeoutException (a SystemExit) must end the task as it intends."""
    return type(exc).__module__.startswith("django_q")


def _in_transaction(connection: Any) -> bool:
    """Whether the driver has a transaction open (the handler ran a statement). An empty
    ``atomic()`` block sends nothing: psycopg starts the transaction with the first one."""
    raw = connection.connection
    if raw is None:
        return False
    if connection.vendor == "postgresql":
        info = getattr(raw, "info", None)
        if info is not None:  # psycopg 3
            return int(info.transaction_status) != 0  # IDLE
        return bool(raw.get_transaction_status())  # psycopg2
    if connection.vendor == "sqlite":
        return bool(raw.in_transaction)
    return True


def _transaction_aborted(connection: Any) -> bool:
    """PostgreSQL refuses every statement until rollback (an error Django did not see)."""
    raw = connection.connection
    info = getattr(raw, "info", None) if connection.vendor == "postgresql" else None
    return info is not None and int(info.transaction_status) == 3  # INERROR


def _check_transaction(connection: Any, spec: HandlerSpec) -> None:
    if connection.closed_in_transaction:
        raise HandlerBrokeTransaction(
            f"Handler {spec.name} closed the database connection inside its transaction; its "
            "work was rolled back. Leave the connection open: the dispatcher commits it."
        )
    if connection.needs_rollback or _transaction_aborted(connection):
        raise HandlerBrokeTransaction(
            f"Handler {spec.name} caught a database error and carried on without rolling it "
            "back; its work was rolled back. Wrap the statement that may fail in "
            "transaction.atomic() to handle the error inside the handler."
        )


class _Logged:
    """An on-commit callback of a handler: run after its commit; an error is logged
    against its delivery and goes no further."""

    def __init__(self, func: Callable[[], Any], delivery: Delivery) -> None:
        self.func = func
        self.delivery = delivery

    def __call__(self) -> None:
        try:
            self.func()
        except Exception:
            d = self.delivery
            logger.exception(
                "An on-commit callback of handler %s (event #%s, delivery #%s) raised; the "
                "delivery had committed and succeeded, and no other delivery is affected",
                d.handler,
                d.event_id,
                d.pk,
            )


# --- events --------------------------------------------------------------------------------


def load_event(record: Any) -> Event:
    cls = event_class(record.event_type)
    if cls is None:
        raise UnknownEventType(
            f"No Event class is registered for event_type {record.event_type!r} (event "
            f"#{record.pk}). Restore the class (or one with event_type={record.event_type!r}), "
            "then retry this dead letter."
        )
    # A received event (source set) is read tolerantly: see Event.from_json.
    return cls.from_json(record.payload, record.version, ignore_unknown=bool(record.source))


def _route_again(delivery: Delivery, using: str) -> None:
    """Deliver the UNROUTABLE pseudo-handler: fan the event out now that its class exists."""
    cls = event_class(delivery.event.event_type)
    if cls is None:
        load_event(delivery.event)  # raises UnknownEventType with the explanation
        return
    event = delivery.event
    Delivery.objects.using(using).bulk_create(
        [
            Delivery(
                event_id=event.pk, handler=s.name, stream=event.stream, position=event.position
            )
            for s in handlers_for(cls)
        ],
        ignore_conflicts=True,
    )


def _send(signal: Any, **kwargs: Any) -> None:
    for receiver, result in signal.send_robust(sender=Delivery, **kwargs):
        if isinstance(result, Exception):
            logger.error("Receiver %r of an eventbus signal raised", receiver, exc_info=result)
