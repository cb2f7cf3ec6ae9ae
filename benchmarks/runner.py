"""The five measurements; ``python -m benchmarks`` calls :func:`run`."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Size:
    emit_rounds: int  # transactions per variant
    tx_events: int  # events per transaction in the throughput runs
    events: int  # throughput: events x 4 handlers (eventbus)
    baseline_events: int  # the baseline is slow: fewer events, same rate measure
    peer_events: int
    latency_samples: int
    latency_interval: float
    backlog_small: int
    backlog_large: int
    backlog_reps: int
    memory_small: int
    memory_large: int


SIZES = {
    "smoke": Size(20, 10, 40, 10, 20, 5, 0.05, 200, 1_000, 1, 200, 400),
    "full": Size(1_000, 10, 10_000, 500, 1_000, 200, 0.1, 10_000, 1_000_000, 5, 10_000, 100_000),
}


@dataclass
class Report:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, section: str, metric: str, value: str, target: str = "") -> None:
        self.rows.append((section, metric, value, target))
        print(f"  {section:<11} {metric:<52} {value:>14}  {target}", flush=True)

    def table(self) -> str:
        head = ("section", "metric", "value", "target")
        order = ["emit", "throughput", "writes", "latency", "backlog", "memory"]
        rows = sorted(self.rows, key=lambda r: order.index(r[0]) if r[0] in order else 9)
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
        lines = [
            "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
            "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        ]
        for row in rows:
            lines.append(
                "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
            )
        return "\n".join(lines)


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


# --- database set-up ---------------------------------------------------------------------


def create_database(db: str, suffix: str) -> str:
    if db == "postgres":
        import psycopg

        name = f"bench_eventbus_{suffix}"
        with psycopg.connect(
            host=os.environ.get("EVENTBUS_PG_HOST", "127.0.0.1"),
            port=os.environ.get("EVENTBUS_PG_PORT", "5432"),
            user=os.environ.get("EVENTBUS_PG_USER", "postgres"),
            dbname="postgres",
            autocommit=True,
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return name
    path = os.path.join(tempfile.gettempdir(), f"bench_eventbus_{suffix}.sqlite3")
    for ext in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + ext)
    return path


def tables() -> list[str]:
    from django.apps import apps

    labels = ["eventbus_app", "benchapp", "django_q", "django_domain_events"]
    names = []
    for label in labels:
        with contextlib.suppress(LookupError):
            for model in apps.get_app_config(label).get_models():
                meta = model._meta
                if not meta.proxy and meta.managed and meta.db_table != "django_q_schedule":
                    names.append(meta.db_table)
    return names


def _procrastinate() -> bool:
    from django.apps import apps

    return apps.is_installed("procrastinate.contrib.django")


# procrastinate's tables (its Django models are unmanaged views of them).
PROCRASTINATE_TABLES = ["procrastinate_events", "procrastinate_jobs"]


def reset() -> None:
    """Empty the benchmark's tables and this cluster's broker queue."""
    from django.db import connection
    from django_q.brokers import get_broker

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            names = tables() + (PROCRASTINATE_TABLES if _procrastinate() else [])
            cursor.execute(
                f"TRUNCATE {', '.join(connection.ops.quote_name(t) for t in names)} "
                "RESTART IDENTITY CASCADE"
            )
        else:
            connection.disable_constraint_checking()
            try:
                for table in tables():
                    cursor.execute(f"DELETE FROM {connection.ops.quote_name(table)}")
            finally:
                connection.enable_constraint_checking()
    get_broker().purge_queue()


def analyze() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


# --- worker processes --------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@contextlib.contextmanager
def processes(
    *commands: list[str], env: dict[str, str] | None = None
) -> Iterator[list[subprocess.Popen[bytes]]]:
    logs = []
    procs = []
    try:
        for cmd in commands:
            log = tempfile.TemporaryFile()  # noqa: SIM115  (closed in finally)
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    cmd,
                    env=_env(**(env or {})),
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc, log in zip(procs, logs, strict=True):
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            if proc.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL):
                log.seek(0)
                tail = log.read()[-2000:].decode(errors="replace")
                print(f"  (process {' '.join(proc.args[-1:])} ended {proc.returncode}: {tail})")
            log.close()


def qcluster(**env: str) -> contextlib.AbstractContextManager[list[subprocess.Popen[bytes]]]:
    return processes([sys.executable, "-m", "django", "qcluster"], env=env)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


# --- 1. emit cost ------------------------------------------------------------------------


def emit_cost(size: Size, report: Report, peer: bool) -> None:
    from django.conf import settings
    from django.db import connection, transaction
    from django.test import override_settings
    from django_q.tasks import async_task

    from eventbus_app import emit

    from .benchapp.baseline import HANDLERS
    from .benchapp.events import OrderPlaced
    from .benchapp.models import Order

    def bare(i: int) -> None:
        with transaction.atomic():
            Order.objects.create(customer="c", total_cents=i)

    def eventbus(i: int) -> None:
        with transaction.atomic():
            order = Order.objects.create(customer="c", total_cents=i)
            emit(OrderPlaced(order_id=order.pk, customer="c", total_cents=i))

    def baseline(i: int) -> None:
        with transaction.atomic():
            order = Order.objects.create(customer="c", total_cents=i)
            for func in HANDLERS:
                transaction.on_commit(lambda f=func, pk=order.pk: async_task(f, pk))

    variants: dict[str, Callable[[int], None]] = {
        "bare": bare,
        "eventbus": eventbus,
        "eventbus_sync": eventbus,
        "baseline": baseline,
    }
    at_commit = override_settings(EVENTBUS={**settings.EVENTBUS, "NUDGE_BACKGROUND": False})
    configs = {"eventbus_sync": at_commit}
    if connection.vendor == "postgresql":
        variants["eventbus_notify"] = eventbus
        configs["eventbus_notify"] = override_settings(
            EVENTBUS={**settings.EVENTBUS, "NOTIFY": True}
        )
    if peer:
        from django_domain_events import fire

        from .benchapp.peer import PeerOrderPlaced

        def peer_fire(i: int) -> None:
            with transaction.atomic():
                order = Order.objects.create(customer="c", total_cents=i)
                fire(PeerOrderPlaced(order_id=order.pk, customer="c", total_cents=i))

        variants["peer"] = peer_fire
    if _procrastinate():
        from .benchapp.tasks import write

        def procrastinate_defer(i: int) -> None:
            with transaction.atomic():
                order = Order.objects.create(customer="c", total_cents=i)
                for handler in (1, 2, 3, 4):
                    write.defer(handler=handler, ref=order.pk)

        variants["procrastinate"] = procrastinate_defer

    reset()
    for name, fn in variants.items():  # warm-up: connections, caches
        with configs.get(name) or contextlib.nullcontext():
            for i in range(5):
                fn(i)
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for i in range(size.emit_rounds):
        order = names[i % len(names) :] + names[: i % len(names)]  # rotate: no order bias
        for name in order:
            with configs.get(name) or contextlib.nullcontext():
                start = time.perf_counter()
                variants[name](i)
                times[name].append(time.perf_counter() - start)
    time.sleep(0.2)  # let background nudges finish before the tables are emptied
    reset()
    bare_ms = _median_ms(times["bare"])
    out: dict[str, Any] = {}
    for name in names:
        med = _median_ms(times[name])
        ratio = med / bare_ms
        out[name] = {"median_ms": med, "p90_ms": _pct(times[name], 90) * 1000, "ratio": ratio}
        label = {
            "bare": "create() alone",
            "eventbus": "create() + emit() (defaults; commit-time work included)",
            "eventbus_sync": "create() + emit(), NUDGE_BACKGROUND off (commit sends the nudge)",
            "eventbus_notify": "create() + emit(), NOTIFY on",
            "baseline": "create() + 4x on_commit(async_task)",
            "peer": "create() + django-domain-events fire()",
            "procrastinate": "create() + 4x procrastinate defer()",
        }[name]
        target = "ratio <= 1.25 (PostgreSQL)" if name == "eventbus" else ""
        report.add("emit", f"{label}: median ms (ratio)", f"{med:.3f} ({ratio:.2f}x)", target)
    report.data["emit"] = out


# --- 2. throughput -----------------------------------------------------------------------


def _emit_orders(n: int, per_tx: int, kind: str) -> datetime:
    from django.db import transaction
    from django_q.tasks import async_task

    from eventbus_app import emit

    from .benchapp.baseline import HANDLERS
    from .benchapp.events import OrderPlaced
    from .benchapp.models import Order

    fire: Any = None
    peer_cls: Any = None
    if kind == "peer":
        from django_domain_events import fire

        from .benchapp.peer import PeerOrderPlaced as peer_cls
    first = datetime.now(UTC)
    i = 0
    while i < n:
        with transaction.atomic():
            for _ in range(min(per_tx, n - i)):
                order = Order.objects.create(customer="c", total_cents=i)
                if kind == "eventbus":
                    emit(OrderPlaced(order_id=order.pk, customer="c", total_cents=i))
                elif kind == "baseline":
                    for func in HANDLERS:
                        transaction.on_commit(lambda f=func, pk=order.pk: async_task(f, pk))
                else:
                    fire(peer_cls(order_id=order.pk, customer="c", total_cents=i))
                i += 1
    return first


def _throughput_eventbus(size: Size) -> dict[str, Any]:
    from django.db.models import Max

    from eventbus_app.models import Delivery

    reset()
    n = size.events
    emit_started = time.perf_counter()
    first = _emit_orders(n, size.tx_events, "eventbus")
    emit_s = time.perf_counter() - emit_started
    done = Delivery.objects.filter(status=Delivery.Status.SUCCEEDED)
    wait_for(lambda: done.count() >= 4 * n, 60 + n / 20, "eventbus deliveries")
    last = done.aggregate(m=Max("finished_at"))["m"]
    elapsed = (last - first).total_seconds()
    return {"events": n, "deliveries": 4 * n, "seconds": elapsed, "emit_seconds": emit_s}


def _throughput_baseline(size: Size) -> dict[str, Any]:
    from django.db.models import Max
    from django_q.models import Success

    reset()
    n = size.baseline_events
    emit_started = time.perf_counter()
    first = _emit_orders(n, size.tx_events, "baseline")
    emit_s = time.perf_counter() - emit_started
    done = Success.objects.filter(func__startswith="benchmarks.benchapp.baseline.noop")
    wait_for(lambda: done.count() >= 4 * n, 60 + n, "baseline tasks")
    last = done.aggregate(m=Max("stopped"))["m"]
    elapsed = (last - first).total_seconds()
    return {"events": n, "deliveries": 4 * n, "seconds": elapsed, "emit_seconds": emit_s}


def _throughput_peer(size: Size) -> dict[str, Any]:
    from django.db.models import Max
    from django_domain_events.models.delivery_record import DeliveryRecord

    reset()
    n = size.peer_events
    relay = [sys.executable, "-m", "django", "deliver_events"]
    with processes(relay, relay):
        time.sleep(1.5)  # let both relays start listening
        emit_started = time.perf_counter()
        first = _emit_orders(n, size.tx_events, "peer")
        emit_s = time.perf_counter() - emit_started
        done = DeliveryRecord.objects.filter(status="succeeded")
        wait_for(lambda: done.count() >= 4 * n, 60 + n / 5, "peer deliveries")
        last = done.aggregate(m=Max("succeeded_at"))["m"]
    elapsed = (last - first).total_seconds()
    return {"events": n, "deliveries": 4 * n, "seconds": elapsed, "emit_seconds": emit_s}


def _drain_eventbus(size: Size) -> dict[str, Any]:
    """A backlog: events committed while no worker runs and no nudge is sent (an outage),
    then one nudge and a cluster start. Rate from the first fan-out to the last success."""
    from django.conf import settings
    from django.db.models import Max, Min
    from django.test import override_settings

    from eventbus_app import tasks
    from eventbus_app.models import Delivery

    reset()
    n = size.events
    with override_settings(EVENTBUS={**settings.EVENTBUS, "NUDGE": False}):
        _emit_orders(n, size.tx_events, "eventbus")
    tasks.nudge()  # what the sweep does after an outage: one dispatch task
    with qcluster():
        done = Delivery.objects.filter(status=Delivery.Status.SUCCEEDED)
        wait_for(lambda: done.count() >= 4 * n, 60 + n / 20, "eventbus backlog")
    span = Delivery.objects.aggregate(first=Min("created_at"), last=Max("finished_at"))
    elapsed = (span["last"] - span["first"]).total_seconds()
    return {"events": n, "deliveries": 4 * n, "seconds": elapsed}


def _drain_baseline(size: Size) -> dict[str, Any]:
    """The baseline's backlog: its tasks queued while no worker runs, then a cluster start.
    Rate from the first task's start to the last one's end."""
    from django.db.models import Max, Min
    from django_q.models import Success

    reset()
    n = size.baseline_events
    _emit_orders(n, size.tx_events, "baseline")
    with qcluster():
        done = Success.objects.filter(func__startswith="benchmarks.benchapp.baseline.noop")
        wait_for(lambda: done.count() >= 4 * n, 60 + n, "baseline backlog")
    span = done.aggregate(first=Min("started"), last=Max("stopped"))
    elapsed = (span["last"] - span["first"]).total_seconds()
    return {"events": n, "deliveries": 4 * n, "seconds": elapsed}


def _warm_cluster() -> None:
    """Wait until the cluster runs a task end to end (both an eventbus and a plain one)."""
    from django.db import transaction
    from django_q.tasks import async_task

    from eventbus_app import emit

    from .benchapp.events import Ping
    from .benchapp.models import Mark

    reset()
    with transaction.atomic():
        emit(Ping(key=-1))
    async_task("benchmarks.benchapp.baseline.ping", -2)
    wait_for(lambda: Mark.objects.filter(key__in=[-1, -2]).count() == 2, 60, "workers")


def _report_rates(
    report: Report, runs: dict[str, dict[str, Any]], labels: dict[str, str], target: str = ""
) -> None:
    """Add each run's deliveries/s and its ratio to the baseline's (``target`` on eventbus)."""
    for r in runs.values():
        r["per_second"] = r["deliveries"] / r["seconds"]
    base = runs["baseline"]["per_second"]
    for name, r in runs.items():
        report.add(
            "throughput",
            f"{labels[name]}: deliveries/s ({r['events']} events x 4)",
            f"{r['per_second']:.0f} ({r['per_second'] / base:.1f}x)",
            target if name == "eventbus" else "",
        )


def throughput(size: Size, report: Report, with_peer: bool, peer_error: str) -> None:
    out: dict[str, Any] = {}
    with qcluster():
        _warm_cluster()
        out["eventbus"] = _throughput_eventbus(size)
        out["baseline"] = _throughput_baseline(size)
    from django.db import connection

    if with_peer and connection.vendor == "sqlite":
        with_peer = False
        peer_error = (
            "its relay refuses SQLite ('sqlite cannot do SELECT ... FOR UPDATE SKIP LOCKED')"
        )
    if with_peer:
        out["peer"] = _throughput_peer(size)
    _report_rates(
        report,
        out,
        {
            "eventbus": "eventbus (2 qcluster workers)",
            "baseline": "baseline on_commit(async_task) (same workers)",
            "peer": "django-domain-events (2 deliver_events relays)",
        },
        target=">= 2000/s and >= 25x baseline (PG + Redis)",
    )
    if not with_peer:
        report.add("throughput", "django-domain-events", "n/a", peer_error)
    # The runs above start the clock at the first emit, so a dispatcher that keeps up is
    # measured at the emitter's pace. A backlog shows what the workers alone can do.
    drained = {"eventbus": _drain_eventbus(size), "baseline": _drain_baseline(size)}
    _report_rates(
        report,
        drained,
        {
            "eventbus": "eventbus, backlog drained by 2 workers (one nudge)",
            "baseline": "baseline, backlog of queued tasks drained by 2 workers",
        },
    )
    out["backlog_drain"] = drained
    report.data["throughput"] = out


# --- 2b. row-writing handlers -------------------------------------------------------------


def _emit_written(n: int, per_tx: int, kind: str) -> None:
    from django.db import transaction

    from eventbus_app import emit

    from .benchapp.events import Written
    from .benchapp.models import Order

    defer: Any = None
    if kind == "procrastinate":
        from .benchapp.tasks import write

        defer = write.defer
    i = 0
    while i < n:
        with transaction.atomic():
            for _ in range(min(per_tx, n - i)):
                order = Order.objects.create(customer="c", total_cents=i)
                if kind == "eventbus":
                    emit(Written(ref=order.pk))
                else:
                    for handler in (1, 2, 3, 4):
                        defer(handler=handler, ref=order.pk)
                i += 1


def _row_rate(expected: int, timeout: float, what: str) -> dict[str, Any]:
    """Wait for ``expected`` rows; the rate from the first row to the last (the database's
    clock), so both systems are measured the same way."""
    from django.db.models import Count, Max, Min

    from .benchapp.models import Row

    wait_for(lambda: Row.objects.count() >= expected, timeout, what)
    span = Row.objects.aggregate(first=Min("created"), last=Max("created"), n=Count("id"))
    seconds = max((span["last"] - span["first"]).total_seconds(), 1e-6)
    duplicates = span["n"] - Row.objects.values("handler", "ref").distinct().count()
    return {"deliveries": span["n"], "seconds": seconds, "duplicates": duplicates}


def writes(size: Size, report: Report, procrastinate_error: str) -> None:
    """Backlogs of events whose 4 handlers each insert one row, drained by 2 workers, next
    to the no-op workload of the same size; procrastinate on the same row workload (one
    job per handler, 2 worker processes)."""
    from django.conf import settings
    from django.test import override_settings

    from eventbus_app import tasks

    n = size.events
    out: dict[str, Any] = {}
    out["eventbus_noop"] = _drain_eventbus(size)
    reset()
    with override_settings(EVENTBUS={**settings.EVENTBUS, "NUDGE": False}):
        _emit_written(n, size.tx_events, "eventbus")
    tasks.nudge()
    with qcluster():
        out["eventbus_rows"] = _row_rate(4 * n, 60 + n / 10, "eventbus row writes")
    if _procrastinate():
        m = size.peer_events
        reset()
        _emit_written(m, size.tx_events, "procrastinate")
        worker = [
            sys.executable,
            "-m",
            "django",
            "procrastinate",
            "worker",
            "--queues",
            "bench",
            "--concurrency",
            "1",
        ]
        with processes(worker, worker):
            out["procrastinate_rows"] = _row_rate(4 * m, 60 + m, "procrastinate jobs")
    for r in out.values():
        r["per_second"] = r["deliveries"] / r["seconds"]
    peer = out.get("procrastinate_rows", {}).get("per_second")
    labels = {
        "eventbus_noop": "eventbus, no-op handlers, backlog, 2 workers: deliveries/s",
        "eventbus_rows": "eventbus, row-writing handlers, backlog, 2 workers: deliveries/s",
        "procrastinate_rows": "procrastinate, row-writing jobs, backlog, 2 workers: jobs/s",
    }
    targets = {
        "eventbus_noop": ">= 20000/s (PG)",
        "eventbus_rows": ">= 2500/s and >= 5x procrastinate (PG)",
    }
    for name, r in out.items():
        ratio = f" ({r['per_second'] / peer:.1f}x procrastinate)" if peer else ""
        dupes = f", {r['duplicates']} duplicates" if r.get("duplicates") else ""
        report.add(
            "writes",
            f"{labels[name]} ({r['deliveries']})",
            f"{r['per_second']:.0f}{ratio}{dupes}",
            targets.get(name, ""),
        )
    if not _procrastinate():
        report.add("writes", "procrastinate", "n/a", procrastinate_error)
    report.data["writes"] = out


# --- 3. latency --------------------------------------------------------------------------


def latency(size: Size, report: Report, broker: str) -> None:
    from django.db import connection, transaction
    from django_q.tasks import async_task

    from eventbus_app import emit

    from .benchapp.events import Ping
    from .benchapp.models import Mark

    def probe(kind: str) -> list[float]:
        reset()
        committed: dict[int, float] = {}
        for key in range(size.latency_samples):
            with transaction.atomic():
                # The first on-commit callback runs right after COMMIT, before the nudge.
                transaction.on_commit(lambda k=key: committed.__setitem__(k, time.time()))
                if kind == "eventbus":
                    emit(Ping(key=key))
                elif kind == "procrastinate":
                    from .benchapp.tasks import ping

                    ping.defer(key=key)
                else:
                    transaction.on_commit(
                        lambda k=key: async_task("benchmarks.benchapp.baseline.ping", k)
                    )
            time.sleep(size.latency_interval)
        marks = Mark.objects.filter(key__gte=0)
        wait_for(lambda: marks.count() >= size.latency_samples, 60, f"{kind} latency probes")
        return [m.started - committed[m.key] for m in marks]

    def summary(lat: list[float]) -> dict[str, Any]:
        return {
            "samples": len(lat),
            "p50_ms": _pct(lat, 50) * 1000,
            "p99_ms": _pct(lat, 99) * 1000,
            "max_ms": max(lat) * 1000,
        }

    out: dict[str, Any] = {}
    with qcluster():
        _warm_cluster()
        for kind in ("eventbus", "baseline"):
            out[kind] = summary(probe(kind))
    if connection.vendor == "postgresql":
        out["eventbus_notify"] = summary(_notify_probe(probe))
    if _procrastinate():
        worker = [sys.executable, "-m", "django", "procrastinate", "worker", "--queues", "bench"]
        with processes(worker):
            time.sleep(2)  # let the worker start listening
            out["procrastinate"] = summary(probe("procrastinate"))
    rate = 1 / size.latency_interval
    target = "p50 <= 3 (Redis)" if broker == "redis" else "p50 <= 100"
    for kind, r in out.items():
        label = {
            "eventbus_notify": "eventbus, NOTIFY on",
            "procrastinate": "procrastinate (LISTEN/NOTIFY)",
        }.get(kind, kind)
        report.add(
            "latency",
            f"{label}: commit -> handler start p50 / p99 ms (~{rate:.0f}/s)",
            f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}",
            target if kind == "eventbus" else "",
        )
    report.data["latency"] = out


def _notify_probe(probe: Callable[[str], list[float]]) -> list[float]:
    """The probe again with EVENTBUS['NOTIFY'] on, in this process and in a new cluster."""
    from django.conf import settings
    from django.test import override_settings

    with (
        override_settings(EVENTBUS={**settings.EVENTBUS, "NOTIFY": True}),
        qcluster(BENCH_NOTIFY="1"),
    ):
        _warm_cluster()
        return probe("eventbus")


# --- 4. backlog --------------------------------------------------------------------------


def load_events(n: int, *, dispatched: bool = False, deliveries: str | None = None) -> None:
    """Insert ``n`` Bulk events with SQL (fast); optionally already fanned out, with one
    delivery each in state ``deliveries``."""
    from django.db import connection

    from eventbus_app.models import Delivery, OutboxEvent

    ev = OutboxEvent._meta.db_table
    dl = Delivery._meta.db_table
    pg = connection.vendor == "postgresql"
    disp = ("now()" if pg else "STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')") if dispatched else "NULL"
    now = "now()" if pg else "STRFTIME('%Y-%m-%d %H:%M:%f', 'NOW')"
    with connection.cursor() as cursor:
        start = 0
        cursor.execute(f"SELECT COALESCE(MAX(id), 0) FROM {ev}")
        start = cursor.fetchone()[0]
        if pg:
            cursor.execute(
                f"INSERT INTO {ev} (event_type, version, payload, correlation_id, depth, "
                f"created_at, dispatched_at) SELECT 'bench.Bulk', 1, jsonb_build_object('n', g), "
                f"gen_random_uuid(), 0, now(), {disp} FROM generate_series(1, %s) g",
                [n],
            )
        else:
            cursor.execute(
                f"WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < %s) "
                f"INSERT INTO {ev} (event_type, version, payload, correlation_id, depth, "
                f"created_at, dispatched_at) SELECT 'bench.Bulk', 1, json_object('n', x), "
                f"lower(hex(randomblob(16))), 0, {now}, {disp} FROM g",
                [n],
            )
        if deliveries:
            finished = now if deliveries == "succeeded" else "NULL"
            due = "NULL" if deliveries == "succeeded" else now
            cursor.execute(
                f"INSERT INTO {dl} (event_id, handler, status, attempts, last_error, "
                f"error_class, traceback, next_attempt_at, replays, created_at, finished_at) "
                f"SELECT id, 'bench.bulk', %s, %s, '', '', '', {due}, 0, {now}, {finished} "
                f"FROM {ev} WHERE id > %s",
                [deliveries, 1 if deliveries == "succeeded" else 0, start],
            )
    if pg:
        analyze()


def _explain(sql: str) -> str:
    from django.db import connection

    prefix = "EXPLAIN " if connection.vendor == "postgresql" else "EXPLAIN QUERY PLAN "
    with connection.cursor() as cursor:
        cursor.execute(prefix + sql)
        rows = cursor.fetchall()
    if connection.vendor == "postgresql":
        return "\n".join(r[0] for r in rows)
    return "\n".join(str(r[-1]) for r in rows)


def _batch_once(capture: bool) -> tuple[float, float, list[str]]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from eventbus_app import dispatch

    ctx = CaptureQueriesContext(connection) if capture else contextlib.nullcontext()
    with ctx as queries:
        t0 = time.perf_counter()
        dispatch.fan_out("default")
        t1 = time.perf_counter()
        dispatch.claim("default")
        t2 = time.perf_counter()
    sqls = [q["sql"] for q in queries.captured_queries] if capture and queries else []
    return t1 - t0, t2 - t1, sqls


def backlog(size: Size, report: Report) -> None:
    from django.db import connection

    def measure(label: str, explain: bool) -> dict[str, Any]:
        fan, clm = [], []
        plans: list[dict[str, str]] = []
        _batch_once(capture=False)  # warm-up: caches, connection
        for rep in range(size.backlog_reps):
            f, c, sqls = _batch_once(capture=explain and rep == 0)
            fan.append(f)
            clm.append(c)
            for sql in sqls:
                head = sql.lstrip().split(None, 1)[0].upper()
                if head in ("SELECT", "UPDATE", "INSERT", "WITH", "DELETE"):
                    plans.append({"sql": sql, "plan": _explain(sql)})
        total = [a + b for a, b in zip(fan, clm, strict=True)]
        return {
            "label": label,
            "fan_out_ms": _median_ms(fan),
            "claim_ms": _median_ms(clm),
            "batch_ms": _median_ms(total),
            "plans": plans,
        }

    small, large = size.backlog_small, size.backlog_large
    out: dict[str, Any] = {}
    reset()
    load_events(small)
    out["small"] = measure(f"{small:,} undispatched events", explain=True)
    load_events(large - small)
    out["large"] = measure(f"{large:,} undispatched events", explain=True)
    reset()
    load_events(large, dispatched=True, deliveries="pending")
    out["pending"] = measure(f"{large:,} events fanned out, deliveries pending", explain=True)
    reset()
    load_events(large, dispatched=True, deliveries="succeeded")
    load_events(small)
    out["delivered"] = measure(f"{large:,} delivered events + {small:,} undispatched", explain=True)
    reset()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM")
    base = out["small"]["batch_ms"]
    for key in ("small", "large", "pending", "delivered"):
        r = out[key]
        r["ratio"] = r["batch_ms"] / base
        report.add(
            "backlog",
            f"fan-out + claim one batch, {r['label']}: ms (ratio)",
            f"{r['batch_ms']:.2f} ({r['ratio']:.2f}x)",
            "ratio <= 1.5" if key != "small" else "",
        )
    report.data["backlog"] = out


# --- 5. memory ---------------------------------------------------------------------------

_RSS = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "t = time.perf_counter() - t\n"
    "sys.stderr.write(p.stdout + p.stderr)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, t, p.returncode)\n"
)


def _drain_rss() -> tuple[int, float, str]:
    proc = subprocess.run(
        [sys.executable, "-c", _RSS, sys.executable, "-m", "django", "eventbus_drain"],
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    kb, seconds, rc = proc.stdout.split()
    if rc != "0":
        raise RuntimeError(f"eventbus_drain failed: {proc.stderr[-2000:]}")
    return int(kb), float(seconds), proc.stderr.strip().splitlines()[-1]


def memory(size: Size, report: Report) -> None:
    from eventbus_app.models import Delivery

    out: dict[str, Any] = {}
    for key, n in (("small", size.memory_small), ("large", size.memory_large)):
        reset()
        load_events(n)
        kb, seconds, summary = _drain_rss()
        done = Delivery.objects.filter(status=Delivery.Status.SUCCEEDED).count()
        if done != n:
            raise RuntimeError(f"drain delivered {done} of {n}: {summary}")
        out[key] = {"events": n, "peak_rss_mb": kb / 1024, "seconds": seconds}
    reset()
    ratio = out["large"]["peak_rss_mb"] / out["small"]["peak_rss_mb"]
    out["ratio"] = ratio
    for key in ("small", "large"):
        r = out[key]
        report.add(
            "memory",
            f"eventbus_drain of {r['events']:,} events (1 handler): peak RSS MB",
            f"{r['peak_rss_mb']:.1f}",
            "",
        )
    report.add("memory", "peak RSS ratio large / small", f"{ratio:.2f}x", "ratio <= 1.2")
    report.add(
        "memory",
        f"single drain process rate, {out['large']['events']:,} deliveries: /s",
        f"{out['large']['events'] / out['large']['seconds']:.0f}",
        "(includes Python start-up)",
    )
    report.data["memory"] = out


# --- the run -----------------------------------------------------------------------------


def machine(db: str, broker: str) -> dict[str, Any]:
    import django
    from django.db import connection

    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "django": django.get_version(),
    }
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
        info["load_average"] = os.getloadavg()
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("django-q2", "psycopg", "redis", "django-domain-events"):
        with contextlib.suppress(PackageNotFoundError):
            info[dist] = version(dist)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SHOW server_version")
            info["postgresql"] = cursor.fetchone()[0]
        else:
            cursor.execute("SELECT sqlite_version()")
            info["sqlite"] = cursor.fetchone()[0]
    if broker == "redis":
        from django_q.brokers import get_broker

        info["redis_server"] = get_broker().info()
    return info


def run(args: argparse.Namespace, peer_error: str) -> int:
    name = create_database(args.db, os.environ["BENCH_SUFFIX"])
    os.environ["BENCH_DB_NAME"] = name
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    size = SIZES[args.size]
    sections = args.only or ["emit", "throughput", "writes", "latency", "backlog", "memory"]
    with_peer = not peer_error
    report = Report()
    report.data["meta"] = {
        "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
        "db": args.db,
        "broker": args.broker,
        "size": args.size,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(args.db, args.broker),
        "peer": "django-domain-events" if with_peer else peer_error,
        "procrastinate": args.procrastinate_error or "procrastinate",
    }
    print(f"eventbus benchmarks: {args.db} + {args.broker} broker, size {args.size}", flush=True)
    started = time.perf_counter()
    if "emit" in sections:
        emit_cost(size, report, with_peer)

    if "throughput" in sections:
        throughput(size, report, with_peer, peer_error)
    if "writes" in sections:
        writes(size, report, args.procrastinate_error)
    if "latency" in sections:
        latency(size, report, args.broker)
    if "backlog" in sections:
        backlog(size, report)
    if "memory" in sections:
        memory(size, report)
    report.data["meta"]["seconds"] = time.perf_counter() - started
    print()
    print(report.table())
    default = ROOT / "benchmarks" / "results" / f"{args.db}-{args.broker}-{args.size}.json"
    path = args.json or default
    path.parent.mkdir(parents=True, exist_ok=True)
    report.data["table"] = report.table()
    path.write_text(json.dumps(report.data, indent=2, default=str) + "\n")
    print(f"\nJSON: {path}  ({report.data['meta']['seconds']:.0f} s)")
    return 0
