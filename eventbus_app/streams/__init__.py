"""Streams and event sourcing: the outbox is also the event store.

``emit(event, stream="account-42", expected_version=3)`` appends at a position;
:func:`read` gives a stream's events back; :class:`Aggregate` folds them into state, with
snapshots and time travel. Ordered handlers (``@handler(..., ordered=True)``) are claimed
per stream in position order by the dispatcher (``dispatch/claim.py``).
"""

from .aggregate import Aggregate, applies
from .store import read

__all__ = ["Aggregate", "applies", "read"]
