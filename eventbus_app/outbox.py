"""``emit()``: write an event into the outbox, in the caller's transaction."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

from django.db import connections, router, transaction
from django.utils import timezone

from . import signals
from .conf import eventbus_settings
from .context import _stopped, current_delivery
from .events import Event, payload_size
from .exceptions import ChainDepthExceeded, EventBusError, PayloadError
from .telemetry import current_traceparent

if TYPE_CHECKING:
    from django.db.models import Field

    from .models import OutboxEvent


def emit(
    event: Event,
    *,
    using: str | None = None,
    correlation_id: uuid.UUID | str | None = None,
    stream: str = "",
    expected_version: int | None = None,
    deliver_after: timedelta | datetime | None = None,
) -> OutboxEvent:
    """Store ``event`` in the current transaction of database ``using``; return the row.

    Nothing runs now: handlers run in the background once the transaction commits. Inside a
    handler the new event is chained to the one being handled (causation, correlation,
    depth). ``correlation_id`` starts a first event in a correlation you already have (an
    incoming request's id, say). ``stream`` appends the event to that stream at the next
    position; with ``expected_version`` only if the stream's last position is that one
    (0: the stream must be new), else :class:`WrongExpectedVersion` is raised.
    ``deliver_after`` (a ``timedelta`` from now, or an aware ``datetime``): its handlers do
    not run before then.
    """
    from .models import OutboxEvent
    from .streams.store import check_stream

    if not isinstance(event, Event):
        raise EventBusError(
            f"emit() takes an Event instance, got {type(event).__name__} {event!r:.80}"
        )
    check_stream(stream, expected_version)
    due = _deliver_after(event, deliver_after)
    payload = event.to_json()
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    limit = eventbus_settings.MAX_PAYLOAD_BYTES
    # len(text) <= bytes <= 4 * len(text): encode only when the limit is within reach.
    size = len(text) if len(text) * 4 <= limit else len(text.encode())
    if size > limit:
        # Name the biggest field: that is where the bytes are.
        sizes = {name: payload_size({name: value}) for name, value in payload.items()}
        field = max(sizes, key=sizes.__getitem__) if sizes else "*"
        raise PayloadError(
            event.event_type,
            field,
            f"holds {sizes.get(field, size)} bytes of a {size}-byte payload, over "
            f"EVENTBUS['MAX_PAYLOAD_BYTES'] = {limit}; store large data elsewhere and put its "
            "id in the event",
        )

    parent = current_delivery()
    depth = 0
    causation_id = None
    if parent is not None:
        depth = parent.depth + 1
        if correlation_id is None:
            correlation_id = parent.correlation_id
        if using is None:
            using = parent.using
        # causation is a foreign key: it cannot point into another database (it would fail
        # at commit, or worse, link whichever event has that id there).
        if using == parent.using:
            causation_id = parent.event_id
        max_depth = eventbus_settings.MAX_CHAIN_DEPTH
        if depth > max_depth:
            error = ChainDepthExceeded(
                f"Handler {parent.handler} emitted {event.event_type} at chain depth {depth}, "
                f"beyond EVENTBUS['MAX_CHAIN_DEPTH'] = {max_depth} (correlation "
                f"{parent.correlation_id}). Handlers emitting events from events form a loop "
                "or a storm here; the chain is stopped."
            )
            stopped = _stopped.get()
            if stopped is not None:
                stopped.append(error)
            raise error
    if correlation_id is None:
        correlation_id = uuid.uuid4()
    elif not isinstance(correlation_id, uuid.UUID):
        try:
            correlation_id = uuid.UUID(str(correlation_id))
        except ValueError:
            raise EventBusError(f"correlation_id must be a UUID, got {correlation_id!r}") from None

    using = using or router.db_for_write(OutboxEvent)
    position = None
    if stream:
        from .streams.store import next_position

        if transaction.get_connection(using).in_atomic_block:
            # Before the block below: a WrongExpectedVersion (nothing written yet) leaves
            # the caller's transaction usable; the stream's lock lasts until it ends.
            position = next_position(using, stream, expected_version)
    # No savepoint: if anything below fails, the caller's transaction must roll back
    # whole (the event row is already written); in autocommit this is the transaction.
    with transaction.atomic(using=using, savepoint=False):
        # A dispatcher running this handler keeps going until idle, so it needs no nudge,
        # but only on its own database: an event on another one needs its own dispatcher.
        nudge = (
            (parent is None or parent.using != using)
            and eventbus_settings.NUDGE
            and not _nudge_registered(using)
        )
        queue_row = None
        if nudge:
            from .tasks import queue_row_in_transaction

            queue_row = queue_row_in_transaction(using)
        if stream and position is None:  # autocommit: this block is the transaction
            position = next_position(using, stream, expected_version)
        record = _insert(
            using,
            text,
            queue_row,
            stream=stream,
            position=position,
            event_type=event.event_type,
            version=event.version,
            payload=payload,
            correlation_id=correlation_id,
            causation_id=causation_id,
            depth=depth,
            deliver_after=due,
            emitted_by=parent.handler if parent is not None else "",
            traceparent=current_traceparent(),
        )
        signals.event_emitted.send(
            sender=type(event), event=event, outbox_event=record, using=using
        )
        if nudge:
            transaction.on_commit(_Nudge(using, queue_row is not None), using=using, robust=True)
    return record


_COLUMNS = (
    "uuid",
    "event_type",
    "version",
    "payload",
    "correlation_id",
    "causation",
    "depth",
    "created_at",
    "stream",
    "position",
    "deliver_after",
    "emitted_by",
    "traceparent",
)
# Per database vendor (and NOTIFY on or off): the INSERT statement, and the fields whose
# values the backend must adapt (uuid and datetime on SQLite, say); the others go to the
# driver as they are.
_INSERT: dict[tuple[str, bool], tuple[str, list[tuple[int, Field[Any, Any]]]]] = {}


def _prepared_insert(connection: Any) -> tuple[str, list[tuple[int, Field[Any, Any]]]]:
    from .models import OutboxEvent
    from .wakeup import CHANNEL, notifies

    key = (connection.vendor, notifies(connection))
    prepared = _INSERT.get(key)
    if prepared is None:
        fields = [cast("Field[Any, Any]", OutboxEvent._meta.get_field(n)) for n in _COLUMNS]
        qn = connection.ops.quote_name
        jsonb = connection.vendor == "postgresql"
        placeholders = ["%s::jsonb" if jsonb and f.name == "payload" else "%s" for f in fields]
        sql = (
            f"INSERT INTO {qn(OutboxEvent._meta.db_table)} "
            f"({', '.join(qn(str(f.column)) for f in fields)}) "
            f"VALUES ({', '.join(placeholders)}) RETURNING {qn('id')}"
        )
        if key[1]:
            # Delivered at commit, in the same statement: no extra round trip.
            sql += f", pg_notify('{CHANNEL}', '')"
        adapt = [
            (i, f)
            for i, f in enumerate(fields)
            if f.name in ("uuid", "correlation_id", "created_at", "deliver_after")
        ]
        prepared = _INSERT[key] = (sql, adapt)
    return prepared


def _insert(using: str, text: str, queue_row: tuple[str, str] | None, **values: Any) -> OutboxEvent:
    """One INSERT … RETURNING id, with the ORM's own value adaptation but not its overhead
    (emit() is on the request path; the model's save() machinery costs more than the SQL).
    ``text`` is the payload's JSON. ``queue_row``: django-q2's ORM-broker row to write too;
    on PostgreSQL in the same statement."""
    from .models import OutboxEvent

    connection = connections[using]
    values["uuid"] = uuid.uuid4()  # made here, not by the database: no RETURNING needed
    values["created_at"] = timezone.now()
    sql, adapt = _prepared_insert(connection)
    queue_params: list[Any] = []
    if queue_row is not None:
        queue_sql, queue_params = _queue_insert(connection, queue_row, values["created_at"])
        if connection.vendor == "postgresql":
            sql = f"WITH queued AS ({queue_sql}) {sql}"
        else:  # SQLite has no data-modifying WITH: a statement of its own
            with connection.cursor() as cursor:
                cursor.execute(queue_sql, queue_params)
            queue_params = []
    if connection.vendor == "postgresql" and "e+" in text:
        # jsonb keeps a number's digits, not its float-ness: 1e+16 would come back an int.
        text = _EXPONENT_NUMBER.sub(_positional, text)
    params = [
        values["uuid"],
        values["event_type"],
        values["version"],
        text,
        values["correlation_id"],
        values["causation_id"],
        values["depth"],
        values["created_at"],
        values["stream"],
        values["position"],
        values["deliver_after"],
        values["emitted_by"],
        values["traceparent"],
    ]
    for index, field in adapt:
        params[index] = field.get_db_prep_save(params[index], connection)
    with connection.cursor() as cursor:
        cursor.execute(sql, queue_params + params)
        row = cursor.fetchone()
    record = OutboxEvent(id=row[0], **values)
    record._state.adding = False
    record._state.db = using
    return record


def _queue_insert(connection: Any, queue_row: tuple[str, str], now: Any) -> tuple[str, list[Any]]:
    """The INSERT of django-q2's ORM-broker row (its ``OrmQ`` model: key, payload, and a
    ``lock`` in the past, which makes it available), as its broker's ``enqueue`` writes it."""
    from django_q.models import OrmQ

    meta = OrmQ._meta
    qn = connection.ops.quote_name
    lock = meta.get_field("lock")
    columns = ", ".join(qn(str(meta.get_field(n).column)) for n in ("key", "payload", "lock"))
    sql = f"INSERT INTO {qn(meta.db_table)} ({columns}) VALUES (%s, %s, %s)"
    return sql, [*queue_row, lock.get_db_prep_save(now, connection)]


# A JSON string (skipped) or a number in exponent form with a positive exponent: written
# out in full with ".0" for jsonb.
_EXPONENT_NUMBER = re.compile(r'"(?:[^"\\]|\\.)*"|(-?\d+(?:\.\d+)?e\+\d+)')


def _positional(match: re.Match[str]) -> str:
    number = match.group(1)
    return match.group() if number is None else format(Decimal(number), "f") + ".0"


async def aemit(
    event: Event,
    *,
    using: str | None = None,
    correlation_id: uuid.UUID | str | None = None,
    stream: str = "",
    expected_version: int | None = None,
    deliver_after: timedelta | datetime | None = None,
) -> OutboxEvent:
    """``emit()`` for ``async def`` code (async views and handlers)."""
    from asgiref.sync import sync_to_async

    return await sync_to_async(emit)(
        event,
        using=using,
        correlation_id=correlation_id,
        stream=stream,
        expected_version=expected_version,
        deliver_after=deliver_after,
    )


def _deliver_after(event: Event, value: timedelta | datetime | None) -> datetime | None:
    """The moment ``emit(deliver_after=)`` asks for, validated: a ``timedelta`` (from now,
    not negative) or an aware ``datetime``; None: at once."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise EventBusError(
                f"emit({event.event_type}, deliver_after={value!r}): a negative delay; pass a "
                "timedelta of 0 or more (or None to deliver at once)"
            )
        return timezone.now() + value
    if isinstance(value, datetime):
        if timezone.is_naive(value):
            raise EventBusError(
                f"emit({event.event_type}, deliver_after={value!r}): a naive datetime is "
                "ambiguous; pass an aware one (django.utils.timezone.now() + delay, or "
                "datetime(..., tzinfo=UTC)) or a timedelta"
            )
        return value
    raise EventBusError(
        f"emit({event.event_type}, deliver_after=...) takes a timedelta or an aware datetime, "
        f"got {type(value).__name__} {value!r:.80}"
    )


class _Nudge:
    """The on-commit callback; one per transaction however many events it emits.

    With ``enqueued`` set, the dispatch task was already written inside the transaction
    (django-q2's ORM broker on the same database): then it only marks the transaction.
    """

    def __init__(self, using: str, enqueued: bool = False) -> None:
        self.using = using
        self.enqueued = enqueued

    def __call__(self) -> None:
        if not self.enqueued:
            from .tasks import nudge, nudge_in_background

            if eventbus_settings.NUDGE_BACKGROUND:
                nudge_in_background(self.using)
            else:
                nudge(self.using)


def _nudge_registered(using: str) -> bool:
    """Whether this transaction's nudge is registered already (one per transaction)."""
    connection = transaction.get_connection(using)
    # A nudge registered in this block or an enclosing one commits with this event (Django
    # drops the callbacks of rolled-back savepoints); one in a sibling savepoint may not.
    open_savepoints = set(connection.savepoint_ids)
    return any(
        isinstance(func, _Nudge) and func.using == using and set(sids) <= open_savepoints
        for sids, func, _robust in connection.run_on_commit
    )
