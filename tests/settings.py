"""Settings for the test suite.

SQLite by default; ``EVENTBUS_TEST_DB=postgres`` switches to PostgreSQL on 127.0.0.1:5432
(``EVENTBUS_PG_HOST``/``EVENTBUS_PG_PORT``/``EVENTBUS_PG_USER`` override). The test
database is a file (SQLite) or a real database, so worker subprocesses started by tests can
reach it: they get its name through ``EVENTBUS_DB_NAME``. ``EVENTBUS_TEST_SUFFIX`` keeps
parallel runs on one machine apart (database names, django-q2 cluster and queue names).
``EVENTBUS_TEST_BROKER=redis`` makes django-q2 use Redis on 127.0.0.1:6379
(``EVENTBUS_TEST_REDIS_PORT`` overrides the port). ``EVENTBUS_TEST_SETTINGS`` (a JSON object)
is merged over ``EVENTBUS``: the reliability suite gives its workers short leases that way
(``EVENTBUS_TEST_Q_CLUSTER`` does the same for ``Q_CLUSTER``).
"""

from __future__ import annotations

import json
import os
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUFFIX = os.environ.get("EVENTBUS_TEST_SUFFIX", "main")
DB_KIND = os.environ.get("EVENTBUS_TEST_DB", "sqlite")
BROKER = os.environ.get("EVENTBUS_TEST_BROKER", "orm")

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.urls"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_q",
    "eventbus_app",
    "tests.testapp",
    # The demo project's apps: tests/test_demo.py and the browser tests use them.
    "demo_project.demo",
    "demo_project.accounts",
    "demo_project.orders",
    "tests.reliability",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [os.path.join(REPO, "demo_project", "templates")],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
STATIC_URL = "/static/"

if DB_KIND == "postgres":
    _test_name = f"test_eventbus_{SUFFIX}"
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": os.environ.get("EVENTBUS_PG_HOST", "127.0.0.1"),
            "PORT": os.environ.get("EVENTBUS_PG_PORT", "5432"),
            "USER": os.environ.get("EVENTBUS_PG_USER", "postgres"),
            "NAME": os.environ.get("EVENTBUS_DB_NAME", "postgres"),
            "TEST": {"NAME": _test_name},
        }
    }
else:
    _test_name = os.path.join(tempfile.gettempdir(), f"eventbus_test_{SUFFIX}.sqlite3")
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("EVENTBUS_DB_NAME", _test_name),
            "TEST": {"NAME": _test_name},
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }

# A second database: emit() and the dispatcher work on the caller's alias.
DATABASES["other"] = dict(DATABASES["default"])
if DB_KIND == "postgres":
    DATABASES["other"]["TEST"] = {"NAME": f"{_test_name}_other"}
else:
    _other = os.path.join(tempfile.gettempdir(), f"eventbus_test_other_{SUFFIX}.sqlite3")
    DATABASES["other"].update(NAME=_other, TEST={"NAME": _other})

Q_CLUSTER: dict[str, object] = {
    "name": f"eventbus-test-{SUFFIX}",
    "workers": 2,
    "timeout": 30,
    "retry": 60,
    "max_attempts": 1,
    "ack_failures": True,
    "save_limit": -1,
    "catch_up": False,
    "poll": float(os.environ.get("EVENTBUS_TEST_POLL", "0.05")),
    "guard_cycle": 0.5,
    "daemonize_workers": False,
}
if BROKER == "redis":
    Q_CLUSTER["redis"] = {
        "host": "127.0.0.1",
        "port": int(os.environ.get("EVENTBUS_TEST_REDIS_PORT", "6379")),
        "db": 0,
    }
else:
    Q_CLUSTER["orm"] = "default"
# ``EVENTBUS_TEST_Q_CLUSTER`` (a JSON object) is merged over Q_CLUSTER: the isolation
# scenarios run qcluster with a short task timeout that way.
Q_CLUSTER.update(json.loads(os.environ.get("EVENTBUS_TEST_Q_CLUSTER") or "{}"))

EVENTBUS = {
    "RETRY_BACKOFF": float(os.environ.get("EVENTBUS_TEST_RETRY_BACKOFF", "0")),
    "LEASE_SECONDS": 60,
    "DISPATCH_SECONDS": 5,
    # Fits in django-q2's 30 s task timeout after DISPATCH_SECONDS (check W017).
    "HANDLER_TIMEOUT": 10,
}
EVENTBUS.update(json.loads(os.environ.get("EVENTBUS_TEST_SETTINGS") or "{}"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django_q": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}

# The "other" database is served by hand in the tests that use it (drain(using="other")),
# not by the sweep: W021 would otherwise be printed by every command the tests run.
SILENCED_SYSTEM_CHECKS = ["eventbus_app.W021"]
