"""Operator actions shared by the admin and the management commands.

Retry, replay, pause and resume change our rows only (the dispatcher does the work in the
background) and leave an ``OperatorAction`` audit record naming who did it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

from django.db import DEFAULT_DB_ALIAS, transaction
from django.db.models import Count, Max, Min, QuerySet
from django.db.models.functions import Now
from django.utils import timezone

from .events import event_class
from .models import (
    Delivery,
    DeliveryAttempt,
    HandlerState,
    OperatorAction,
    OutboxEvent,
    RetryCampaign,
)
from .registry import handlers_for

Status = Delivery.Status
RETRYABLE = (Status.DEAD, Status.FAILED)
REPLAYABLE = (Status.SUCCEEDED, Status.DEAD, Status.FAILED)


def _ids(items: Iterable[Any] | QuerySet[Any]) -> list[int]:
    return [item if isinstance(item, int) else item.pk for item in items]


def _nudge_after_commit(using: str) -> None:
    from .tasks import nudge

    transaction.on_commit(lambda: nudge(using), using=using, robust=True)


def retry_deliveries(
    deliveries: Iterable[Any] | QuerySet[Any],
    *,
    actor: str,
    using: str = DEFAULT_DB_ALIAS,
    detail: dict[str, Any] | None = None,
) -> int:
    """Send dead or failed deliveries back to pending, due now, with a fresh set of attempts.

    Returns how many were retried; others (pending, running, succeeded) are left alone.
    """
    ids = _ids(deliveries)
    with transaction.atomic(using=using):
        eligible = list(
            Delivery.objects.using(using)
            .select_for_update()
            .filter(pk__in=ids, status__in=RETRYABLE)
            .values_list("pk", "event_id", "handler")
        )
        if not eligible:
            return 0
        Delivery.objects.using(using).filter(pk__in=[pk for pk, _, _ in eligible]).update(
            status=Status.PENDING,
            attempts=0,
            next_attempt_at=Now(),
            finished_at=None,
            lease_token=None,
        )
        OperatorAction.objects.using(using).bulk_create(
            OperatorAction(
                kind=OperatorAction.Kind.RETRY,
                actor=actor,
                delivery_id=pk,
                event_id=event_id,
                handler=handler,
                detail=detail or {},
            )
            for pk, event_id, handler in eligible
        )
        _nudge_after_commit(using)
    return len(eligible)


def replay_handlers(event: OutboxEvent) -> list[str]:
    """Handlers an event can be replayed to: registered ones and those it was delivered to."""
    names = set(event.deliveries.values_list("handler", flat=True))
    cls = event_class(event.event_type)
    if cls is not None:
        names.update(spec.name for spec in handlers_for(cls))
    names.discard("eventbus_app.unroutable")
    return sorted(names)


def replay_events(
    events: Iterable[Any] | QuerySet[Any],
    *,
    handlers: Iterable[str] | None = None,
    actor: str,
    using: str = DEFAULT_DB_ALIAS,
) -> int:
    """Run the events' handlers again (all, or ``handlers``); returns deliveries scheduled.

    A finished delivery's outcome is archived into its history first (history, not
    overwrite); its ``replays`` count grows, which gives the new run a new idempotency key.
    Handlers registered after the event get a new delivery. Deliveries still pending or
    running are left alone: they are going to run anyway.
    """
    chosen = set(handlers) if handlers is not None else None
    scheduled = 0
    with transaction.atomic(using=using):
        for event in OutboxEvent.objects.using(using).filter(pk__in=_ids(events)):
            names = [n for n in replay_handlers(event) if chosen is None or n in chosen]
            existing = {
                d.handler: d
                for d in Delivery.objects.using(using)
                .select_for_update()
                .filter(event=event, handler__in=names)
            }
            done: list[str] = []
            for name in names:
                delivery = existing.get(name)
                if delivery is None:
                    Delivery.objects.using(using).create(event=event, handler=name)
                elif delivery.status in REPLAYABLE:
                    _archive(delivery, using)
                    Delivery.objects.using(using).filter(pk=delivery.pk).update(
                        status=Status.PENDING,
                        attempts=0,
                        replays=delivery.replays + 1,
                        next_attempt_at=Now(),
                        finished_at=None,
                        lease_token=None,
                        last_error="",
                        error_class="",
                        traceback="",
                    )
                else:
                    continue
                done.append(name)
            if done:
                OperatorAction.objects.using(using).create(
                    kind=OperatorAction.Kind.REPLAY,
                    actor=actor,
                    event=event,
                    handler=", ".join(done),
                    detail={"handlers": done},
                )
                scheduled += len(done)
        if scheduled:
            _nudge_after_commit(using)
    return scheduled


def _archive(delivery: Delivery, using: str) -> None:
    """Keep a finished run's outcome in the history before it is run again."""
    already = (
        DeliveryAttempt.objects.using(using)
        .filter(delivery=delivery, attempt=delivery.attempts, replays=delivery.replays)
        .exists()
    )
    if delivery.status == Status.SUCCEEDED or not already:
        DeliveryAttempt.objects.using(using).create(
            delivery=delivery,
            attempt=delivery.attempts,
            outcome=delivery.status
            if delivery.status in DeliveryAttempt.Outcome.values
            else DeliveryAttempt.Outcome.FAILED,
            error=delivery.last_error,
            error_class=delivery.error_class,
            traceback=delivery.traceback,
            replays=delivery.replays,
        )


def set_paused(handler: str, paused: bool, *, actor: str, using: str = DEFAULT_DB_ALIAS) -> None:
    """Pause a handler (its deliveries wait, they do not fail) or resume it."""
    with transaction.atomic(using=using):
        HandlerState.objects.using(using).update_or_create(
            handler=handler,
            defaults={"paused": paused, "changed_by": actor, "changed_at": timezone.now()},
        )
        OperatorAction.objects.using(using).create(
            kind=OperatorAction.Kind.PAUSE if paused else OperatorAction.Kind.RESUME,
            actor=actor,
            handler=handler,
        )
        if not paused:
            _nudge_after_commit(using)


def pause_handler(handler: str, *, actor: str, using: str = DEFAULT_DB_ALIAS) -> None:
    set_paused(handler, True, actor=actor, using=using)


def resume_handler(handler: str, *, actor: str, using: str = DEFAULT_DB_ALIAS) -> None:
    set_paused(handler, False, actor=actor, using=using)


# --- failure groups and canary retries ----------------------------------------------------


def failure_groups(using: str = DEFAULT_DB_ALIAS) -> list[dict[str, Any]]:
    """Dead letters grouped by (handler, exception class), largest group first."""
    rows = (
        Delivery.objects.using(using)
        .filter(status=Status.DEAD)
        .values("handler", "error_class")
        .annotate(count=Count("id"), oldest=Min("finished_at"), newest=Max("finished_at"))
        .order_by("-count", "handler", "error_class")
    )
    return [dict(row) for row in rows]


def group_members(handler: str, error_class: str, using: str = DEFAULT_DB_ALIAS) -> QuerySet[Any]:
    return Delivery.objects.using(using).filter(
        status=Status.DEAD, handler=handler, error_class=error_class
    )


def retry_group(
    handler: str, error_class: str, *, actor: str, using: str = DEFAULT_DB_ALIAS
) -> int:
    ids = list(group_members(handler, error_class, using).values_list("pk", flat=True))
    return retry_deliveries(ids, actor=actor, using=using)


def start_canary(
    handler: str,
    error_class: str,
    *,
    rate: float,
    actor: str,
    using: str = DEFAULT_DB_ALIAS,
) -> RetryCampaign:
    """Retry one dead letter of the group; the rest follow at ``rate`` per second once it
    succeeds, stopping at the first new failure. Advanced by ``advance_campaign``."""
    if not (math.isfinite(rate) and rate > 0):  # nan and inf would wedge the campaign
        raise ValueError(f"rate must be a number > 0 per second, got {rate!r}")
    with transaction.atomic(using=using):
        running = active_campaigns(using).filter(handler=handler, error_class=error_class).first()
        if running is not None:
            raise ValueError(
                f"A canary retry of {handler} / {error_class or '-'} is already running "
                f"(#{running.pk}); cancel it first or wait for it to finish"
            )
        members = group_members(handler, error_class, using).order_by("finished_at", "pk")
        first = members.first()
        if first is None:
            raise ValueError(f"No dead letters for handler {handler!r} and {error_class!r}")
        campaign = RetryCampaign.objects.using(using).create(
            handler=handler,
            error_class=error_class,
            rate=rate,
            total=members.count(),
            canary=first,
            created_by=actor,
        )
        retry_deliveries([first.pk], actor=actor, using=using, detail={"campaign": campaign.pk})
        campaign.released = 1
        campaign.last_release_at = timezone.now()
        campaign.save(using=using, update_fields=["released", "last_release_at"])
    from .tasks import run_campaign_soon

    transaction.on_commit(lambda: run_campaign_soon(campaign.pk, using), using=using, robust=True)
    return campaign


def cancel_campaign(campaign_id: int, *, actor: str, using: str = DEFAULT_DB_ALIAS) -> bool:
    """Stop a running canary retry: nothing more is released (what was released runs on).

    Returns False when it had already finished, stopped or been cancelled."""
    with transaction.atomic(using=using):
        campaign = (
            RetryCampaign.objects.using(using).select_for_update().filter(pk=campaign_id).first()
        )
        if campaign is None or not campaign.active:
            return False
        campaign.state = RetryCampaign.State.CANCELLED
        campaign.stopped_reason = f"Cancelled by {actor} after {campaign.released} retried."
        campaign.save(using=using, update_fields=["state", "stopped_reason", "updated_at"])
    return True


def _campaign_deliveries(campaign: RetryCampaign, using: str) -> QuerySet[Any]:
    return Delivery.objects.using(using).filter(
        operator_actions__kind=OperatorAction.Kind.RETRY,
        operator_actions__detail__campaign=campaign.pk,
    )


def advance_campaign(campaign_id: int, using: str = DEFAULT_DB_ALIAS) -> RetryCampaign:
    """One step of a canary retry: stop on a new failure, release more when due."""
    Camp = RetryCampaign.State
    with transaction.atomic(using=using):
        campaign = RetryCampaign.objects.using(using).select_for_update().get(pk=campaign_id)
        if campaign.state not in (Camp.CANARY, Camp.RELEASING):
            return campaign
        released = _campaign_deliveries(campaign, using)
        failed = released.filter(status__in=RETRYABLE).order_by("pk").first()
        if failed is not None:
            campaign.state = Camp.STOPPED
            campaign.stopped_reason = (
                f"Delivery #{failed.pk} failed again: {failed.error_summary or failed.status}"
            )
        elif (
            campaign.state == Camp.CANARY
            and campaign.canary is not None
            and campaign.canary.status == Status.SUCCEEDED
        ):
            campaign.state = Camp.RELEASING
        if campaign.state == Camp.RELEASING:
            remaining = group_members(campaign.handler, campaign.error_class, using)
            if not remaining.exists():
                if not released.exclude(status=Status.SUCCEEDED).exists():
                    campaign.state = Camp.DONE
            else:
                since = (
                    timezone.now() - (campaign.last_release_at or timezone.now())
                ).total_seconds()
                quota = int(since * campaign.rate)
                if quota >= 1:
                    ids = list(
                        remaining.order_by("finished_at", "pk").values_list("pk", flat=True)[:quota]
                    )
                    campaign.released += retry_deliveries(
                        ids,
                        actor=campaign.created_by,
                        using=using,
                        detail={"campaign": campaign.pk},
                    )
                    campaign.last_release_at = timezone.now()
        campaign.save(using=using)
    return campaign


def run_campaign(campaign_id: int, using: str = DEFAULT_DB_ALIAS, seconds: float = 10.0) -> bool:
    """Advance a campaign for up to ``seconds``; returns True while it is still running."""
    deadline = time.monotonic() + seconds
    while True:
        campaign = advance_campaign(campaign_id, using)
        if not campaign.active:
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(min(0.5, max(0.05, 1 / campaign.rate)))


def active_campaigns(using: str = DEFAULT_DB_ALIAS) -> QuerySet[RetryCampaign]:
    return RetryCampaign.objects.using(using).filter(
        state__in=[RetryCampaign.State.CANARY, RetryCampaign.State.RELEASING]
    )


__all__ = [
    "active_campaigns",
    "advance_campaign",
    "cancel_campaign",
    "failure_groups",
    "pause_handler",
    "replay_events",
    "resume_handler",
    "retry_deliveries",
    "retry_group",
    "run_campaign",
    "start_canary",
]
