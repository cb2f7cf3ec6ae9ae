"""``EVENTBUS["RELAYS"]`` and ``EVENTBUS["SOURCES"]``, read and checked, and the relays'
handlers registered from them."""

from __future__ import annotations

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


def install_relays() -> list[str]:
    """Register the handler ``relay:<name>`` of every configured relay; returns the names.

    Called from ``AppConfig.ready()``; call it again after changing ``RELAYS`` at run time
    (tests do)."""
    from ..events import Event
    from ..registry import HandlerSpec, register_spec
    from .publish import relay_handler

    names = []
    for name in eventbus_settings.RELAYS:
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
            )
        )
        names.append(name)
    return names
