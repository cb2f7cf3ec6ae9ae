"""Rolling deploys: what the other live workers know.

During a deploy old and new code run side by side. Each dispatcher publishes what its
code knows (``WorkerRegistry``: event type → handler names, and each event class's version)
and reads what the others published in the last ``REGISTRY_GRACE_SECONDS``:

* **Fan-out** creates a delivery for every handler any live registry routes the event to,
  so an old worker fanning out does not leave a new handler without its delivery (and an
  event type only newer code knows is routed to its handlers, not dead-lettered).
* **Claims** skip deliveries of handlers another live registry knows and this one does
  not: they wait for a worker that has the handler.
* **Newer payloads**: an event stored by a newer version of its class than this worker's
  is given back unrun (uncharged) if a live registry knows that version.
* Work that **no live registry knows** (a handler removed or renamed, a version nobody
  runs) is dead-lettered with an explaining error, as before, but only once the registries
  that knew it have not been seen for the grace period: the console's dead letters show it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import DatabaseError
from django.db.models.functions import Now

from ..conf import eventbus_settings
from ..events import registered_event_types
from ..registry import all_handlers, handlers_for

logger = logging.getLogger("eventbus_app.dispatch")

# How often a dispatcher refreshes its registry row and re-reads the others'.
HEARTBEAT_SECONDS = 15.0


@dataclass
class Fleet:
    """What this process's code knows, and what the live registries know besides."""

    fingerprint: str
    routes: dict[str, list[str]]
    versions: dict[str, int]
    others_handlers: set[str] = field(default_factory=set)  # known elsewhere, not here
    live_routes: dict[str, set[str]] = field(default_factory=dict)
    live_versions: dict[str, int] = field(default_factory=dict)
    read_at: float = 0.0

    def handlers_for_type(self, event_type: str, own: list[str]) -> list[str]:
        """Own handlers first, then those only other live registries route the type to."""
        extra = sorted(self.live_routes.get(event_type, set()) - set(own))
        return own + extra

    def newer_version_known(self, event_type: str, version: int) -> bool:
        return self.live_versions.get(event_type, 0) >= version


def _own() -> tuple[str, dict[str, list[str]], dict[str, int]]:
    routes: dict[str, list[str]] = {}
    versions: dict[str, int] = {}
    for event_type, cls in sorted(registered_event_types().items()):
        versions[event_type] = cls.version
        names = sorted(s.name for s in handlers_for(cls))
        if names:
            routes[event_type] = names
    digest = hashlib.sha256(
        json.dumps([routes, versions, sorted(all_handlers())], sort_keys=True).encode()
    ).hexdigest()
    return digest, routes, versions


_fleets: dict[str, Fleet] = {}


def fleet(using: str) -> Fleet:
    """This process's view for database ``using``, refreshed every HEARTBEAT_SECONDS."""
    current = _fleets.get(using)
    now = time.monotonic()
    if current is not None and now - current.read_at < HEARTBEAT_SECONDS:
        return current
    fingerprint, routes, versions = _own()
    view = Fleet(fingerprint, routes, versions, read_at=now)
    try:
        _publish_and_read(using, view)
    except DatabaseError:
        logger.warning("Could not refresh the worker registry on %r", using, exc_info=True)
        if current is not None:
            current.read_at = now
            return current
    _fleets[using] = view
    return view


def _publish_and_read(using: str, view: Fleet) -> None:
    from ..models import WorkerRegistry

    rows = WorkerRegistry.objects.using(using)
    updated = rows.filter(fingerprint=view.fingerprint).update(last_seen=Now())
    if not updated:
        rows.bulk_create(
            [
                WorkerRegistry(
                    fingerprint=view.fingerprint, routes=view.routes, versions=view.versions
                )
            ],
            ignore_conflicts=True,
        )
    grace = timedelta(seconds=eventbus_settings.REGISTRY_GRACE_SECONDS)
    own_handlers = set(all_handlers())
    for routes, versions in rows.filter(last_seen__gte=Now() - grace).values_list(
        "routes", "versions"
    ):
        for event_type, names in (routes or {}).items():
            view.live_routes.setdefault(event_type, set()).update(names)
            view.others_handlers.update(n for n in names if n not in own_handlers)
        for event_type, version in (versions or {}).items():
            if isinstance(version, int) and version > view.live_versions.get(event_type, 0):
                view.live_versions[event_type] = version


def forget() -> None:
    """Drop the cached views (tests that change the registry)."""
    _fleets.clear()
