"""Settings of the demo project: SQLite and django-q2's ORM broker, nothing else to run."""

from __future__ import annotations

import os
from pathlib import Path

from demo_project import bus

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = os.environ.get("DEMO_SECRET_KEY", "demo-only-not-secret")
DEBUG = os.environ.get("DEMO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "demo_project.urls"
WSGI_APPLICATION = "demo_project.wsgi.application"
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
    "demo_project.demo",
    "demo_project.accounts",
    "demo_project.orders",
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
        "DIRS": [BASE_DIR / "templates"],
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

# SQLite for one machine: WAL lets readers run beside the writer, IMMEDIATE makes
# concurrent writers wait their turn (up to "timeout" seconds) instead of failing.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DEMO_DB", str(BASE_DIR / "demo.sqlite3")),
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }
}

# django-q2 with its ORM broker: the queue lives in the same SQLite file.
Q_CLUSTER = {
    "name": "eventbus-demo",
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
    "REDACT_FIELDS": ["password", "email"],
    # The second service, billing (billing_settings.py, its own database), receives the
    # sign-ups, orders and refunds: over http to its source view, signed with a secret both
    # sides know, or through the broker of `manage.py demo --broker ...` (see bus.py).
    "RELAYS": {"billing": bus.relay()},
}

# Billing's own web server, for the home page's link to it.
DEMO_BILLING_URL = bus.billing_url()

# Welcome emails land as files; the demo's Mailbox page shows them.
EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
EMAIL_FILE_PATH = os.environ.get("DEMO_MAIL_DIR", str(BASE_DIR / "sent_mail"))

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "brief": {
            "()": "demo_project.demo.logs.OneLineFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s: %(message)s",
            "datefmt": "%H:%M:%S",
        }
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "brief"}},
    "loggers": {
        "eventbus_app": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "django_q": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}
