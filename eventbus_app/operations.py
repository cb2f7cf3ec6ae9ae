"""Operator actions shared by the admin and the management commands.

Retry, replay, discard, pause and resume change our rows only (the dispatcher does the work in the
background) and leave an ``OperatorAction`` audit record naming who did it. Each acts on the
database it is given, else on the router's write database for its model (the one the
admin's querysets come from), and tells the workers through ``tasks`` once it commits.

``tasks`` (what django-q2 runs) never imports this module: what both need (marking rows for
retry, stepping a canary retry) lives one layer down, in ``campaigns``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from typing import Any

from django.db import router, transaction
from django.db.models import Count, Max, Min, QuerySet
from django.db.models.functions import Now
from django.utils import timezone

from . import tasks
from .campaigns import (
    RETRYABLE,
    active_campaigns,
    db_for,
    group_members,
    ids_of,
    mark_for_retry,
    step_campaign,
    token_of,
)
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

logger = logging.getLogger(__name__)

Status = Delivery.Status
REPLAYABLE = (Status.SUCCEEDED, Status.DEAD, Status.FAILED)
# Dead letters; with include_failed (the held-streams page, --include-failed) also deliveries
# still retrying, which hold an ordered handler's stream as long as a dead one does.
DISCARDABLE = (Status.DEAD,)
MAX_REASON = 2000


def _nudge_after_commit(using: str) -> None:
    transaction.on_commit(lambda: tasks.nudge(using), using=using, robust=True)


def retry_deliveries(
    deliveries: Iterable[Any] | QuerySet[Any],
    *,
    actor: str,
    using: str | None = None,
    detail: dict[str, Any] | None = None,
) -> int:
    """Send dead or failed deliveries back to pending, due now, with a fresh set of attempts.

    Returns how many were retried; others (pending, running, succeeded) are left alone.
    """
    using = db_for(Delivery, using)
    with transaction.atomic(using=using):
        count = mark_for_retry(deliveries, actor=actor, using=using, detail=detail)
        if count:
            _nudge_after_commit(using)
    return count


def clean_reason(reason: str) -> str:
    """The operator's reason, stripped; a ValueError saying what is wrong otherwise."""
    text = (reason or "").strip()
    if not text:
        raise ValueError(
            "A reason is required to discard: say why these deliveries will not be retried "
            "(it is kept on each delivery and in the audit record)"
        )
    if len(text) > MAX_REASON:
        raise ValueError(f"The reason is {len(text):,} characters long; at most {MAX_REASON:,}")
    return text


def discard_deliveries(
    deliveries: Iterable[Any] | QuerySet[Any],
    *,
    reason: str,
    actor: str,
    using: str | None = None,
    include_failed: bool = False,
    detail: dict[str, Any] | None = None,
) -> int:
    """Mark dead letters (and, with ``include_failed``, failed deliveries) ``discarded``:
    they never run again, their error and traceback are kept, ``reason`` is stored on each
    and in an ``OperatorAction`` of kind ``discard``. A discarded delivery of an ordered
    handler no longer holds its stream: the later ones are claimable at once.

    Returns how many were discarded; others (pending, running, succeeded) are left alone.
    Raises ValueError (and changes nothing) without a reason.
    """
    text = clean_reason(reason)
    using = db_for(Delivery, using)
    statuses = (*DISCARDABLE, Status.FAILED) if include_failed else DISCARDABLE
    with transaction.atomic(using=using):
        eligible = list(
            Delivery.objects.using(using)
            .select_for_update()
            .filter(pk__in=ids_of(deliveries), status__in=statuses)
            .values_list("pk", "event_id", "handler", "status", "stream")
        )
        if not eligible:
            return 0
        Delivery.objects.using(using).filter(pk__in=[row[0] for row in eligible]).update(
            status=Status.DISCARDED,
            discard_reason=text,
            next_attempt_at=None,
            finished_at=Now(),
            lease_token=None,
        )
        OperatorAction.objects.using(using).bulk_create(
            OperatorAction(
                kind=OperatorAction.Kind.DISCARD,
                actor=actor,
                delivery_id=pk,
                event_id=event_id,
                handler=handler,
                detail={"reason": text, "was": status, **(detail or {})},
            )
            for pk, event_id, handler, status, _ in eligible
        )
        # Later deliveries of a released stream are due now: tell the workers.
        if any(stream for *_, stream in eligible):
            _nudge_after_commit(using)
    return len(eligible)


def discard_group(
    handler: str, error_class: str, *, reason: str, actor: str, using: str | None = None
) -> int:
    """Discard every dead letter of one failure group (handler and exception class)."""
    using = db_for(Delivery, using)
    ids = list(group_members(handler, error_class, using).values_list("pk", flat=True))
    return discard_deliveries(
        ids, reason=reason, actor=actor, using=using, detail={"group": error_class or "-"}
    )


def replay_handlers(event: OutboxEvent) -> list[str]:
    """Handlers an event can be replayed to: registered ones and those it was delivered to."""
    names = set(
        Delivery.objects.using(event._state.db or db_for(Delivery, None))
        .filter(event=event)
        .values_list("handler", flat=True)
    )
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
    using: str | None = None,
) -> int:
    """Run the events' handlers again (all, or ``handlers``); returns deliveries scheduled.

    A finished delivery's outcome is archived into its history first (history, not
    overwrite); its ``replays`` count grows, which gives the new run a new idempotency key.
    Handlers registered after the event get a new delivery. Deliveries still pending or
    running are left alone: they are going to run anyway.
    """
    using = db_for(OutboxEvent, using)
    chosen = set(handlers) if handlers is not None else None
    scheduled = 0
    with transaction.atomic(using=using):
        for event in OutboxEvent.objects.using(using).filter(pk__in=ids_of(events)):
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


def set_paused(handler: str, paused: bool, *, actor: str, using: str | None = None) -> None:
    """Pause a handler (its deliveries wait, they do not fail) or resume it."""
    using = db_for(HandlerState, using)
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


def pause_handler(handler: str, *, actor: str, using: str | None = None) -> None:
    set_paused(handler, True, actor=actor, using=using)


def resume_handler(handler: str, *, actor: str, using: str | None = None) -> None:
    set_paused(handler, False, actor=actor, using=using)


# --- failure groups and canary retries ----------------------------------------------------


def failure_groups(using: str | None = None) -> list[dict[str, Any]]:
    """Dead letters grouped by (handler, exception class), largest group first."""
    rows = (
        Delivery.objects.using(using or router.db_for_read(Delivery))
        .filter(status=Status.DEAD)
        .values("handler", "error_class")
        .annotate(count=Count("id"), oldest=Min("finished_at"), newest=Max("finished_at"))
        .order_by("-count", "handler", "error_class")
    )
    return [dict(row) for row in rows]


def retry_group(handler: str, error_class: str, *, actor: str, using: str | None = None) -> int:
    using = db_for(Delivery, using)
    ids = list(group_members(handler, error_class, using).values_list("pk", flat=True))
    return retry_deliveries(ids, actor=actor, using=using)


def start_canary(
    handler: str,
    error_class: str,
    *,
    rate: float,
    actor: str,
    using: str | None = None,
) -> RetryCampaign:
    """Retry one dead letter of the group; the rest follow at ``rate`` per second once it
    succeeds, stopping at the first new failure. Advanced by ``advance_campaign``."""
    if not (math.isfinite(rate) and rate > 0):  # nan and inf would wedge the campaign
        raise ValueError(f"rate must be a number > 0 per second, got {rate!r}")
    using = db_for(RetryCampaign, using)
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
        campaign.save(using=using, update_fields=["released", "last_release_at", "updated_at"])
    token = token_of(campaign)  # the chain this task starts is the campaign's driver
    transaction.on_commit(
        lambda: tasks.run_campaign_soon(campaign.pk, using, token), using=using, robust=True
    )
    return campaign


def cancel_campaign(campaign_id: int, *, actor: str, using: str | None = None) -> bool:
    """Stop a running canary retry: nothing more is released (what was released runs on).

    Returns False when it had already finished, stopped or been cancelled."""
    using = db_for(RetryCampaign, using)
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


def advance_campaign(campaign_id: int, using: str | None = None) -> RetryCampaign:
    """One step of a canary retry (stop on a new failure, release more when due); what it
    releases is dispatched after commit."""
    using = db_for(RetryCampaign, using)
    step = step_campaign(campaign_id, using)
    if step.released:
        _nudge_after_commit(using)
    return step.campaign


def run_campaign(campaign_id: int, using: str | None = None, seconds: float = 10.0) -> bool:
    """Advance a campaign for up to ``seconds`` in this process (the command line and tests;
    workers use ``tasks.campaign``); returns True while it is still running."""
    deadline = time.monotonic() + seconds
    while True:
        campaign = advance_campaign(campaign_id, using)
        if not campaign.active:
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(min(0.5, max(0.05, 1 / campaign.rate)))


__all__ = [
    "DISCARDABLE",
    "RETRYABLE",
    "active_campaigns",
    "advance_campaign",
    "cancel_campaign",
    "discard_deliveries",
    "discard_group",
    "failure_groups",
    "group_members",
    "pause_handler",
    "replay_events",
    "resume_handler",
    "retry_deliveries",
    "retry_group",
    "run_campaign",
    "start_canary",
]
