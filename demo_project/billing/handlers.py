"""Billing's handlers of the shop's events: they run in billing's worker, on billing's
database, like handlers of local events.

Each writes at most one row per event (keyed by the event's uuid, the same in both
services): a replay from the console finds the row and changes nothing.
"""

from __future__ import annotations

from uuid import UUID

from eventbus_app import current_delivery, handler

from .events import OrderPlaced, RefundIssued, UserRegistered
from .models import Account, LedgerLine


def _delivery() -> tuple[str, UUID]:
    """The database and the event's uuid of the running delivery."""
    ctx = current_delivery()
    if ctx is None:
        raise RuntimeError("billing's handlers run as deliveries (a worker, or eventbus_drain)")
    return ctx.using, ctx.event_uuid


@handler(UserRegistered, name="billing.open_account")
def open_account(event: UserRegistered) -> None:
    using, event_uuid = _delivery()
    Account.objects.using(using).get_or_create(
        user_id=event.user_id,
        defaults={
            "name": event.name,
            "email": event.email,
            "opened_at": event.registered_at,
            "event_uuid": event_uuid,
        },
    )


@handler(OrderPlaced, name="billing.charge_order")
def charge_order(event: OrderPlaced) -> None:
    using, event_uuid = _delivery()
    LedgerLine.objects.using(using).get_or_create(
        event_uuid=event_uuid,
        defaults={
            "kind": LedgerLine.Kind.CHARGE,
            "user_id": event.user_id,
            "order_id": event.order_id,
            "amount": event.total,
        },
    )


@handler(RefundIssued, name="billing.record_refund")
def record_refund(event: RefundIssued) -> None:
    using, event_uuid = _delivery()
    LedgerLine.objects.using(using).get_or_create(
        event_uuid=event_uuid,
        defaults={
            "kind": LedgerLine.Kind.REFUND,
            "user_id": event.user_id,
            "order_id": event.order_id,
            "amount": -event.amount,
        },
    )
