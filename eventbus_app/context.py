"""What a running handler can know about its delivery, without changing its signature."""

from __future__ import annotations

import contextvars
import uuid
from dataclasses import dataclass

_NAMESPACE = uuid.UUID("0b5e6f3c-8a0c-4c41-9d39-5b0e4a3c2f10")


@dataclass(frozen=True)
class DeliveryContext:
    """The delivery a handler is running for.

    ``idempotency_key`` is the same for every retry of one delivery, and new for a replay:
    pass it to external APIs (a payment provider's ``Idempotency-Key`` header, say).
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

    @property
    def idempotency_key(self) -> str:
        return str(uuid.uuid5(_NAMESPACE, f"{self.event_id}/{self.handler}/{self.replays}"))


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
