"""``manage.py eventbus_consume NAME`` as a real process: SIGTERM stops it cleanly, SIGKILL
before an ack loses nothing, a broker restart is survived (reconnect with backoff), and the
lag is reported."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from eventbus_app.models import OutboxEvent
from eventbus_app.relay.backends import load_backend
from eventbus_app.relay.backends.base import Message
from eventbus_app.relay.cloudevents import encode

from .conftest import need_broker, unique_options

pytestmark = [pytest.mark.subprocess, pytest.mark.django_db(transaction=True)]


def publish(options: dict[str, Any], numbers: range) -> list[str]:
    backend = load_backend(options["BACKEND"])
    publisher = backend.Publisher("sender", options)
    ids = []
    try:
        for n in numbers:
            event = {
                "specversion": "1.0",
                "id": str(uuid.uuid4()),
                "source": "/sender",
                "type": "consumetest.Counted",
                "subject": f"s-{n % 3}",
                "data": {"n": n},
            }
            publisher.publish(Message(event["id"], event["type"], event["subject"], encode(event)))
            ids.append(event["id"])
    finally:
        publisher.close()
    return ids


def stored(source: str) -> int:
    return OutboxEvent.objects.filter(source=source).count()


def wait_for(source: str, count: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while stored(source) < count:
        assert time.monotonic() < deadline, f"{stored(source)} of {count} stored"
        time.sleep(0.05)


def env_for(worker_env: dict[str, str], source: str, options: dict[str, Any]) -> dict[str, str]:
    settings = {"NUDGE": False, "SOURCES": {source: options}}
    return {**worker_env, "EVENTBUS_TEST_SETTINGS": json.dumps(settings)}


def assert_all_once_in_order(source: str, ids: list[str]) -> None:
    rows = list(OutboxEvent.objects.filter(source=source).order_by("stream", "position"))
    assert sorted(str(r.uuid) for r in rows) == sorted(ids)  # every one, exactly once
    for stream in ("s-0", "s-1", "s-2"):
        numbers = [r.payload["n"] for r in rows if r.stream == stream]
        assert numbers == sorted(numbers), f"{stream} out of order"


@pytest.mark.parametrize("backend", ["redis", "rabbitmq", "nats"])
def test_sigterm_and_sigkill_lose_nothing(
    backend: str, spawn: Callable[..., Any], worker_env: dict[str, str]
) -> None:
    need_broker(backend)
    options = unique_options(backend)
    env = env_for(worker_env, "sig", options)
    # The receiving side's queue / group / durable consumer exists before anything is sent.
    load_backend(backend).Consumer("sig", options).close()
    ids = publish(options, range(300))
    args = ("eventbus_consume", "sig", "--batch", "10", "--report", "0.2")

    first = spawn(*args, env=env)
    wait_for("sig", 30)
    first.send_signal(signal.SIGTERM)  # mid-stream: the message in hand is finished
    assert first.wait(30) == 0
    out = first.stdout.read()
    assert "sig: stopped" in out and "lag=" in out, out
    after_term = stored("sig")
    assert after_term < 300

    second = spawn(*args, env=env)
    wait_for("sig", after_term + 30)
    os.kill(second.pid, signal.SIGKILL)  # some stored and not acked yet, some in hand
    second.wait(30)

    third = spawn(*args, env=env)
    wait_for("sig", 300)
    time.sleep(1)  # a duplicate, if any, would show up now
    third.send_signal(signal.SIGTERM)
    assert third.wait(30) == 0
    out = third.stdout.read()
    assert "lag=0" in out, out
    assert_all_once_in_order("sig", ids)


def test_consumer_reconnects_after_a_broker_restart(
    own_server: Callable[[str], Any], spawn: Callable[..., Any], worker_env: dict[str, str]
) -> None:
    server = own_server("redis")
    options = unique_options("redis", url=server.url)
    env = env_for(worker_env, "re", options)
    ids = publish(options, range(50))
    consumer = spawn("eventbus_consume", "re", "--report", "0.5", env=env)
    wait_for("re", 50)

    server.stop()
    time.sleep(1.5)  # the consumer notices and backs off
    server.start()  # same port, same data (append-only file)
    ids += publish(options, range(50, 100))
    wait_for("re", 100, seconds=90)
    consumer.send_signal(signal.SIGTERM)
    assert consumer.wait(30) == 0
    out = consumer.stdout.read()
    assert "reconnecting in" in out, out
    assert out.count("re: connected") >= 2, out
    assert_all_once_in_order("re", ids)


@pytest.mark.django_db
def test_an_http_source_is_not_consumed(relays: Any) -> None:
    relays(sources={"web": {"BACKEND": "http", "SECRET": "x"}})
    with pytest.raises(CommandError, match="is an http source"):
        call_command("eventbus_consume", "web")
    with pytest.raises(CommandError, match="has no entry 'nope'"):
        call_command("eventbus_consume", "nope")
