"""Errors raised by eventbus_app.

Every error derives from :class:`EventBusError`. A subclass's docstring is its default
message; raised instances carry a specific message that quotes the offending value and
says how to fix it.
"""

from __future__ import annotations


class EventBusError(Exception):
    """An eventbus_app error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class EventDefinitionError(EventBusError, TypeError):
    """An Event subclass is declared incorrectly."""


class EventTypeConflict(EventDefinitionError):
    """Two Event classes declare the same event_type."""


class HandlerRegistrationError(EventBusError, TypeError):
    """A handler is registered incorrectly."""


class PayloadError(EventBusError, ValueError):
    """An event's payload cannot be stored as JSON.

    Raised by ``emit()`` before anything is written, so the caller's transaction can roll
    back whole. The message names the event type and the field.
    """

    def __init__(self, event_type: str, field: str, problem: str) -> None:
        self.event_type = event_type
        self.field = field
        self.problem = problem
        super().__init__(f"Cannot emit {event_type!s}: field {field!r} {problem}")


class PermanentError(EventBusError):
    """A delivery failed in a way that retrying cannot fix.

    Raise it (or a subclass) from a handler to dead-letter its delivery at once instead
    of waiting out the remaining attempts.
    """


class ChainDepthExceeded(PermanentError):
    """An event chain grew deeper than EVENTBUS["MAX_CHAIN_DEPTH"]."""


class UnknownEventType(PermanentError):
    """A stored event's type has no Event class in this process."""


class UnknownHandler(PermanentError):
    """A delivery names a handler that is not registered in this process."""


class PayloadMismatch(PermanentError):
    """A stored payload no longer fits its Event class."""


class LeaseLost(EventBusError):
    """This worker's lease on a delivery expired and another worker claimed it.

    The outcome of this run is discarded (its database effects roll back) because the
    delivery now belongs to the other worker.
    """


class HandlerTimeout(EventBusError):
    """A handler ran longer than its timeout (``@handler(timeout=)`` or
    ``EVENTBUS['HANDLER_TIMEOUT']``) and was interrupted; its work was rolled back."""


class AttemptUnfinished(EventBusError):
    """A delivery's attempt started and never finished: its worker died (killed, crashed,
    out of memory, or ended by django-q2's timeout) or hung past its lease."""


class HandlerBrokeTransaction(EventBusError):
    """A handler left its transaction unusable (it caught a database error without rolling
    it back, or closed the connection); its work was rolled back."""


class WrongExpectedVersion(EventBusError):
    """A stream's last position is not the one the writer expected (optimistic concurrency):
    another writer appended first."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        self.stream, self.expected, self.actual = stream, expected, actual
        super().__init__(
            f"Stream {stream!r} is at version {actual}, not the expected {expected}: another "
            "writer appended first. Load it again, re-apply your change, and save with the new "
            "version."
        )


class AggregateError(EventBusError):
    """An aggregate cannot fold a stream (an event it has no applier for, say)."""


class NotAttempted(Exception):
    """A batch handler's outcome for a delivery it did not get to run (a relay's message
    its time limit left unsent): the delivery is given back, uncharged."""
