"""The console's queries, apart from its views. Each is shaped for a table with millions of
rows (see docs/BENCHMARKS.md, "Console pages"): nothing counts, groups or searches the whole
deliveries table; exact figures where an operator acts on them (dead, failed, pending),
estimates where only the size matters (succeeded)."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.db import connections, router, transaction
from django.db.models import Count, Max, Min, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.db.models.functions import TruncHour
from django.utils import timezone
from django.utils.timesince import timesince

from ..conf import eventbus_settings
from ..models import (
    Delivery,
    DeliveryAttempt,
    HandlerState,
    OperatorAction,
    OutboxEvent,
    RetryCampaign,
)
from ..redaction import redact
from ..registry import all_handlers

logger = logging.getLogger(__name__)

Status = Delivery.Status
TREE_LIMIT = 200
DISTINCT_LIMIT = 200
# Counted exactly up to here; beyond it the planner's estimate is shown ("about …").
EXACT_COUNT = 1_000
# Free-text search (payload, error text) reads the table's newest this many rows; ids,
# correlation ids, types, handlers and exception classes are found anywhere.
SEARCH_WINDOW = 20_000
SEARCH_SCAN = 1000  # SQLite only: candidates checked against their redacted text in Python


def _pg(using: str) -> bool:
    return connections[using].vendor == "postgresql"


def distinct_values(model: type[Any], field: str, using: str) -> list[str]:
    """The distinct non-empty values of an indexed column, sorted. On PostgreSQL a skip
    scan (one index probe per value) instead of reading every row."""
    column = model._meta.get_field(field).column
    if not _pg(using):
        values = (
            model._base_manager.using(using)
            .order_by(field)
            .values_list(field, flat=True)
            .distinct()[: DISTINCT_LIMIT + 1]
        )
        return [v for v in values if v][:DISTINCT_LIMIT]
    qn = connections[using].ops.quote_name
    table, col = qn(model._meta.db_table), qn(column)
    sql = (
        f"WITH RECURSIVE t(v) AS ("
        f"(SELECT {col} FROM {table} WHERE {col} > '' ORDER BY {col} LIMIT 1) "
        f"UNION ALL SELECT (SELECT {col} FROM {table} WHERE {col} > t.v ORDER BY {col} LIMIT 1) "
        f"FROM t WHERE t.v IS NOT NULL) "
        f"SELECT v FROM t WHERE v IS NOT NULL LIMIT %s"
    )
    with connections[using].cursor() as cursor:
        cursor.execute(sql, [DISTINCT_LIMIT])
        return [row[0] for row in cursor.fetchall()]


def count_or_estimate(queryset: QuerySet[Any], exact_up_to: int = EXACT_COUNT) -> tuple[int, bool]:
    """``(count, exact)``: exact up to ``exact_up_to`` (reading at most that many rows + 1),
    else PostgreSQL's planner estimate (SQLite counts)."""
    using = queryset.db
    rows = queryset.order_by().values("pk")
    if not _pg(using):
        return rows.count(), True
    capped = rows[: exact_up_to + 1].count()
    if capped <= exact_up_to:
        return capped, True
    sql, params = rows.query.sql_with_params()
    with connections[using].cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return max(int(plan[0]["Plan"]["Plan Rows"]), capped), False


def delivery_counts(event_ids: Iterable[int], using: str) -> dict[int, dict[str, int]]:
    """Per event, its deliveries by state: one grouped query for a page of events."""
    counts: dict[int, dict[str, int]] = {}
    rows = (
        Delivery.objects.using(using)
        .filter(event_id__in=list(event_ids))
        .order_by()
        .values_list("event_id", "status")
        .annotate(n=Count("id"))
    )
    for event_id, status, n in rows:
        counts.setdefault(event_id, {})[status] = n
    return counts


# --- search ------------------------------------------------------------------------------


def _like(term: str) -> str:
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _newest(queryset: QuerySet[Any], window: int = SEARCH_WINDOW) -> QuerySet[Any]:
    """``queryset`` narrowed to the table's newest ``window`` ids (one index probe; a
    window over the filtered rows cost a scan of every row the filters skip)."""
    newest = queryset.model._base_manager.using(queryset.db).aggregate(m=Max("pk"))["m"]
    return queryset.filter(pk__gt=newest - window) if newest is not None else queryset


# Every (key, value) of each candidate payload, at any depth, except inside the value of a
# redacted key; a match is on a key, or on a scalar value not under a redacted key. The
# text a redacted value would show is never matched, so it cannot be confirmed by search.
_REDACTED_MATCH = """
WITH RECURSIVE walk(id, k, v) AS (
    SELECT e.id, NULL::text, e.payload FROM {table} e
    WHERE e.id IN ({candidates})
  UNION ALL
    SELECT w.id, c.k, c.v FROM walk w CROSS JOIN LATERAL (
        SELECT key, value FROM jsonb_each(
            CASE WHEN jsonb_typeof(w.v) = 'object' THEN w.v ELSE '{{}}'::jsonb END)
        UNION ALL
        SELECT NULL, value FROM jsonb_array_elements(
            CASE WHEN jsonb_typeof(w.v) = 'array' THEN w.v ELSE '[]'::jsonb END)
    ) AS c(k, v)
    WHERE w.k IS NULL OR NOT (lower(w.k) = ANY(%s))
)
SELECT id FROM walk
WHERE (k IS NOT NULL AND k ILIKE %s)
   OR (jsonb_typeof(v) NOT IN ('object', 'array')
       AND (k IS NULL OR NOT (lower(k) = ANY(%s)))
       AND (v #>> '{{}}' ILIKE %s OR v::text ILIKE %s))
"""


def search_events(queryset: QuerySet[Any], term: str) -> QuerySet[Any]:
    """Event id, correlation id, (part of) an event type, else payload text among the
    newest ``SEARCH_WINDOW`` events; redacted values never match."""
    term = term.strip()
    if not term:
        return queryset
    if term.isdigit():
        return queryset.filter(pk=int(term))
    try:
        return queryset.filter(correlation_id=uuid.UUID(term))
    except ValueError:
        pass
    using = queryset.db
    needle = term.casefold()
    types = [t for t in distinct_values(OutboxEvent, "event_type", using) if needle in t.casefold()]
    if types:  # a type name: found through its index, anywhere in the table
        return queryset.filter(event_type__in=types)
    recent = _newest(queryset)
    fields = [f.lower() for f in eventbus_settings.REDACT_FIELDS]
    if not fields:
        return recent.filter(payload__icontains=term)
    if _pg(using):
        prefilter = recent.filter(payload__icontains=term).values("pk")
        candidates, params = prefilter.query.sql_with_params()
        table = connections[using].ops.quote_name(OutboxEvent._meta.db_table)
        sql = _REDACTED_MATCH.format(table=table, candidates=candidates)
        pattern = _like(term)
        # A scalar matches by its text or by its JSON text (a search for '"k"', quoted, as
        # the SQLite path matches it in the dumped payload).
        matched = RawSQL(sql, (*params, fields, pattern, fields, pattern, pattern))
        return queryset.filter(pk__in=matched)
    # SQLite (development): check the newest candidates' redacted text in Python.
    ids = [
        pk
        for pk, payload in recent.filter(payload__icontains=term)
        .order_by("-pk")
        .values_list("pk", "payload")[:SEARCH_SCAN]
        if needle in json.dumps(redact(payload), ensure_ascii=False).casefold()
    ]
    return queryset.filter(pk__in=ids)


def search_deliveries(queryset: QuerySet[Any], term: str) -> QuerySet[Any]:
    """A delivery or event id, (part of) a handler name or exception class, else error text
    among the newest ``SEARCH_WINDOW`` deliveries."""
    term = term.strip()
    if not term:
        return queryset
    if term.isdigit():
        return queryset.filter(Q(pk=int(term)) | Q(event_id=int(term)))
    using = queryset.db
    needle = term.casefold()
    handlers = [h for h in distinct_values(Delivery, "handler", using) if needle in h.casefold()]
    classes = [c for c in distinct_values(Delivery, "error_class", using) if needle in c.casefold()]
    if handlers or classes:  # names: found through their indexes, anywhere in the table
        return queryset.filter(Q(handler__in=handlers) | Q(error_class__in=classes))
    return _newest(queryset).filter(last_error__icontains=term)


# --- event and delivery pages ------------------------------------------------------------


def timeline(
    history: Iterable[DeliveryAttempt], retries: Iterable[OperatorAction]
) -> list[dict[str, Any]]:
    """A delivery's recorded attempts with the operators' retries between them, oldest first
    (a retry starts a fresh set of attempts, so attempt numbers restart after it)."""
    items = [{"attempt": h, "at": h.recorded_at} for h in history]
    items += [{"retry": a, "at": a.created_at} for a in retries]
    return sorted(items, key=lambda item: item["at"])


def correlation_tree(event: OutboxEvent) -> list[tuple[OutboxEvent, int]]:
    """Every event of the correlation, depth-first by causation, with its indent."""
    members = list(
        OutboxEvent.objects.using(event._state.db)
        .filter(correlation_id=event.correlation_id)
        .order_by("id")[:TREE_LIMIT]
    )
    by_parent: dict[int | None, list[OutboxEvent]] = {}
    ids = {e.pk for e in members}
    for e in members:
        parent = e.causation_id if e.causation_id in ids else None
        by_parent.setdefault(parent, []).append(e)
    out: list[tuple[OutboxEvent, int]] = []
    stack = [(e, 0) for e in reversed(by_parent.get(None, []))]
    while stack:
        node, level = stack.pop()
        out.append((node, level))
        stack.extend((c, level + 1) for c in reversed(by_parent.get(node.pk, [])))
    return out


# --- overview ----------------------------------------------------------------------------


def _handler_row(name: str) -> dict[str, Any]:
    return {"name": name, "hour_ok": 0, "hour_failed": 0, "day_ok": 0, "day_failed": 0}


def overview_figures(using: str | None = None) -> dict[str, Any]:
    using = using or router.db_for_read(Delivery)
    with transaction.atomic(using=using):
        if _pg(using):
            # Its two last-day aggregates cost enough for PostgreSQL to JIT-compile them, and
            # compiling took longer than running them (30 of 60 ms each, measured).
            with connections[using].cursor() as cursor:
                cursor.execute("SET LOCAL jit = off")
        return _overview_figures(using)


def _overview_figures(using: str) -> dict[str, Any]:
    deliveries = Delivery.objects.using(using)
    now = timezone.now()
    by_state = []
    for value, label in Status.choices:
        # Succeeded can be millions: its size is what matters, an estimate shows it.
        n, exact = count_or_estimate(deliveries.filter(status=value), 100_000)
        by_state.append({"label": label, "count": n, "exact": exact, "value": value})
    undispatched = OutboxEvent.objects.using(using).filter(dispatched_at__isnull=True)
    oldest = [
        undispatched.aggregate(m=Min("created_at"))["m"],
        deliveries.filter(status__in=Delivery.CLAIMABLE).aggregate(m=Min("created_at"))["m"],
    ]
    oldest_pending = min((t for t in oldest if t is not None), default=None)
    registered = set(all_handlers())
    handlers: dict[str, dict[str, Any]] = {name: _handler_row(name) for name in sorted(registered)}
    paused = set(
        HandlerState.objects.using(using).filter(paused=True).values_list("handler", flat=True)
    )
    hour_ago, day_ago = now - timedelta(hours=1), now - timedelta(days=1)
    # 24 hourly bars, the last one the current hour, on the hours of the current time zone
    # (TruncHour truncates there too, so the keys match).
    start = timezone.localtime(now).replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)
    since = min(start, day_ago)
    # One pass over the last day's successes, and one over its failed attempts, give both
    # the per-handler figures and the chart.
    hourly_ok: dict[Any, int] = {}
    ok_rows = (
        deliveries.filter(status=Status.SUCCEEDED, finished_at__gte=since)
        .annotate(hour=TruncHour("finished_at"))
        .order_by()
        .values_list("handler", "hour")
        # Counting a column of the partial index (finished_at, handler), not the id: the
        # index then answers alone (an index-only scan, no visit of the day's 100,000+
        # rows in the table).
        .annotate(
            n=Count("finished_at", filter=Q(finished_at__gte=day_ago)),
            last_hour=Count("finished_at", filter=Q(finished_at__gte=hour_ago)),
            charted=Count("finished_at", filter=Q(finished_at__gte=start)),
        )
    )
    for name, hour, n, last_hour, charted in ok_rows:
        row = handlers.setdefault(name, _handler_row(name))
        row["day_ok"] += n
        row["hour_ok"] += last_hour
        hourly_ok[hour] = hourly_ok.get(hour, 0) + charted
    hourly_failed: dict[Any, int] = {}
    failed_rows = (
        DeliveryAttempt.objects.using(using)
        .filter(
            recorded_at__gte=since,
            # Not the successes archived by a replay.
            outcome__in=[DeliveryAttempt.Outcome.FAILED, DeliveryAttempt.Outcome.DEAD],
        )
        .annotate(hour=TruncHour("recorded_at"))
        .order_by()
        .values_list("delivery__handler", "hour")
        .annotate(
            n=Count("id", filter=Q(recorded_at__gte=day_ago)),
            last_hour=Count("id", filter=Q(recorded_at__gte=hour_ago)),
            charted=Count("id", filter=Q(recorded_at__gte=start)),
        )
    )
    for name, hour, n, last_hour, charted in failed_rows:
        row = handlers.setdefault(name, _handler_row(name))
        row["day_failed"] += n
        row["hour_failed"] += last_hour
        hourly_failed[hour] = hourly_failed.get(hour, 0) + charted
    busiest = max([1, *(r["day_ok"] + r["day_failed"] for r in handlers.values())])
    from ..throttle import throttles

    rates = throttles(using)
    for row in handlers.values():
        row["paused"] = row["name"] in paused
        row["throttle"] = rates.get(row["name"])
        row["registered"] = row["name"] in registered
        # Widths (percent of the busiest handler) of its 24-hour bar in the table.
        row["ok_pct"] = round(100 * row["day_ok"] / busiest, 1)
        row["failed_pct"] = round(100 * row["day_failed"] / busiest, 1)
    hours = [start + timedelta(hours=i) for i in range(24)]
    peak = max([1, *hourly_ok.values(), *hourly_failed.values()])
    bars = []
    for i, hour in enumerate(hours):
        ok_n, failed_n = hourly_ok.get(hour, 0), hourly_failed.get(hour, 0)
        ok_h = round(80 * ok_n / peak)
        failed_h = round(80 * failed_n / peak)
        bars.append(
            {
                "x": 10 + i * 24,
                "hour": hour,
                "ok": ok_n,
                "failed": failed_n,
                "ok_h": ok_h,
                "ok_y": 90 - ok_h,
                "failed_h": failed_h,
                "failed_y": 90 - ok_h - failed_h,
            }
        )
    return {
        "by_state": by_state,
        "undispatched": undispatched.count(),
        "oldest_pending": oldest_pending,
        "lag": timesince(oldest_pending, now) if oldest_pending else None,
        "handler_rows": list(handlers.values()),
        "bars": bars,
        "peak": peak,
        "campaigns": RetryCampaign.objects.using(using).all()[:10],
        "recent_actions": OperatorAction.objects.using(using).select_related("event")[:15],
    }


# --- ordered handlers' streams -----------------------------------------------------------

HELD_LIMIT = 200
STREAM_PAGE = 100


def held_streams(using: str | None = None, limit: int = HELD_LIMIT) -> list[dict[str, Any]]:
    """Streams an ordered handler cannot make progress on, oldest first: the stream's first
    unsettled delivery (its *head*, which the dispatcher's claim waits on) is failed or dead,
    or it is pending/running with later deliveries waiting behind it.

    Two grouped queries and one for the heads. Only unsettled deliveries of ordered
    handlers' streams are read (``eventbus_delivery_stream_idx``, or the state indexes),
    never the settled history; ``waiting`` counts the unsettled ones behind each head."""
    using = using or router.db_for_read(Delivery)
    ordered = sorted(name for name, spec in all_handlers().items() if spec.ordered)
    if not ordered:
        return []
    unsettled = [s for s in Status.values if s not in Delivery.SETTLED]
    failing = [Status.FAILED, Status.DEAD]
    groups = list(
        Delivery.objects.using(using)
        .filter(handler__in=ordered, status__in=unsettled)
        .exclude(stream="")
        .order_by()
        .values("handler", "stream")
        .annotate(
            head=Min("position"),
            unsettled=Count("id"),
            failing=Count("id", filter=Q(status__in=failing)),
            oldest=Min("created_at"),
        )
        # A lone pending or running head is a stream at work, not a held one.
        .filter(Q(unsettled__gt=1) | Q(failing__gt=0))
        .order_by("oldest", "handler", "stream")[:limit]
    )
    if not groups:
        return []
    # The heads, through the stream index: IN lists (a few hundred probes of the index),
    # not an OR of 200 conditions (which PostgreSQL may answer with a scan of the table).
    wanted = {(g["handler"], g["stream"], g["head"]) for g in groups}
    heads = {
        (d.handler, d.stream): d
        for d in Delivery.objects.using(using)
        .filter(
            handler__in={h for h, _, _ in wanted},
            stream__in={s for _, s, _ in wanted},
            position__in={p for _, _, p in wanted},
        )
        # Said again for the planner: it cannot prove the partial index's condition from
        # an IN list longer than 100.
        .exclude(stream="")
        .select_related("event")
        .defer("traceback", "event__payload")
        if (d.handler, d.stream, d.position) in wanted
    }
    # Since when: the head's first failure in its current round (a retry that failed again
    # did not release the stream), else when it was created.
    first_failure: dict[tuple[int, int], Any] = dict(
        ((row["delivery_id"], row["replays"]), row["first"])
        for row in DeliveryAttempt.objects.using(using)
        .filter(delivery_id__in=[d.pk for d in heads.values() if d.status in failing])
        .order_by()
        .values("delivery_id", "replays")
        .annotate(first=Min("recorded_at"))
    )
    rows = []
    for g in groups:
        head = heads.get((g["handler"], g["stream"]))
        if head is None:  # settled between the two queries
            continue
        waiting = g["unsettled"] - 1
        if head.status not in failing and waiting == 0:
            continue
        since = first_failure.get((head.pk, head.replays)) or (
            head.finished_at if head.status == Status.DEAD else None
        )
        rows.append(
            {
                "handler": g["handler"],
                "stream": g["stream"],
                "delivery": head,
                "waiting": waiting,
                "since": since or head.created_at,
                "failing": head.status in failing,
            }
        )
    return rows


def stream_page(
    stream: str, using: str | None = None, *, start: int = 1, size: int = STREAM_PAGE
) -> dict[str, Any]:
    """The events of ``stream`` from position ``start`` (``size`` of them), payloads
    redacted, and, when an Aggregate class is registered for the stream's prefix, its state
    after each one (folded up to ``start - 1`` first, snapshots allowed, then one event at a
    time). A fold that fails (no applier, a payload that no longer fits) is reported at the
    event where it failed; the states after it are unknown and not shown."""
    from ..codec import encode_fields
    from ..dispatch.execute import load_event
    from ..redaction import pretty
    from ..streams.aggregate import aggregate_for_stream

    using = using or router.db_for_read(OutboxEvent)
    events = list(
        OutboxEvent.objects.using(using)
        .filter(stream=stream, position__gte=start)
        .order_by("position")[: size + 1]
    )
    more = len(events) > size
    events = events[:size]
    last = (
        OutboxEvent.objects.using(using).filter(stream=stream).aggregate(m=Max("position"))["m"]
        or 0
    )
    found = aggregate_for_stream(stream)
    aggregate_name = ""
    aggregate = None
    fold_error = ""
    if found is not None:
        cls, aggregate_id = found
        aggregate_name = f"{cls.__module__}.{cls.__qualname__}"
        try:
            aggregate = cls.load(aggregate_id, version=start - 1, using=using)
        except Exception as exc:  # whatever an applier or a stored payload raises
            fold_error = f"{type(exc).__name__}: {exc}"
    rows = []
    previous = encode_fields(aggregate) if aggregate is not None else None
    for record in events:
        row: dict[str, Any] = {"event": record, "payload": pretty(record.payload)}
        if aggregate is not None:
            try:
                aggregate.apply(load_event(record))
            except Exception as exc:
                fold_error = f"position {record.position}: {type(exc).__name__}: {exc}"
                row["error"] = fold_error
                aggregate = None
            else:
                state = encode_fields(aggregate)
                row["state"] = pretty(state)
                row["changed"] = sorted(
                    k for k in state if previous is None or previous.get(k) != state.get(k)
                )
                previous = state
        rows.append(row)
    return {
        "stream": stream,
        "rows": rows,
        "last_position": last,
        "start": start,
        "next_start": (events[-1].position or 0) + 1 if more and events else None,
        "previous_start": max(1, start - size) if start > 1 else None,
        "aggregate_name": aggregate_name,
        "fold_error": fold_error,
    }
