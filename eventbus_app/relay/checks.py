"""System checks of ``EVENTBUS["RELAYS"]`` and ``EVENTBUS["SOURCES"]``: every mistake named,
with what to write instead, by ``manage.py check`` (and before ``qcluster``, ``runserver``,
``eventbus_drain``, ``eventbus_consume`` start: an Error stops them). Workers that refuse
to start fan nothing out, so events wait in the outbox until the setting is fixed."""

from __future__ import annotations

import re
from types import ModuleType
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured

from ..conf import eventbus_settings
from .backends import BUILT_IN, load_backend
from .config import RELAY_KEYS, SOURCE_KEYS

NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def entry_messages(kind: str, name: Any, options: Any) -> list[CheckMessage]:
    """What is wrong with ``EVENTBUS[kind][name]`` (kind: "RELAYS" or "SOURCES")."""
    where = f'EVENTBUS["{kind}"][{name!r}]'
    relay = kind == "RELAYS"
    if not isinstance(name, str) or not NAME.match(name):
        return [
            Error(
                f"{where}: a {kind[:-1].lower()} name is letters, digits, '_', '.' or '-'.",
                hint="Rename it (relay names become handler names relay:<name>).",
                id="eventbus_app.E020",
            )
        ]
    if not isinstance(options, dict) or not isinstance(options.get("BACKEND"), str):
        return [
            Error(
                f'{where} must be a dict with a "BACKEND" string, got {options!r:.200}.',
                hint=f"BACKEND is one of {', '.join(BUILT_IN)} or the dotted path of a module.",
                id="eventbus_app.E021",
            )
        ]
    messages: list[CheckMessage] = []
    backend = options["BACKEND"]
    module: ModuleType | None = None
    try:
        module = load_backend(backend)
    except ImproperlyConfigured as exc:
        messages.append(Error(f"{where}: {exc}", id="eventbus_app.E022"))
    except Exception as exc:  # the module itself raised while it was imported
        messages.append(
            Error(
                f"{where}: importing backend {backend!r} raised {type(exc).__name__}: {exc}",
                id="eventbus_app.E022",
            )
        )
    wanted = "Publisher" if relay else "Consumer"
    needs_class = module is not None and not (backend == "http" and not relay)
    if needs_class and not isinstance(getattr(module, wanted, None), type):
        messages.append(
            Error(
                f"{where}: backend {backend!r} has no {wanted} class, so it cannot "
                f"{'publish' if relay else 'consume'}.",
                hint="See eventbus_app/relay/backends/base.py for the two classes.",
                id="eventbus_app.E023",
            )
        )
    if relay:
        patterns = options.get("EVENT_TYPES", ("*",))
        if isinstance(patterns, str) or not (
            isinstance(patterns, list | tuple) and all(isinstance(p, str) for p in patterns)
        ):
            messages.append(
                Error(
                    f"{where}['EVENT_TYPES'] must be a list of fnmatch patterns of event "
                    f"types, got {patterns!r:.200}.",
                    hint='For example ["shop.*", "accounts.UserRegistered"].',
                    id="eventbus_app.E024",
                )
            )
        elif not patterns:
            messages.append(
                Warning(
                    f"{where}['EVENT_TYPES'] is empty: the relay publishes nothing.",
                    hint='Leave it out for every event type, or list patterns ("shop.*").',
                    id="eventbus_app.W032",
                )
            )
        else:
            messages += _unmatched(where, list(patterns))
        attempts = options.get("MAX_ATTEMPTS")
        if attempts is not None and (
            not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1
        ):
            messages.append(
                Error(
                    f"{where}['MAX_ATTEMPTS'] must be an int >= 1, got {attempts!r}.",
                    id="eventbus_app.E025",
                )
            )
    for key in ("TIMEOUT", "HANDLER_TIMEOUT") if relay else ():
        if key in options and not _number(options[key]):
            messages.append(
                Error(
                    f"{where}[{key!r}] must be a number of seconds > 0, got {options[key]!r}.",
                    id="eventbus_app.E025",
                )
            )
    if (
        relay
        and _number(options.get("TIMEOUT", 10.0))
        and _number(options.get("HANDLER_TIMEOUT", eventbus_settings.HANDLER_TIMEOUT))
    ):
        call = float(options.get("TIMEOUT", 10.0))
        limit = float(options.get("HANDLER_TIMEOUT", eventbus_settings.HANDLER_TIMEOUT))
        if call + 1 >= limit:
            messages.append(
                Warning(
                    f"{where}: a broker call may take TIMEOUT ({call:g} s), which leaves no "
                    f"room in the relay's time limit ({limit:g} s, HANDLER_TIMEOUT): a backend "
                    "that sends message by message (http) then sends one per batch, and a "
                    "batch that fails as a whole cannot be split to find the message at fault.",
                    hint="Keep TIMEOUT well under HANDLER_TIMEOUT (defaults: 10 and 30).",
                    id="eventbus_app.W033",
                )
            )
    if backend == "http" and relay:
        size = options.get("BATCH_BYTES", 1)
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            messages.append(
                Error(
                    f"{where}['BATCH_BYTES'] must be an int >= 1 (bytes), got {size!r}.",
                    id="eventbus_app.E025",
                )
            )
        if not isinstance(options.get("BATCHED", False), bool):
            messages.append(
                Error(
                    f"{where}['BATCHED'] must be True or False, got {options['BATCHED']!r}.",
                    id="eventbus_app.E025",
                )
            )
    if backend == "http" and relay and not options.get("URL"):
        messages.append(
            Error(
                f"{where} has no URL: the http backend POSTs to the receiving service's "
                "source view.",
                hint='"URL": "https://billing.internal/eventbus/<source name>/"',
                id="eventbus_app.E026",
            )
        )
    if backend == "http" and not options.get("SECRET"):
        if relay:
            messages.append(
                Warning(
                    f"{where} has no SECRET: its requests go unsigned, and an eventbus http "
                    "source refuses unsigned requests (401).",
                    hint="Give the relay and the receiving source the same SECRET.",
                    id="eventbus_app.W030",
                )
            )
        else:
            messages.append(
                Error(
                    f"{where} has no SECRET: the source view refuses every request (503) "
                    "rather than store unsigned input.",
                    hint="Give it the SECRET the sending relay signs with.",
                    id="eventbus_app.E027",
                )
            )
    if not relay:
        database = options.get("DATABASE", "default")
        if database not in settings.DATABASES:
            messages.append(
                Error(
                    f"{where}['DATABASE'] is {database!r}, which is not in DATABASES.",
                    hint="The alias of the database whose outbox is this source's inbox.",
                    id="eventbus_app.E028",
                )
            )
    own = getattr(module, "RELAY_OPTIONS" if relay else "SOURCE_OPTIONS", None)
    if own is not None:
        known = set(RELAY_KEYS if relay else SOURCE_KEYS) | set(own)
        for key in sorted(set(options) - known, key=str):
            messages.append(
                Warning(
                    f"{where} has a key {key!r} that neither eventbus_app nor the "
                    f"{backend} backend reads.",
                    hint=f"Known keys: {', '.join(sorted(known))}.",
                    id="eventbus_app.W031",
                )
            )
    return messages


def _unmatched(where: str, patterns: list[str]) -> list[CheckMessage]:
    """Patterns that match no event class this process knows: a typo relays nothing."""
    import fnmatch

    from ..events import registered_event_types

    known = registered_event_types()
    if not known:
        return []
    return [
        Warning(
            f"{where}['EVENT_TYPES'] pattern {pattern!r} matches no event type this "
            "project declares.",
            hint=f"Known event types include: {', '.join(sorted(known)[:8])}. (Ignore this if "
            "the classes are in modules imported later than startup.)",
            id="eventbus_app.W032",
        )
        for pattern in patterns
        if not any(fnmatch.fnmatchcase(t, pattern) for t in known)
    ]


def valid(kind: str, name: Any, options: Any) -> bool:
    return not any(m.is_serious() for m in entry_messages(kind, name, options))


@register(Tags.compatibility)
def check_relays_and_sources(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    for kind in ("RELAYS", "SOURCES"):
        entries = getattr(eventbus_settings, kind)
        if not isinstance(entries, dict):
            continue  # eventbus_app.E003 says so
        for name, options in entries.items():
            messages += entry_messages(kind, name, options)
    return messages
