"""System checks: the EVENTBUS setting, and django-q2 settings that would break guarantees."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from .conf import OPTIONS, eventbus_settings
from .dispatch.execute import ALARM_MARGIN, lease_margin


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    value = getattr(settings, "EVENTBUS", {})
    if not isinstance(value, dict):
        return [
            Error(
                f"EVENTBUS must be a dict, got {type(value).__name__}.",
                hint="Set EVENTBUS = {...} with the keys listed in the README, or remove it.",
                id="eventbus_app.E001",
            )
        ]
    for key, given in value.items():
        option = OPTIONS.get(key)
        if option is None:
            errors.append(
                Error(
                    f"EVENTBUS has an unknown key {key!r}.",
                    hint=f"Known keys: {', '.join(sorted(OPTIONS))}.",
                    id="eventbus_app.E002",
                )
            )
            continue
        bad_type = not isinstance(given, option.types) or (
            isinstance(given, bool) and bool not in option.types
        )
        if bad_type:
            expected = " or ".join(t.__name__ for t in option.types)
            errors.append(
                Error(
                    f"EVENTBUS[{key!r}] must be {expected}, got {type(given).__name__} {given!r}.",
                    hint=f"{option.doc} Default: {option.default!r}.",
                    id="eventbus_app.E003",
                )
            )
        elif option.minimum is not None and given < option.minimum:
            errors.append(
                Error(
                    f"EVENTBUS[{key!r}] must be >= {option.minimum}, got {given!r}.",
                    hint=f"{option.doc} Default: {option.default!r}.",
                    id="eventbus_app.E004",
                )
            )
        elif option.types == (list, tuple) and not all(isinstance(v, str) for v in given):
            errors.append(
                Error(
                    f"EVENTBUS[{key!r}] must hold strings, got {given!r}.",
                    hint=option.doc,
                    id="eventbus_app.E003",
                )
            )
    if not errors:
        unknown = [a for a in eventbus_settings.DATABASES if a not in settings.DATABASES]
        if unknown:
            errors.append(
                Error(
                    f"EVENTBUS['DATABASES'] names {unknown}, which are not in DATABASES.",
                    id="eventbus_app.E005",
                )
            )
        if eventbus_settings.NOTIFY:
            errors += notify_messages(settings.DATABASES, eventbus_settings.DATABASES)
        if eventbus_settings.RETENTION is not None:
            from .retention import parse_age

            try:
                parse_age(eventbus_settings.RETENTION, "EVENTBUS['RETENTION']")
            except ValueError as exc:
                errors.append(
                    Error(
                        str(exc),
                        hint="Use an age such as '30d', or None to keep events for ever.",
                        id="eventbus_app.E006",
                    )
                )
    return errors


def notify_messages(databases: dict[str, Any], aliases: list[str]) -> list[CheckMessage]:
    """EVENTBUS['NOTIFY'] is on: warn about served databases that cannot NOTIFY."""
    not_pg = [
        a
        for a in aliases
        if a in databases and not databases[a].get("ENGINE", "").endswith("postgresql")
    ]
    if not not_pg:
        return []
    return [
        Warning(
            f"EVENTBUS['NOTIFY'] is on, but {not_pg} are not PostgreSQL: events there wake "
            "the dispatcher through the nudge and the sweep only.",
            hint="NOTIFY is a PostgreSQL feature; leave it off elsewhere.",
            id="eventbus_app.W016",
        )
    ]


@register(Tags.compatibility)
def check_django_q(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """django-q2 options that would run a handler twice, or lose or stall work."""
    messages: list[CheckMessage] = []
    if "django_q" not in {a.split(".")[0] for a in settings.INSTALLED_APPS}:
        return [
            Error(
                "eventbus_app needs django-q2: 'django_q' is not in INSTALLED_APPS.",
                hint="Add 'django_q' to INSTALLED_APPS and run migrate.",
                id="eventbus_app.E010",
            )
        ]
    q = getattr(settings, "Q_CLUSTER", None)
    if not isinstance(q, dict):
        return [
            Warning(
                "Q_CLUSTER is not set: django-q2 falls back to a Redis broker on localhost.",
                hint="Set Q_CLUSTER, e.g. {'orm': 'default', 'timeout': 60, 'retry': 120}.",
                id="eventbus_app.W010",
            )
        ]
    timeout, retry = q.get("timeout"), q.get("retry", 60)
    uses_orm = "orm" in q
    if q.get("sync"):
        messages.append(
            Warning(
                "Q_CLUSTER['sync'] is True: dispatch runs inside the request that commits.",
                hint="Only for tests and debugging; workers are what make handlers background.",
                id="eventbus_app.W011",
            )
        )
    if timeout is None:
        messages.append(
            Warning(
                "Q_CLUSTER has no 'timeout': a handler stuck where HANDLER_TIMEOUT cannot "
                "interrupt it (inside a C call) holds its worker forever.",
                hint="Set 'timeout' (seconds) below 'retry' and above DISPATCH_SECONDS + "
                "HANDLER_TIMEOUT.",
                id="eventbus_app.W012",
            )
        )
    else:
        if uses_orm and timeout >= retry:
            messages.append(
                Error(
                    f"Q_CLUSTER 'timeout' ({timeout}) is not below 'retry' ({retry}): the ORM "
                    "broker hands a still-running task to a second worker.",
                    hint="Set 'retry' larger than 'timeout'.",
                    id="eventbus_app.E011",
                )
            )
        if timeout <= eventbus_settings.DISPATCH_SECONDS:
            messages.append(
                Warning(
                    f"Q_CLUSTER 'timeout' ({timeout}) is not above EVENTBUS['DISPATCH_SECONDS'] "
                    f"({eventbus_settings.DISPATCH_SECONDS}): dispatch tasks get killed "
                    "mid-batch.",
                    hint="Raise 'timeout' or lower DISPATCH_SECONDS.",
                    id="eventbus_app.W014",
                )
            )
        longest = longest_handler_timeout()
        room = timeout - eventbus_settings.DISPATCH_SECONDS - ALARM_MARGIN
        if timeout > eventbus_settings.DISPATCH_SECONDS and longest[0] > room:
            messages.append(
                Warning(
                    f"Q_CLUSTER 'timeout' ({timeout}) leaves {room:g} s after "
                    f"EVENTBUS['DISPATCH_SECONDS'] ({eventbus_settings.DISPATCH_SECONDS}), less "
                    f"than the {longest[0]:g} s timeout of {longest[1]}: deliveries that do not "
                    "fit in what is left of a dispatch task are given back unrun, and the "
                    "first of a task is cut short.",
                    hint="Raise Q_CLUSTER 'timeout', or lower DISPATCH_SECONDS or the handler "
                    "timeout.",
                    id="eventbus_app.W017",
                )
            )
        messages += sweep_messages(timeout, longest)
    if q.get("save_limit", 250) == 0:
        messages.append(
            Warning(
                "Q_CLUSTER 'save_limit' is 0: django-q2 keeps every task result forever and "
                "each dispatch nudge adds one.",
                hint="Use a positive save_limit, or -1 to keep no successful results.",
                id="eventbus_app.W015",
            )
        )
    return messages


def sweep_messages(timeout: float, longest: tuple[float, str]) -> list[CheckMessage]:
    """The sweep, one django-q2 task, dispatches on every served database in turn, each for
    up to DISPATCH_SECONDS (and a batch in progress may run one handler timeout longer):
    that must fit in the task's timeout, or the worker is killed mid-batch and the later
    databases are never swept. (With one database W017 says the same.)"""
    aliases = list(eventbus_settings.DATABASES)
    seconds = float(eventbus_settings.DISPATCH_SECONDS)
    needed = len(aliases) * seconds + longest[0] + ALARM_MARGIN
    if len(aliases) < 2 or timeout >= needed:
        return []
    return [
        Warning(
            f"Q_CLUSTER 'timeout' ({timeout}) is shorter than a sweep can take: "
            f"{len(aliases)} databases in EVENTBUS['DATABASES'] ({', '.join(aliases)}) * "
            f"DISPATCH_SECONDS ({seconds:g}) + the {longest[0]:g} s timeout of {longest[1]} "
            f"+ {ALARM_MARGIN:g} s = {needed:g} s. django-q2 kills the sweep before it has "
            "served the last of them.",
            hint=f"Raise Q_CLUSTER 'timeout' to at least {needed:g} (and 'retry' above it), "
            "or lower DISPATCH_SECONDS.",
            id="eventbus_app.W022",
        )
    ]


@register(Tags.compatibility)
def check_outbox_databases(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    return outbox_database_messages(settings.DATABASES, eventbus_settings.DATABASES)


def outbox_database_messages(databases: dict[str, Any], served: Any) -> list[CheckMessage]:
    """Databases that can hold outbox rows (the router lets eventbus_app migrate there, or
    sends its writes there) but that the sweep does not serve: an event there whose nudge is
    lost waits forever."""
    from django.db import router

    from .models import OutboxEvent

    if not isinstance(served, list | tuple):
        return []  # E003 says what is wrong with it
    try:
        writable = {a for a in databases if router.allow_migrate_model(a, OutboxEvent)}
        writable.add(router.db_for_write(OutboxEvent))
    except Exception:  # a router that fails here fails Django's own checks too
        return []
    unserved = sorted(a for a in writable if a in databases and a not in served)
    if not unserved:
        return []
    return [
        Warning(
            f"The router lets eventbus_app write events to {unserved}, which "
            f"EVENTBUS['DATABASES'] ({list(served)}) does not name: the sweep never looks "
            "there, so an event emitted there whose nudge is lost (a broker outage, a "
            "worker that died) is never dispatched.",
            hint=f"Add {unserved} to EVENTBUS['DATABASES'], or make your router's "
            "allow_migrate() refuse eventbus_app on them.",
            id="eventbus_app.W021",
        )
    ]


def longest_handler_timeout() -> tuple[float, str]:
    """The longest run any handler may take, and whose it is."""
    from .registry import all_handlers

    longest = (float(eventbus_settings.HANDLER_TIMEOUT), "EVENTBUS['HANDLER_TIMEOUT']")
    for spec in all_handlers().values():
        if spec.timeout is not None and spec.timeout > longest[0]:
            longest = (float(spec.timeout), f"handler {spec.name}")
    return longest


@register()
def check_handler_timeouts(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """A run must fit in a lease; otherwise it is cut short and batches shrink to one."""
    try:
        longest = longest_handler_timeout()
        lease = float(eventbus_settings.LEASE_SECONDS)
    except (TypeError, ValueError):
        return []  # a wrong type is E003's message
    room = lease - lease_margin()
    if longest[0] <= room:
        return []
    return [
        Warning(
            f"The {longest[0]:g} s timeout of {longest[1]} does not fit in "
            f"EVENTBUS['LEASE_SECONDS'] ({lease:g}, less {lease_margin():g} s kept for "
            "recording the outcome): such runs are cut to the lease and run one per batch.",
            hint="Raise LEASE_SECONDS or lower the timeout.",
            id="eventbus_app.W013",
        )
    ]


@register(Tags.database)
def check_sqlite(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    return sqlite_messages(settings.DATABASES, eventbus_settings.DATABASES)


def sqlite_messages(databases: dict[str, Any], aliases: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    for alias in aliases:
        db: dict[str, Any] = databases.get(alias, {})
        if "sqlite" not in db.get("ENGINE", ""):
            continue
        options = db.get("OPTIONS", {})
        if str(options.get("transaction_mode", "")).upper() != "IMMEDIATE":
            messages.append(
                Warning(
                    f"SQLite database {alias!r} does not use transaction_mode IMMEDIATE: "
                    "concurrent workers hit 'database is locked' instead of waiting.",
                    hint="OPTIONS: {'transaction_mode': 'IMMEDIATE', 'timeout': 20, "
                    "'init_command': 'PRAGMA journal_mode=WAL;'}",
                    id="eventbus_app.W020",
                )
            )
    return messages
