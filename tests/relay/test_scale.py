"""Scale-out, end to end (issue 12 point 4): two services on PostgreSQL, each with its own
database and several worker processes, N events through each broker (RabbitMQ, NATS
JetStream, Redis Streams: a server of the test's own) with faults injected while they flow:

* the shop's relaying workers (2 ``eventbus_drain`` processes, restarted as cron would)
  SIGKILLed mid-batch: paused, seen holding relay deliveries it claimed and has not
  finished, then killed;
* the broker restarted while the relay publishes (``rabbitmqctl stop_app`` / ``start_app``;
  nats-server and redis-server stopped and started on the same port and data);
* billing's consumer (``eventbus_consume``) SIGKILLed with messages in hand that it has not
  acked: paused, seen holding unacked messages at the broker, then killed and restarted.

Billing runs the consumer and 2 ``eventbus_drain`` processes for its local handler (the
``testapp.balances`` projection). Afterwards: every event is in billing's inbox exactly
once (by uuid), each stream's events arrived in the sender's order (billing's positions
equal the shop's), every relay delivery succeeded, and billing's handler ran once per event.

``EVENTBUS_SCALE_EVENTS`` sets N per backend (1,000 by default: CI's size; the figures in
docs/RELIABILITY.md are for 10,000). Each run prints a ``SCALE {...}`` line (``pytest -s``)
and appends it to ``EVENTBUS_SCALE_REPORT`` (default
``$TMPDIR/eventbus_scale_<suffix>_<N>.jsonl``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest
from django.db import connections
from django.db.models import Count, Sum
from django.db.models.functions import Now
from django.utils import timezone

from eventbus_app.models import Delivery, OutboxEvent
from eventbus_app.relay.backends import load_backend
from tests.testapp.models import Balance

from ..conftest import ROOT
from .conftest import OwnServer, unique_options

pytestmark = [
    pytest.mark.subprocess,
    pytest.mark.reliability,
    pytest.mark.postgres,  # two services with their own databases and several workers
    pytest.mark.django_db(transaction=True, databases=["default", "other"]),
]

N: int = int(os.environ.get("EVENTBUS_SCALE_EVENTS", "1000"))
STREAMS = 20
WORKERS = 2  # eventbus_drain processes per service
OUTAGE = 2.0  # seconds a restarted broker stays down
# The shop emits its N events over this long (100 a second at full size), longer while a
# due fault holds it back: the faults are injected while events flow.
EMIT_SECONDS = max(30.0, N / 100)
RELAY = "relay:billing"
LOCAL = "testapp.balances"  # billing's local handler (ordered, writes Balance rows)

# Faults: the relay's when this share of the events is emitted by the shop, the consumer's
# when this share is stored by billing.
RELAY_FAULTS: list[tuple[float, str]] = [
    (0.05, "relay worker SIGKILL"),
    (0.15, "broker restart"),
    (0.25, "relay worker SIGKILL"),
    (0.35, "broker restart"),
    (0.45, "relay worker SIGKILL"),
]
CONSUMER_FAULTS: list[tuple[float, str]] = [
    (0.20, "consumer SIGKILL"),
    (0.50, "consumer SIGKILL"),
    (0.80, "consumer SIGKILL"),
]

# Options of each backend's source beyond the defaults, and why.
SOURCE_OPTIONS: dict[str, dict[str, Any]] = {
    # A killed consumer's unacked message comes back after ACK_WAIT, and with one message in
    # flight (MAX_ACK_PENDING = 1, for order) the whole source waits for it: 3 s, not 10.
    "nats": {"ACK_WAIT": 3},
}


class Broker:
    """What the test reads at the broker about billing's source."""

    def __init__(self, server: OwnServer, options: dict[str, Any]) -> None:
        self.server = server
        self.kind = server.kind
        self.options = options
        if self.kind == "rabbitmq":
            # A second queue on the exchange that nobody consumes: it keeps one copy of
            # every message the broker accepted, so re-publishes can be counted.
            import pika

            self.audit = f"{options['QUEUE']}_audit"
            connection = pika.BlockingConnection(pika.URLParameters(server.url))
            channel = connection.channel()
            channel.exchange_declare(options["EXCHANGE"], exchange_type="topic", durable=True)
            channel.queue_declare(self.audit, durable=True)
            channel.queue_bind(self.audit, options["EXCHANGE"], routing_key="#")
            connection.close()

    def _queues(self) -> dict[str, tuple[int, int]]:
        out = self.server.rabbitmqctl(
            "list_queues", "-q", "--no-table-headers", "name", "messages_ready",
            "messages_unacknowledged",
        )  # fmt: skip
        queues = {}
        for line in out.splitlines():
            name, ready, unacked = line.split()
            queues[name] = (int(ready), int(unacked))
        return queues

    def _nats(self) -> tuple[int, int, int]:
        import nats

        async def read() -> tuple[int, int, int]:
            nc = await nats.connect(self.server.url, connect_timeout=5, allow_reconnect=False)
            try:
                js = nc.jetstream(timeout=5)
                info = await js.consumer_info(self.options["STREAM"], self.options["DURABLE"])
                stream = await js.stream_info(self.options["STREAM"])
                return info.num_ack_pending, info.num_pending, stream.state.messages
            finally:
                await nc.close()

        return asyncio.run(read())

    def _redis(self) -> Any:
        import redis

        return redis.Redis.from_url(self.server.url, socket_timeout=5)

    def in_hand(self) -> int:
        """Messages given to billing's consumer and not acked yet."""
        if self.kind == "rabbitmq":
            return self._queues()[self.options["QUEUE"]][1]
        if self.kind == "nats":
            return self._nats()[0]
        client = self._redis()
        try:
            return int(client.xpending(self.options["STREAM"], "eventbus")["pending"])
        finally:
            client.close()

    def order(self) -> list[str]:
        """The uuids of every message the broker holds for billing, in the broker's order
        (re-publishes included): to tell a relay's reordering from a consumer's."""
        bodies: list[bytes] = []
        if self.kind == "rabbitmq":
            import pika

            connection = pika.BlockingConnection(pika.URLParameters(self.server.url))
            channel = connection.channel()
            while True:  # the audit queue: nobody consumes it, it is read once, here
                method, _, body = channel.basic_get(self.audit, auto_ack=True)
                if method is None:
                    break
                bodies.append(body)
            connection.close()
        elif self.kind == "nats":
            import nats

            async def read() -> None:
                nc = await nats.connect(self.server.url, connect_timeout=5)
                try:
                    js = nc.jetstream(timeout=5)
                    last = (await js.stream_info(self.options["STREAM"])).state.last_seq
                    for seq in range(1, last + 1):
                        bodies.append((await js.get_msg(self.options["STREAM"], seq)).data)
                finally:
                    await nc.close()

            asyncio.run(read())
        else:
            client = self._redis()
            try:
                entries = client.xrange(self.options["STREAM"])
                bodies = [fields[b"body"] for _, fields in entries]
            finally:
                client.close()
        return [json.loads(body)["id"] for body in bodies]

    def unsettled(self) -> int:
        """Messages for billing not acked yet (waiting or in hand)."""
        if self.kind == "rabbitmq":
            return sum(self._queues()[self.options["QUEUE"]])
        if self.kind == "nats":
            in_hand, waiting, _ = self._nats()
            return in_hand + waiting
        client = self._redis()
        try:
            group = client.xinfo_groups(self.options["STREAM"])[0]
            return int(group.get("lag") or 0) + int(group["pending"])
        finally:
            client.close()

    def stored(self) -> int:
        """Messages the broker accepted: N, plus each re-publish it kept (NATS drops a
        re-publish of a ``Nats-Msg-Id`` it saw within its duplicate window)."""
        if self.kind == "rabbitmq":
            return sum(self._queues()[self.audit])
        if self.kind == "nats":
            return self._nats()[2]
        client = self._redis()
        try:
            return int(client.xlen(self.options["STREAM"]))
        finally:
            client.close()


class Processes:
    """The services' processes: each logs to a file; all are killed at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.all: list[tuple[subprocess.Popen[str], IO[str], str]] = []

    def start(
        self, env: dict[str, str], name: str, *args: str, module: str = "django"
    ) -> subprocess.Popen[str]:
        log = open(self.logs / f"{len(self.all):03d}_{name}.log", "w+")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.all.append((proc, log, name))
        return proc

    def output(self, prefix: str) -> list[str]:
        texts = []
        for _, log, name in self.all:
            if name.startswith(prefix):  # the child writes the file; we only read it
                texts.append(Path(log.name).read_text())
        return texts

    def tails(self) -> str:
        return "\n".join(
            f"--- {name} (exit {proc.poll()}):\n" + "\n".join(text.splitlines()[-8:])
            for (proc, _, name), text in zip(self.all, self.output(""), strict=True)
        )

    def end(self) -> None:
        for proc, log, _ in self.all:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            log.close()


class Pool:
    """``WORKERS`` drain processes of one service, restarted when they exit (a drain exits
    once nothing is due, like a cron job) while the service has due work."""

    def __init__(self, processes: Processes, env: dict[str, str], name: str, using: str) -> None:
        self.processes, self.env, self.name, self.using = processes, env, name, using
        self.live: list[tuple[subprocess.Popen[str], str]] = []
        self.started = 0
        self.turn = 0  # which live drain kill_relay_worker pauses next

    def has_work(self) -> bool:
        due = Delivery.objects.using(self.using).filter(
            status__in=Delivery.CLAIMABLE, next_attempt_at__lte=Now()
        )
        new = OutboxEvent.objects.using(self.using).filter(dispatched_at__isnull=True)
        return due.exists() or new.exists()

    def top_up(self) -> None:
        self.live = [(p, n) for p, n in self.live if p.poll() is None]
        if len(self.live) < WORKERS and self.has_work():
            while len(self.live) < WORKERS:
                self.started += 1
                name = f"{self.name}{self.started}"
                args = ("eventbus_drain", "--seconds", "120")
                self.live.append((self.processes.start(self.env, name, *args), name))


def count(using: str, **filters: Any) -> int:
    return Delivery.objects.using(using).filter(**filters).count()


def relay_claims() -> dict[int, Any]:
    """The shop's relay deliveries claimed and unfinished now: id -> lease token."""
    running = Delivery.objects.filter(handler=RELAY, status=Delivery.Status.RUNNING)
    return dict(running.values_list("pk", "lease_token"))


def kill_relay_worker(pool: Pool) -> int | None:
    """SIGKILL a relaying drain mid-batch, holding relay deliveries it has claimed and not
    finished; how many. All drains are paused (SIGSTOP) and the claims read; the others go
    on long enough to finish their batches; what is still claimed under the same lease is
    the paused one's. None: nothing was claimed, or it held nothing (it is resumed; the
    next try pauses the other one)."""
    live = [proc for proc, _ in pool.live if proc.poll() is None]
    if len(live) < WORKERS:
        return None  # one is starting: both must be at work
    victim = live[pool.turn % len(live)]
    for proc in live:
        os.kill(proc.pid, signal.SIGSTOP)
    try:
        claims = relay_claims()
        if not claims:
            return None
        pool.turn += 1
        for proc in live:
            if proc is not victim:
                os.kill(proc.pid, signal.SIGCONT)
        held = len(claims)
        deadline = time.monotonic() + 2.5  # > DISPATCH_SECONDS: the others' batches end
        while held and time.monotonic() < deadline:
            time.sleep(0.25)
            now = relay_claims()
            held = sum(1 for pk, token in claims.items() if now.get(pk) == token)
        if held:
            victim.kill()
            victim.wait(10)
            return held
        return None
    finally:
        for proc in live:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)


def kill_consumer(proc: subprocess.Popen[str], broker: Broker) -> int | None:
    """SIGKILL billing's consumer while it holds messages it has not acked (paused, it is
    seen holding them at the broker); how many. None: it held none for 10 s."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            in_hand = broker.in_hand()
        except Exception:  # the broker is still coming back from a restart
            in_hand = 0
        if in_hand:
            proc.kill()
            proc.wait(10)
            return in_hand
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.05)
    return None


def disorder(
    wrong: list[OutboxEvent], rows: list[OutboxEvent], sent: list[OutboxEvent], broker: Broker
) -> str:
    """What went out of order, where: per stream concerned, the shop's positions in the
    broker's order (re-publishes included) and in billing's order of arrival."""
    position = {str(s.uuid): s.position for s in sent}
    stream_of = {str(s.uuid): s.stream for s in sent}
    at_broker = broker.order()
    lines = [f"{len(wrong)} events out of their stream's order"]
    for stream in sorted({r.stream for r in wrong}):
        arrived = [position[str(r.uuid)] for r in sorted(rows, key=lambda r: r.position or 0)
                   if r.stream == stream]  # fmt: skip
        brokered = [position[u] for u in at_broker if stream_of.get(u) == stream]
        first = min(i for i, p in enumerate(arrived) if p != i + 1)
        lines.append(
            f"{stream}: arrived at billing {arrived[max(0, first - 3) : first + 8]} (from "
            f"billing position {max(1, first - 2)}); at the broker, in its order: "
            f"{[p for p in brokered if abs((p or 0) - first) < 12]}"
        )
    return "\n".join(lines)


def commit() -> str:
    done = subprocess.run(
        ["git", "log", "-1", "--format=%h %s"], cwd=ROOT, capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def report(figures: dict[str, Any]) -> None:
    print("SCALE", json.dumps(figures))
    suffix = os.environ.get("EVENTBUS_TEST_SUFFIX", "main")
    default = Path(tempfile.gettempdir()) / f"eventbus_scale_{suffix}_{N}.jsonl"
    with open(os.environ.get("EVENTBUS_SCALE_REPORT") or default, "a") as f:
        f.write(json.dumps(figures) + "\n")


@pytest.mark.timeout(300 + N // 4)
@pytest.mark.parametrize("kind", ["rabbitmq", "nats", "redis"])
def test_two_services_through_a_broker_with_faults(
    kind: str, own_server: Callable[[str], OwnServer], worker_env: dict[str, str], tmp_path: Path
) -> None:
    server = own_server(kind)
    booted_in = server.started_in
    options = unique_options(kind, url=server.url)
    source = {**options, **SOURCE_OPTIONS.get(kind, {})}
    worker_settings = {
        "NUDGE": False,
        "LEASE_SECONDS": 5,  # a killed worker's claims come back soon
        "HANDLER_TIMEOUT": 2,
        "DISPATCH_SECONDS": 2,
        "RETRY_BACKOFF": 0.2,
        "RETRY_BACKOFF_MAX": 1,  # the relay retries quickly while the broker is down
    }
    relay = {**options, "EVENT_TYPES": ["testapp.Credited"], "TIMEOUT": 1}
    shop_env = {
        **worker_env,
        "EVENTBUS_TEST_SETTINGS": json.dumps(
            {**worker_settings, "RELAYS": {"billing": {**relay, "MAX_ATTEMPTS": 10_000}}}
        ),
    }
    billing_env = {
        **worker_env,
        "DJANGO_SETTINGS_MODULE": "tests.relay.billing_settings",
        "EVENTBUS_BILLING_DB_NAME": str(connections["other"].settings_dict["NAME"]),
        "EVENTBUS_TEST_SETTINGS": json.dumps({**worker_settings, "SOURCES": {"shop": source}}),
    }
    # Billing's queue / consumer group / durable consumer exists before anything is sent.
    load_backend(kind).Consumer("shop", source).close()
    broker = Broker(server, source)

    processes = Processes(tmp_path)
    shop = Pool(processes, shop_env, "shop-drain-", "default")
    billing = Pool(processes, billing_env, "billing-drain-", "other")
    consume = ("eventbus_consume", "shop", "--batch", "50", "--report", "0.5")
    consumers = 1
    consumer = processes.start(billing_env, "billing-consume-1", *consume)

    began = time.monotonic()
    hold = tmp_path / "hold"  # while it exists the shop emits only a trickle
    app = processes.start(
        shop_env, "shop-app", str(N), str(STREAMS), str(EMIT_SECONDS), str(hold),
        module="tests.relay.scale_emitter",
    )  # fmt: skip
    scheduled = RELAY_FAULTS + CONSUMER_FAULTS
    faults: dict[str, int] = {name: 0 for _, name in scheduled}
    held_at_kills: list[int] = []
    in_hand_at_kills: list[int] = []
    outages: list[float] = []
    relay_faults, consumer_faults = list(RELAY_FAULTS), list(CONSUMER_FAULTS)

    def received() -> int:
        return OutboxEvent.objects.using("other").filter(source="shop").count()

    def emitted() -> int:
        return OutboxEvent.objects.filter(source="").count()

    def published() -> int:
        return count("default", handler=RELAY, status=Delivery.Status.SUCCEEDED)

    def wait(what: str, done: Callable[[], bool], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not done():
            assert time.monotonic() < deadline, f"{what}: not done\n{processes.tails()}"
            shop.top_up()
            billing.top_up()
            time.sleep(0.2)

    try:
        deadline = time.monotonic() + 240 + N * 0.15
        while (got := received()) < N:
            assert time.monotonic() < deadline, (
                f"{got} of {N} received; {published()} published\n{processes.tails()}"
            )
            shop.top_up()
            billing.top_up()
            # A fault that is due holds the shop's emitting back to a trickle until it is
            # injected: under load (RabbitMQ's stop_app takes 5-15 s, a kill may need a
            # few tries) the faults still land while events flow.
            if (relay_faults and emitted() >= relay_faults[0][0] * N) or (
                consumer_faults and got >= consumer_faults[0][0] * N
            ):
                hold.touch()
            else:
                hold.unlink(missing_ok=True)
            if relay_faults and emitted() >= relay_faults[0][0] * N and published() < N:
                fault = relay_faults[0][1]
                if fault == "relay worker SIGKILL":
                    if held := kill_relay_worker(shop):
                        held_at_kills.append(held)
                        faults[relay_faults.pop(0)[1]] += 1
                else:
                    down = time.monotonic()
                    server.stop()
                    time.sleep(OUTAGE)
                    server.start()
                    outages.append(round(time.monotonic() - down, 1))
                    faults[relay_faults.pop(0)[1]] += 1
            if (
                consumer_faults
                and got >= consumer_faults[0][0] * N
                and (in_hand := kill_consumer(consumer, broker)) is not None
            ):
                in_hand_at_kills.append(in_hand)
                faults[consumer_faults.pop(0)[1]] += 1
                consumers += 1
                name = f"billing-consume-{consumers}"
                consumer = processes.start(billing_env, name, *consume)
            time.sleep(0.2)
        all_received = timezone.now()
        hold.unlink(missing_ok=True)
        assert app.wait(60) == 0, processes.tails()
        # A re-published duplicate reaches billing after its original: wait for the relay
        # to finish and billing's queue to empty, then for billing's local handler.
        wait("relay deliveries", lambda: published() == N, 120 + N * 0.03)
        wait("billing's source", lambda: broker.unsettled() == 0, 120 + N * 0.03)
        handled = lambda: count("other", handler=LOCAL, status="succeeded") == N  # noqa: E731
        wait("billing's handler", handled, 120 + N * 0.03)
        elapsed = time.monotonic() - began
        consumer.send_signal(signal.SIGTERM)
        assert consumer.wait(30) == 0, processes.tails()
    finally:
        processes.end()

    sent = list(OutboxEvent.objects.filter(source=""))
    assert len(sent) == N
    # Every event in billing's inbox exactly once, and nothing else.
    rows = list(OutboxEvent.objects.using("other").filter(source="shop"))
    assert len(rows) == N, f"{len(rows)} stored for {N} sent"
    assert {r.uuid for r in rows} == {s.uuid for s in sent}
    # Each stream arrived in the sender's order: billing's positions (given in order of
    # arrival) are the shop's.
    shop_positions = {s.uuid: (s.stream, s.position) for s in sent}
    out_of_order = [r for r in rows if shop_positions[r.uuid] != (r.stream, r.position)]
    assert not out_of_order, disorder(out_of_order, rows, sent, broker)
    # The shop's relay deliveries all succeeded; billing's handler ran once per event.
    assert count("default", handler=RELAY, status="succeeded") == N
    assert count("other", handler=LOCAL, status="succeeded") == N
    balances = Balance.objects.using("other").aggregate(events=Sum("events"), total=Sum("total"))
    assert balances == {"events": N, "total": N * (N - 1) // 2}
    # Every fault was injected (each kill mid-batch / with messages in hand), the relay's
    # while it published (a machine too slow for that fails here).
    assert faults == {name: sum(f == name for _, f in scheduled) for name in faults}, faults

    stored_at_broker = broker.stored()
    assert stored_at_broker >= N
    dropped = 0
    for text in processes.output("billing-consume-"):
        counts = re.findall(r"shop: lag=\S+ stored=\d+ duplicates=(\d+)", text)
        dropped += int(counts[-1]) if counts else 0
    relayed = Delivery.objects.filter(handler=RELAY)
    attempts = relayed.aggregate(n=Sum("attempts"))["n"]
    figures = {
        "backend": kind,
        "events": N,
        "streams": STREAMS,
        **faults,
        "relay deliveries in the killed worker's hand": held_at_kills,
        "relay attempts beyond one per event": attempts - N,
        "broker outages (s)": outages,
        "unacked messages in the consumer's hand at the kills": in_hand_at_kills,
        "messages stored by the broker": stored_at_broker,
        "duplicates published": stored_at_broker - N,
        "duplicates dropped by the inbox": dropped,
        "worker processes started (shop drains, billing drains, consumers)": [
            shop.started,
            billing.started,
            consumers,
        ],
        "emitted over (s)": round(
            (max(s.created_at for s in sent) - min(s.created_at for s in sent)).total_seconds()
        ),
        "all received, after the last emit (s)": round(
            (all_received - max(s.created_at for s in sent)).total_seconds(), 1
        ),
        "elapsed (s)": round(elapsed, 1),
        "broker start (s)": round(booted_in, 1),
        "commit": commit(),
    }
    report(figures)
    # Billing made one delivery per event: nothing unreadable, nothing dead-lettered.
    assert Delivery.objects.using("other").aggregate(n=Count("id"))["n"] == N
