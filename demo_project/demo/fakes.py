"""Pretend outside services: a payment provider and a team chat webhook.

They are the only mocked parts of the demo (third-party web APIs). How each behaves is a row
in ``FakeService`` (``up``, ``flaky`` or ``down``), so the home page, the ``demo`` command and
the tests can break and mend them while workers run in other processes.
"""

from __future__ import annotations

from typing import Any

from eventbus_app import current_delivery

from .models import FakeService

PAYMENTS = "payments"
CHAT = "chat"
SERVICES = (PAYMENTS, CHAT)


class ServiceUnavailable(ConnectionError):
    """The fake service is down."""


class ServiceTimeout(TimeoutError):
    """The fake service timed out (flaky mode, first attempt)."""


def mode(name: str, using: str = "default") -> str:
    row = FakeService.objects.using(using).filter(name=name).first()
    return row.mode if row else FakeService.Mode.UP


def set_mode(name: str, value: str, using: str = "default") -> None:
    FakeService.objects.using(using).update_or_create(name=name, defaults={"mode": value})


def _call(name: str, what: str) -> None:
    ctx = current_delivery()
    using = ctx.using if ctx else "default"
    current = mode(name, using)
    if current == FakeService.Mode.DOWN:
        raise ServiceUnavailable(f"{name}: 503 Service Unavailable while trying to {what}")
    if current == FakeService.Mode.FLAKY and (ctx is None or ctx.attempt <= 1):
        raise ServiceTimeout(f"{name}: read timed out after 10s while trying to {what}")


class PaymentClient:
    """A payment provider's customer API, with an ``Idempotency-Key`` like the real ones."""

    def create_customer(self, *, email: str, name: str, idempotency_key: str) -> dict[str, Any]:
        _call(PAYMENTS, f"create customer {email}")
        return {"id": "cus_" + idempotency_key.replace("-", "")[:14], "email": email}


class ChatWebhook:
    """A team chat's incoming webhook."""

    def post(self, text: str) -> None:
        _call(CHAT, "post a message")
