"""Broker backends: ``BACKEND`` names one of these modules, or a dotted path to your own
module with a ``Publisher`` and/or ``Consumer`` class (see ``base.py``)."""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

from django.core.exceptions import ImproperlyConfigured

BUILT_IN = ("rabbitmq", "nats", "redis", "http")


def load_backend(backend: str) -> ModuleType:
    path = f"{__name__}.{backend}" if backend in BUILT_IN else backend
    try:
        return import_module(path)
    except (ImportError, ValueError, TypeError) as exc:  # also "" and ".x"
        extra = f" (pip install 'eventbus_app[{backend}]')" if backend in BUILT_IN else ""
        raise ImproperlyConfigured(
            f"EVENTBUS backend {backend!r} cannot be imported: {exc}{extra}. BACKEND is one of "
            f"{', '.join(BUILT_IN)} or the dotted path of a module with a Publisher or Consumer."
        ) from exc
