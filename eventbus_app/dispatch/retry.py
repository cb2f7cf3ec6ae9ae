"""Retry policy: backoff, when a failure is final, and the failure's text as it is stored."""

from __future__ import annotations

import random
import traceback as tb
from dataclasses import dataclass

from ..conf import eventbus_settings
from ..exceptions import PermanentError
from ..registry import HandlerSpec


def backoff_seconds(attempt: int, spec: HandlerSpec | None = None) -> float:
    """Delay before the retry that follows failed ``attempt`` (1-based)."""
    base = eventbus_settings.RETRY_BACKOFF
    cap = eventbus_settings.RETRY_BACKOFF_MAX
    if spec is not None:
        base = spec.retry_backoff if spec.retry_backoff is not None else base
        cap = spec.retry_backoff_max if spec.retry_backoff_max is not None else cap
    if base <= 0:
        return 0.0
    delay = min(float(cap), float(base) * 2.0 ** min(attempt - 1, 64))
    if eventbus_settings.RETRY_JITTER:
        delay = random.uniform(delay / 2, delay)
    return delay


def max_attempts(spec: HandlerSpec | None) -> int:
    return (spec.max_attempts if spec else None) or eventbus_settings.MAX_ATTEMPTS


def storable(text: str) -> str:
    """``text`` with what a database cannot store escaped, never dropped: NUL (PostgreSQL
    refuses it in text) and lone surrogates (not UTF-8) become ``\\x00`` / ``\\udcff``."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def describe(exc: BaseException) -> str:
    """``"ValueError: the message"``, even for an exception whose ``__str__`` raises (the
    failure of such a handler must still be recorded, not crash the dispatcher)."""
    try:
        text = str(exc)
    except Exception as broken:
        text = f"<str() of the exception raised {type(broken).__name__}>"
    return f"{type(exc).__name__}: {text}"


@dataclass(frozen=True)
class Failure:
    """A failed attempt as it is recorded: message, exception class, traceback, finality."""

    error: str
    error_class: str
    traceback: str
    dead: bool
    delay: float

    @classmethod
    def of(
        cls, exc: BaseException, attempt: int, spec: HandlerSpec | None, *, error: str = ""
    ) -> Failure:
        """``attempt`` is the number of the attempt that failed (1-based)."""
        permanent = isinstance(exc, PermanentError)
        if spec is not None and not permanent:
            if spec.dead_on and isinstance(exc, spec.dead_on):
                permanent = True
                why = f"{type(exc).__name__} is in {spec.name}'s dead_on"
            elif spec.retry_on and not isinstance(exc, spec.retry_on):
                permanent = True
                why = f"{type(exc).__name__} is not in {spec.name}'s retry_on"
        dead = permanent or attempt >= max_attempts(spec)
        if not error:
            error = describe(exc)
            if isinstance(exc, PermanentError):
                error += "\n(This error is permanent: retrying cannot help, so it was not retried.)"
            elif permanent:
                error += f"\n(Not retried: {why}.)"
        return cls(
            error=storable(error),
            error_class=storable(f"{type(exc).__module__}.{type(exc).__qualname__}"),
            traceback=storable("".join(tb.format_exception(exc))),
            dead=dead,
            delay=0.0 if dead else backoff_seconds(attempt, spec),
        )
