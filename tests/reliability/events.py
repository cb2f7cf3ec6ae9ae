from __future__ import annotations

from typing import Any

from eventbus_app import Event


class Job(Event, event_type="reliability.Job"):
    """Four handlers: three write their effect in their transaction, one appends to a file."""

    n: int
    sleep: float = 0.0


class Clean(Event, event_type="reliability.Clean"):
    """Two good handlers."""

    n: int


class Poisoned(Event, event_type="reliability.Poisoned"):
    """The same two good handlers plus one that always fails."""

    n: int


class SignedUp(Event, event_type="reliability.SignedUp"):
    account_id: int
    email: str


class Tick(Event, event_type="reliability.Tick"):
    """Its handler fails on the first attempt and succeeds on the retry."""

    n: int


class Hostile(Event, event_type="reliability.Hostile"):
    """Emitted by the hostile-input properties; no handler."""

    text: str
    number: float
    count: int
    blob: Any
    mapping: dict[str, Any]


class Hang(Event, event_type="reliability.Hang"):
    """A good handler and one that hangs (sleeps for ever) on the event whose n is 7."""

    n: int


class Crash(Event, event_type="reliability.Crash"):
    """A good handler and one that kills its worker process on the event whose n is 7."""

    n: int
