"""The handler registry: which functions run for which events.

Handlers are keyed by a stable name (default ``module.qualname``). The name is stored on
each :class:`~eventbus_app.models.Delivery`, so retries and replays survive restarts and
refactors that keep it.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .events import Event
from .exceptions import HandlerRegistrationError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class HandlerSpec:
    name: str
    func: Callable[[Any], Any]
    event_cls: type[Event]
    is_async: bool
    max_attempts: int | None = None
    retry_backoff: float | None = None
    retry_backoff_max: float | None = None
    timeout: float | None = None
    ordered: bool = False
    writes: tuple[Any, ...] = ()  # the models a projection writes (eventbus_rebuild --shadow)
    # fnmatch patterns of event types (relays: "shop.*"); empty: every subclass of event_cls.
    event_types: tuple[str, ...] = ()
    # Exceptions that retry / dead-letter at once (@handler(retry_on=, dead_on=)).
    retry_on: tuple[type[BaseException], ...] = ()
    dead_on: tuple[type[BaseException], ...] = ()
    # Runs a claimed batch of this handler's deliveries at once (relays: one publish and
    # one confirm wait per batch): ``batch(deliveries, using, seconds)`` returns one
    # outcome per delivery, None for success, or raises to fail them all. Internal: user
    # handlers run one delivery at a time, each in its own transaction.
    batch: Callable[[Sequence[Any], str, float], Sequence[Exception | None]] | None = None

    def accepts(self, event_cls: type[Event]) -> bool:
        if not issubclass(event_cls, self.event_cls):
            return False
        return not self.event_types or any(
            fnmatch.fnmatchcase(event_cls.event_type, p) for p in self.event_types
        )

    @property
    def location(self) -> str:
        return f"{self.func.__module__}.{self.func.__qualname__}"


_handlers: dict[str, HandlerSpec] = {}


def handler(
    event_cls: type[Event],
    *,
    name: str | None = None,
    max_attempts: int | None = None,
    retry_backoff: float | None = None,
    retry_backoff_max: float | None = None,
    timeout: float | None = None,
    ordered: bool = False,
    writes: Sequence[Any] = (),
    retry_on: Sequence[type[BaseException]] = (),
    dead_on: Sequence[type[BaseException]] = (),
) -> Callable[[F], F]:
    """Register the decorated function (sync or ``async def``) to run for ``event_cls``.

    It also runs for subclasses of ``event_cls``. ``max_attempts``, ``retry_backoff`` and
    ``retry_backoff_max`` override the ``EVENTBUS`` defaults for this handler; ``timeout``
    (seconds, default ``EVENTBUS['HANDLER_TIMEOUT']``) is how long one run may take before
    it is interrupted and fails as timed out. ``ordered=True``: this handler's deliveries of
    one stream run one at a time, in position order, and a failing one holds the later ones
    of its stream (only) until it succeeds or an operator retries or discards it.
    ``writes=[Model, ...]``: the models a projection handler writes, so that
    ``manage.py eventbus_rebuild NAME --shadow`` can rebuild them beside the live ones.
    ``dead_on=(ValidationError, ...)``: these errors dead-letter the delivery at once;
    ``retry_on=(TimeoutError, ...)``: only these are retried, any other error dead-letters
    at once (``dead_on`` wins where both match; ``PermanentError`` is always final).
    """
    if not isinstance(ordered, bool):
        raise HandlerRegistrationError(f"ordered must be True or False, got {ordered!r}")
    for label, classes in (("retry_on", retry_on), ("dead_on", dead_on)):
        if isinstance(classes, type) or not all(
            isinstance(c, type) and issubclass(c, BaseException) for c in classes
        ):
            raise HandlerRegistrationError(
                f"{label} takes a tuple of exception classes, got {classes!r}"
            )
    for model in writes:
        if not (isinstance(model, type) and hasattr(model, "_meta")):
            raise HandlerRegistrationError(
                f"writes= lists the Django models a projection writes, got {model!r}"
            )
    if callable(event_cls) and not isinstance(event_cls, type):
        # A bare ``@handler`` (no parentheses) passes the function itself here.
        raise HandlerRegistrationError(
            f"@handler needs the event class it handles, got the function {event_cls!r}: "
            "use @handler(EventClass) above the function, not a bare @handler"
        )
    if not (isinstance(event_cls, type) and issubclass(event_cls, Event)) or event_cls is Event:
        raise HandlerRegistrationError(
            f"@handler needs an Event subclass as its first argument, got {event_cls!r}; "
            "use @handler(EventClass)"
        )
    if max_attempts is not None and (not isinstance(max_attempts, int) or max_attempts < 1):
        raise HandlerRegistrationError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
    for label, value in (
        ("retry_backoff", retry_backoff),
        ("retry_backoff_max", retry_backoff_max),
    ):
        if value is not None and (not isinstance(value, int | float) or value < 0):
            raise HandlerRegistrationError(f"{label} must be a number >= 0, got {value!r}")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise HandlerRegistrationError(f"timeout must be a number of seconds > 0, got {timeout!r}")

    def decorate(func: F) -> F:
        if not callable(func):
            raise HandlerRegistrationError(f"@handler decorates a function, got {func!r}")
        _check_takes_the_event(func, event_cls)
        spec = HandlerSpec(
            name=name or f"{func.__module__}.{func.__qualname__}",
            func=func,
            event_cls=event_cls,
            is_async=inspect.iscoroutinefunction(func),
            max_attempts=max_attempts,
            retry_backoff=retry_backoff,
            retry_backoff_max=retry_backoff_max,
            timeout=timeout,
            ordered=ordered,
            writes=tuple(writes),
            retry_on=tuple(retry_on),
            dead_on=tuple(dead_on),
        )
        register_spec(spec)
        return func

    return decorate


def _check_takes_the_event(func: Callable[..., Any], event_cls: type[Event]) -> None:
    """The dispatcher calls ``func(event)``: refuse, now, a function that cannot take it
    (it would otherwise fail on every delivery, at run time)."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return  # no signature to read (some builtins): let it run
    try:
        signature.bind(object())
    except TypeError as exc:
        name = getattr(func, "__qualname__", repr(func))
        raise HandlerRegistrationError(
            f"Handler {name}{signature} cannot be called with the event ({exc}): the "
            f"dispatcher calls it with one argument. Define it as "
            f"def {getattr(func, '__name__', 'handle')}(event: {event_cls.__name__}) -> None."
        ) from None


def register_spec(spec: HandlerSpec) -> HandlerSpec:
    """Register a handler (what @handler does; relays register theirs this way at
    start-up). A re-imported module replaces its own handler."""
    if not spec.name or len(spec.name) > 255:
        raise HandlerRegistrationError(f"handler name must be 1-255 characters: {spec.name!r}")
    existing = _handlers.get(spec.name)
    if existing is not None and existing.location != spec.location:
        raise HandlerRegistrationError(
            f"handler name {spec.name!r} is taken by {existing.location}; "
            f"{spec.location} needs another name=..."
        )
    _handlers[spec.name] = spec
    return spec


def get_handler(name: str) -> HandlerSpec | None:
    return _handlers.get(name)


def handlers_for(event_cls: type[Event]) -> list[HandlerSpec]:
    """Handlers registered for ``event_cls`` or one of its Event base classes."""
    return [spec for spec in _handlers.values() if spec.accepts(event_cls)]


def all_handlers() -> dict[str, HandlerSpec]:
    return dict(_handlers)


def unregister(name: str) -> None:
    _handlers.pop(name, None)
