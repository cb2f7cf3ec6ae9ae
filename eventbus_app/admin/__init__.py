"""The failure console: events, deliveries, dead letters, failure groups, overview.

One module per page or model admin (``events``, ``deliveries``, ``dead_letters``,
``overview``, ``failure_groups``, ``held_streams``, ``streams``, ``audit``), their queries in
``queries``, what they share in ``common``. Events and deliveries are an audit record:
read-only here. What changes state (retry, replay, discard, pause, canary) goes through
``operations.py``, on the router's write database for the rows shown, needs the
``retry_delivery``, ``replay_event`` or ``discard_delivery`` permission, is POST with CSRF,
and is recorded with the user's name.
"""

from __future__ import annotations

from . import audit, dead_letters, deliveries, events  # noqa: F401  (register the admins)
from .common import DISCARD_PERM, REPLAY_PERM, RETRY_PERM
from .queries import correlation_tree, held_streams, overview_figures, timeline

__all__ = [
    "DISCARD_PERM",
    "REPLAY_PERM",
    "RETRY_PERM",
    "correlation_tree",
    "held_streams",
    "overview_figures",
    "timeline",
]
