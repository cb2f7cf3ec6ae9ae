"""The ``EVENTBUS`` setting: one dict, every key optional.

Read it through :data:`eventbus_settings`; values resolve lazily and reset when Django's
``setting_changed`` signal fires (``override_settings`` in tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver


@dataclass(frozen=True)
class Option:
    default: Any
    types: tuple[type, ...]
    doc: str
    minimum: float | None = None


# Every key, its default and its meaning. README.md's settings table mirrors this.
OPTIONS: dict[str, Option] = {
    "MAX_ATTEMPTS": Option(5, (int,), "Attempts per delivery before it is dead-lettered.", 1),
    "RETRY_BACKOFF": Option(
        2.0, (int, float), "Base delay in seconds, doubled per attempt; 0 retries at once.", 0
    ),
    "RETRY_BACKOFF_MAX": Option(3600.0, (int, float), "Upper bound of one retry delay.", 0),
    "RETRY_JITTER": Option(True, (bool,), "Randomise each delay between half and all of it."),
    "LEASE_SECONDS": Option(
        300, (int, float), "How long a claimed delivery is reserved for its worker.", 1
    ),
    "HANDLER_TIMEOUT": Option(
        30.0,
        (int, float),
        "Seconds one handler run may take before it is interrupted and fails as timed out "
        "(per handler: timeout=). A run starts only if this fits in what is left of its "
        "lease and of django-q2's task timeout.",
        0.1,
    ),
    "HANDLER_SYNCHRONOUS_COMMIT": Option(
        True,
        (bool,),
        "PostgreSQL: a handler's transaction waits for its WAL flush at COMMIT (the "
        "database's default). Off: it does not (synchronous_commit off for that transaction "
        "only): a database crash may then lose the last ~0.6 s of handler commits, each with "
        "its success record, so those deliveries run again; nothing is lost or applied twice.",
    ),
    "MAX_CHAIN_DEPTH": Option(
        16, (int,), "How deep handlers may emit events from events before it stops.", 1
    ),
    "MAX_PAYLOAD_BYTES": Option(
        256 * 1024, (int,), "Largest JSON payload emit() accepts, in bytes.", 1
    ),
    "REDACT_FIELDS": Option(
        ("password",), (list, tuple), "Payload keys masked in the admin (any depth)."
    ),
    "BATCH_SIZE": Option(100, (int,), "Events fanned out / deliveries claimed per batch.", 1),
    "DISPATCH_SECONDS": Option(
        10.0, (int, float), "How long one dispatch task works before it hands over.", 0.1
    ),
    "SWEEP_MINUTES": Option(1, (int,), "Interval of the django-q2 schedule that sweeps.", 1),
    "NUDGE": Option(True, (bool,), "Enqueue a dispatch task when an emitting commit ends."),
    "NUDGE_BACKGROUND": Option(
        True,
        (bool,),
        "Send the nudge from a background thread of the process, so the commit does not wait "
        "for the broker; nudges due together are sent as one, and pending ones are sent when "
        "the process exits. Off: the commit sends it. (Not used with django-q2's ORM broker "
        "on the emitting database: its task is written inside the transaction.)",
    ),
    "NOTIFY": Option(
        False,
        (bool,),
        "PostgreSQL: emit() also sends NOTIFY, and one idle dispatch task per database "
        "listens for it until its DISPATCH_SECONDS are up, so new events start within "
        "milliseconds even where the broker polls (django-q2's ORM broker). Costs: that "
        "task holds a worker while it listens, and PostgreSQL serialises notifying commits.",
    ),
    "REGISTRY_GRACE_SECONDS": Option(
        300,
        (int, float),
        "Rolling deploys: how long a worker registry (the handlers and event versions one "
        "version of the code knows) counts as live after its dispatcher was last seen. Work "
        "only a live registry knows waits for it; work none knows is dead-lettered.",
        1,
    ),
    "RELAYS": Option(
        {},
        (dict,),
        "Relays: name -> {BACKEND, URL, EVENT_TYPES, ...}; each publishes the matching "
        "events to a broker as the delivery target relay:<name> (see Several services).",
    ),
    "SOURCES": Option(
        {},
        (dict,),
        "Sources: name -> {BACKEND, URL, ...}; manage.py eventbus_consume NAME (or the http "
        "view) stores what they receive in the inbox (see Several services).",
    ),
    "RETENTION": Option(
        None,
        (str, timedelta, type(None)),
        "How long finished events are kept: the sweep deletes older ones (with their "
        "deliveries and history) a chunk at a time, e.g. '30d' or '12h'; None keeps "
        "everything. Dead letters, live deliveries and streams' events are never pruned "
        "by it (manage.py eventbus_prune --streams does that).",
    ),
    "DATABASES": Option(
        ("default",), (list, tuple), "Database aliases the dispatcher and sweep serve."
    ),
}


class EventBusSettings:
    """Attribute access to ``settings.EVENTBUS`` merged over the defaults."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    @property
    def user_settings(self) -> dict[str, Any]:
        value = getattr(settings, "EVENTBUS", None)
        return value if isinstance(value, dict) else {}

    def __getattr__(self, name: str) -> Any:
        if name not in OPTIONS:
            raise AttributeError(f"Unknown EVENTBUS setting {name!r}")
        if name not in self._cache:
            self._cache[name] = self.user_settings.get(name, OPTIONS[name].default)
        return self._cache[name]

    def reload(self) -> None:
        self._cache.clear()


eventbus_settings = EventBusSettings()


@receiver(setting_changed)
def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == "EVENTBUS":
        eventbus_settings.reload()
