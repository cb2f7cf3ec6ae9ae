from __future__ import annotations

import os
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


# Rolling deploys: EVENTBUS_TEST_NEW_CODE=1 runs "the new release", whose Deploy class is at
# version 2 (a field added) and which has one more handler (tests/reliability/handlers.py).
NEW_CODE = bool(os.environ.get("EVENTBUS_TEST_NEW_CODE"))

if NEW_CODE:

    class Deploy(Event, event_type="reliability.Deploy", version=2):
        n: int
        region: str = "eu"

else:

    class Deploy(Event, event_type="reliability.Deploy"):  # type: ignore[no-redef]
        n: int


class Step(Event, event_type="reliability.Step"):
    """An ordered handler's workload: events appended to many streams."""

    n: int


class Misbehave(Event, event_type="reliability.Misbehave"):
    """A good handler and one misbehaving handler per fault: they run in the same batches."""

    n: int


class Paced(Event, event_type="reliability.Paced"):
    """One throttled handler (test_throttle.py)."""

    n: int
