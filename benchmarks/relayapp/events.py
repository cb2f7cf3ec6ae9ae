"""Both services declare these (same ``event_type``): the sender emits them, the receiver's
inbox routes them to its handlers."""

from __future__ import annotations

from eventbus_app import Event


class Load(Event, event_type="relaybench.Load"):
    """The throughput backlog: relayed, no local handler on either side."""

    n: int
    customer: str
    total_cents: int


class Ping(Event, event_type="relaybench.Ping"):
    """The latency probe: relayed by service A, handled in service B."""

    key: int
