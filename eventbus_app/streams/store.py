"""The outbox as an event store: appending at a position, reading a stream back.

Appends are serialised per stream: on PostgreSQL by a transaction-level advisory lock on
the stream's name, taken before the last position is read (in READ COMMITTED each
statement sees what committed before it started, so the read after the lock sees the
previous writer's row); on SQLite by the database's single writer (``BEGIN IMMEDIATE``).
The unique (stream, position) constraint is the last line: a writer that gets past both
fails with an IntegrityError instead of writing a duplicate or a gap.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import connections, router

from ..exceptions import EventBusError, WrongExpectedVersion

if TYPE_CHECKING:
    from ..events import Event
    from ..models import OutboxEvent

MAX_STREAM_LENGTH = 200


def check_stream(stream: Any, expected_version: Any) -> None:
    if not isinstance(stream, str) or len(stream) > MAX_STREAM_LENGTH:
        raise EventBusError(
            f"stream must be a str of at most {MAX_STREAM_LENGTH} characters, got {stream!r:.80}"
        )
    if expected_version is not None:
        if not stream:
            raise EventBusError(
                f"expected_version={expected_version!r} needs a stream: pass stream='...' too"
            )
        if (
            not isinstance(expected_version, int)
            or isinstance(expected_version, bool)
            or expected_version < 0
        ):
            raise EventBusError(
                "expected_version must be an int >= 0 (0: the stream must be new), got "
                f"{expected_version!r}"
            )


def next_position(using: str, stream: str, expected_version: int | None) -> int:
    """Lock ``stream`` for this transaction and return the position the next event gets;
    raises WrongExpectedVersion if the stream's last position is not ``expected_version``."""
    from ..models import OutboxEvent

    connection = connections[using]
    table = connection.ops.quote_name(OutboxEvent._meta.db_table)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 7336))", [f"stream:{stream}"]
            )
        cursor.execute(
            f"SELECT COALESCE(MAX(position), 0) FROM {table} WHERE stream = %s", [stream]
        )
        last = int(cursor.fetchone()[0])
    if expected_version is not None and last != expected_version:
        raise WrongExpectedVersion(stream, expected_version, last)
    return last + 1


def records(
    stream: str,
    *,
    to_position: int | None = None,
    as_of: datetime | None = None,
    after_position: int = 0,
    using: str | None = None,
) -> Iterable[OutboxEvent]:
    """The stream's stored rows, oldest first."""
    from ..models import OutboxEvent

    using = using or router.db_for_read(OutboxEvent)
    rows = OutboxEvent.objects.using(using).filter(stream=stream, position__gt=after_position)
    if to_position is not None:
        rows = rows.filter(position__lte=to_position)
    if as_of is not None:
        rows = rows.filter(created_at__lte=as_of)
    return rows.order_by("position").iterator(chunk_size=2000)


def read(
    stream: str,
    *,
    to_position: int | None = None,
    as_of: datetime | None = None,
    using: str | None = None,
) -> list[Event]:
    """The events of ``stream``, oldest first, as ``Event`` instances upcast to their
    current version. ``to_position`` / ``as_of`` stop at that position / moment."""
    from ..dispatch.execute import load_event

    return [
        load_event(record)
        for record in records(stream, to_position=to_position, as_of=as_of, using=using)
    ]
