"""How the demo's two services are linked: the shop's relay and billing's source.

Both settings modules read this, so the two sides always agree. ``DEMO_BROKER`` picks the
transport (``manage.py demo --broker`` sets it for the processes it starts):

- ``http`` (the default, nothing to install): the shop POSTs each event, signed with the
  shared secret, to billing's source view ``/eventbus/shop/``;
- ``rabbitmq``, ``nats`` or ``redis``: the shop publishes to that broker (``DEMO_BROKER_URL``,
  default on 127.0.0.1) and billing's ``manage.py eventbus_consume shop`` receives.

``DEMO_BROKER_NAME`` names the exchange / stream / queue, so that two demos (or test runs)
on one broker do not read each other's events.
"""

from __future__ import annotations

import os
from typing import Any

BROKERS = ("rabbitmq", "nats", "redis")
DEFAULT_BROKER_URLS = {
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/%2F",
    "nats": "nats://127.0.0.1:4222",
    "redis": "redis://127.0.0.1:6379/0",
}
# The relay's deliveries are billing's business: what it declares classes for.
EVENT_TYPES = ["accounts.UserRegistered", "orders.OrderPlaced", "orders.RefundIssued"]


def transport() -> str:
    kind = os.environ.get("DEMO_BROKER", "http")
    if kind != "http" and kind not in BROKERS:
        raise ValueError(f"DEMO_BROKER={kind!r}: use http, {', '.join(BROKERS)}")
    return kind


def secret() -> str:
    """Signs the http relay's requests; billing's source refuses anything else."""
    return os.environ.get("DEMO_EVENTBUS_SECRET", "demo-only-shared-secret")


def shop_url() -> str:
    return f"http://127.0.0.1:{os.environ.get('DEMO_SHOP_PORT', '8000')}/"


def billing_url() -> str:
    return f"http://127.0.0.1:{os.environ.get('DEMO_BILLING_PORT', '8001')}/"


def broker_url(kind: str) -> str:
    return os.environ.get("DEMO_BROKER_URL") or DEFAULT_BROKER_URLS[kind]


def _broker_names(kind: str, *, receiving: bool) -> dict[str, Any]:
    """Where the relay publishes, and (``receiving``) what billing's consumer reads."""
    name = os.environ.get("DEMO_BROKER_NAME", "eventbus_demo")
    if kind == "rabbitmq":
        return {"EXCHANGE": name, **({"QUEUE": f"{name}.billing"} if receiving else {})}
    if kind == "nats":
        names = {"STREAM": name.upper(), "SUBJECT_PREFIX": name}
        return {**names, **({"DURABLE": f"{name}_billing"} if receiving else {})}
    return {"STREAM": name}


def relay() -> dict[str, Any]:
    """The shop's ``EVENTBUS["RELAYS"]["billing"]``."""
    kind = transport()
    options: dict[str, Any] = {"EVENT_TYPES": EVENT_TYPES, "SOURCE": "/shop"}
    if kind == "http":
        return {
            "BACKEND": "http",
            "URL": f"{billing_url()}eventbus/shop/",
            "SECRET": secret(),
            "BATCHED": True,  # billing is eventbus_app too: a batch per request
            **options,
        }
    return {
        "BACKEND": kind,
        "URL": broker_url(kind),
        **_broker_names(kind, receiving=False),
        **options,
    }


def source() -> dict[str, Any]:
    """Billing's ``EVENTBUS["SOURCES"]["shop"]``."""
    kind = transport()
    if kind == "http":
        return {"BACKEND": "http", "SECRET": secret()}
    return {"BACKEND": kind, "URL": broker_url(kind), **_broker_names(kind, receiving=True)}
