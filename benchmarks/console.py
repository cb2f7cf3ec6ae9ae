"""``python -m benchmarks.console``: time every page of the admin console on a large table.

Creates (once) a PostgreSQL database ``bench_console_$BENCH_SUFFIX`` with 1,000,000 events
and 4,000,000 deliveries inserted with SQL (20 event types, 8 handlers, 2 % dead letters in
5 exception classes, 0.5 % failed, 0.5 % pending, their attempt history, finished times
spread over 30 days), then requests each console page through Django's test client as a
superuser, with ``REDACT_FIELDS`` on, and prints the median and the slowest of 5 requests
after a warm-up (rendering included). ``--reload`` inserts the rows again. Options:
``--events N`` (default 1,000,000; four deliveries each), ``--repeat N``, ``--json PATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import django
from django.conf import settings

SUFFIX = os.environ.get("BENCH_SUFFIX", "bench")
DB_NAME = f"bench_console_{SUFFIX}"
HANDLERS = 8
TYPES = 20
ERRORS = ["ConnectionError", "TimeoutError", "ValueError", "KeyError", "PermissionDenied"]


def configure() -> None:
    settings.configure(
        SECRET_KEY="benchmarks-only-not-secret",
        DEBUG=False,
        USE_TZ=True,
        TIME_ZONE="UTC",
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=__name__,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        INSTALLED_APPS=[
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
            "django_q",
            "eventbus_app",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ],
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages",
                    ]
                },
            }
        ],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "HOST": os.environ.get("EVENTBUS_PG_HOST", "127.0.0.1"),
                "PORT": os.environ.get("EVENTBUS_PG_PORT", "5432"),
                "USER": os.environ.get("EVENTBUS_PG_USER", "postgres"),
                "NAME": DB_NAME,
            }
        },
        Q_CLUSTER={"name": f"console-{SUFFIX}", "orm": "default", "timeout": 60, "retry": 120},
        EVENTBUS={"REDACT_FIELDS": ["password", "email"]},
        STATIC_URL="/static/",
    )


def urls() -> list[Any]:
    from django.contrib import admin
    from django.urls import path

    return [path("admin/", admin.site.urls)]


def __getattr__(name: str) -> Any:  # ROOT_URLCONF is this module; built after setup()
    if name == "urlpatterns":
        return urls()
    raise AttributeError(name)


def create_database() -> None:
    import psycopg

    db: dict[str, Any] = settings.DATABASES["default"]
    conn = psycopg.connect(
        host=db["HOST"],
        port=db["PORT"],
        user=db["USER"],
        dbname="postgres",
        autocommit=True,
    )
    with conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')


def load(events: int) -> None:
    """Insert the rows with SQL, a few statements in all (minutes, not hours)."""
    from django.db import connection

    from eventbus_app.models import Delivery, DeliveryAttempt, OperatorAction, OutboxEvent

    ev, dl = OutboxEvent._meta.db_table, Delivery._meta.db_table
    at, op = DeliveryAttempt._meta.db_table, OperatorAction._meta.db_table
    errors = "ARRAY[" + ", ".join(f"'builtins.{e}'" for e in ERRORS) + "]"
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {ev}, {dl}, {at}, {op} RESTART IDENTITY CASCADE")
        started = time.monotonic()
        # Newest ids are the most recent: created over 30 days, dispatched at once.
        cursor.execute(
            f"INSERT INTO {ev} (event_type, version, payload, correlation_id, depth, "
            "created_at, dispatched_at) "
            "SELECT 'bench.Type' || (g %% {types}), 1, "
            "jsonb_build_object('n', g, 'email', 'user' || g || '@example.com', "
            "'password', md5(g::text), 'name', 'User ' || g, 'items', "
            "jsonb_build_array(jsonb_build_object('sku', 'SKU-' || (g %% 977), 'qty', g %% 5))),"
            " gen_random_uuid(), 0, t, t "
            "FROM (SELECT g, now() - ((%s - g) * interval '30 days' / %s) AS t "
            "FROM generate_series(1, %s) g) s".format(types=TYPES),
            [events, events, events],
        )
        print(f"  {events:,} events in {time.monotonic() - started:.0f} s", flush=True)
        started = time.monotonic()
        # Four deliveries per event, to four of the 8 handlers; r (0..999) picks the state.
        cursor.execute(
            f"INSERT INTO {dl} (event_id, handler, status, attempts, last_error, error_class, "
            "traceback, next_attempt_at, replays, created_at, finished_at, in_flight, isolate) "
            "SELECT id, 'bench.handler' || ((id + k) % {h}), "
            "CASE WHEN r < 20 THEN 'dead' WHEN r < 25 THEN 'failed' WHEN r < 30 THEN 'pending' "
            "ELSE 'succeeded' END, "
            "CASE WHEN r < 20 THEN 5 WHEN r < 25 THEN 2 WHEN r < 30 THEN 0 ELSE 1 END, "
            "CASE WHEN r < 25 THEN e || ': upstream said no to request ' || id "
            "|| E'\\nmore detail' ELSE '' END, "
            "CASE WHEN r < 25 THEN e ELSE '' END, "
            "CASE WHEN r < 25 THEN E'Traceback (most recent call last):\\n  File \"x.py\"' "
            "ELSE '' END, "
            "CASE WHEN r < 20 THEN NULL WHEN r < 30 THEN now() + interval '1 hour' "
            "ELSE NULL END, "
            "0, created_at, CASE WHEN r >= 30 OR r < 20 THEN created_at + interval '2 seconds' "
            "END, 0, false "
            "FROM (SELECT e.id, e.created_at, k, (e.id * 7 + k * 131) % 1000 AS r, "
            "({errors})[1 + (e.id + k) % {n_err}] AS e "
            "FROM {ev} e, generate_series(0, 3) k) s".format(
                h=HANDLERS, errors=errors, n_err=len(ERRORS), ev=ev
            )
        )
        print(f"  {4 * events:,} deliveries in {time.monotonic() - started:.0f} s", flush=True)
        started = time.monotonic()
        cursor.execute(
            f"INSERT INTO {at} (delivery_id, attempt, outcome, error, error_class, traceback, "
            "replays, recorded_at) "
            "SELECT d.id, a, CASE WHEN d.status = 'dead' AND a = d.attempts THEN 'dead' "
            "ELSE 'failed' END, d.last_error, d.error_class, d.traceback, 0, "
            "d.created_at + a * interval '1 second' "
            f"FROM {dl} d, generate_series(1, 5) a "
            "WHERE d.status IN ('dead', 'failed') AND a <= d.attempts"
        )
        cursor.execute(
            f"INSERT INTO {op} (kind, actor, created_at, event_id, delivery_id, handler, detail) "
            "SELECT 'retry', 'oncall', now() - g * interval '1 minute', d.event_id, d.id, "
            f"d.handler, '{{}}' FROM {dl} d, generate_series(1, 1) g "
            "WHERE d.status = 'failed' AND d.id % 50 = 0"
        )
        print(f"  attempts and actions in {time.monotonic() - started:.0f} s", flush=True)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")


def pages() -> list[tuple[str, str]]:
    from eventbus_app.models import Delivery, OutboxEvent

    event = OutboxEvent.objects.order_by("-pk").first()
    dead = Delivery.objects.filter(status="dead").order_by("-pk").first()
    assert event is not None and dead is not None
    b = "/admin/eventbus_app"
    return [
        ("App index", f"{b}/"),
        ("Overview", f"{b}/outboxevent/overview/"),
        ("Events", f"{b}/outboxevent/"),
        ("Events, filtered by type", f"{b}/outboxevent/?event_type=bench.Type7"),
        ("Events, filtered: has a dead delivery", f"{b}/outboxevent/?delivery_state=dead"),
        ("Events, search payload text", f"{b}/outboxevent/?q=SKU-12"),
        ("Events, search a redacted value", f"{b}/outboxevent/?q=user999%40example.com"),
        ("Events, search by id", f"{b}/outboxevent/?q={event.pk}"),
        ("Event page", f"{b}/outboxevent/{event.pk}/change/"),
        ("Replay confirmation", f"{b}/outboxevent/{event.pk}/replay/"),
        ("Deliveries", f"{b}/delivery/"),
        ("Deliveries, filtered by state", f"{b}/delivery/?status__exact=failed"),
        ("Deliveries, filtered by handler", f"{b}/delivery/?handler=bench.handler3"),
        ("Deliveries, search error text", f"{b}/delivery/?q=request+12345"),
        ("Delivery page", f"{b}/delivery/{dead.pk}/change/"),
        ("Dead letters", f"{b}/deadletter/"),
        ("Dead letters, filtered by exception", f"{b}/deadletter/?error_class=builtins.KeyError"),
        ("Dead letters, search handler", f"{b}/deadletter/?q=handler5"),
        ("Dead letter page", f"{b}/deadletter/{dead.pk}/change/"),
        ("Failure groups", f"{b}/deadletter/groups/"),
        ("Operator actions", f"{b}/operatoraction/"),
        ("Canary retries", f"{b}/retrycampaign/"),
    ]


def measure(repeat: int) -> list[dict[str, Any]]:
    from django.contrib.auth.models import User
    from django.test import Client

    user = User.objects.filter(username="bench").first() or User.objects.create_superuser(
        "bench", "bench@example.com", "bench"
    )
    client = Client()
    client.force_login(user)
    rows = []
    for label, url in pages():
        response = client.get(url)  # warm-up (and a check that the page works)
        assert response.status_code == 200, (url, response.status_code)
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            response = client.get(url)
            response.content  # noqa: B018  (rendered: a TemplateResponse renders lazily)
            times.append((time.perf_counter() - started) * 1000)
        rows.append(
            {
                "page": label,
                "url": url,
                "median_ms": round(statistics.median(times), 1),
                "max_ms": round(max(times), 1),
            }
        )
        print(f"  {label:45} {rows[-1]['median_ms']:8.1f} ms  (max {rows[-1]['max_ms']:.1f})")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.console", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--reload", action="store_true")
    parser.add_argument("--load-only", action="store_true")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    configure()
    create_database()
    django.setup()
    from django.core.management import call_command

    from eventbus_app.models import Delivery, OutboxEvent

    call_command("migrate", verbosity=0)
    if args.reload or OutboxEvent.objects.count() != args.events:
        print(f"Loading {args.events:,} events (once; --reload to redo) …", flush=True)
        load(args.events)
    print(
        f"{OutboxEvent.objects.count():,} events, {Delivery.objects.count():,} deliveries "
        f"in {DB_NAME}; {platform.python_version()}, Django {django.get_version()}",
        flush=True,
    )
    if args.load_only:
        return 0
    rows = measure(args.repeat)
    slowest = max(rows, key=lambda r: r["median_ms"])
    print(f"slowest: {slowest['page']} {slowest['median_ms']} ms (median)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
