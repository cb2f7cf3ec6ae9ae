"""Settings of the benchmark project (``python -m benchmarks`` sets the environment).

``BENCH_DB`` (sqlite|postgres), ``BENCH_BROKER`` (orm|redis), ``BENCH_DB_NAME`` (the
database the runner created), ``BENCH_SUFFIX`` (keeps parallel runs apart: database,
django-q2 cluster and queue names), ``BENCH_PEER=1`` adds django-domain-events,
``BENCH_PROCRASTINATE=1`` adds procrastinate (PostgreSQL only), ``BENCH_NOTIFY=1`` turns
``EVENTBUS['NOTIFY']`` on.
PostgreSQL is reached on ``EVENTBUS_PG_HOST``/``EVENTBUS_PG_PORT`` (127.0.0.1:5432) as
``EVENTBUS_PG_USER`` (postgres); Redis on ``BENCH_REDIS_PORT`` (6379).
"""

from __future__ import annotations

import json
import os
import tempfile

SUFFIX = os.environ.get("BENCH_SUFFIX", "bench")
DB_KIND = os.environ.get("BENCH_DB", "sqlite")
BROKER = os.environ.get("BENCH_BROKER", "orm")
PEER = os.environ.get("BENCH_PEER") == "1"
# procrastinate (the second peer) needs PostgreSQL.
PROCRASTINATE = os.environ.get("BENCH_PROCRASTINATE") == "1" and DB_KIND == "postgres"

SECRET_KEY = "benchmarks-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS: list[str] = []
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django_q",
    "eventbus_app",
    "benchmarks.benchapp",
]
if PEER:
    INSTALLED_APPS.append("django_domain_events")
if PROCRASTINATE:
    INSTALLED_APPS.append("procrastinate.contrib.django")

if DB_KIND == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": os.environ.get("EVENTBUS_PG_HOST", "127.0.0.1"),
            "PORT": os.environ.get("EVENTBUS_PG_PORT", "5432"),
            "USER": os.environ.get("EVENTBUS_PG_USER", "postgres"),
            "NAME": os.environ.get("BENCH_DB_NAME", f"bench_eventbus_{SUFFIX}"),
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get(
                "BENCH_DB_NAME",
                os.path.join(tempfile.gettempdir(), f"bench_eventbus_{SUFFIX}.sqlite3"),
            ),
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }

# django-q2 as a user would configure it: its defaults (poll 0.2 s, successes saved),
# two workers.
Q_CLUSTER: dict[str, object] = {
    "name": f"eventbus-bench-{SUFFIX}",
    "workers": 2,
    "timeout": 60,
    "retry": 120,
    "max_attempts": 1,
    "save_limit": 0,  # keep every success: the baseline's completions are counted there
    "catch_up": False,
    "daemonize_workers": False,
    "log_level": "WARNING",
}
if BROKER == "redis":
    Q_CLUSTER["redis"] = {
        "host": "127.0.0.1",
        "port": int(os.environ.get("BENCH_REDIS_PORT", "6379")),
        "db": 0,
    }
else:
    Q_CLUSTER["orm"] = "default"

EVENTBUS: dict[str, object] = {
    "LEASE_SECONDS": 120,
    "DISPATCH_SECONDS": 10,
    "NOTIFY": os.environ.get("BENCH_NOTIFY") == "1",  # the latency run's second cluster
}
# ``BENCH_EVENTBUS`` (a JSON object) is merged over EVENTBUS, for runs of other settings
# (e.g. '{"HANDLER_SYNCHRONOUS_COMMIT": false}').
EVENTBUS.update(json.loads(os.environ.get("BENCH_EVENTBUS") or "{}"))

DJANGO_DOMAIN_EVENTS = {
    "WARN_OUTSIDE_ATOMIC": False,
    "WAKE": "notify" if DB_KIND == "postgres" else "poll",
    "POLL_SECONDS": 0.2,
    "RELAY_PRUNE": False,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django_q": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}

# W015 warns about save_limit 0; here it is deliberate (baseline completions are counted).
SILENCED_SYSTEM_CHECKS = ["eventbus_app.W015"]

# Workers keep their database connection (django-q2 otherwise reconnects for every task);
# this applies to the baseline's tasks as much as to the dispatcher.
for _db in DATABASES.values():
    _db["CONN_MAX_AGE"] = 600
