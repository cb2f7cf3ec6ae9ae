"""``EVENTBUS["RELAYS"]`` and ``EVENTBUS["SOURCES"]``, read and checked, and the relays'
handlers registered from them."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from ..conf import eventbus_settings

# Keys every relay / source understands; anything else is the backend's own option.
RELAY_KEYS = (
    "BACKEND",
    "URL",
    "EVENT_TYPES",
    "SOURCE",
    "MAX_ATTEMPTS",
    "HANDLER_TIMEOUT",
    "TIMEOUT",
)
SOURCE_KEYS = ("BACKEND", "URL", "DATABASE")

logger = logging.getLogger(__name__)

_installed: set[str] = set()  # the relay handlers install_relays() registered


def _entry(kind: str, name: str) -> dict[str, Any]:
    entries = getattr(eventbus_settings, kind)
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise ImproperlyConfigured(
            f"EVENTBUS[{kind!r}] has no entry {name!r} (configured: {known}); add "
            f'EVENTBUS["{kind}"]["{name}"] = {{"BACKEND": ..., "URL": ...}}'
        )
    options = entries[name]
    if not isinstance(options, dict) or not isinstance(options.get("BACKEND"), str):
        raise ImproperlyConfigured(
            f'EVENTBUS["{kind}"]["{name}"] must be a dict with a "BACKEND" string '
            f"(rabbitmq, nats, redis, http or a dotted path), got {options!r}"
        )
    return dict(options)


def relay_options(name: str) -> dict[str, Any]:
    options = _entry("RELAYS", name)
    patterns = options.setdefault("EVENT_TYPES", ("*",))
    if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
        raise ImproperlyConfigured(
            f'EVENTBUS["RELAYS"]["{name}"]["EVENT_TYPES"] is a list of fnmatch patterns of '
            f'event types (["shop.*"]), got {patterns!r}'
        )
    options["EVENT_TYPES"] = tuple(patterns)
    return options


def source_options(name: str) -> dict[str, Any]:
    options = _entry("SOURCES", name)
    options.setdefault("DATABASE", "default")
    return options


def uninstall_relays() -> None:
    """Unregister every handler ``install_relays()`` registered."""
    from ..registry import unregister

    for name in _installed:
        unregister(name)
    _installed.clear()


def install_relays() -> list[str]:
    """Register the handler ``relay:<name>`` of every configured relay; returns the names.

    A relay whose entry has errors is left out and logged: the system checks (``checks.py``)
    say what to fix, and stop the workers from starting until it is.
    Called from ``AppConfig.ready()``; call it again after changing ``RELAYS`` at run time
    (tests do)."""
    from ..events import Event
    from ..registry import HandlerSpec, register_spec
    from .checks import valid
    from .publish import relay_batch, relay_handler

    uninstall_relays()  # relays removed from the setting (or now invalid) go
    names = []
    relays = eventbus_settings.RELAYS if isinstance(eventbus_settings.RELAYS, dict) else {}
    for name, entry in relays.items():
        if not valid("RELAYS", name, entry):
            logger.error(
                'EVENTBUS["RELAYS"][%r] has errors and is not installed: run '
                "`manage.py check` for what to fix",
                name,
            )
            continue
        options = relay_options(name)
        register_spec(
            HandlerSpec(
                name=f"relay:{name}",
                func=relay_handler(name),
                event_cls=Event,
                is_async=False,
                event_types=options["EVENT_TYPES"],
                # One at a time per stream, in position order: per-stream order at the broker.
                ordered=True,
                max_attempts=options.get("MAX_ATTEMPTS"),
                timeout=options.get("HANDLER_TIMEOUT"),  # TIMEOUT is per broker call
                # A claimed batch is published together: one confirm wait per batch.
                batch=relay_batch(name),
            )
        )
        names.append(name)
        _installed.add(f"relay:{name}")
    return names
