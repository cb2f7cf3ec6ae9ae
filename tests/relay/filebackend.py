"""A relay backend of the tests' own (``"BACKEND": "tests.relay.filebackend"``): its broker
is a file of JSON lines, one per ``publish_many`` call, so a test (and a worker process it
starts) can see how the dispatcher batched the publishes. It is also the example of a
user's own backend: a module with a ``Publisher``.

Options: ``PATH`` (the file), ``REFUSE_TYPES`` (event types it refuses, message by
message), ``HANG_SECONDS`` (waits that long before confirming: a broker that hangs),
``DOWN`` (every batch fails as a whole), ``BREAK_TYPES`` (a batch holding one of these
event types fails as a whole, as a message too big for a broker breaks a batch)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

from eventbus_app.relay.backends.base import Message, Outcome, PublishError
from eventbus_app.relay.backends.base import Publisher as BasePublisher

RELAY_OPTIONS = ("PATH", "REFUSE_TYPES", "HANG_SECONDS", "DOWN", "BREAK_TYPES")


class Publisher(BasePublisher):
    def publish_many(self, messages: Sequence[Message]) -> list[Outcome]:
        if self.options.get("DOWN"):
            raise PublishError("the file broker is down")
        breaking = set(self.options.get("BREAK_TYPES", ()))
        if any(m.type in breaking for m in messages):
            raise PublishError(f"the file broker broke on a batch of {len(messages)}")
        refused = set(self.options.get("REFUSE_TYPES", ()))
        outcomes: list[Outcome] = [
            PublishError(f"refused type {m.type}") if m.type in refused else None for m in messages
        ]
        line = {
            "pid": os.getpid(),
            "ids": [m.id for m, o in zip(messages, outcomes, strict=True) if o is None],
            "refused": [m.id for m, o in zip(messages, outcomes, strict=True) if o is not None],
        }
        with open(self.options["PATH"], "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())
        time.sleep(float(self.options.get("HANG_SECONDS", 0)))
        return outcomes


def batches(path: Any) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
