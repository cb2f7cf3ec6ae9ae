"""The inbox: a received message becomes an ``OutboxEvent`` of this service, once.

In one transaction: the row, with the sender's ``uuid`` and ``source=`` the source's name,
on the sender's stream (``subject``) at this database's next position. The uuid is unique,
so a message received twice (a re-publish, a redelivery after a lost ack) is dropped: the
caller acknowledges it all the same. After the commit the dispatcher is nudged and the
event goes to local handlers like a local one; a type no class here knows is dead-lettered
by the dispatcher, with its reason, and routed once its class exists.

A message that is no CloudEvent at all is kept raw, as an event of type
``eventbus_app.unreadable`` with a dead delivery whose error says why; it never blocks the
consumer, and its uuid (from the bytes) makes a redelivered copy a duplicate too.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import uuid
from enum import StrEnum

from django.db import DataError, IntegrityError, transaction
from django.db.models.functions import Now
from django.utils import timezone

from ..conf import eventbus_settings
from ..dispatch import UNROUTABLE
from ..dispatch.retry import storable
from ..models import Delivery, OutboxEvent
from ..streams.store import next_position
from .cloudevents import Incoming, UnreadableMessage, decode

logger = logging.getLogger(__name__)

UNREADABLE_TYPE = "eventbus_app.unreadable"
# uuid5 namespace of unreadable messages' uuids (made from their bytes).
_RAW = uuid.UUID("6a3c1a5e-2f4b-4c0e-9a57-0e7d1c2b9f31")
RAW_LIMIT = 64 * 1024  # bytes of an unreadable message kept


class Outcome(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    DEAD = "dead"  # unreadable: kept as a dead letter


def receive(source: str, body: bytes, using: str = "default") -> Outcome:
    """Store one received message for ``source``; the caller acks it once this returns."""
    return receive_many(source, [body], using)[0]


def receive_many(source: str, bodies: list[bytes], using: str = "default") -> list[Outcome]:
    """Store several received messages in one transaction (a consumer's batch, the http
    source's batched mode): all are stored (or dropped as duplicates, or kept as
    unreadable) or, if the database fails, none; the caller acks them after. The
    dispatcher is nudged once, after the commit."""
    read: list[Incoming | UnreadableMessage] = []
    for body in bodies:
        try:
            read.append(decode(body))
        except UnreadableMessage as exc:
            read.append(exc)
    # Stored stream by stream (a stable sort keeps each stream's order): two consumers
    # then take PostgreSQL's per-stream locks in one order and cannot deadlock.
    order = sorted(range(len(bodies)), key=lambda i: getattr(read[i], "subject", ""))
    outcomes: list[Outcome] = [Outcome.DUPLICATE] * len(bodies)
    with transaction.atomic(using=using):
        for i in order:
            outcomes[i] = _receive_one(source, bodies[i], read[i], using)
    if Outcome.STORED in outcomes and eventbus_settings.NUDGE:
        from ..tasks import nudge

        nudge(using)  # never raises: a lost nudge waits for the sweep
    return outcomes


def _receive_one(
    source: str, body: bytes, incoming: Incoming | UnreadableMessage, using: str
) -> Outcome:
    if isinstance(incoming, UnreadableMessage):
        return _keep_unreadable(source, body, str(incoming), using)
    try:
        with transaction.atomic(using=using):  # a savepoint: this message's row only
            return _store(source, incoming, using)
    except (DataError, ValueError, OverflowError, TypeError) as exc:
        # A value this database (or its driver) refuses: a decoded CloudEvent can still be
        # too much for a column. Kept raw like an unreadable one, never retried for ever.
        return _keep_unreadable(source, body, f"it cannot be stored: {exc}", using)


def _store(source: str, incoming: Incoming, using: str) -> Outcome:
    with transaction.atomic(using=using):
        if OutboxEvent.objects.using(using).filter(uuid=incoming.uuid).exists():
            return Outcome.DUPLICATE
        causation_id = None
        if incoming.causation_uuid is not None:
            causation_id = (
                OutboxEvent.objects.using(using)
                .filter(uuid=incoming.causation_uuid)
                .values_list("pk", flat=True)
                .first()
            )
        # The sender's stream keeps its order here: positions follow arrival, which the
        # ordered relay makes the sender's order (gaps where the relay filtered types out).
        position = next_position(using, incoming.subject, None) if incoming.subject else None
        try:
            with transaction.atomic(using=using):
                OutboxEvent.objects.using(using).create(
                    uuid=incoming.uuid,
                    event_type=incoming.type,
                    version=incoming.version,
                    payload=incoming.data,
                    correlation_id=incoming.correlation_id or uuid.uuid4(),
                    causation_id=causation_id,
                    created_at=incoming.time or timezone.now(),
                    stream=incoming.subject,
                    position=position,
                    source=source,
                    traceparent=incoming.traceparent,  # the sender's trace continues here
                )
        except IntegrityError:
            # Another consumer stored the same uuid between our check and insert.
            if OutboxEvent.objects.using(using).filter(uuid=incoming.uuid).exists():
                return Outcome.DUPLICATE
            raise
    return Outcome.STORED


def _keep_unreadable(source: str, body: bytes, error: str, using: str) -> Outcome:
    key = uuid.uuid5(_RAW, f"{source}/{hashlib.sha256(body).hexdigest()}")
    kept = body[:RAW_LIMIT]
    try:
        raw: dict[str, str] = {"text": storable(kept.decode())}  # NUL escaped, not dropped
    except UnicodeDecodeError:
        raw = {"base64": base64.b64encode(kept).decode()}
    message = (
        f"Unreadable message from source {source!r} ({len(body)} bytes): {error}. It is "
        "kept raw in this event's payload; fix the sender, and discard this dead letter."
    )
    with transaction.atomic(using=using):
        if OutboxEvent.objects.using(using).filter(uuid=key).exists():
            return Outcome.DUPLICATE
        record = OutboxEvent.objects.using(using).create(
            uuid=key,
            event_type=UNREADABLE_TYPE,
            payload={**raw, "error": storable(error), "bytes": len(body)},
            correlation_id=uuid.uuid4(),
            source=source,
            dispatched_at=Now(),  # its dead letter is made here, not by the fan-out
        )
        Delivery.objects.using(using).create(
            event=record,
            handler=UNROUTABLE,
            status=Delivery.Status.DEAD,
            attempts=1,
            last_error=message,
            error_class=f"{UnreadableMessage.__module__}.{UnreadableMessage.__qualname__}",
            next_attempt_at=None,
            finished_at=timezone.now(),
        )
    logger.warning("%s", message)
    return Outcome.DEAD
