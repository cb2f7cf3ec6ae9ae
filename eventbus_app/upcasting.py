"""Upcasters: each stored version of an event, converted step by step to the current one.

::

    @upcaster(OrderPlaced, from_version=1)
    def _v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "currency": "EUR"}

A payload stored by version 1 of a class now at version 3 goes through the ``1 → 2`` and the
``2 → 3`` upcasters, in order (a missing step keeps the payload as it is). Everything that
reads events sees the current version: handlers, ``streams.read()``, ``Aggregate.load()``
and the admin, because they all go through ``Event.from_json()``. A class that overrides
``Event.upcast()`` keeps doing its own conversion.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .exceptions import EventDefinitionError

if TYPE_CHECKING:
    from .events import Event

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
U = TypeVar("U", bound=Upcaster)

# event_type -> {from_version: upcaster}
_upcasters: dict[str, dict[int, Upcaster]] = {}


def upcaster(event_cls: type[Event], *, from_version: int) -> Callable[[U], U]:
    """Register a function that turns a ``from_version`` payload of ``event_cls`` into a
    ``from_version + 1`` payload."""
    from .events import Event

    if not (isinstance(event_cls, type) and issubclass(event_cls, Event)):
        raise EventDefinitionError(f"@upcaster needs an Event subclass, got {event_cls!r}")
    if (
        not isinstance(from_version, int)
        or isinstance(from_version, bool)
        or not 1 <= from_version < event_cls.version
    ):
        raise EventDefinitionError(
            f"@upcaster({event_cls.__qualname__}, from_version={from_version!r}): from_version "
            f"must be an int from 1 to {event_cls.version - 1} ({event_cls.event_type} is at "
            f"version {event_cls.version})"
        )

    def register(func: U) -> U:
        steps = _upcasters.setdefault(event_cls.event_type, {})
        existing = steps.get(from_version)
        if existing is not None and existing.__qualname__ != func.__qualname__:
            raise EventDefinitionError(
                f"{event_cls.event_type} has two upcasters from version {from_version}: "
                f"{existing.__module__}.{existing.__qualname__} and "
                f"{func.__module__}.{func.__qualname__}"
            )
        steps[from_version] = func
        return func

    return register


def upcast_chain(event_cls: type[Event], payload: dict[str, Any], version: int) -> dict[str, Any]:
    """``payload`` (stored by ``version``) through every registered step up to the class's
    current version. A payload from a newer version than the class is returned unchanged."""
    steps = _upcasters.get(event_cls.event_type, {})
    for step in range(version, event_cls.version):
        func = steps.get(step)
        if func is not None:
            payload = func(dict(payload))
            if not isinstance(payload, dict):
                raise EventDefinitionError(
                    f"Upcaster {func.__module__}.{func.__qualname__} of {event_cls.event_type} "
                    f"(from version {step}) returned {type(payload).__name__}, not a dict"
                )
    return payload
