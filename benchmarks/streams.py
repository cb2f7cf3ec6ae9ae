"""``python -m benchmarks.streams [--size smoke|full]``: the event store, on PostgreSQL.

Measured in one run, against baselines from the same run (see docs/BENCHMARKS.md):

1. **append**: a one-row transaction plus ``emit(..., stream=, expected_version=)`` next to
   the same with a plain ``emit()`` and the bare one-row transaction;
2. **load**: ``Aggregate.load()`` of a 10,000-event stream, without and with snapshots;
3. **ordered**: 1,000 streams x 20 events drained by 2 ``eventbus_drain`` processes through
   an ordered handler, next to the same workload through an unordered one;
4. **rebuild**: ``eventbus_rebuild`` of a projection, in place (events/s);
5. **eventsourcing** (PyPI, where it installs): append one event to an aggregate and load a
   10,000-event aggregate, with and without snapshots, on the same PostgreSQL server.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SIZES = {
    "smoke": {"rounds": 30, "stream": 500, "streams": 50, "per_stream": 5, "rebuild": 1_000},
    "full": {
        "rounds": 500,
        "stream": 10_000,
        "streams": 1_000,
        "per_stream": 20,
        "rebuild": 20_000,
    },
}


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def append(rounds: int, out: dict[str, Any]) -> None:
    from django.db import transaction

    from eventbus_app import emit

    from .benchapp.events import Credit
    from .benchapp.models import Order

    times: dict[str, list[float]] = {"bare": [], "emit": [], "stream": []}
    versions: dict[str, int] = {}
    for i in range(rounds + 5):
        for kind in times:
            started = time.perf_counter()
            with transaction.atomic():
                Order.objects.create(customer="c", total_cents=i)
                if kind == "emit":
                    emit(Credit(amount=i))
                elif kind == "stream":
                    stream = f"wallet-append-{i % 20}"
                    version = versions.get(stream, 0)
                    emit(Credit(amount=i), stream=stream, expected_version=version)
                    versions[stream] = version + 1
            if i >= 5:  # warm-up
                times[kind].append(time.perf_counter() - started)
    bare = median_ms(times["bare"])
    for kind, label in (
        ("bare", "create() alone"),
        ("emit", "create() + emit()"),
        ("stream", "create() + emit(stream=, expected_version=)"),
    ):
        med = median_ms(times[kind])
        out[f"append {kind}"] = {"median_ms": med, "ratio": med / bare}
        print(f"  append   {label:<50} {med:8.3f} ms ({med / bare:.2f}x)")


def load(n: int, out: dict[str, Any]) -> None:
    from django.db import transaction

    from eventbus_app import emit

    from .benchapp.aggregates import SnappedWallet, Wallet
    from .benchapp.events import Credit

    for cls in (Wallet, SnappedWallet):
        with transaction.atomic():
            for i in range(n):
                emit(Credit(amount=1), stream=cls.stream_for("big"), expected_version=i)
        cls.load("big")  # warm-up (and, with snapshots, the first snapshot at the end)
        times = []
        for _ in range(10):
            started = time.perf_counter()
            wallet = cls.load("big")
            times.append(time.perf_counter() - started)
        assert wallet.balance == n
        label = "with snapshots every 100" if cls is SnappedWallet else "without snapshots"
        med = median_ms(times)
        out[f"load {label}"] = {"median_ms": med, "events": n}
        print(f"  load     {n:,}-event stream, {label:<36} {med:8.1f} ms")


def ordered(streams: int, per_stream: int, out: dict[str, Any]) -> None:
    from django.db import transaction
    from django.db.models import Max, Min

    from eventbus_app import emit
    from eventbus_app.models import Delivery

    from .benchapp.events import Lap, LapFree

    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    for cls, handler in ((Lap, "bench.lap_ordered"), (LapFree, "bench.lap_free")):
        with transaction.atomic():
            for position in range(per_stream):
                for s in range(streams):
                    emit(cls(n=position), stream=f"{handler}-{s}")
        drains = [
            subprocess.Popen(
                [sys.executable, "-m", "django", "eventbus_drain"],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(2)
        ]
        for proc in drains:
            proc.wait(timeout=900)
        rows = Delivery.objects.filter(handler=handler)
        assert rows.filter(status=Delivery.Status.SUCCEEDED).count() == streams * per_stream
        span = rows.aggregate(first=Min("created_at"), last=Max("finished_at"))
        seconds = (span["last"] - span["first"]).total_seconds()
        rate = streams * per_stream / seconds
        label = "ordered" if cls is Lap else "unordered"
        out[f"drain {label}"] = {"deliveries": streams * per_stream, "per_second": rate}
        print(f"  drain    {streams} streams x {per_stream}, {label:<30} {rate:8.0f} deliveries/s")


def rebuild(n: int, out: dict[str, Any]) -> None:
    from io import StringIO

    from django.core.management import call_command
    from django.db import transaction

    from eventbus_app import emit
    from eventbus_app.dispatch import fan_out
    from eventbus_app.models import OutboxEvent

    from .benchapp.events import Credit
    from .benchapp.models import Ledger

    with transaction.atomic():
        for i in range(n):
            emit(Credit(amount=1), stream=f"ledger-{i % 100}")
    # The earlier sections' amounts are not all 1: the projection adds what they say.
    OutboxEvent.objects.filter(event_type=Credit.event_type).update(payload={"amount": 1})
    fan_out()
    Ledger.objects.all().delete()
    started = time.perf_counter()
    call_command("eventbus_rebuild", "bench.ledger", "--progress", "never", stdout=StringIO())
    seconds = time.perf_counter() - started
    # Every Credit goes through the projection, the earlier sections' ones too.
    replayed = OutboxEvent.objects.filter(event_type=Credit.event_type).count()
    assert sum(Ledger.objects.values_list("total", flat=True)) == replayed
    out["rebuild in place"] = {"events": replayed, "per_second": replayed / seconds}
    print(f"  rebuild  {replayed:,} events in place{'':<27} {replayed / seconds:8.0f} events/s")


def eventsourcing_peer(rounds: int, n: int, out: dict[str, Any]) -> None:
    try:
        from eventsourcing.application import Application
        from eventsourcing.domain import Aggregate, event
    except ImportError as exc:
        out["eventsourcing"] = f"not installed ({exc})"
        print(f"  eventsourcing: not installed ({exc}); pip install eventsourcing psycopg-pool")
        return
    import psycopg

    name = f"bench_eventsourcing_{os.environ.get('BENCH_SUFFIX', 'main')}"
    params = {
        "host": os.environ.get("EVENTBUS_PG_HOST", "127.0.0.1"),
        "port": os.environ.get("EVENTBUS_PG_PORT", "5432"),
        "user": os.environ.get("EVENTBUS_PG_USER", "postgres"),
    }
    with psycopg.connect(**params, dbname="postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')

    class Wallet(Aggregate):
        @event("Opened")
        def __init__(self) -> None:
            self.balance = 0

        @event("Credited")
        def credit(self, amount: int) -> None:
            self.balance += amount

    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": name,
        "POSTGRES_HOST": params["host"],
        "POSTGRES_PORT": params["port"],
        "POSTGRES_USER": params["user"],
        "POSTGRES_PASSWORD": "",
        "CREATE_TABLE": "y",
    }
    for snapshots in (False, True):
        app_env = dict(env, IS_SNAPSHOTTING_ENABLED="y" if snapshots else "n")
        app = Application(env=app_env)
        if snapshots:
            app.snapshotting_intervals = {Wallet: 100}
        wallet = Wallet()
        app.save(wallet)
        times = []
        for i in range(rounds + 5):
            wallet.credit(1)
            started = time.perf_counter()
            app.save(wallet)
            if i >= 5:
                times.append(time.perf_counter() - started)
        if not snapshots:
            out["eventsourcing append"] = {"median_ms": median_ms(times)}
            print(f"  eventsourcing save() of one new event{'':<20} {median_ms(times):8.3f} ms")
        big = Wallet()
        for _ in range(n):
            big.credit(1)
        app.save(big)
        if snapshots:
            app.take_snapshot(big.id)
        times = []
        for _ in range(10):
            started = time.perf_counter()
            loaded = app.repository.get(big.id)
            times.append(time.perf_counter() - started)
        assert loaded.balance == n
        label = "with snapshots" if snapshots else "without snapshots"
        out[f"eventsourcing load {label}"] = {"median_ms": median_ms(times), "events": n}
        print(f"  eventsourcing load {n:,} events, {label:<27} {median_ms(times):8.1f} ms")
        app.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.streams", description=__doc__)
    parser.add_argument("--size", choices=list(SIZES), default="smoke")
    args = parser.parse_args()
    size = SIZES[args.size]
    os.environ.update(
        BENCH_DB="postgres",
        BENCH_BROKER="orm",
        BENCH_SUFFIX=os.environ.get("BENCH_SUFFIX", "streams"),
        DJANGO_SETTINGS_MODULE="benchmarks.settings",
    )
    from .runner import create_database

    os.environ["BENCH_DB_NAME"] = create_database("postgres", os.environ["BENCH_SUFFIX"])
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    out: dict[str, Any] = {"size": args.size, "run": str(uuid.uuid4())[:8]}
    print(f"event store benchmarks (PostgreSQL), size {args.size}")
    append(size["rounds"], out)
    load(size["stream"], out)
    ordered(size["streams"], size["per_stream"], out)
    rebuild(size["rebuild"], out)
    eventsourcing_peer(size["rounds"], size["stream"], out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
