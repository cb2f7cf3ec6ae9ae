"""``emit()``: write an event into the outbox, in the caller's transaction."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from django.db import router, transaction

from . import signals
from .conf import eventbus_settings
from .context import _stopped, current_delivery
from .events import Event, payload_size
from .exceptions import ChainDepthExceeded, EventBusError, PayloadError

if TYPE_CHECKING:
    from .models import OutboxEvent


def emit(
    event: Event,
    *,
    using: str | None = None,
    correlation_id: uuid.UUID | str | None = None,
) -> OutboxEvent:
    """Store ``event`` in the current transaction of database ``using``; return the row.

    Nothing runs now: handlers run in the background once the transaction commits. Inside a
    handler the new event is chained to the one being handled (causation, correlation,
    depth). ``correlation_id`` starts a first event in a correlation you already have (an
    incoming request's id, say).
    """
    from .models import OutboxEvent

    if not isinstance(event, Event):
        raise EventBusError(
            f"emit() takes an Event instance, got {type(event).__name__} {event!r:.80}"
        )
    payload = event.to_json()
    size = payload_size(payload)
    limit = eventbus_settings.MAX_PAYLOAD_BYTES
    if size > limit:
        raise PayloadError(
            event.event_type,
            "*",
            f"makes the payload {size} bytes, over EVENTBUS['MAX_PAYLOAD_BYTES'] = {limit}; "
            "store large data elsewhere and put its id in the event",
        )

    parent = current_delivery()
    depth = 0
    causation_id = None
    if parent is not None:
        depth = parent.depth + 1
        causation_id = parent.event_id
        if correlation_id is None:
            correlation_id = parent.correlation_id
        if using is None:
            using = parent.using
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
    record = OutboxEvent.objects.using(using).create(
        event_type=event.event_type,
        version=event.version,
        payload=payload,
        correlation_id=correlation_id,
        causation_id=causation_id,
        depth=depth,
    )
    signals.event_emitted.send(sender=type(event), event=event, outbox_event=record, using=using)
    # A dispatcher running this handler keeps going until idle, so it needs no nudge.
    if parent is None and eventbus_settings.NUDGE:
        _nudge_on_commit(using)
    return record


async def aemit(
    event: Event,
    *,
    using: str | None = None,
    correlation_id: uuid.UUID | str | None = None,
) -> OutboxEvent:
    """``emit()`` for ``async def`` code (async views and handlers)."""
    from asgiref.sync import sync_to_async

    return await sync_to_async(emit)(event, using=using, correlation_id=correlation_id)


class _Nudge:
    """The on-commit callback; one per transaction however many events it emits."""

    def __init__(self, using: str) -> None:
        self.using = using

    def __call__(self) -> None:
        from .tasks import nudge

        nudge(self.using)


def _nudge_on_commit(using: str) -> None:
    connection = transaction.get_connection(using)
    # A nudge registered in this block or an enclosing one commits with this event (Django
    # drops the callbacks of rolled-back savepoints); one in a sibling savepoint may not.
    open_savepoints = set(connection.savepoint_ids)
    for sids, func, _robust in connection.run_on_commit:
        if isinstance(func, _Nudge) and func.using == using and set(sids) <= open_savepoints:
            return
    transaction.on_commit(_Nudge(using), using=using, robust=True)
