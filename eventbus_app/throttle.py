"""Throttles: "at most N deliveries per second" for one handler, across all workers.

The night a downstream API rate-limits you: ``set_throttle("crm.create_customer", 5,
actor=...)`` (or ``manage.py eventbus_throttle crm.create_customer --rate 5``). The limit is
a token bucket in the database (``HandlerThrottle``) that claims spend under its row lock,
so it holds however many workers run (``dispatch/claim.py``). Audited like a pause.
"""

from __future__ import annotations

from django.db import router, transaction

from .exceptions import EventBusError
from .models import HandlerThrottle, OperatorAction


def set_throttle(handler: str, rate: float | None, *, actor: str, using: str | None = None) -> None:
    """Limit ``handler`` to ``rate`` deliveries per second; ``None`` lifts the limit."""
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0
    ):
        raise EventBusError(
            f"A throttle's rate is a number of deliveries per second > 0, got {rate!r} "
            "(pause the handler to stop it)"
        )
    using = using or router.db_for_write(HandlerThrottle)
    with transaction.atomic(using=using):
        if rate is None:
            HandlerThrottle.objects.using(using).filter(handler=handler).delete()
        else:
            HandlerThrottle.objects.using(using).update_or_create(
                handler=handler, defaults={"rate": float(rate), "changed_by": actor}
            )
        OperatorAction.objects.using(using).create(
            kind=OperatorAction.Kind.THROTTLE,
            actor=actor,
            handler=handler,
            detail={"rate": rate},
        )


def throttles(using: str | None = None) -> dict[str, float]:
    using = using or router.db_for_read(HandlerThrottle)
    return dict(HandlerThrottle.objects.using(using).values_list("handler", "rate"))
