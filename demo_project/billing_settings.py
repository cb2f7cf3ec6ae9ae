"""Settings of the demo's second service, billing: its own SQLite database, its own
django-q2 cluster, and a source named ``shop`` that receives the shop's events.

Run it as a project of its own: ``DJANGO_SETTINGS_MODULE=demo_project.billing_settings
python -m django runserver 127.0.0.1:8001`` (``manage.py demo`` does that for you).
"""

from __future__ import annotations

import os
from pathlib import Path

from demo_project import bus

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = os.environ.get("DEMO_BILLING_SECRET_KEY", "billing-demo-only-not-secret")
DEBUG = os.environ.get("DEMO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "demo_project.billing_urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Both services run on 127.0.0.1: cookies are per host, not per port, so each needs its
# own session cookie name or logging in to one logs you out of the other.
SESSION_COOKIE_NAME = "billing_sessionid"
CSRF_COOKIE_NAME = "billing_csrftoken"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_q",
    "eventbus_app",
    "demo_project.billing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# Its own database: nothing is shared with the shop but the events it receives.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DEMO_BILLING_DB", str(BASE_DIR / "billing.sqlite3")),
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }
}

Q_CLUSTER = {
    "name": "eventbus-demo-billing",
    "orm": "default",
    "workers": 2,
    "timeout": 60,
    "retry": 120,
    "max_attempts": 1,
    "ack_failures": True,
    "save_limit": 100,
    "catch_up": False,
    "poll": 0.1,
    "log_level": "WARNING",
}

EVENTBUS = {
    "MAX_ATTEMPTS": 4,
    "RETRY_BACKOFF": 2,
    "RETRY_BACKOFF_MAX": 60,
    "REDACT_FIELDS": ["email"],
    # The shop's events arrive here: over http, the view at /eventbus/shop/ (billing_urls.py)
    # checks each request's signature; with a broker, `manage.py eventbus_consume shop`.
    "SOURCES": {"shop": bus.source()},
}

# The shop, for the pages' links back to it.
DEMO_SHOP_URL = bus.shop_url()

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "brief": {
            "()": "demo_project.demo.logs.OneLineFormatter",
            # Both services log to the demo's one console: say which one speaks.
            "format": "%(asctime)s billing %(levelname)s %(name)s: %(message)s",
            "datefmt": "%H:%M:%S",
        }
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "brief"}},
    "loggers": {
        "eventbus_app": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "django_q": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}
