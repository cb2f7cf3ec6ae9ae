from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.utils.module_loading import autodiscover_modules


class EventBusConfig(AppConfig):
    name = "eventbus_app"
    label = "eventbus_app"
    verbose_name = "Event bus"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .relay import checks as relay_checks  # noqa: F401  (those of RELAYS, SOURCES)

        autodiscover_modules("handlers")
        from .relay import install_relays

        install_relays()  # one handler relay:<name> per EVENTBUS["RELAYS"] entry
        post_migrate.connect(_create_schedule, sender=self)


def _create_schedule(*, using: str, apps: Any = None, **kwargs: Any) -> None:
    from django.conf import settings

    from .tasks import ensure_schedule

    if "django_q" in {a.split(".")[0] for a in settings.INSTALLED_APPS}:
        ensure_schedule(using)
