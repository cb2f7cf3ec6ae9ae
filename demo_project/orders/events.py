from __future__ import annotations

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
