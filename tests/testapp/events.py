from __future__ import annotations

import datetime as dt
import enum
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from eventbus_app import Event


class Plan(enum.Enum):
    FREE = "free"
    PRO = "pro"


@dataclass(frozen=True)
class Address:
    street: str
    city: str


class UserRegistered(Event):
    user_id: int
    email: str
    name: str = ""


class OrderPlaced(Event, event_type="shop.OrderPlaced", version=2):
    order_id: uuid.UUID
    total: Decimal


class Everything(Event):
    """Every supported field type, for the codec round-trip tests."""

    at: dt.datetime
    day: dt.date
    clock: dt.time
    amount: Decimal
    ref: uuid.UUID
    plan: Plan
    address: Address
    tags: list[str]
    pair: tuple[int, str]
    scores: tuple[float, ...]
    labels: frozenset[str]
    counts: dict[str, int]
    by_id: dict[int, Address]
    maybe: int | None = None
    either: int | str = 0
    blob: dict[str, Any] | None = None


class Work(Event):
    """Drives the test handlers: what to do is in the payload, so subprocesses agree."""

    key: str
    fail_attempts: int = 0  # fail while attempt <= this
    permanent: bool = False
    sleep: float = 0.0


class Chain(Event):
    """A handler re-emits it: used for chain depth and causation."""

    n: int


class Credited(Event, event_type="testapp.Credited"):
    """Folded into the Balance projection (tests/test_rebuild.py)."""

    amount: int
