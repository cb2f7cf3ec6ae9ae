"""Figures for on-call without the admin (``manage.py eventbus_stats``), and the
``--fail-if`` conditions health checks and cron evaluate on them.

Every figure is one query on an indexed column (the claim and overview indexes), so the
command stays cheap with millions of rows."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import DEFAULT_DB_ALIAS
from django.db.models import Count, Exists, Min, OuterRef, Q
from django.utils import timezone

from .models import Delivery, DeliveryAttempt, OutboxEvent
from .registry import all_handlers

Status = Delivery.Status
DUE = (Status.PENDING, Status.FAILED)


def collect(using: str = DEFAULT_DB_ALIAS, now: datetime | None = None) -> dict[str, Any]:
    """The figures as a JSON-ready dict (ages in seconds, times ISO 8601)."""
    now = now or timezone.now()
    deliveries = Delivery.objects.using(using)
    events = OutboxEvent.objects.using(using)
    counts = {state: 0 for state in Status.values}
    for row in deliveries.order_by().values("status").annotate(n=Count("id")):
        counts[row["status"]] = row["n"]

    # Lag: how long the longest-waiting due work has been due. A due delivery has been
    # due since next_attempt_at; an event not yet fanned out since it was emitted (or since
    # its deliver_after).
    oldest_due = (
        deliveries.filter(status__in=DUE, next_attempt_at__lte=now)
        .aggregate(at=Min("next_attempt_at"))
        .get("at")
    )
    undispatched = events.filter(dispatched_at__isnull=True)
    oldest_event = (
        undispatched.filter(Q(deliver_after__isnull=True) | Q(deliver_after__lte=now))
        .aggregate(at=Min("created_at"))
        .get("at")
    )
    since = [t for t in (oldest_due, oldest_event) if t is not None]
    lag = max((now - min(since)).total_seconds(), 0.0) if since else 0.0
    oldest_pending = (
        deliveries.filter(status=Status.PENDING).aggregate(at=Min("created_at")).get("at")
    )

    return {
        "database": using,
        "at": now.isoformat(),
        "deliveries": counts,
        "events_not_fanned_out": undispatched.count(),
        "delayed_events": events.filter(deliver_after__gt=now).count(),
        "lag_seconds": round(lag, 3),
        "oldest_pending": oldest_pending.isoformat() if oldest_pending else None,
        "oldest_pending_age_seconds": (
            round((now - oldest_pending).total_seconds(), 3) if oldest_pending else None
        ),
        "handlers": per_handler(using, now),
        "held_streams": held_streams(using),
    }


def per_handler(using: str, now: datetime) -> dict[str, dict[str, dict[str, int]]]:
    """Per handler, for the last hour and the last day: succeeded, failed (attempts that
    will be retried) and dead."""
    windows = {"hour": now - timedelta(hours=1), "day": now - timedelta(days=1)}
    names = set(all_handlers())
    figures: dict[str, dict[str, dict[str, int]]] = {}

    def slot(handler: str, window: str) -> dict[str, int]:
        names.add(handler)
        per = figures.setdefault(handler, {w: {} for w in windows})
        return per[window]

    for window, start in windows.items():
        succeeded = (
            Delivery.objects.using(using)
            .filter(status=Status.SUCCEEDED, finished_at__gte=start)
            .order_by()
            .values("handler")
            .annotate(n=Count("id"))
        )
        for row in succeeded:
            slot(row["handler"], window)["succeeded"] = row["n"]
        outcomes = (
            DeliveryAttempt.objects.using(using)
            .filter(recorded_at__gte=start)
            .exclude(outcome=DeliveryAttempt.Outcome.SUCCEEDED)
            .order_by()
            .values("delivery__handler", "outcome")
            .annotate(n=Count("id"))
        )
        for outcome in outcomes:
            slot(outcome["delivery__handler"], window)[outcome["outcome"]] = outcome["n"]
    return {
        name: {
            window: {
                key: figures.get(name, {}).get(window, {}).get(key, 0)
                for key in ("succeeded", "failed", "dead")
            }
            for window in windows
        }
        for name in sorted(names)
    }


def held_streams(using: str, limit: int = 100) -> list[dict[str, Any]]:
    """Streams an ordered handler cannot go on with: the stream's first unsettled delivery
    (its head; see ``Delivery.SETTLED``) is failed or dead, so the later ones wait."""
    ordered = [spec.name for spec in all_handlers().values() if spec.ordered]
    if not ordered:
        return []
    earlier = (
        Delivery.objects.using(using)
        .filter(
            handler=OuterRef("handler"),
            stream=OuterRef("stream"),
            position__lt=OuterRef("position"),
        )
        .exclude(status__in=Delivery.SETTLED)
    )
    heads = (
        Delivery.objects.using(using)
        .filter(handler__in=ordered, status__in=(Status.FAILED, Status.DEAD))
        .exclude(stream="")
        .exclude(Exists(earlier))
        .order_by("handler", "stream")
        .values("id", "handler", "stream", "position", "status", "attempts", "last_error")[:limit]
    )
    return [
        {
            **row,
            "last_error": row["last_error"].strip().splitlines()[0] if row["last_error"] else "",
        }
        for row in heads
    ]


# --fail-if ------------------------------------------------------------------------------

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
_CONDITION = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|==|!=|>|<)\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# What a condition may name: the figure it reads from collect()'s result.
METRICS: dict[str, Callable[[dict[str, Any]], float]] = {
    "dead": lambda s: s["deliveries"]["dead"],
    "failed": lambda s: s["deliveries"]["failed"],
    "pending": lambda s: s["deliveries"]["pending"],
    "running": lambda s: s["deliveries"]["running"],
    "lag": lambda s: s["lag_seconds"],
    "oldest_pending": lambda s: s["oldest_pending_age_seconds"] or 0.0,
    "held": lambda s: len(s["held_streams"]),
    "not_fanned_out": lambda s: s["events_not_fanned_out"],
    "delayed": lambda s: s["delayed_events"],
}
_DURATIONS = {"lag", "oldest_pending"}


@dataclass(frozen=True)
class Condition:
    text: str
    metric: str
    op: str
    threshold: float

    def holds(self, stats: dict[str, Any]) -> tuple[bool, float]:
        value = float(METRICS[self.metric](stats))
        return _OPS[self.op](value, self.threshold), value


def parse_conditions(text: str) -> list[Condition]:
    """``"dead>0,lag>60s"`` → conditions; ValueError saying what is wrong otherwise."""
    conditions = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _CONDITION.match(part)
        if not match:
            raise ValueError(
                f"--fail-if condition {part!r} is not NAME OP NUMBER[UNIT] (for example "
                f"dead>0 or lag>60s); names: {', '.join(METRICS)}"
            )
        metric, op, number, unit = match.groups()
        if metric not in METRICS:
            raise ValueError(
                f"--fail-if condition {part!r}: unknown name {metric!r}; use one of "
                f"{', '.join(METRICS)}"
            )
        if unit and metric not in _DURATIONS:
            raise ValueError(
                f"--fail-if condition {part!r}: {metric} is a count, not a duration; drop "
                f"the unit {unit!r}"
            )
        conditions.append(Condition(part, metric, op, float(number) * _SECONDS[unit]))
    if not conditions:
        raise ValueError("--fail-if is empty: give conditions such as dead>0,lag>60s")
    return conditions
