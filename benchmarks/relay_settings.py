"""Settings of the relay benchmark's two services (``python -m benchmarks.relay`` sets the
environment).

``BENCH_RELAY_SERVICE``: ``a`` (the sender: its database is ``default``; the runner, which
is service A, also reaches B's database as ``b`` to read arrivals) or ``b`` (the receiver:
its own database is ``default``). ``BENCH_DB`` (sqlite|postgres), ``BENCH_SUFFIX`` (keeps
parallel runs apart: databases and django-q2 cluster names), ``BENCH_QBROKER``
(redis|orm: django-q2's broker), ``BENCH_RELAY_EVENTBUS`` (a JSON object merged over
``EVENTBUS``: the relay or the source under test, ``NUDGE``).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

SUFFIX = os.environ.get("BENCH_SUFFIX", "bench")
DB_KIND = os.environ.get("BENCH_DB", "sqlite")
SERVICE = os.environ.get("BENCH_RELAY_SERVICE", "a")
QBROKER = os.environ.get("BENCH_QBROKER", "orm")
RELAYBENCH_SERVICE = SERVICE  # read by benchmarks.relayapp.handlers

SECRET_KEY = "benchmarks-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "benchmarks.relay_urls"
# CommonMiddleware sets Content-Length, which lets runserver keep connections alive.
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django_q",
    "eventbus_app",
    "benchmarks.relayapp",
]


def database_name(service: str) -> str:
    if DB_KIND == "postgres":
        return f"bench_relay_{service}_{SUFFIX}"
    return os.path.join(tempfile.gettempdir(), f"bench_relay_{service}_{SUFFIX}.sqlite3")


def _database(service: str) -> dict[str, Any]:
    if DB_KIND == "postgres":
        return {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": os.environ.get("EVENTBUS_PG_HOST", "127.0.0.1"),
            "PORT": os.environ.get("EVENTBUS_PG_PORT", "5432"),
            "USER": os.environ.get("EVENTBUS_PG_USER", "postgres"),
            "NAME": database_name(service),
            "CONN_MAX_AGE": 600,
        }
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": database_name(service),
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
        "CONN_MAX_AGE": 600,
    }


DATABASES = {"default": _database(SERVICE)}
if SERVICE == "a":
    DATABASES["b"] = _database("b")

# django-q2 as in benchmarks/settings.py (2 workers, its default poll); one cluster name per
# service, so A's and B's workers never take each other's tasks.
Q_CLUSTER: dict[str, object] = {
    "name": f"eventbus-relaybench-{SERVICE}-{SUFFIX}",
    "workers": 2,
    "timeout": 60,
    "retry": 120,
    "max_attempts": 1,
    "save_limit": 10,
    "catch_up": False,
    "daemonize_workers": False,
    "log_level": "WARNING",
}
if QBROKER == "redis":
    Q_CLUSTER["redis"] = {
        "host": "127.0.0.1",
        "port": int(os.environ.get("BENCH_REDIS_PORT", "6379")),
        "db": 0,
    }
else:
    Q_CLUSTER["orm"] = "default"

EVENTBUS: dict[str, object] = {"LEASE_SECONDS": 120, "DISPATCH_SECONDS": 10}
EVENTBUS.update(json.loads(os.environ.get("BENCH_RELAY_EVENTBUS") or "{}"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django_q": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}

# W021: service A reaches B's database as "b" only to read the probes' arrival times; B's own
# workers serve that database as their "default".
SILENCED_SYSTEM_CHECKS = ["eventbus_app.W021"]
