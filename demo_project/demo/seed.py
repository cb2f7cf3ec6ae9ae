"""Demo data: sign-ups and orders, dispatched so that a dead letter and a flaky retry exist."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.test.utils import override_settings

from eventbus_app.dispatch import run

from ..accounts.services import change_email, register_user, rename_user
from ..orders.services import place_order
from . import fakes
from .models import FakeService

USERS = [
    ("alice", "Alice Martin", "alice@example.com"),
    ("bob", "Bob Okafor", "bob@example.com"),
    ("carol", "Carol Schmidt", "carol@example.com"),
]
LATE_USER = ("dave", "Dave Nguyen", "dave@example.com")
USER_PASSWORD = "demo"


@contextmanager
def _quiet() -> Iterator[None]:
    """The seeded failures are on purpose: no log line for each (the summary counts them)."""
    logger = logging.getLogger("eventbus_app.dispatch")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def is_seeded() -> bool:
    return User.objects.filter(username=USERS[0][0]).exists()


def seed() -> dict[str, Any]:
    """Create users and orders with the payment provider flaky and the chat webhook down.

    The first batch is dispatched at once, with retries due immediately: every chat
    notification ends as a dead letter, every payment customer succeeds on its second
    attempt. The last sign-up is dispatched once with the real backoff, so its deliveries
    wait as failed retries for the worker.
    """
    fakes.set_mode(fakes.PAYMENTS, FakeService.Mode.FLAKY)
    fakes.set_mode(fakes.CHAT, FakeService.Mode.DOWN)
    users = [
        register_user(username=u, name=n, email=e, password=USER_PASSWORD) for u, n, e in USERS
    ]
    alice, bob = users[0], users[1]
    rename_user(alice, "Alice Martin-Durand")
    change_email(alice, "alice.md@example.com")
    place_order(alice, product="Espresso machine", quantity=1, unit_price=Decimal("249.00"))
    place_order(bob, product="Coffee beans, 1 kg", quantity=3, unit_price=Decimal("18.50"))
    with (
        _quiet(),
        override_settings(EVENTBUS={**getattr(settings, "EVENTBUS", {}), "RETRY_BACKOFF": 0}),
    ):
        first = run()
    u, n, e = LATE_USER
    register_user(username=u, name=n, email=e, password=USER_PASSWORD)
    with _quiet():
        second = run()
    return {
        "users": len(users) + 1,
        "orders": 2,
        "delivered": first.delivered + second.delivered,
        "failed": first.failed + second.failed,
        "dead": first.dead + second.dead,
    }
