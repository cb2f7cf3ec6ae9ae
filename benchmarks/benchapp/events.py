from __future__ import annotations

from eventbus_app import Event


class OrderPlaced(Event, event_type="bench.OrderPlaced"):
    """Four no-op handlers: the throughput and emit-cost workload."""

    order_id: int
    customer: str
    total_cents: int


class Ping(Event, event_type="bench.Ping"):
    """One handler that records when it started: the latency probe."""

    key: int


class Bulk(Event, event_type="bench.Bulk"):
    """One no-op handler: the backlog and memory workload."""

    n: int


class Written(Event, event_type="bench.Written"):
    """Four handlers that each insert one row: effectively-once work."""

    ref: int


class Credit(Event, event_type="bench.Credit"):
    """The event-sourcing workload: appended to account streams."""

    amount: int


class Lap(Event, event_type="bench.Lap"):
    """Ordered vs unordered delivery: one handler each (both no-op)."""

    n: int


class LapFree(Event, event_type="bench.LapFree"):
    """The same workload for an unordered handler."""

    n: int
