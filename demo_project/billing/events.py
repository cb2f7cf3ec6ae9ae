"""The shop's events, as billing declares them: same ``event_type`` (and fields), billing's
own classes. Billing imports nothing from the shop; the CloudEvent's ``type`` is the contract.

A class must declare every field the sender puts in the payload: a stored payload with a
field the class lacks fails to decode (and is dead-lettered with that reason).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

from eventbus_app import Event


class UserRegistered(Event, event_type="accounts.UserRegistered"):
    user_id: int
    email: str
    name: str
    registered_at: datetime


class OrderPlaced(Event, event_type="orders.OrderPlaced"):
    order_id: UUID
    user_id: int
    total: Decimal


class RefundIssued(Event, event_type="orders.RefundIssued"):
    refund_id: int
    order_id: UUID
    user_id: int
    amount: Decimal
