"""``python -m benchmarks.relay [--size smoke|full] [--db sqlite|postgres] [--backends ...]``

Relays, per backend (rabbitmq, nats, redis, http), against hand-written publish loops
measured in the same run (see docs/BENCHMARKS.md, "Relays"):

1. **throughput**: N events committed in one transaction to service A's outbox while no
   worker runs (a backlog), then drained by one ``eventbus_drain`` process whose relay
   publishes them; events/s from the first fan-out to the last relay delivery's success
   (A's database clock), every delivery confirmed by the broker. Next to it, in this
   process, the same N CloudEvent bodies published by hand with the same client library
   and the broker's confirms: **one at a time** (publish, wait for the confirm, next) and
   **pipelined** (the fast idiomatic loop: confirms awaited per window; http: batched
   mode, a window of events per request). The ratio is relay / pipelined.
2. **latency**: an ``emit()`` committed in service A (its own database) to the start of
   the handler in service B (its own database), which receives through
   ``eventbus_consume`` (brokers) or the http source view (``relay_server.py``); both
   services' workers are real ``qcluster`` processes. p50/p99 of probes emitted one at a
   time at a steady rate; one machine, so one clock.

A backend whose broker is unreachable (or whose client is not installed) is skipped with
the reason. Broker objects get names unique to the run and are deleted afterwards; the
two databases (``bench_relay_a_<suffix>``, ``bench_relay_b_<suffix>``) are made afresh
and dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import http.client
import importlib
import json
import os
import platform
import pstats
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("rabbitmq", "nats", "redis", "http")
PORTS = {"rabbitmq": 5672, "nats": 4222, "redis": 6379}
CLIENTS = {"rabbitmq": "pika", "nats": "nats", "redis": "redis"}
URLS = {
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672/%2F",
    "nats": "nats://127.0.0.1:4222",
    "redis": "redis://127.0.0.1:6379/0",
}
SECRET = "relay-benchmark-secret"  # the http relay signs, the http source checks
SOURCE = "/bench-a"  # the CloudEvents source attribute of service A's relay
# ``--eventbus`` (JSON): merged over service A's EVENTBUS in its drain and workers.
EXTRA: dict[str, Any] = {}


@dataclasses.dataclass(frozen=True)
class Size:
    events: int  # the throughput backlog
    window: int  # pipelined loops: confirms outstanding at once
    latency_samples: int
    latency_interval: float  # seconds between probes


SIZES = {
    "smoke": Size(events=200, window=100, latency_samples=10, latency_interval=0.02),
    "full": Size(events=10_000, window=500, latency_samples=200, latency_interval=0.05),
}


@dataclasses.dataclass(frozen=True)
class Outgoing:
    """One CloudEvent as the relay sends it: the hand-written loops publish these."""

    id: str
    type: str
    body: bytes


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unavailable(backend: str) -> str:
    """Why ``backend`` cannot be measured here ("" when it can)."""
    if backend == "http":
        return ""
    try:
        importlib.import_module(CLIENTS[backend])
    except ImportError as exc:
        return f"client not installed ({exc}); pip install 'eventbus_app[{backend}]'"
    if not listening(PORTS[backend]):
        return f"no broker on 127.0.0.1:{PORTS[backend]}"
    return ""


def names(backend: str, tag: str) -> dict[str, Any]:
    """Broker options with names of this run only (exchange, queue, stream, key)."""
    options: dict[str, Any] = {"BACKEND": backend, "TIMEOUT": 10}
    if backend == "http":
        return options  # URL: the receiving service's port, known once it runs
    options["URL"] = URLS[backend]
    if backend == "rabbitmq":
        options.update(EXCHANGE=f"eventbus_bench_{tag}", QUEUE=f"eventbus_bench_{tag}")
    elif backend == "nats":
        options.update(
            STREAM=f"EVENTBUS_BENCH_{tag}".upper(),
            SUBJECT_PREFIX=f"eventbus_bench_{tag}",
            DURABLE=f"bench_{tag}",
        )
    else:
        options.update(STREAM=f"eventbus_bench_{tag}")
    return options


def relay_entry(options: dict[str, Any]) -> dict[str, Any]:
    """Service A's ``EVENTBUS["RELAYS"]`` entry: the benchmark's events, and for http the
    batched mode where the backend offers it (``BATCHED``: the receiver is eventbus_app)."""
    from eventbus_app.relay.backends import load_backend

    entry = {**options, "EVENT_TYPES": ["relaybench.*"], "SOURCE": SOURCE}
    if "BATCHED" in getattr(load_backend(options["BACKEND"]), "RELAY_OPTIONS", ()):
        entry["BATCHED"] = True
    return entry


# --- databases and processes --------------------------------------------------------------


def _pg_admin() -> Any:
    import psycopg

    return psycopg.connect(
        host=os.environ.get("EVENTBUS_PG_HOST", "127.0.0.1"),
        port=os.environ.get("EVENTBUS_PG_PORT", "5432"),
        user=os.environ.get("EVENTBUS_PG_USER", "postgres"),
        dbname="postgres",
        autocommit=True,
    )


def create_databases(db: str) -> None:
    from . import relay_settings

    for service in ("a", "b"):
        name = relay_settings.database_name(service)
        if db == "postgres":
            with _pg_admin() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{name}"')
        else:
            for ext in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(name + ext)


def drop_databases(db: str) -> None:
    from django.db import connections

    from . import relay_settings

    connections.close_all()
    for service in ("a", "b"):
        name = relay_settings.database_name(service)
        if db == "postgres":
            with _pg_admin() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            for ext in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(name + ext)


def reset(using: str) -> None:
    """Empty the eventbus, django-q2 and probe tables of one service's database."""
    from django.apps import apps
    from django.db import connections

    tables = []
    for label in ("eventbus_app", "relaybench", "django_q"):
        for model in apps.get_app_config(label).get_models():
            meta = model._meta
            if not meta.proxy and meta.managed and meta.db_table != "django_q_schedule":
                tables.append(meta.db_table)
    connection = connections[using]
    with connection.cursor() as cursor:
        quoted = [connection.ops.quote_name(t) for t in tables]
        if connection.vendor == "postgresql":
            cursor.execute(f"TRUNCATE {', '.join(quoted)} RESTART IDENTITY CASCADE")
        else:
            connection.disable_constraint_checking()
            try:
                for table in quoted:
                    cursor.execute(f"DELETE FROM {table}")
            finally:
                connection.enable_constraint_checking()


def service_env(service: str, eventbus: dict[str, Any]) -> dict[str, str]:
    return {"BENCH_RELAY_SERVICE": service, "BENCH_RELAY_EVENTBUS": json.dumps(eventbus)}


@contextlib.contextmanager
def started(*commands: tuple[dict[str, str], list[str]], grace: float = 2.0) -> Iterator[None]:
    """Run each ``(env, argv)`` (argv after ``python``) as a process group of its own; on
    the way out, SIGTERM them all at once and SIGKILL what is left after ``grace`` seconds
    (qcluster takes several seconds to stop politely; nothing of theirs needs keeping)."""
    procs: list[tuple[subprocess.Popen[bytes], Any]] = []
    try:
        for env, argv in commands:
            log = tempfile.TemporaryFile()  # noqa: SIM115  (closed below)
            proc = subprocess.Popen(
                [sys.executable, *argv],
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            procs.append((proc, log))
        yield
    finally:
        for proc, _ in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc, log in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group: qcluster's workers too
            proc.wait()
            if proc.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL):
                log.seek(0)
                tail = log.read()[-2000:].decode(errors="replace")
                print(f"  ({' '.join(proc.args[1:])} ended {proc.returncode}: {tail})")
            log.close()


def manage(*args: str) -> list[str]:
    return ["-m", "django", *args]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    from .runner import wait_for as wait

    wait(predicate, timeout, what)


SERVER_PROCESSES = 2  # service B's web server processes (benchmarks/relay_server.py)


@contextlib.contextmanager
def receiving_server(nudge: bool) -> Iterator[str]:
    """Service B's http source view on a free loopback port; yields the relay's URL."""
    port = free_port()
    eventbus = {"NUDGE": nudge, "SOURCES": {"a": {"BACKEND": "http", "SECRET": SECRET}}}
    server = (service_env("b", eventbus), ["-m", "benchmarks.relay_server", str(port)])
    with started(*[server] * SERVER_PROCESSES):
        wait_for(lambda: listening(port), 60, "service B's web server")
        time.sleep(0.5)  # the other process(es) bind a moment later
        yield f"http://127.0.0.1:{port}/eventbus/a/"


# --- the backlog --------------------------------------------------------------------------


def emit_backlog(n: int) -> list[Outgoing]:
    """N events in one transaction, no nudge (no worker runs); returns their CloudEvents."""
    from django.conf import settings
    from django.db import transaction
    from django.test import override_settings

    from eventbus_app import emit
    from eventbus_app.models import OutboxEvent
    from eventbus_app.relay.cloudevents import encode, to_cloudevent

    from .relayapp.events import Load

    reset("default")
    with (
        override_settings(EVENTBUS={**settings.EVENTBUS, "NUDGE": False}),
        transaction.atomic(),
    ):
        for i in range(n):
            emit(Load(n=i, customer=f"customer-{i % 97}", total_cents=100 + i))
    records = OutboxEvent.objects.select_related("causation").order_by("id")
    return [Outgoing(str(r.uuid), r.event_type, encode(to_cloudevent(r, SOURCE))) for r in records]


def drain(backend: str, relay: dict[str, Any], profile: Path | None = None) -> float:
    """One ``eventbus_drain`` process with the relay configured, until every relay
    delivery succeeded (run again if one is waiting out a retry); returns its wall time."""
    from django.db.models import Count

    from eventbus_app.models import Delivery

    eventbus = {**EXTRA, "NUDGE": False, "RETRY_BACKOFF": 0.1, "RELAYS": {backend: relay}}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **service_env("a", eventbus)}
    cmd = [sys.executable, "-m", "django", "eventbus_drain"]
    if profile is not None:
        cmd = [sys.executable, "-m", "cProfile", "-o", str(profile), *cmd[1:]]
    rows = Delivery.objects.filter(handler=f"relay:{backend}")
    started_at = time.perf_counter()
    for _ in range(5):
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"eventbus_drain failed: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
        if rows.filter(status=Delivery.Status.SUCCEEDED).count() == rows.count() > 0:
            return time.perf_counter() - started_at
        time.sleep(0.2)
    states = {r["status"]: r["n"] for r in rows.values("status").annotate(n=Count("id"))}
    failed = rows.exclude(status=Delivery.Status.SUCCEEDED).exclude(last_error="").first()
    error = failed.last_error[:300] if failed else proc.stdout.strip()
    raise RuntimeError(f"relay:{backend}: not every delivery succeeded ({states}): {error}")


# --- the brokers: receiving side, counts, clean-up, hand-written loops ---------------------


class Broker(ABC):
    """What the benchmark does at one broker besides the relay: make the receiving side,
    count what arrived, delete what it made, and publish by hand."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options

    def prepare(self) -> None:  # noqa: B027  (most brokers make theirs on first publish)
        """Make the receiving side before anything is published."""

    @abstractmethod
    def count(self) -> int: ...

    @abstractmethod
    def cleanup(self) -> None: ...

    @abstractmethod
    def one_at_a_time(self, messages: list[Outgoing]) -> None: ...

    @abstractmethod
    def pipelined(self, messages: list[Outgoing], window: int) -> None: ...


class RabbitMQ(Broker):
    """pika. The queue bound to the exchange (``#``) is what makes ``mandatory`` publishes
    route; messages persistent, as the relay sends them."""

    def _blocking(self) -> Any:
        import pika

        return pika.BlockingConnection(pika.URLParameters(self.options["URL"]))

    @staticmethod
    def _properties(message: Outgoing) -> Any:
        import pika

        return pika.BasicProperties(
            content_type="application/cloudevents+json",
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=message.id,
        )

    def prepare(self) -> None:
        connection = self._blocking()
        try:
            channel = connection.channel()
            exchange, queue = self.options["EXCHANGE"], self.options["QUEUE"]
            channel.exchange_declare(exchange, exchange_type="topic", durable=True)
            channel.queue_declare(queue, durable=True)
            channel.queue_bind(queue, exchange, routing_key="#")
        finally:
            connection.close()

    def count(self) -> int:
        connection = self._blocking()
        try:
            reply = connection.channel().queue_declare(
                self.options["QUEUE"], durable=True, passive=True
            )
            return int(reply.method.message_count)
        finally:
            connection.close()

    def cleanup(self) -> None:
        connection = self._blocking()
        try:
            channel = connection.channel()
            channel.queue_delete(self.options["QUEUE"])
            channel.exchange_delete(self.options["EXCHANGE"])
        finally:
            connection.close()

    def one_at_a_time(self, messages: list[Outgoing]) -> None:
        # BlockingChannel in confirm mode: basic_publish returns after the broker's ack
        # (and raises on a nack or a return).
        connection = self._blocking()
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            exchange = self.options["EXCHANGE"]
            for m in messages:
                channel.basic_publish(
                    exchange, m.type, m.body, properties=self._properties(m), mandatory=True
                )
        finally:
            connection.close()

    def pipelined(self, messages: list[Outgoing], window: int) -> None:
        # pika's asynchronous publisher (its documented pattern for confirms): up to
        # ``window`` messages unconfirmed; the broker acks them, often several at once
        # (``multiple``).
        import pika

        exchange = self.options["EXCHANGE"]
        pending: set[int] = set()
        errors: list[str] = []
        sent = 0
        state: dict[str, Any] = {}

        def publish() -> None:
            nonlocal sent
            channel = state["channel"]
            while sent < len(messages) and len(pending) < window:
                m = messages[sent]
                channel.basic_publish(
                    exchange, m.type, m.body, properties=self._properties(m), mandatory=True
                )
                sent += 1
                pending.add(sent)  # delivery tags count from 1
            if not pending:
                state["connection"].close()

        def on_confirm(frame: Any) -> None:
            method = frame.method
            if isinstance(method, pika.spec.Basic.Nack):
                errors.append(f"nack {method.delivery_tag}")
            if method.multiple:
                pending.difference_update([t for t in pending if t <= method.delivery_tag])
            else:
                pending.discard(method.delivery_tag)
            publish()

        def on_channel(channel: Any) -> None:
            state["channel"] = channel
            channel.add_on_return_callback(
                lambda _ch, method, _p, _b: errors.append(f"returned {method.routing_key}")
            )
            channel.confirm_delivery(ack_nack_callback=on_confirm, callback=lambda _: publish())

        def on_open_error(connection: Any, exc: BaseException) -> None:
            errors.append(f"connect: {exc}")
            connection.ioloop.stop()

        connection = pika.SelectConnection(
            pika.URLParameters(self.options["URL"]),
            on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
            on_open_error_callback=on_open_error,
            on_close_callback=lambda c, _reason: c.ioloop.stop(),
        )
        state["connection"] = connection
        connection.ioloop.start()
        if errors or pending or sent < len(messages):
            raise RuntimeError(f"pipelined rabbitmq: {errors[:3]}, {len(pending)} unconfirmed")


class Nats(Broker):
    """nats-py JetStream: every publish's ack from the stream (``Nats-Msg-Id`` = the event's
    uuid, as the relay sends it)."""

    def _run(self, work: Callable[[Any], Any]) -> Any:
        import nats

        async def main() -> Any:
            nc = await nats.connect(self.options["URL"], connect_timeout=5)
            try:
                return await work(nc)
            finally:
                await nc.close()

        return asyncio.run(main())

    def _subject(self, m: Outgoing) -> str:
        return f"{self.options['SUBJECT_PREFIX']}.{m.type}"

    @staticmethod
    def _headers(m: Outgoing) -> dict[str, str]:
        return {"Nats-Msg-Id": m.id, "content-type": "application/cloudevents+json"}

    def _stream(self, js: Any) -> Any:
        from nats.js.api import StreamConfig

        # The configuration the relay gives a stream it creates (backends/nats.py).
        return js.add_stream(
            StreamConfig(
                name=self.options["STREAM"],
                subjects=[f"{self.options['SUBJECT_PREFIX']}.>"],
                duplicate_window=120.0,
            )
        )

    def count(self) -> int:
        async def work(nc: Any) -> int:
            info = await nc.jetstream().stream_info(self.options["STREAM"])
            return int(info.state.messages)

        return int(self._run(work))

    def cleanup(self) -> None:
        from nats.js.errors import NotFoundError

        async def work(nc: Any) -> None:
            with contextlib.suppress(NotFoundError):
                await nc.jetstream().delete_stream(self.options["STREAM"])

        self._run(work)

    def one_at_a_time(self, messages: list[Outgoing]) -> None:
        async def work(nc: Any) -> None:
            js = nc.jetstream(timeout=10)
            await self._stream(js)
            for m in messages:
                await js.publish(self._subject(m), m.body, headers=self._headers(m))

        self._run(work)

    def pipelined(self, messages: list[Outgoing], window: int) -> None:
        async def work(nc: Any) -> None:
            # publish_async: the client's own pipelining, at most ``window`` acks pending.
            js = nc.jetstream(timeout=10, publish_async_max_pending=window)
            await self._stream(js)
            acks = [
                await js.publish_async(self._subject(m), m.body, headers=self._headers(m))
                for m in messages
            ]
            await asyncio.wait_for(asyncio.gather(*acks), 60)  # raises on a failed ack

        self._run(work)


class Redis(Broker):
    """redis-py: XADD's reply is the confirm; fields as the relay writes them."""

    def _client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.options["URL"], socket_timeout=10)

    @staticmethod
    def _fields(m: Outgoing) -> dict[str, Any]:
        return {"id": m.id, "type": m.type, "body": m.body}

    def count(self) -> int:
        with self._client() as client:
            return int(client.xlen(self.options["STREAM"]))

    def cleanup(self) -> None:
        with self._client() as client:
            client.delete(self.options["STREAM"])

    def one_at_a_time(self, messages: list[Outgoing]) -> None:
        stream = self.options["STREAM"]
        with self._client() as client:
            for m in messages:
                client.xadd(stream, self._fields(m))

    def pipelined(self, messages: list[Outgoing], window: int) -> None:
        # A non-transactional pipeline: ``window`` XADDs per round trip, each reply checked.
        stream = self.options["STREAM"]
        with self._client() as client:
            for start in range(0, len(messages), window):
                pipe = client.pipeline(transaction=False)
                for m in messages[start : start + window]:
                    pipe.xadd(stream, self._fields(m))
                pipe.execute()  # raises on the first error reply


class Http(Broker):
    """Service B's http source view: POSTs signed as the relay signs them; a 2xx answer
    is the confirm. The receiving side is B's inbox (emptied by ``cleanup``)."""

    def count(self) -> int:
        from eventbus_app.models import OutboxEvent

        return OutboxEvent.objects.using("b").filter(source="a").count()

    def cleanup(self) -> None:
        reset("b")

    def _post(self, body: bytes, content_type: str) -> None:
        from eventbus_app.relay.signing import HEADER, sign

        url = urlsplit(self.options["URL"])
        # A connection per request, as urllib makes it (the server answers HTTP/1.0).
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        try:
            headers = {"Content-Type": content_type, HEADER: sign(SECRET, body)}
            connection.request("POST", url.path, body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read()
            if not 200 <= response.status < 300:
                raise RuntimeError(f"http source answered {response.status}: {answer[:300]!r}")
        finally:
            connection.close()

    def one_at_a_time(self, messages: list[Outgoing]) -> None:
        for m in messages:  # structured mode: one event per request
            self._post(m.body, "application/cloudevents+json")

    def pipelined(self, messages: list[Outgoing], window: int) -> None:
        # Batched mode (a JSON array of ``window`` events per request), which the source
        # view stores in one transaction: the CloudEvents HTTP binding's fast way.
        for start in range(0, len(messages), window):
            chunk = messages[start : start + window]
            body = b"[" + b",".join(m.body for m in chunk) + b"]"
            self._post(body, "application/cloudevents-batch+json")


BROKERS: dict[str, type[Broker]] = {
    "rabbitmq": RabbitMQ,
    "nats": Nats,
    "redis": Redis,
    "http": Http,
}


# --- 1. throughput ------------------------------------------------------------------------


def _rate(events: int, seconds: float) -> dict[str, Any]:
    return {"events": events, "seconds": seconds, "per_second": events / seconds}


def _check_arrived(broker: Broker, expected: int, what: str) -> None:
    arrived = broker.count()
    if arrived != expected:
        raise RuntimeError(f"{what}: the receiving side has {arrived} messages, not {expected}")


def outbox_floor(size: Size) -> dict[str, Any]:
    """What reading and marking the backlog costs with no broker at all: batches of
    ``BATCH_SIZE`` rows taken ``FOR UPDATE SKIP LOCKED``, encoded as CloudEvents, marked
    and committed; the database's share of any outbox relay's rate, hand-written or not."""
    from django.db import transaction
    from django.db.models.functions import Now

    from eventbus_app.conf import eventbus_settings
    from eventbus_app.models import OutboxEvent
    from eventbus_app.relay.cloudevents import encode, to_cloudevent

    emit_backlog(size.events)
    batch = int(EXTRA.get("BATCH_SIZE", eventbus_settings.BATCH_SIZE))
    todo = OutboxEvent.objects.filter(dispatched_at__isnull=True).order_by("id")
    started_at = time.perf_counter()
    done = 0
    while True:
        with transaction.atomic():
            rows = list(todo.select_for_update(skip_locked=True)[:batch])
            if not rows:
                break
            for row in rows:
                encode(to_cloudevent(row, SOURCE))
            OutboxEvent.objects.filter(pk__in=[r.pk for r in rows]).update(dispatched_at=Now())
        done += len(rows)
    out = _rate(done, time.perf_counter() - started_at)
    out["batch"] = batch
    reset("default")
    return out


def throughput(backend: str, size: Size, profile: Path | None) -> dict[str, Any]:
    from django.db.models import Max, Min, Sum

    from eventbus_app.models import Delivery

    tag = f"{os.environ['BENCH_SUFFIX']}_{uuid.uuid4().hex[:8]}"
    kinds = ("relay", "one", "pipelined", "profile")
    options = {kind: names(backend, f"{tag}_{kind[0]}") for kind in kinds}
    out: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        if backend == "http":
            url = stack.enter_context(receiving_server(nudge=False))
            for kind in kinds:
                options[kind].update(URL=url, SECRET=SECRET)
        brokers = {kind: BROKERS[backend](options[kind]) for kind in kinds}
        for broker in brokers.values():
            stack.callback(_cleanup, broker)
        relay = relay_entry(options["relay"])

        reset("b")  # http: B's inbox holds only this run's messages
        messages = emit_backlog(size.events)
        brokers["relay"].prepare()
        wall = drain(backend, relay)
        rows = Delivery.objects.filter(handler=f"relay:{backend}")
        span = rows.aggregate(
            first=Min("created_at"), last=Max("finished_at"), attempts=Sum("attempts")
        )
        _check_arrived(brokers["relay"], size.events, f"relay:{backend}")
        out["relay"] = _rate(size.events, (span["last"] - span["first"]).total_seconds())
        out["relay"]["process_seconds"] = wall  # with the process's start-up
        out["relay"]["failed_attempts"] = span["attempts"] - size.events
        brokers["relay"].cleanup()  # http: empties B's inbox for the next loop

        for kind in ("one", "pipelined"):
            broker = brokers[kind]
            broker.prepare()
            started_at = time.perf_counter()
            if kind == "one":
                broker.one_at_a_time(messages)
            else:
                broker.pipelined(messages, size.window)
            seconds = time.perf_counter() - started_at
            _check_arrived(broker, size.events, f"hand-written {kind} ({backend})")
            out[kind] = _rate(size.events, seconds)
            broker.cleanup()

        if profile is not None:
            emit_backlog(size.events)
            brokers["profile"].prepare()
            path = profile / f"relay-{backend}.prof"
            relay = relay_entry(options["profile"])
            drain(backend, relay, profile=path)
            out["profile"] = {"file": str(path), **profile_summary(path, backend)}
    return out


def _cleanup(broker: Broker) -> None:
    try:
        broker.cleanup()
    except Exception as exc:  # the broker went away: report, keep going
        print(f"  (could not clean up {broker.options}: {exc})", flush=True)


def profiled(backend: str) -> list[tuple[str, str, str]]:
    """(label, path suffix, function) of the drain's parts, outermost first."""
    return [
        ("the drain loop (dispatch.loop.run)", "dispatch/loop.py", "run"),
        ("fan-out (fanout.fan_out_leased)", "dispatch/fanout.py", "fan_out_leased"),
        ("  events picked: UPDATE ... RETURNING (_pick)", "dispatch/fanout.py", "_pick"),
        ("  deliveries inserted (_insert_deliveries)", "dispatch/fanout.py", "_insert_deliveries"),
        (
            "  paused / throttled handlers read (_held_handlers)",
            "dispatch/fanout.py",
            "_held_handlers",
        ),
        ("claim of due deliveries (claim.claim)", "dispatch/claim.py", "claim"),
        ("throttled claims (claim.claim_throttled)", "dispatch/claim.py", "claim_throttled"),
        (
            "unfinished attempts settled (reclaim_unfinished)",
            "dispatch/claim.py",
            "reclaim_unfinished",
        ),
        ("deliveries run (execute.deliver)", "dispatch/execute.py", "deliver"),
        ("  relay (publish.publish_deliveries)", "relay/publish.py", "publish_deliveries"),
        ("    CloudEvents encoded (publish.message_for)", "relay/publish.py", "message_for"),
        (
            f"    sent and confirmed ({backend}.publish_many)",
            f"backends/{backend}.py",
            "publish_many",
        ),
        ("  successes recorded (_write_successes)", "dispatch/execute.py", "_write_successes"),
        ("all waits on the database (psycopg Connection.wait)", "psycopg/connection.py", "wait"),
    ]


def profile_summary(path: Path, backend: str, limit: int = 25) -> dict[str, Any]:
    """Where the profiled drain's time went: its parts' cumulative seconds and share of the
    drain loop (cProfile's own overhead inflates Python-heavy parts), and the heaviest
    functions by own time."""
    import io

    stats = pstats.Stats(str(path))
    table: dict[tuple[str, str], float] = {}
    for (file, _line, function), row in stats.stats.items():  # type: ignore[attr-defined]
        for _label, suffix, name in profiled(backend):
            if function == name and file.replace(os.sep, "/").endswith(suffix):
                table[suffix, name] = table.get((suffix, name), 0.0) + row[3]
    total = table.get(("dispatch/loop.py", "run"), 0.0) or 1.0
    parts = {
        label: {"seconds": table[suffix, name], "share": table[suffix, name] / total}
        for label, suffix, name in profiled(backend)
        if (suffix, name) in table
    }
    text = io.StringIO()
    pstats.Stats(str(path), stream=text).strip_dirs().sort_stats("tottime").print_stats(limit)
    return {"parts": parts, "by_own_time": text.getvalue()}


def print_profile(summary: dict[str, Any]) -> None:
    print("            under cProfile, share of the drain loop:")
    for label, part in summary["parts"].items():
        print(f"              {label:<58} {part['seconds']:7.3f} s {part['share']:6.1%}")


# --- 2. latency ---------------------------------------------------------------------------


def latency(backend: str, size: Size) -> dict[str, Any]:
    from django.db import transaction

    from eventbus_app import emit

    from .relayapp.events import Ping
    from .relayapp.models import Arrival

    tag = f"{os.environ['BENCH_SUFFIX']}_{uuid.uuid4().hex[:8]}_l"
    options = names(backend, tag)
    broker = BROKERS[backend](options)
    reset("default")
    reset("b")
    committed: dict[int, float] = {}
    with contextlib.ExitStack() as stack:
        if backend == "http":
            url = stack.enter_context(receiving_server(nudge=True))
            options.update(URL=url, SECRET=SECRET)
        relay = relay_entry(options)
        a_bus = {**EXTRA, "RETRY_BACKOFF": 0.1, "RELAYS": {backend: relay}}
        workers = [
            (service_env("a", a_bus), manage("qcluster")),
            (service_env("b", {}), manage("qcluster")),
        ]
        if backend != "http":
            stack.callback(_cleanup, broker)
            broker.prepare()  # rabbitmq: the queue exists before the first publish
            source = {**options, "BINDINGS": ["#"]} if backend == "rabbitmq" else options
            b_bus = {"SOURCES": {"a": source}}
            workers.append((service_env("b", b_bus), manage("eventbus_consume", "a")))
        stack.enter_context(started(*workers))
        arrivals = Arrival.objects.using("b")
        with transaction.atomic():  # warm-up: every process connected, end to end
            emit(Ping(key=-1))
        wait_for(lambda: arrivals.filter(key=-1).exists(), 90, f"{backend}: the first probe")
        for key in range(size.latency_samples):
            with transaction.atomic():
                # The first on-commit callback runs right after COMMIT, before the nudge.
                transaction.on_commit(lambda k=key: committed.__setitem__(k, time.time()))
                emit(Ping(key=key))
            time.sleep(size.latency_interval)
        done = arrivals.filter(key__gte=0)
        wait_for(lambda: done.count() >= size.latency_samples, 60, f"{backend}: probes")
        started_at = {a.key: a.started for a in done}
        values = [started_at[k] - committed[k] for k in started_at]
    return {
        "samples": len(values),
        "interval_s": size.latency_interval,
        "p50_ms": _pct(values, 50) * 1000,
        "p99_ms": _pct(values, 99) * 1000,
        "max_ms": max(values) * 1000,
        "stages_p50_ms": stages(backend, committed, started_at),
    }


def stages(backend: str, committed: dict[int, float], started_at: dict[int, float]) -> Any:
    """Where a probe's time goes, medians in ms, from timestamps both services recorded
    (one machine, one clock; the databases' are transaction or statement start times):
    A's commit -> A's relay delivery made (fan-out) -> its success recorded (published and
    confirmed) -> B's fan-out of the received event -> B's handler start."""
    from eventbus_app.models import Delivery, OutboxEvent

    sent = {
        e.pk: (e.payload["key"], e.uuid)
        for e in OutboxEvent.objects.filter(event_type="relaybench.Ping", payload__key__gte=0)
    }
    relayed = Delivery.objects.filter(handler=f"relay:{backend}", event_id__in=sent)
    fanned = dict(
        OutboxEvent.objects.using("b")
        .filter(uuid__in=[u for _, u in sent.values()])
        .values_list("uuid", "dispatched_at")
    )
    spans: dict[str, list[float]] = {
        "A: commit -> relay delivery fanned out": [],
        "A: relay delivery run (publish, confirm, success recorded)": [],
        "broker -> B's inbox -> B's fan-out": [],
        "B: fan-out -> handler start": [],
    }
    for d in relayed:
        key, uid = sent[d.event_id]
        if d.finished_at is None or fanned.get(uid) is None or key not in started_at:
            continue
        marks = [
            committed[key],
            d.created_at.timestamp(),
            d.finished_at.timestamp(),
            fanned[uid].timestamp(),
            started_at[key],
        ]
        for values, start, end in zip(spans.values(), marks, marks[1:], strict=False):
            values.append(end - start)
    return {name: _pct(v, 50) * 1000 for name, v in spans.items() if v}


# --- the run ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import django
    from django.db import connection

    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "django": django.get_version(),
        "load_average": os.getloadavg(),
    }
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("django-q2", "psycopg", "pika", "nats-py", "redis"):
        with contextlib.suppress(PackageNotFoundError):
            info[dist] = version(dist)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SHOW server_version")
        else:
            cursor.execute("SELECT sqlite_version()")
        info[connection.vendor] = cursor.fetchone()[0]
    return info


def table(results: dict[str, Any]) -> str:
    head = (
        "backend",
        "relay events/s",
        "hand-written events/s (pipelined)",
        "ratio",
        "hand-written one at a time",
        "ratio",
        "latency p50",
        "p99",
    )
    rows = []
    for backend, r in results.items():
        if "skipped" in r or "error" in r:
            reason = r.get("skipped") or f"error: {' '.join(r['error'].split())[:120]}"
            rows.append((backend, reason, "", "", "", "", "", ""))
            continue
        t, lat = r["throughput"], r["latency"]
        relay = t["relay"]["per_second"]
        rows.append(
            (
                backend,
                f"{relay:,.0f}",
                f"{t['pipelined']['per_second']:,.0f}",
                f"{relay / t['pipelined']['per_second']:.2f}x",
                f"{t['one']['per_second']:,.0f}",
                f"{relay / t['one']['per_second']:.2f}x",
                f"{lat['p50_ms']:.1f} ms",
                f"{lat['p99_ms']:.1f} ms",
            )
        )
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.relay", description=__doc__)
    parser.add_argument("--size", choices=list(SIZES), default="smoke")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=BACKENDS,
        default=list(BACKENDS),
        help="Default: every one (those whose broker is unreachable are skipped).",
    )
    parser.add_argument(
        "--events", type=int, default=None, help="Backlog size (default: the size's)."
    )
    parser.add_argument(
        "--eventbus",
        type=json.loads,
        default={},
        metavar="JSON",
        help="Merged over service A's EVENTBUS (e.g. '{\"BATCH_SIZE\": 500}').",
    )
    parser.add_argument("--json", type=Path, default=None, help="Where to write the results.")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="Also drain the backlog once more under cProfile; DIR/relay-<backend>.prof.",
    )
    args = parser.parse_args(argv)
    suffix = os.environ.get("BENCH_SUFFIX") or os.environ.get("EVENTBUS_TEST_SUFFIX", "main")
    os.environ.update(
        BENCH_DB=args.db,
        BENCH_SUFFIX=suffix,
        BENCH_RELAY_SERVICE="a",
        # django-q2's broker for both services' workers: Redis where it runs (nudges reach
        # a worker at once), else its ORM broker (polled every 0.2 s).
        BENCH_QBROKER="redis" if listening(6379) else "orm",
        DJANGO_SETTINGS_MODULE="benchmarks.relay_settings",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    os.environ.pop("BENCH_RELAY_EVENTBUS", None)
    EXTRA.update(args.eventbus)
    size = SIZES[args.size]
    if args.events:
        size = dataclasses.replace(size, events=args.events)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        args.profile = args.profile.resolve()

    began = time.perf_counter()
    create_databases(args.db)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("migrate", database="b", verbosity=0)
    print(f"  databases made and migrated in {time.perf_counter() - began:.0f} s", flush=True)
    meta: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.relay", *sys.argv[1:]]),
        "db": args.db,
        "size": args.size,
        "events": size.events,
        "eventbus": EXTRA,
        "django_q_broker": os.environ["BENCH_QBROKER"],
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
    }
    print(
        f"relay benchmarks: {args.db}, size {args.size} ({size.events:,} events; "
        f"django-q2 broker {meta['django_q_broker']})",
        flush=True,
    )
    results: dict[str, Any] = {}
    failed = False
    try:
        meta["outbox_floor"] = floor = outbox_floor(size)
        print(
            f"  outbox floor (no broker: {floor['batch']} rows per transaction read FOR UPDATE "
            f"SKIP LOCKED, encoded, marked): {floor['per_second']:,.0f} events/s",
            flush=True,
        )
        for backend in args.backends:
            reason = unavailable(backend)
            if reason:
                results[backend] = {"skipped": f"skipped: {reason}"}
                print(f"  {backend:<9} skipped: {reason}", flush=True)
                continue
            try:
                t0 = time.perf_counter()
                r: dict[str, Any] = {"throughput": throughput(backend, size, args.profile)}
                t1 = time.perf_counter()
                r["latency"] = latency(backend, size)
                r["seconds"] = {"throughput": t1 - t0, "latency": time.perf_counter() - t1}
            except Exception as exc:
                failed = True
                results[backend] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                print(f"  {backend:<9} failed: {results[backend]['error']}", flush=True)
                continue
            results[backend] = r
            t = r["throughput"]
            # A hand-written outbox relay pays the floor's database work and the pipelined
            # loop's broker work, one after the other.
            t["outbox_bound"] = 1 / (1 / floor["per_second"] + 1 / t["pipelined"]["per_second"])
            print(
                f"  {backend:<9} relay {t['relay']['per_second']:8,.0f}/s   hand-written "
                f"pipelined {t['pipelined']['per_second']:8,.0f}/s, one at a time "
                f"{t['one']['per_second']:8,.0f}/s, outbox bound {t['outbox_bound']:8,.0f}/s   "
                f"latency p50 {r['latency']['p50_ms']:.1f} ms"
                f" p99 {r['latency']['p99_ms']:.1f} ms   ({r['seconds']['throughput']:.0f} s + "
                f"{r['seconds']['latency']:.0f} s)",
                flush=True,
            )
            for stage, ms in r["latency"]["stages_p50_ms"].items():
                print(f"            {stage:<60} p50 {ms:7.1f} ms", flush=True)
            if "profile" in t:
                print_profile(t["profile"])
    finally:
        drop_databases(args.db)
    meta["seconds"] = time.perf_counter() - began
    meta["load_average_end"] = os.getloadavg()  # others' work on the machine skews figures
    out = table(results)
    print()
    print(out)
    path = args.json or ROOT / "benchmarks" / "results" / f"relay-{args.db}-{args.size}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"meta": meta, "results": results, "table": out}, indent=2, default=str) + "\n"
    )
    print(f"\nJSON: {path}  ({meta['seconds']:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
