"""What a running handler can know about its delivery, without changing its signature."""

from __future__ import annotations

import contextvars
import uuid
from dataclasses import dataclass

_NAMESPACE = uuid.UUID("0b5e6f3c-8a0c-4c41-9d39-5b0e4a3c2f10")
_NOT_GIVEN = uuid.UUID(int=0)


@dataclass(frozen=True)
class DeliveryContext:
    """The delivery a handler is running for.

    ``event_uuid`` is the event's ``OutboxEvent.uuid``, unique across databases and
    services (``event_id`` is unique only within one database). ``idempotency_key`` is
    derived from it: the same for every retry of one delivery, new for a replay, and never
    the same for two events: pass it to external APIs (a payment provider's
    ``Idempotency-Key`` header, say).
    """

    delivery_id: int
    event_id: int
    event_type: str
    handler: str
    attempt: int
    correlation_id: uuid.UUID
    causation_id: int | None
    depth: int
    replays: int
    using: str
    event_uuid: uuid.UUID = _NOT_GIVEN

    def __post_init__(self) -> None:
        if self.event_uuid == _NOT_GIVEN:
            # Built without it (by hand, say): read it, since a key derived from the
            # integer id would collide across databases and environments.
            from .models import OutboxEvent

            stored = (
                OutboxEvent.objects.using(self.using)
                .values_list("uuid", flat=True)
                .get(pk=self.event_id)
            )
            object.__setattr__(self, "event_uuid", stored)

    @property
    def idempotency_key(self) -> str:
        return str(uuid.uuid5(_NAMESPACE, f"{self.event_uuid}/{self.handler}/{self.replays}"))


_current: contextvars.ContextVar[DeliveryContext | None] = contextvars.ContextVar(
    "eventbus_delivery", default=None
)


def current_delivery() -> DeliveryContext | None:
    """The running handler's delivery, or ``None`` outside a handler."""
    return _current.get()


# Errors a handler must not swallow (a chain stopped at MAX_CHAIN_DEPTH): emit() records
# them here, and the dispatcher fails the delivery even if the handler caught the exception.
_stopped: contextvars.ContextVar[list[Exception] | None] = contextvars.ContextVar(
    "eventbus_stopped", default=None
)
