"""What the ``eventbus`` pytest fixture is: a recorder of emitted events with assertions,
and a drain that runs retries without waiting for their backoff.

It is usable without pytest too (``EventBusRecorder()`` as a context manager)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS

from ..events import Event
from ..signals import event_emitted

E = TypeVar("E", bound=Event)

# A handler that keeps failing is dead after max_attempts rounds; this only stops a drain
# whose handlers emit forever (MAX_CHAIN_DEPTH bounds that too).
MAX_DRAIN_ROUNDS = 1000


class EventBusRecorder:
    """Records every ``Event`` emitted while it is started (by the code under test and by
    handlers that ``drain()`` runs), whether or not its transaction commits."""

    def __init__(self) -> None:
        self.emitted: list[Event] = []
        self._connected = False

    # -- recording -------------------------------------------------------------------------

    def _receive(self, sender: type[Event], *, event: Event, **kwargs: Any) -> None:
        self.emitted.append(event)

    def start(self) -> None:
        if not self._connected:
            event_emitted.connect(self._receive, weak=False, dispatch_uid=id(self))
            self._connected = True

    def stop(self) -> None:
        if self._connected:
            event_emitted.disconnect(dispatch_uid=id(self))
            self._connected = False

    def __enter__(self) -> EventBusRecorder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def clear(self) -> None:
        self.emitted.clear()

    def of(self, event_cls: type[E]) -> list[E]:
        """The emitted events that are instances of ``event_cls``, in emit order."""
        return [e for e in self.emitted if isinstance(e, event_cls)]

    # -- assertions ------------------------------------------------------------------------

    def assert_emitted(self, event_cls: type[E], **fields: Any) -> E:
        """Assert an ``event_cls`` with these field values was emitted; return it (the first
        that matches). On failure the message shows the closest one field by field."""
        _check_fields(event_cls, fields, "assert_emitted")
        candidates = self.of(event_cls)
        for event in candidates:
            if _matches(event, fields):
                return event
        if not candidates:
            raise AssertionError(f"No {event_cls.__name__} was emitted. Emitted: {self._summary()}")
        closest = max(candidates, key=lambda e: _score(e, fields))
        lines = [
            f"No {event_cls.__name__} with {_format_fields(fields)} was emitted; "
            f"{len(candidates)} {event_cls.__name__} were. The closest "
            f"(#{candidates.index(closest) + 1}) differs:",
        ]
        for name, expected in fields.items():
            actual = getattr(closest, name)
            if actual != expected:
                lines.append(f"  {name}: expected {expected!r}")
                lines.append(f"  {' ' * len(name)}       got {actual!r}")
        raise AssertionError("\n".join(lines))

    def assert_not_emitted(self, event_cls: type[Event], **fields: Any) -> None:
        """Assert no ``event_cls`` (with these field values, if given) was emitted."""
        _check_fields(event_cls, fields, "assert_not_emitted")
        found = [e for e in self.of(event_cls) if _matches(e, fields)]
        if found:
            what = f" with {_format_fields(fields)}" if fields else ""
            raise AssertionError(
                f"Expected no {event_cls.__name__}{what}, but {len(found)} were emitted: "
                + "; ".join(repr(e) for e in found[:5])
            )

    def _summary(self) -> str:
        if not self.emitted:
            return "nothing."
        names: dict[str, int] = {}
        for e in self.emitted:
            names[type(e).__name__] = names.get(type(e).__name__, 0) + 1
        return ", ".join(f"{n} x {count}" for n, count in names.items()) + "."

    # -- running handlers ------------------------------------------------------------------

    def drain(self, using: str = DEFAULT_DB_ALIAS) -> dict[str, Any]:
        """Run every due handler now, in this process, until nothing is due. Retries are
        run at once (their backoff is skipped), to exhaustion: a handler that keeps failing
        ends dead. Events handlers emit are drained too. Delayed events
        (``emit(deliver_after=)``) whose time has not come are left alone. Returns the
        summed counts (``fanned_out``, ``delivered``, ``failed``, ``dead``, ...) and
        ``rounds``."""
        return drain_all(using)


def drain_all(using: str = DEFAULT_DB_ALIAS) -> dict[str, Any]:
    """See :meth:`EventBusRecorder.drain`."""
    from django.db.models.functions import Now

    from ..dispatch import Counts, paused_handlers, run
    from ..models import Delivery

    total = Counts()
    rounds = 0
    while True:
        rounds += 1
        step = run(using)
        total.add(step)
        # Failed deliveries wait for their backoff: make them due now (paused handlers'
        # stay as they are: they would never be claimed, and the loop would not end).
        retried = (
            Delivery.objects.using(using)
            .filter(status=Delivery.Status.FAILED, next_attempt_at__gt=Now())
            .exclude(handler__in=paused_handlers(using))
            .update(next_attempt_at=Now())
        )
        progressed = step.fanned_out or step.delivered or step.failed or step.dead
        if not retried or (rounds > 1 and not progressed):
            break
        if rounds >= MAX_DRAIN_ROUNDS:
            raise AssertionError(
                f"eventbus.drain() still had retries due after {rounds} rounds: a handler "
                "keeps failing without ever running out of attempts, or handlers emit "
                "events forever. Check the deliveries' last_error."
            )
    result = total.as_dict()
    result["rounds"] = rounds
    return result


@contextmanager
def recording() -> Iterator[EventBusRecorder]:
    with EventBusRecorder() as recorder:
        yield recorder


def _field_names(event_cls: type[Event]) -> set[str]:
    return {f.name for f in dataclasses.fields(event_cls)}  # type: ignore[arg-type]


def _check_fields(event_cls: type[Event], fields: dict[str, Any], method: str) -> None:
    if not (isinstance(event_cls, type) and issubclass(event_cls, Event)):
        raise TypeError(f"eventbus.{method}() takes an Event class, got {event_cls!r}")
    unknown = sorted(set(fields) - _field_names(event_cls))
    if unknown:
        raise TypeError(
            f"eventbus.{method}({event_cls.__name__}, ...): {event_cls.__name__} has no "
            f"field {', '.join(map(repr, unknown))}; its fields are "
            f"{', '.join(sorted(_field_names(event_cls)))}"
        )


def _matches(event: Event, fields: dict[str, Any]) -> bool:
    return all(getattr(event, name) == value for name, value in fields.items())


def _score(event: Event, fields: dict[str, Any]) -> int:
    return sum(getattr(event, name) == value for name, value in fields.items())


def _format_fields(fields: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in fields.items()) or "any fields"
