"""Rebuilding a projection: run one handler over stored events again, in order per stream.

In place (the default), the selected events go through the handler in chunks of one
transaction each; make such a handler idempotent (an upsert by the event's key).

``shadow=True`` rebuilds the whole projection beside the live one: the handler must declare
the models it writes (``@handler(..., writes=[Model])``). The handler is paused (its live
deliveries wait), each model gets a shadow table (created by Django's schema editor under
another name), the handler's writes go there, the difference to the live tables is counted
(rows added / changed / removed), and then, **in one transaction**, the tables are swapped,
the handler's unfinished deliveries of the replayed events are marked succeeded (the
rebuild applied them), and the handler is resumed: readers see the old projection or the
new one, never a half-built one, and no event is applied twice or skipped. Tables that
other tables reference by foreign key cannot be swapped.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from asgiref.sync import async_to_sync
from django.db import connections, router, transaction
from django.db.models.functions import Now

from ..context import DeliveryContext, _current
from ..events import registered_event_types
from ..exceptions import EventBusError
from ..models import Delivery, HandlerState, OutboxEvent
from ..registry import HandlerSpec

CHUNK = 500


@dataclass
class Difference:
    table: str
    added: int = 0
    changed: int = 0
    removed: int = 0
    by: str = "primary key"


@dataclass
class Result:
    events: int = 0
    last_event_id: int = 0
    seconds: float = 0.0
    differences: list[Difference] = field(default_factory=list)
    swapped: bool = False


def selection(
    spec: HandlerSpec,
    *,
    stream: str | None = None,
    since: datetime | None = None,
    using: str | None = None,
) -> Any:
    """The events ``spec`` handles, in the order a rebuild replays them (per stream by
    position; events without a stream by id)."""
    using = using or router.db_for_read(OutboxEvent)
    types = [t for t, cls in registered_event_types().items() if issubclass(cls, spec.event_cls)]
    rows = OutboxEvent.objects.using(using).filter(event_type__in=types)
    if stream is not None:
        rows = rows.filter(stream=stream)
    if since is not None:
        rows = rows.filter(created_at__gte=since)
    return rows.order_by("stream", "position", "id")


def rebuild(
    spec: HandlerSpec,
    *,
    stream: str | None = None,
    since: datetime | None = None,
    shadow: bool = False,
    dry_run: bool = False,
    using: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> Result:
    """Replay ``spec``'s events (see the module's docstring). ``progress(n)`` is called
    after each chunk with the number of events it replayed."""
    using = using or router.db_for_write(OutboxEvent)
    rows = selection(spec, stream=stream, since=since, using=using)
    result = Result()
    started = time.monotonic()
    if dry_run and not shadow:
        result.events = rows.count()
        return result
    if not shadow:
        _replay(spec, rows, using, result, progress)
        result.seconds = time.monotonic() - started
        return result
    if stream is not None or since is not None:
        raise EventBusError(
            "--shadow rebuilds the whole projection: it cannot be combined with --stream or "
            "--since (rebuild those in place instead)"
        )
    if not spec.writes:
        raise EventBusError(
            f"Handler {spec.name} declares no models: pass @handler(..., writes=[Model, ...]) "
            "with the models its projection writes, so that --shadow can rebuild them"
        )
    with _paused(spec.name, using):
        shadows = _create_shadows(spec.writes, using)
        try:
            with _redirected(shadows):
                _replay(spec, rows, using, result, progress)
            result.differences = [_difference(model, name, using) for model, name in shadows]
            if not dry_run:
                _swap(spec, shadows, result.last_event_id, using)
                result.swapped = True
        finally:
            if not result.swapped:
                _drop(shadows, using)
    result.seconds = time.monotonic() - started
    return result


def _replay(
    spec: HandlerSpec,
    rows: Any,
    using: str,
    result: Result,
    progress: Callable[[int], None] | None,
) -> None:
    from ..dispatch.execute import load_event

    chunk: list[OutboxEvent] = []
    for record in rows.iterator(chunk_size=CHUNK):
        chunk.append(record)
        if len(chunk) >= CHUNK:
            _run_chunk(spec, chunk, using, load_event)
            result.events += len(chunk)
            result.last_event_id = max(result.last_event_id, max(r.pk for r in chunk))
            if progress:
                progress(len(chunk))
            chunk = []
    if chunk:
        _run_chunk(spec, chunk, using, load_event)
        result.events += len(chunk)
        result.last_event_id = max(result.last_event_id, max(r.pk for r in chunk))
        if progress:
            progress(len(chunk))


def _run_chunk(
    spec: HandlerSpec, chunk: list[OutboxEvent], using: str, load: Callable[[Any], Any]
) -> None:
    with transaction.atomic(using=using):
        for record in chunk:
            context = DeliveryContext(
                delivery_id=0,
                event_id=record.pk,
                event_type=record.event_type,
                handler=spec.name,
                attempt=1,
                correlation_id=record.correlation_id,
                causation_id=record.causation_id,
                depth=record.depth,
                replays=0,
                using=using,
                event_uuid=record.uuid,
            )
            reset = _current.set(context)
            try:
                event = load(record)
                if spec.is_async:
                    async_to_sync(spec.func)(event)
                else:
                    spec.func(event)
            finally:
                _current.reset(reset)


# --- shadow tables ---------------------------------------------------------------------------


@contextmanager
def _paused(handler: str, using: str) -> Iterator[None]:
    """Pause the handler's live deliveries (and wait for running ones) while it rebuilds."""
    states = HandlerState.objects.using(using)
    before = states.filter(handler=handler, paused=True).exists()
    states.update_or_create(
        handler=handler, defaults={"paused": True, "changed_by": "eventbus_rebuild"}
    )
    try:
        deadline = time.monotonic() + 60
        running = Delivery.objects.using(using).filter(
            handler=handler, status=Delivery.Status.RUNNING, next_attempt_at__gt=Now()
        )
        while running.exists():
            if time.monotonic() > deadline:
                raise EventBusError(
                    f"Handler {handler} still has running deliveries after 60 s; try again"
                )
            time.sleep(0.2)
        yield
    finally:
        if not before:
            states.filter(handler=handler).update(paused=False, changed_by="eventbus_rebuild")


def _create_shadows(models: tuple[Any, ...], using: str) -> list[tuple[Any, str]]:
    suffix = uuid.uuid4().hex[:8]
    connection = connections[using]
    shadows = []
    for model in models:
        name = f"{model._meta.db_table}__rb{suffix}"[: connection.ops.max_name_length() or 63]
        with _redirected([(model, name)]), connection.schema_editor() as editor:
            editor.create_model(model)
        shadows.append((model, name))
    return shadows


@contextmanager
def _redirected(shadows: list[tuple[Any, str]]) -> Iterator[None]:
    """Point each model at its shadow table (and give its named indexes and constraints
    names of their own, which must be unique in the database) for this process."""
    saved = []
    for model, name in shadows:
        meta = model._meta
        tag = name.rsplit("__", 1)[-1]
        saved.append(
            (
                meta,
                meta.db_table,
                [(i, i.name) for i in meta.indexes],
                [(c, c.name) for c in meta.constraints],
            )
        )
        meta.db_table = name
        _forget_columns(meta)
        for index in meta.indexes:
            index.name = f"{index.name[:20]}_{tag}"
        for constraint in meta.constraints:
            constraint.name = f"{constraint.name[:40]}_{tag}"
    try:
        yield
    finally:
        for meta, table, indexes, constraints in saved:
            meta.db_table = table
            _forget_columns(meta)
            for index, index_name in indexes:
                index.name = index_name
            for constraint, constraint_name in constraints:
                constraint.name = constraint_name


def _forget_columns(meta: Any) -> None:
    """Fields cache their column expression with the table name (``Field.cached_col``)."""
    for f in meta.concrete_fields:
        f.__dict__.pop("cached_col", None)


def _difference(model: Any, shadow: str, using: str) -> Difference:
    connection = connections[using]
    qn = connection.ops.quote_name
    live = qn(model._meta.db_table)
    new = qn(shadow)
    pk = model._meta.pk
    columns = [f.column for f in model._meta.concrete_fields]
    diff = Difference(table=model._meta.db_table)
    with connection.cursor() as cursor:
        if pk.get_internal_type() in ("AutoField", "BigAutoField", "SmallAutoField"):
            # Ids are new in a rebuilt table: compare the rows' contents instead.
            diff.by = "content"
            body = ", ".join(qn(c) for c in columns if c != pk.column)
            cursor.execute(
                f"SELECT (SELECT COUNT(*) FROM (SELECT {body} FROM {new} EXCEPT "
                f"SELECT {body} FROM {live}) a), (SELECT COUNT(*) FROM (SELECT {body} FROM "
                f"{live} EXCEPT SELECT {body} FROM {new}) r)"
            )
            diff.added, diff.removed = cursor.fetchone()
            return diff
        key = qn(pk.column)
        same = " AND ".join(
            f"(n.{qn(c)} = o.{qn(c)} OR (n.{qn(c)} IS NULL AND o.{qn(c)} IS NULL))" for c in columns
        )
        cursor.execute(
            f"SELECT (SELECT COUNT(*) FROM {new} n LEFT JOIN {live} o ON o.{key} = n.{key} "
            f"WHERE o.{key} IS NULL), "
            f"(SELECT COUNT(*) FROM {new} n JOIN {live} o ON o.{key} = n.{key} "
            f"WHERE NOT ({same})), "
            f"(SELECT COUNT(*) FROM {live} o LEFT JOIN {new} n ON n.{key} = o.{key} "
            f"WHERE n.{key} IS NULL)"
        )
        diff.added, diff.changed, diff.removed = cursor.fetchone()
    return diff


def _swap(spec: HandlerSpec, shadows: list[tuple[Any, str]], last_event: int, using: str) -> None:
    connection = connections[using]
    qn = connection.ops.quote_name
    with transaction.atomic(using=using), connection.cursor() as cursor:
        for model, shadow in shadows:
            live = model._meta.db_table
            retired = f"{shadow}_old"
            cursor.execute(f"ALTER TABLE {qn(live)} RENAME TO {qn(retired)}")
            cursor.execute(f"ALTER TABLE {qn(shadow)} RENAME TO {qn(live)}")
            cursor.execute(f"DROP TABLE {qn(retired)}")
        # What the rebuild applied counts as delivered; later events run live after it.
        from ..dispatch.execute import succeeded_columns

        Delivery.objects.using(using).filter(handler=spec.name, event_id__lte=last_event).exclude(
            status=Delivery.Status.SUCCEEDED
        ).update(**succeeded_columns())


def _drop(shadows: list[tuple[Any, str]], using: str) -> None:
    connection = connections[using]
    with connection.cursor() as cursor:
        for _, shadow in shadows:
            cursor.execute(f"DROP TABLE IF EXISTS {connection.ops.quote_name(shadow)}")
