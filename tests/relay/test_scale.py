"""Scale-out, end to end (issue 12 point 4, reduced): two services, each with its own
database; the shop's relay workers (eventbus_drain processes) publish N events over Redis
Streams (the test's own redis-server) while a relay worker is SIGKILLed, the broker is
restarted, and the billing consumer is SIGKILLed before its acks. Afterwards every event is
in billing's inbox exactly once, in order per stream. ``EVENTBUS_SCALE_EVENTS`` sets N
(2,000 by default; the figures in docs/RELIABILITY.md are for 10,000)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connections, transaction

from eventbus_app import emit
from eventbus_app.models import Delivery, OutboxEvent
from tests.testapp.events import Credited  # the worker processes know its class

from ..conftest import ROOT
from .conftest import unique_options

pytestmark = [
    pytest.mark.subprocess,
    pytest.mark.reliability,
    pytest.mark.postgres,  # two services with their own databases and several workers
    pytest.mark.django_db(transaction=True, databases=["default", "other"]),
]

N: int = int(os.environ.get("EVENTBUS_SCALE_EVENTS", "2000"))
STREAMS = 20


@pytest.mark.timeout(600 + N // 5)
def test_two_services_through_redis_with_faults(
    own_server: Callable[[str], Any], worker_env: dict[str, str], tmp_path: Any
) -> None:
    server = own_server("redis")
    options = unique_options("redis", url=server.url)
    shop_env = {
        **worker_env,
        "EVENTBUS_TEST_SETTINGS": json.dumps(
            {
                "NUDGE": False,
                "LEASE_SECONDS": 5,
                "HANDLER_TIMEOUT": 2,
                "DISPATCH_SECONDS": 2,
                "RETRY_BACKOFF": 0.2,
                "RETRY_BACKOFF_MAX": 1,
                "RELAYS": {
                    "billing": {
                        **options,
                        "EVENT_TYPES": ["testapp.Credited"],
                        "TIMEOUT": 1,
                        "MAX_ATTEMPTS": 10_000,
                    }
                },
            }
        ),
    }
    billing_env = {
        **worker_env,
        "DJANGO_SETTINGS_MODULE": "tests.relay.billing_settings",
        "EVENTBUS_BILLING_DB_NAME": str(connections["other"].settings_dict["NAME"]),
        "EVENTBUS_TEST_SETTINGS": json.dumps({"NUDGE": False, "SOURCES": {"shop": options}}),
    }
    procs: list[subprocess.Popen[str]] = []
    logs: list[Any] = []

    def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
        log = open(tmp_path / f"p{len(procs)}.log", "w+")  # noqa: SIM115 (closed below)
        proc = subprocess.Popen(
            [sys.executable, "-m", "django", *args],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(proc)
        logs.append(log)
        return proc

    def received() -> int:
        return OutboxEvent.objects.using("other").filter(source="shop").count()

    consume = ("eventbus_consume", "shop", "--batch", "50", "--report", "1")
    consumer = start(billing_env, *consume)
    time.sleep(2)  # its consumer group exists before anything is published
    with transaction.atomic():
        sent = [emit(Credited(amount=n), stream=f"s-{n % STREAMS}") for n in range(N)]
    drains = [start(shop_env, "eventbus_drain", "--seconds", "120") for _ in range(2)]
    faults = {"relay worker SIGKILL": 0, "broker restart": 0, "consumer SIGKILL": 0}
    deadline = time.monotonic() + 300 + N * 0.1
    try:
        while received() < N:
            assert time.monotonic() < deadline, f"{received()} of {N} received"
            got = received()
            if got >= N // 5 and not faults["relay worker SIGKILL"]:
                drains[0].kill()
                faults["relay worker SIGKILL"] += 1
            if got >= N // 3 and not faults["consumer SIGKILL"]:
                consumer.kill()
                consumer.wait(10)
                consumer = start(billing_env, *consume)
                faults["consumer SIGKILL"] += 1
            if got >= N // 2 and not faults["broker restart"]:
                server.stop()
                time.sleep(2)
                server.start()
                faults["broker restart"] += 1
            if all(d.poll() is not None for d in drains):  # idle or waiting out a backoff
                drains.append(start(shop_env, "eventbus_drain", "--seconds", "120"))
            time.sleep(0.2)
        time.sleep(2)  # duplicates, if any, arrive now
        consumer.send_signal(signal.SIGTERM)
        assert consumer.wait(30) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    rows = list(OutboxEvent.objects.using("other").filter(source="shop"))
    assert len(rows) == N and {r.uuid for r in rows} == {s.uuid for s in sent}  # once each
    by_stream: dict[str, list[tuple[int, int]]] = {}
    for r in rows:
        by_stream.setdefault(r.stream, []).append((r.position or 0, r.payload["amount"]))
    for stream, pairs in by_stream.items():
        numbers = [n for _, n in sorted(pairs)]
        assert numbers == sorted(numbers), f"{stream} out of order at billing"
    relayed = Delivery.objects.filter(handler="relay:billing")  # the shop's side
    assert relayed.filter(status=Delivery.Status.SUCCEEDED).count() == N

    import redis

    published = redis.Redis.from_url(server.url).xlen(options["STREAM"])
    dropped = 0
    for log in logs:
        log.seek(0)
        counts = re.findall(r"shop: lag=\S+ stored=\d+ duplicates=(\d+)", log.read())
        dropped += int(counts[-1]) if counts else 0
        log.close()
    figures = {"events": N, **faults, "published": published, "duplicates dropped": dropped}
    print("scale-out figures:", json.dumps(figures))
    assert published >= N
