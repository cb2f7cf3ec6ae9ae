"""``python -m benchmarks.prune``: delete 1,000,000 old events (``retention.prune``, what
``manage.py eventbus_prune`` runs) while a dispatcher keeps working, on PostgreSQL.

Creates a database ``bench_prune_$BENCH_SUFFIX``, inserts with SQL ``--events`` old events
(default 1,000,000; 40 days old, fanned out), two succeeded deliveries each, 1 % of them
with a dead letter too (kept) and a stream's worth of events (kept). Then a thread emits
and drains 10 events per round for the whole run (the "drain that runs"), first alone for
``--baseline`` seconds, then while the main thread prunes in chunks of ``--chunk``
events; a third thread samples ``pg_stat_activity`` every 20 ms for backends waiting on a
lock. Prints the chunk times (median, p99, longest), the drain rounds' times alone and
during the prune, and the longest lock wait seen. ``--json PATH`` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from datetime import timedelta
from typing import Any

import django
from django.conf import settings

SUFFIX = os.environ.get("BENCH_SUFFIX", "bench")
DB_NAME = f"bench_prune_{SUFFIX}"


def configure() -> None:
    settings.configure(
        SECRET_KEY="benchmarks-only-not-secret",
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django_q",
            "eventbus_app",
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
        Q_CLUSTER={"name": f"prune-{SUFFIX}", "orm": "default", "timeout": 60, "retry": 120},
        EVENTBUS={"NUDGE": False, "RETRY_BACKOFF": 0},
    )


def create_database() -> None:
    import psycopg

    db: dict[str, Any] = settings.DATABASES["default"]
    with psycopg.connect(
        host=db["HOST"], port=db["PORT"], user=db["USER"], dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}"')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')


def load(events: int) -> None:
    from django.db import connection

    from eventbus_app.models import Delivery, OutboxEvent

    ev, dl = OutboxEvent._meta.db_table, Delivery._meta.db_table
    with connection.cursor() as cursor:
        started = time.monotonic()
        cursor.execute(
            f"INSERT INTO {ev} (event_type, version, payload, correlation_id, depth, created_at, "
            "dispatched_at, stream, position) "
            "SELECT 'bench.Old', 1, jsonb_build_object('n', g), gen_random_uuid(), 0, t, t, "
            "CASE WHEN g %% 1000 = 1 THEN 'acct-' || g ELSE '' END, "
            "CASE WHEN g %% 1000 = 1 THEN 1 END "
            "FROM (SELECT g, now() - interval '40 days' - g * interval '1 second' AS t "
            "FROM generate_series(1, %s) g) s",
            [events],
        )
        cursor.execute(
            f"INSERT INTO {dl} (event_id, handler, status, attempts, last_error, error_class, "
            "traceback, next_attempt_at, replays, created_at, finished_at, in_flight, isolate, "
            "stream, position) "
            "SELECT e.id, 'bench.h' || k, CASE WHEN k = 2 THEN 'dead' ELSE 'succeeded' END, "
            "1, '', '', '', NULL, 0, e.created_at, e.created_at, 0, false, '', NULL "
            f"FROM {ev} e, generate_series(0, 2) k WHERE k < 2 OR e.id % 100 = 0"
        )
        print(f"  loaded {events:,} events in {time.monotonic() - started:.0f} s", flush=True)
        cursor.execute("VACUUM ANALYZE")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * p), len(ordered) - 1)] if ordered else 0.0


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median_ms": round(statistics.median(values) * 1000, 1) if values else 0.0,
        "p99_ms": round(percentile(values, 0.99) * 1000, 1),
        "max_ms": round(max(values, default=0.0) * 1000, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--baseline", type=float, default=10.0)
    parser.add_argument("--json")
    args = parser.parse_args()

    configure()
    create_database()
    django.setup()
    from django.core.management import call_command
    from django.db import connection, connections
    from django.utils import timezone

    from eventbus_app import Event, emit, handler
    from eventbus_app.dispatch import run
    from eventbus_app.models import Delivery, OutboxEvent
    from eventbus_app.retention import prunable, prune

    class Ping(Event, event_type="bench.Ping"):
        n: int

    @handler(Ping, name="bench.ping")
    def ping(event: Ping) -> None:
        Delivery.objects.filter(pk=-1).update(attempts=0)  # a write: a real commit

    call_command("migrate", verbosity=0)
    print(f"PostgreSQL, {os.cpu_count()} cores, Python {platform.python_version()}")
    load(args.events)
    cutoff = timezone.now() - timedelta(days=30)
    started = time.monotonic()
    expected = prunable(cutoff).count()
    print(f"  prunable: {expected:,} (counted in {time.monotonic() - started:.1f} s)")

    phase = {"name": "baseline"}
    rounds: dict[str, list[float]] = {"baseline": [], "pruning": []}
    waits: list[float] = []
    stop = threading.Event()

    def drain_loop() -> None:
        n = 0
        try:
            while not stop.is_set():
                began = time.monotonic()
                for _ in range(10):
                    n += 1
                    emit(Ping(n=n))
                run()
                rounds[phase["name"]].append(time.monotonic() - began)
                time.sleep(0.01)
        finally:
            connections.close_all()

    def lock_monitor() -> None:
        # Backends waiting on a heavyweight lock, and for how long they have waited.
        try:
            with connection.cursor() as cursor:
                while not stop.is_set():
                    cursor.execute(
                        "SELECT COALESCE(MAX(EXTRACT(EPOCH FROM clock_timestamp() - "
                        "state_change)), 0) FROM pg_stat_activity WHERE datname = "
                        "current_database() AND wait_event_type = 'Lock'"
                    )
                    waits.append(float(cursor.fetchone()[0]))
                    time.sleep(0.02)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=drain_loop), threading.Thread(target=lock_monitor)]
    for t in threads:
        t.start()
    time.sleep(args.baseline)
    phase["name"] = "pruning"
    began = time.monotonic()
    result = prune(cutoff, chunk=args.chunk)
    pruned_in = time.monotonic() - began
    stop.set()
    for t in threads:
        t.join()

    left = OutboxEvent.objects.filter(event_type="bench.Old").count()
    figures = {
        "events": args.events,
        "chunk": args.chunk,
        "deleted_events": result.events,
        "deleted_deliveries": result.deliveries,
        "kept_events": left,
        "seconds": round(pruned_in, 1),
        "events_per_second": round(result.events / pruned_in) if pruned_in else 0,
        "chunks": summary(result.chunk_seconds),
        "drain_rounds_alone": summary(rounds["baseline"]),
        "drain_rounds_while_pruning": summary(rounds["pruning"]),
        "longest_lock_wait_ms": round(max(waits, default=0.0) * 1000, 1),
        "lock_samples": len(waits),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0 if result.events == expected else 1


if __name__ == "__main__":
    sys.exit(main())
