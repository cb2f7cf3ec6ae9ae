"""The two classes a broker backend provides. A backend is a module with a ``Publisher``
(relays) and/or a ``Consumer`` (sources); ``BACKEND`` names it.

A Kafka backend, say, is a module of your own with (confluent-kafka)::

    class Publisher(base.Publisher):
        def __init__(self, name, options):
            super().__init__(name, options)
            self.producer = Producer({"bootstrap.servers": options["URL"], "acks": "all",
                                      "enable.idempotence": True})

        def publish(self, message):
            errors = []
            self.producer.produce(options.get("TOPIC", "eventbus"), message.body,
                                  key=message.subject or message.id,   # per-stream order
                                  on_delivery=lambda err, _: err and errors.append(err))
            self.producer.flush(self.timeout)
            if errors or len(self.producer):
                raise base.PublishError(f"not confirmed: {errors}")

and ``"BACKEND": "myproject.kafka_backend"``. Nothing else in eventbus_app changes: retries,
dead letters, order per stream and the console come from the relay being a handler.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


class PublishError(Exception):
    """The broker did not confirm a message; the relay's delivery fails and is retried."""


@dataclass(frozen=True)
class Message:
    """One CloudEvent to publish. ``body`` is its structured-mode JSON."""

    id: str  # the event's uuid
    type: str  # the event type: routing key, subject suffix
    subject: str  # the event's stream ("" when it has none)
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Received:
    """One message a Consumer got; ``token`` is whatever its ``ack`` needs."""

    body: bytes
    token: Any = None


class Publisher(ABC):
    """Publishes to one broker for one relay. One instance per relay and process, reused
    across deliveries; it is closed and made again after any error.

    ``publish`` returns only once the broker has the message durably (publisher confirm,
    JetStream ack, XADD reply, 2xx): the delivery counts as succeeded when it returns, and
    is retried with backoff when it raises.
    """

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.name = name
        self.options = options
        self.timeout = float(options.get("TIMEOUT", 10.0))

    @abstractmethod
    def publish(self, message: Message) -> None:
        """Send ``message``; return once the broker confirmed it, raise otherwise."""

    def close(self) -> None:
        """Release the connection; never raises."""
        return None  # a backend without a connection has nothing to release


class Consumer(ABC):
    """Receives for one source (``manage.py eventbus_consume NAME``).

    ``receive`` waits at most ``timeout`` seconds and returns up to ``limit`` messages;
    the caller stores each one, commits, then calls ``ack`` for it. A message never acked
    (the process died, or was stopped with a batch in hand) is delivered again, to this or
    another consumer: the inbox drops what it already has.
    """

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.name = name
        self.options = options

    @abstractmethod
    def receive(self, limit: int, timeout: float) -> list[Received]:
        """Up to ``limit`` messages, waiting at most ``timeout`` seconds for the first."""

    @abstractmethod
    def ack(self, message: Received) -> None:
        """Tell the broker ``message`` is stored (after the inbox committed it)."""

    def lag(self) -> int | None:
        """Messages waiting for this source at the broker (None: the broker cannot say)."""
        return None

    def close(self) -> None:
        """Release the connection; never raises. Unacked messages go back to the broker."""
        return None  # a backend without a connection has nothing to release
