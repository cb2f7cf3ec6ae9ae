"""eventbus_app: durable, signal-style domain events for Django.

Public surface (models live in ``eventbus_app.models``; import them after Django is set up)::

    from eventbus_app import Event, emit, handler
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .context import DeliveryContext, current_delivery
from .events import Event
from .exceptions import (
    ChainDepthExceeded,
    EventBusError,
    EventDefinitionError,
    EventTypeConflict,
    HandlerRegistrationError,
    HandlerTimeout,
    PayloadError,
    PayloadMismatch,
    PermanentError,
    UnknownEventType,
    UnknownHandler,
    WrongExpectedVersion,
)
from .outbox import aemit, emit
from .registry import handler
from .upcasting import upcaster

try:
    __version__ = version("eventbus_app")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "ChainDepthExceeded",
    "DeliveryContext",
    "Event",
    "EventBusError",
    "EventDefinitionError",
    "EventTypeConflict",
    "HandlerRegistrationError",
    "HandlerTimeout",
    "PayloadError",
    "PayloadMismatch",
    "PermanentError",
    "UnknownEventType",
    "UnknownHandler",
    "WrongExpectedVersion",
    "__version__",
    "aemit",
    "current_delivery",
    "emit",
    "handler",
    "upcaster",
]
