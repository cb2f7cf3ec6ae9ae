from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

from eventbus_app import Event


class OrderPlaced(Event):
    order_id: UUID
    user_id: int
    total: Decimal


class InvoiceCreated(Event):
    invoice_id: int
    order_id: UUID
    number: str


class OrderShipped(Event):
    """Emitted by the model method ``Order.ship()``, with the state change it records."""

    order_id: UUID
    user_id: int
    shipped_at: datetime


class RefundIssued(Event):
    """Emitted by a ``post_save`` receiver of ``Refund`` (``receivers.py``)."""

    refund_id: int
    order_id: UUID
    user_id: int
    amount: Decimal
