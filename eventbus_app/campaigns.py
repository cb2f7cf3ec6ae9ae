"""Retrying rows and stepping canary retries: the layer below both ``operations.py`` (what
operators do) and ``tasks.py`` (what django-q2 runs).

Everything here changes our rows only and tells no worker: the caller does that (operations
nudge after commit; the campaign task nudges after a step that released work). So neither
``operations`` nor ``tasks`` has to import the other.

A canary retry is driven by one chain of campaign tasks. The chain's identity is the
campaign's ``updated_at``: every step saves the campaign, and a task carries the value its
predecessor left (its *token*). A task whose token is stale (another driver, a restart by the
sweep, a cancel touched the row since) ends without a successor, so a lost task can be
replaced without two chains ever driving one campaign for long.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db import router, transaction
from django.db.models import QuerySet
from django.db.models.functions import Now
from django.utils import timezone

from .models import Delivery, OperatorAction, RetryCampaign

logger = logging.getLogger(__name__)

Status = Delivery.Status
RETRYABLE = (Status.DEAD, Status.FAILED)


def db_for(model: type[Any], using: str | None) -> str:
    """The alias to act on: the caller's, else the router's write database for ``model``
    (what the admin's querysets and ``emit()`` follow), never a hardcoded ``default``."""
    return using or router.db_for_write(model)


def ids_of(items: Iterable[Any] | QuerySet[Any]) -> list[int]:
    return [item if isinstance(item, int) else item.pk for item in items]


def mark_for_retry(
    deliveries: Iterable[Any] | QuerySet[Any],
    *,
    actor: str,
    using: str,
    detail: dict[str, Any] | None = None,
) -> int:
    """Dead or failed deliveries back to pending, due now, with a fresh set of attempts, and
    an audit record each. Others are left alone. Returns how many; nobody is nudged."""
    ids = ids_of(deliveries)
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
    return len(eligible)


def group_members(handler: str, error_class: str, using: str | None = None) -> QuerySet[Any]:
    return Delivery.objects.using(db_for(Delivery, using)).filter(
        status=Status.DEAD, handler=handler, error_class=error_class
    )


def active_campaigns(using: str | None = None) -> QuerySet[RetryCampaign]:
    return RetryCampaign.objects.using(db_for(RetryCampaign, using)).filter(
        state__in=[RetryCampaign.State.CANARY, RetryCampaign.State.RELEASING]
    )


def token_of(campaign: RetryCampaign) -> str:
    """The campaign's driver token: when its row last changed."""
    return campaign.updated_at.isoformat()


@dataclass
class Step:
    campaign: RetryCampaign
    released: int = 0  # deliveries this step sent back to pending
    stale: bool = False  # the token did not match: another driver owns the campaign


def _campaign_deliveries(campaign: RetryCampaign, using: str) -> QuerySet[Any]:
    return Delivery.objects.using(using).filter(
        operator_actions__kind=OperatorAction.Kind.RETRY,
        operator_actions__detail__campaign=campaign.pk,
    )


def step_campaign(campaign_id: int, using: str, *, token: str | None = None) -> Step:
    """One step of a canary retry: stop on a new failure, release more when due.

    With ``token``, the step runs only if the campaign's row is as that driver left it."""
    Camp = RetryCampaign.State
    with transaction.atomic(using=using):
        campaign = RetryCampaign.objects.using(using).select_for_update().get(pk=campaign_id)
        if token is not None and token_of(campaign) != token:
            return Step(campaign, stale=True)
        if campaign.state not in (Camp.CANARY, Camp.RELEASING):
            return Step(campaign)
        released_now = 0
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
                    released_now = mark_for_retry(
                        ids,
                        actor=campaign.created_by,
                        using=using,
                        detail={"campaign": campaign.pk},
                    )
                    campaign.released += released_now
                    campaign.last_release_at = timezone.now()
        campaign.save(using=using)
    return Step(campaign, released=released_now)


def touch(campaign_id: int, using: str) -> str | None:
    """Give an active campaign a new token (the old chain's tasks end); None if it is not
    active any more."""
    with transaction.atomic(using=using):
        campaign = RetryCampaign.objects.using(using).select_for_update().get(pk=campaign_id)
        if not campaign.active:
            return None
        campaign.save(using=using, update_fields=["updated_at"])
    return token_of(campaign)
