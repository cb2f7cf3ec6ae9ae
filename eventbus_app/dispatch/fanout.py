"""Fan-out: one ``Delivery`` per (event, registered handler).

It claims undispatched events (``dispatched_at IS NULL``, ``SKIP LOCKED``) and creates their
deliveries. The dispatcher loop creates them already leased to itself (``fan_out_leased``)
and runs them at once: fresh work needs no separate claim. On PostgreSQL that is one INSERT
from arrays whose RETURNING gives the leased rows. Leased rows are not charged an attempt.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, NamedTuple

from django.db import connections, transaction
from django.db.models import DateTimeField, ExpressionWrapper
from django.db.models.base import ModelState
from django.db.models.functions import Now

from ..conf import eventbus_settings
from ..events import event_class
from ..models import Delivery, OutboxEvent
from ..registry import get_handler, handlers_for
from .claim import leased as claimed
from .fleet import fleet

# Pseudo-handler of an event whose type has no class here: delivering it routes the event
# once the class exists again, and dead-letters it (with the reason) until then.
UNROUTABLE = "eventbus_app.unroutable"

Status = Delivery.Status


class Row(NamedTuple):
    """A delivery to create: its event, handler, whether it is leased to this worker, and
    the event's stream and position (copied for ordered claims)."""

    event: int
    handler: str
    leased: bool
    stream: str
    position: int | None
    due: Any = None  # deliver_after, when later than now


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
    postgres = connections[using].vendor == "postgresql"
    with transaction.atomic(using=using):
        events, lease_end, now = _pick(using, limit, postgres)
        if not events:
            return 0, []
        # Paused handlers' deliveries wait; throttled ones are claimed within their rate.
        held = _held_handlers(using) if token is not None else set()
        rows: list[Row] = []
        names_by_type: dict[str, list[tuple[str, bool]]] = {}  # once per type and batch
        for event in events:
            names = names_by_type.get(event.event_type)
            if names is None:
                names = names_by_type[event.event_type] = _routes(using, event.event_type)
            # emit(deliver_after=...): its deliveries wait until then, unleased.
            due = event.deliver_after if event.deliver_after and event.deliver_after > now else None
            for name, ordered in names:
                # An ordered handler's stream deliveries wait for their turn: claimed in
                # position order, never leased here.
                mine = (
                    token is not None
                    and due is None
                    and name not in held
                    and (name == UNROUTABLE or get_handler(name) is not None)
                    and not (ordered and event.stream)
                )
                rows.append(Row(event.pk, name, mine, event.stream, event.position, due))
        if postgres:
            leased = _insert_deliveries(using, rows, token, lease_end, events)
        else:
            _bulk_create_deliveries(using, rows, token, lease_end)
            OutboxEvent.objects.using(using).filter(
                pk__in=[e.pk for e in events], dispatched_at__isnull=True
            ).update(dispatched_at=Now())
    if not postgres:
        leased = claimed(using, token) if token is not None else []
    return len(events), leased


def _pick(using: str, limit: int, postgres: bool) -> tuple[list[OutboxEvent], Any, Any]:
    """Lock up to ``limit`` undispatched events (SKIP LOCKED); returns them, the lease's end
    and the database's now (read once: an expression per row costs more than the INSERT).
    On PostgreSQL one UPDATE … RETURNING marks them dispatched and gives the whole rows."""
    lease = timedelta(seconds=eventbus_settings.LEASE_SECONDS)
    if postgres:
        connection = connections[using]
        qn = connection.ops.quote_name
        table = qn(OutboxEvent._meta.db_table)
        fields = list(OutboxEvent._meta.concrete_fields)
        columns = ", ".join(f"{table}.{qn(str(f.column))}" for f in fields)
        with connection.cursor() as cursor:
            cursor.execute(
                f"WITH picked AS MATERIALIZED (SELECT id FROM {table} WHERE dispatched_at IS "
                "NULL ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) "
                f"UPDATE {table} SET dispatched_at = STATEMENT_TIMESTAMP() FROM picked "
                f"WHERE {table}.id = picked.id RETURNING {columns}, "
                "STATEMENT_TIMESTAMP() + make_interval(secs => %s), STATEMENT_TIMESTAMP()",
                [limit, lease.total_seconds()],
            )
            rows = cursor.fetchall()
        if not rows:
            return [], None, None
        names = [f.attname for f in fields]
        # What the ORM's compiler would apply (the payload's JSON decoding, say).
        converters = [(i, f.get_db_converters(connection)) for i, f in enumerate(fields)]
        converters = [(i, c) for i, c in converters if c]

        def build(row: Any) -> OutboxEvent:
            values = list(row[: len(names)])
            for i, funcs in converters:
                for func in funcs:
                    values[i] = func(values[i], None, connection)
            return OutboxEvent.from_db(using, names, values)

        events = sorted((build(row) for row in rows), key=lambda e: e.pk)
        return events, rows[0][-2], rows[0][-1]
    lease_ends = ExpressionWrapper(Now() + lease, output_field=DateTimeField())
    events = list(
        OutboxEvent.objects.using(using)
        .filter(dispatched_at__isnull=True)
        .order_by("id")
        .select_for_update(skip_locked=True)
        .annotate(lease_ends=lease_ends, db_now=Now())
        .only("pk", "event_type", "stream", "position", "deliver_after")[:limit]
    )
    if not events:
        return [], None, None
    first: Any = events[0]  # annotated with the lease's end and the database's now
    return events, first.lease_ends, first.db_now


def _held_handlers(using: str) -> set[str]:
    """Handlers whose fresh deliveries are not leased at fan-out: paused or throttled."""
    from ..models import HandlerState, HandlerThrottle

    paused = HandlerState.objects.using(using).filter(paused=True).values_list("handler")
    throttled = HandlerThrottle.objects.using(using).values_list("handler")
    return {name for (name,) in paused.union(throttled)}


_template: dict[str, Any] | None = None


def _loaded_delivery(using: str, event: OutboxEvent, **values: Any) -> Delivery:
    """A Delivery as if read from the database, without ``Model.__init__`` (a tenth of a
    batch's time at a few hundred rows): every field's default, then ``values``."""
    global _template
    if _template is None:
        from django.db.models.expressions import DatabaseDefault

        _template = {}
        for f in Delivery._meta.concrete_fields:
            default = f.get_default()
            _template[f.attname] = None if isinstance(default, DatabaseDefault) else default
    delivery = Delivery.__new__(Delivery)
    delivery.__dict__.update(_template)
    delivery.__dict__.update(values)
    delivery._state = ModelState()
    delivery._state.adding = False
    delivery._state.db = using
    delivery._state.fields_cache["event"] = event
    return delivery


def _routes(using: str, event_type: str) -> list[tuple[str, bool]]:
    """(handler, ordered) for each delivery an event of ``event_type`` gets: this worker's
    handlers, and those only other live workers (newer or older code) route it to."""
    cls = event_class(event_type)
    own = [(s.name, s.ordered) for s in handlers_for(cls)] if cls is not None else []
    names = fleet(using).handlers_for_type(event_type, [name for name, _ in own])
    routes = own + [(name, False) for name in names[len(own) :]]
    if cls is None and not routes:
        return [(UNROUTABLE, False)]  # no class here, and no live worker routes it
    return routes


def _bulk_create_deliveries(
    using: str, rows: list[Row], token: uuid.UUID | None, lease_end: Any
) -> None:
    lease = {"status": Status.RUNNING, "lease_token": token}
    Delivery.objects.using(using).bulk_create(
        [
            Delivery(
                event_id=row.event,
                handler=row.handler,
                stream=row.stream,
                position=row.position,
                **(
                    {"next_attempt_at": lease_end, **lease}
                    if row.leased
                    else {"next_attempt_at": row.due}
                    if row.due
                    else {}
                ),
            )
            for row in rows
        ],
        ignore_conflicts=True,
    )


def _insert_deliveries(
    using: str,
    rows: list[Row],
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
    # The first leased delivery (the first the batch runs) gets its start marker here, so
    # fresh work needs no write before its first handler starts. (A worker killed in the
    # millisecond between this commit and that start charges that delivery one attempt.)
    # Batch handlers (relays) run after the others and carry no marker: skipped here.
    first_leased = [False] * len(rows)
    for index, row in enumerate(rows):
        spec = get_handler(row.handler) if row.leased else None
        if row.leased and (spec is None or spec.batch is None):
            first_leased[index] = True
            break
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (event_id, handler, status, attempts, last_error, error_class, "
            "traceback, next_attempt_at, lease_token, replays, in_flight, isolate, started_at, "
            "stream, position) "
            "SELECT e, h, CASE WHEN l THEN %s ELSE %s END, 0, "
            "'', '', '', CASE WHEN l THEN %s ELSE COALESCE(d, STATEMENT_TIMESTAMP()) END, "
            "CASE WHEN l THEN %s::uuid END, 0, CASE WHEN m THEN 1 ELSE 0 END, false, "
            "CASE WHEN m THEN STATEMENT_TIMESTAMP() END, s, p "
            "FROM unnest(%s::bigint[], %s::text[], %s::boolean[], %s::boolean[], %s::text[], "
            "%s::integer[], %s::timestamptz[]) AS t(e, h, l, m, s, p, d) "
            # Our own bookkeeping: lost with a database crash, the event is fanned out again.
            "CROSS JOIN (SELECT set_config('synchronous_commit', 'off', true)) AS cfg "
            "ON CONFLICT DO NOTHING RETURNING id, event_id, handler, status, in_flight",
            [
                Status.RUNNING.value,
                Status.PENDING.value,
                lease_end,
                token,
                [r.event for r in rows],
                [r.handler for r in rows],
                [r.leased for r in rows],
                first_leased,
                [r.stream for r in rows],
                [r.position for r in rows],
                [r.due for r in rows],
            ],
        )
        created = cursor.fetchall()
    by_id = {event.pk: event for event in events}
    leased = []
    for pk, event_id, handler, status, in_flight in sorted(created):
        if status != Status.RUNNING:
            continue  # a paused handler's: it waits, pending
        event = by_id[event_id]
        leased.append(
            _loaded_delivery(
                using,
                event,
                id=pk,
                event_id=event_id,
                handler=handler,
                status=Status.RUNNING,
                in_flight=in_flight,
                next_attempt_at=lease_end,
                lease_token=token,
                stream=event.stream,
                position=event.position,
            )
        )
    return leased
