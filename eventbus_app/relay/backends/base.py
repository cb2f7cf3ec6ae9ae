"""The two classes a broker backend provides. A backend is a module with a ``Publisher``
(relays) and/or a ``Consumer`` (sources); ``BACKEND`` names it.

A Kafka backend, say, is a module of your own with (confluent-kafka)::

    class Publisher(base.Publisher):
        def __init__(self, name, options):
            super().__init__(name, options)
            self.producer = Producer({"bootstrap.servers": options["URL"], "acks": "all",
                                      "enable.idempotence": True})

        def publish_many(self, messages):
            outcomes = [base.PublishError("not confirmed in time")] * len(messages)
            def confirmed(i):
                def on_delivery(err, _msg):
                    outcomes[i] = base.PublishError(str(err)) if err else None
                return on_delivery
            for i, message in enumerate(messages):
                self.producer.produce(self.options.get("TOPIC", "eventbus"), message.body,
                                      key=message.subject or message.id,  # per-stream order
                                      on_delivery=confirmed(i))
            self.producer.flush(self.timeout)  # every delivery report, or the timeout
            return outcomes

        def publish(self, message):
            self.raise_for(self.publish_many([message]))

and ``"BACKEND": "myproject.kafka_backend"``. Nothing else in eventbus_app changes: retries,
dead letters, order per stream and the console come from the relay being a handler.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ...exceptions import NotAttempted

__all__ = [
    "Consumer",
    "Message",
    "NotAttempted",
    "Outcome",
    "PublishError",
    "Publisher",
    "Received",
]


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


# What ``publish_many`` says of each message: None (confirmed) or why it was not.
Outcome = Exception | None


class Publisher:
    """Publishes to one broker for one relay. One instance per relay and process, reused
    across deliveries; it is closed and made again after any error it raises.

    The relay hands it batches: ``publish_many`` sends every message of a batch, in order,
    then waits for the broker's confirms together (one round trip per batch, not per
    message), and returns one outcome per message. A delivery counts as succeeded only
    when its message's outcome is None: the broker has it durably (publisher confirm,
    JetStream ack, XADD reply, 2xx). An outcome that is an exception fails that delivery
    only (retried with backoff); ``publish_many`` raising (the connection broke, the
    broker did not answer in ``TIMEOUT``) fails the whole batch.

    A batch holds at most one message per stream (the relay is an ordered handler, whose
    claims take only each stream's first unsettled event), so a message refused in the
    middle of a batch never lets a later one of its stream overtake it.

    A backend must implement ``publish_many`` or ``publish``; each has a default made of
    the other (one message at a time, when only ``publish`` is written).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.publish is Publisher.publish and cls.publish_many is Publisher.publish_many:
            raise TypeError(
                f"{cls.__module__}.{cls.__qualname__} must implement publish_many() or "
                "publish() (eventbus_app/relay/backends/base.py)"
            )

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.name = name
        self.options = options
        self.timeout = float(options.get("TIMEOUT", 10.0))
        self.deadline: float | None = None  # set by the relay for each batch

    def is_open(self) -> bool:
        """False once the connection is known to be gone (the broker closed it while the
        relay was idle): a new publisher is made before the next batch, which is then not
        failed for a connection that no longer existed."""
        return True

    def publish_many(self, messages: Sequence[Message]) -> list[Outcome]:
        """Send ``messages`` in order; one outcome per message, None where confirmed.
        Raise when the batch as a whole failed (nothing in it counts as confirmed).

        ``self.deadline`` (a ``time.monotonic()``, or None) is when the relay's time limit
        ends: a backend that sends in several steps stops before it and answers
        ``NotAttempted`` for what it did not send."""
        outcomes: list[Outcome] = []
        for message in messages:
            late = self.deadline is not None and time.monotonic() + self.timeout > self.deadline
            if outcomes and late:  # the first is always sent: something must progress
                outcomes.append(NotAttempted("the relay's time limit came first"))
                continue
            try:
                self.publish(message)
            except PublishError as exc:  # this message only; the connection is fine
                outcomes.append(exc)
            else:
                outcomes.append(None)
        return outcomes

    def publish(self, message: Message) -> None:
        """Send one message; return once the broker confirmed it, raise otherwise."""
        self.raise_for(self.publish_many([message]))

    @staticmethod
    def raise_for(outcomes: Sequence[Outcome]) -> None:
        for outcome in outcomes:
            if outcome is not None:
                raise outcome

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

    def ack_many(self, messages: Sequence[Received]) -> None:
        """Ack a batch the inbox committed together (one call each, unless the backend can
        do better)."""
        for message in messages:
            self.ack(message)

    def lag(self) -> int | None:
        """Messages waiting for this source at the broker (None: the broker cannot say)."""
        return None

    def close(self) -> None:
        """Release the connection; never raises. Unacked messages go back to the broker."""
        return None  # a backend without a connection has nothing to release
