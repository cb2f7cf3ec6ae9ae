"""Relays publish a claimed batch at once and record each delivery's own outcome: one
publish and one confirm wait per batch, a refused message fails only its delivery, a hung
or broken broker fails only the relay's deliveries, and a worker killed mid-publish leaves
them to be published again, uncharged."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from eventbus_app import Event, emit
from eventbus_app.exceptions import HandlerTimeout
from eventbus_app.models import Delivery, DeliveryAttempt
from eventbus_app.relay.backends.base import Message, Publisher, PublishError
from eventbus_app.testing import drain
from tests.testapp.events import Credited  # worker processes know its class

from .conftest import need_broker, unique_options
from .filebackend import batches
from .test_backends import Internal, Shipped, collect

pytestmark = pytest.mark.django_db(databases=["default", "other"])

Status = Delivery.Status


class Refused(Event, event_type="relaytest.Refused"):
    order: int


def file_relay(path: Any, **options: Any) -> dict[str, Any]:
    return {
        "BACKEND": "tests.relay.filebackend",
        "PATH": str(path),
        "EVENT_TYPES": ["relaytest.*"],
        "MAX_ATTEMPTS": 2,
        "TIMEOUT": 1,  # a broker call's limit: leaves room for halving in the tests' 10 s
        **options,
    }


def test_a_claim_is_published_in_one_call_in_order(relays: Any, tmp_path: Any) -> None:
    log = tmp_path / "broker.jsonl"
    relays(relays={"out": file_relay(log)})
    sent = [emit(Shipped(order=n, note=""), stream=f"order-{n}") for n in range(30)]
    sent += [emit(Shipped(order=100 + n, note="")) for n in range(10)]
    drain()

    relayed = Delivery.objects.filter(handler="relay:out")
    assert relayed.count() == 40
    assert set(relayed.values_list("status", "attempts")) == {(Status.SUCCEEDED, 1)}
    calls = batches(log)
    published = [i for call in calls for i in call["ids"]]
    assert sorted(published) == sorted(str(e.uuid) for e in sent)  # each once
    # Two publishes: the fan-out leases the events without a stream at once; the streams'
    # (ordered) deliveries come in the next claim. Each batch goes in stored order.
    assert sorted(len(c["ids"]) for c in calls) == [10, 30]
    stored = [str(e.uuid) for e in sent]
    for call in calls:
        assert call["ids"] == sorted(call["ids"], key=stored.index)


def test_a_streams_events_go_in_successive_batches_in_order(relays: Any, tmp_path: Any) -> None:
    log = tmp_path / "broker.jsonl"
    relays(relays={"out": file_relay(log)})
    sent = [emit(Shipped(order=n, note=""), stream="order-1") for n in range(5)]
    drain()
    published = [i for call in batches(log) for i in call["ids"]]
    assert published == [str(e.uuid) for e in sent]
    # An ordered relay claims a stream's head only: at most one of its events per batch.
    assert all(len(call["ids"]) == 1 for call in batches(log))


def test_a_refused_message_fails_its_delivery_only(
    relays: Any, register: Any, tmp_path: Any
) -> None:
    log = tmp_path / "broker.jsonl"
    relays(relays={"out": file_relay(log, REFUSE_TYPES=["relaytest.Refused"])})
    ran: list[int] = []

    @register(Shipped, name="test.local")
    def local(event: Shipped) -> None:
        ran.append(event.order)

    good = [emit(Shipped(order=n, note="")) for n in range(3)]
    bad = emit(Refused(order=9))
    later = emit(Shipped(order=5, note=""), stream="s")
    drain()

    assert sorted(ran) == [0, 1, 2, 5]
    relayed = {d.event_id: d for d in Delivery.objects.filter(handler="relay:out")}
    for event in [*good, later]:
        assert (relayed[event.pk].status, relayed[event.pk].attempts) == (Status.SUCCEEDED, 1)
    dead = relayed[bad.pk]
    assert (dead.status, dead.attempts) == (Status.DEAD, 2)
    assert "refused type relaytest.Refused" in dead.last_error
    assert dead.error_class.endswith("PublishError")
    assert DeliveryAttempt.objects.filter(delivery=dead).count() == 2


def test_a_hung_broker_times_out_the_relays_batch_only(
    relays: Any, register: Any, tmp_path: Any
) -> None:
    log = tmp_path / "broker.jsonl"
    relays(relays={"out": file_relay(log, HANG_SECONDS=30, HANDLER_TIMEOUT=1, MAX_ATTEMPTS=1)})
    ran: list[int] = []

    @register(Shipped, name="test.local")
    def local(event: Shipped) -> None:
        ran.append(event.order)

    for n in range(3):
        emit(Shipped(order=n, note=""), stream=f"s{n}")
    started = time.monotonic()
    drain()
    assert time.monotonic() - started < 15
    assert sorted(ran) == [0, 1, 2]
    relayed = Delivery.objects.filter(handler="relay:out")
    assert set(relayed.values_list("status", flat=True)) == {Status.DEAD}
    for delivery in relayed:
        assert delivery.error_class == f"{HandlerTimeout.__module__}.HandlerTimeout"
        assert "timed out after 1 s" in delivery.last_error
    local_rows = Delivery.objects.filter(handler="test.local")
    assert set(local_rows.values_list("status", "attempts")) == {(Status.SUCCEEDED, 1)}


@pytest.mark.subprocess
@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_a_worker_killed_mid_publish_leaves_the_batch_to_publish_again_uncharged(
    relays: Any,
    register: Any,
    tmp_path: Any,
    worker_env: dict[str, str],
    spawn: Callable[..., Any],
) -> None:
    log = tmp_path / "broker.jsonl"
    # It hangs after the broker has the batch; the test kills the worker long before the
    # 2 s time limit would.
    relay = file_relay(log, HANG_SECONDS=60, EVENT_TYPES=["testapp.*"])
    env = {
        **worker_env,
        "EVENTBUS_TEST_SETTINGS": json.dumps(
            {"NUDGE": False, "LEASE_SECONDS": 3, "HANDLER_TIMEOUT": 2, "RELAYS": {"out": relay}}
        ),
    }
    relays(relays={"out": file_relay(log, EVENT_TYPES=["testapp.*"])})
    sent = [emit(Credited(amount=n), stream=f"s{n}") for n in range(20)]
    worker = spawn("eventbus_drain", env=env)
    deadline = time.monotonic() + 60
    while not batches(log):  # the broker has the batch; its confirms are not in
        assert worker.poll() is None, (
            worker.stdout.read(),
            list(Delivery.objects.values_list("handler", "status", "attempts", "last_error")),
        )
        assert time.monotonic() < deadline, "the worker never published"
        time.sleep(0.05)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(10)
    before = batches(log)
    assert set(Delivery.objects.filter(handler="relay:out").values_list("status", flat=True)) == {
        Status.RUNNING
    }

    time.sleep(3.5)  # the lease expires
    drain()
    relayed = Delivery.objects.filter(handler="relay:out")
    # Published again (the receiver's inbox drops the copies), charged one attempt each:
    # the killed batch never started an attempt that could be blamed on one of them.
    assert set(relayed.values_list("status", "attempts", "isolate")) == {
        (Status.SUCCEEDED, 1, False)
    }
    everything = sorted(str(e.uuid) for e in sent)
    assert [sorted(c["ids"]) for c in before] == [everything]  # one batch, then the kill
    again = sorted(i for c in batches(log)[len(before) :] for i in c["ids"])
    assert again == everything  # each published once more, none lost
    assert not DeliveryAttempt.objects.filter(delivery__handler="relay:out").exists()


def test_a_broken_connection_fails_the_whole_batch_and_makes_a_new_publisher(
    relays: Any, tmp_path: Any
) -> None:
    from eventbus_app.relay import publish

    log = tmp_path / "broker.jsonl"
    relays(relays={"out": file_relay(log, DOWN=True)})
    for n in range(3):
        emit(Shipped(order=n, note=""), stream=f"s{n}")
    drain()
    relayed = Delivery.objects.filter(handler="relay:out")
    assert set(relayed.values_list("status", "attempts")) == {(Status.DEAD, 2)}
    assert all("the file broker is down" in d.last_error for d in relayed)
    assert "out" not in publish._publishers  # dropped after the error: a new one next time


def test_rabbitmq_refuses_an_unroutable_message_and_confirms_the_rest(relays: Any) -> None:
    """A real broker's per-message answer inside one confirmed batch: the queue is bound to
    one type only, so RabbitMQ returns the other type's message (mandatory)."""
    need_broker("rabbitmq")
    from eventbus_app.relay.backends import rabbitmq
    from eventbus_app.relay.config import source_options

    options = unique_options("rabbitmq")
    relays(
        relays={"out": {**options, "EVENT_TYPES": ["relaytest.*", "internal.*"]}},
        sources={"shop": {**options, "BINDINGS": ["relaytest.#"], "DATABASE": "other"}},
    )
    consumer = rabbitmq.Consumer("shop", source_options("shop"))
    try:
        good = [emit(Shipped(order=n, note="")) for n in range(5)]
        unroutable = emit(Internal(what="no queue for this type"))
        drain()
        bodies = collect(consumer, "shop", 5)
    finally:
        consumer.channel.queue_delete(options["QUEUE"])
        consumer.channel.exchange_delete(options["EXCHANGE"])
        consumer.close()
    relayed = {d.event_id: d for d in Delivery.objects.filter(handler="relay:out")}
    assert {(relayed[e.pk].status, relayed[e.pk].attempts) for e in good} == {(Status.SUCCEEDED, 1)}
    assert relayed[unroutable.pk].status == Status.DEAD  # drain() retries without backoff
    assert "no queue is bound" in relayed[unroutable.pk].last_error
    assert sorted(json.loads(b)["id"] for b in bodies) == sorted(str(e.uuid) for e in good)


@pytest.mark.parametrize("backend", ["rabbitmq", "nats", "redis"])
def test_a_backlog_goes_to_the_broker_in_few_batches(backend: str, relays: Any) -> None:
    """Against the real broker: 250 events, two claims' worth, each one confirmed, in the
    stored order, received once each."""
    need_broker(backend)
    from eventbus_app.relay.backends import load_backend
    from eventbus_app.relay.config import source_options

    options = unique_options(backend)
    relays(
        relays={"out": {**options, "EVENT_TYPES": ["relaytest.*"]}},
        sources={"shop": {**options, "DATABASE": "other"}},
    )
    consumer = load_backend(backend).Consumer("shop", source_options("shop"))
    try:
        sent = [emit(Shipped(order=n, note="")) for n in range(250)]
        drain()
        bodies = collect(consumer, "shop", 250, seconds=30)
    finally:
        consumer.close()
    relayed = Delivery.objects.filter(handler="relay:out")
    assert set(relayed.values_list("status", "attempts")) == {(Status.SUCCEEDED, 1)}
    ids = [json.loads(b)["id"] for b in bodies]
    assert sorted(set(ids)) == sorted(str(e.uuid) for e in sent)
    assert ids == [str(e.uuid) for e in sent]  # the broker kept the stored order


class OnlyPublish(Publisher):
    """A backend written before batches: only ``publish``."""

    sent: list[str] = []

    def publish(self, message: Message) -> None:
        if message.type == "refused":
            raise PublishError("no")
        self.sent.append(message.id)


def test_a_backend_with_only_publish_still_publishes_batches() -> None:
    publisher = OnlyPublish("x", {})
    messages = [
        Message(id=str(n), type="refused" if n == 1 else "t", subject="", body=b"")
        for n in range(3)
    ]
    outcomes = publisher.publish_many(messages)
    assert [o is None for o in outcomes] == [True, False, True]
    assert OnlyPublish.sent == ["0", "2"]


def test_a_backend_with_neither_method_is_refused_when_defined() -> None:
    with pytest.raises(TypeError, match="must implement publish_many"):

        class Nothing(Publisher):
            pass


def test_relay_deliveries_given_back_with_the_rest_are_claimed_again(
    relays: Any, settings: Any, tmp_path: Any
) -> None:
    """A batch that gives back what does not fit in its lease gives back the relay's
    deliveries too (none is left running under a lease nobody works on)."""
    log = tmp_path / "broker.jsonl"
    relays(relays={"out": file_relay(log, EVENT_TYPES=["testapp.*"], HANDLER_TIMEOUT=1)})
    settings.EVENTBUS = {**settings.EVENTBUS, "LEASE_SECONDS": 3, "HANDLER_TIMEOUT": 30}
    sent = [emit(Credited(amount=n), stream=f"s{n}") for n in range(3)]
    counts = drain()
    assert counts["dead"] == 0, counts
    relayed = Delivery.objects.filter(handler="relay:out")
    assert set(relayed.values_list("status", "attempts")) == {(Status.SUCCEEDED, 1)}
    published = sorted(i for call in batches(log) for i in call["ids"])
    assert published == sorted(str(e.uuid) for e in sent)


@pytest.mark.postgres
def test_fan_out_puts_the_start_marker_on_a_handler_not_on_the_relay(
    relays: Any, register: Any, tmp_path: Any
) -> None:
    """The fan-out's start marker covers the first delivery the batch runs; a relay's run
    after the others and carry none (a kill mid-publish charges nobody)."""
    from eventbus_app.dispatch import fan_out_leased

    relays(relays={"out": file_relay(tmp_path / "broker.jsonl")})

    @register(Shipped, name="test.local")
    def local(event: Shipped) -> None: ...

    emit(Shipped(order=1, note=""))
    _, _, leased = fan_out_leased("default")
    marked = {d.handler: d.in_flight for d in leased}
    assert marked == {"relay:out": 0, "test.local": 1}


def test_a_message_that_breaks_its_batch_fails_alone(relays: Any, tmp_path: Any) -> None:
    """One message makes the whole batch fail (a broker refusing a too-big frame closes the
    connection, say): the halves go on their own until it is alone, so its neighbours are
    published, charged once, and only it fails."""
    log = tmp_path / "broker.jsonl"
    relays(relays={"out": file_relay(log, BREAK_TYPES=["relaytest.Refused"])})
    good = [emit(Shipped(order=n, note=""), stream=f"s{n}") for n in range(12)]
    poison = emit(Refused(order=99), stream="s-poison")
    good += [emit(Shipped(order=n, note=""), stream=f"t{n}") for n in range(12)]
    drain()
    relayed = {d.event_id: d for d in Delivery.objects.filter(handler="relay:out")}
    assert {(relayed[e.pk].status, relayed[e.pk].attempts) for e in good} == {(Status.SUCCEEDED, 1)}
    assert relayed[poison.pk].status == Status.DEAD
    assert "broke on a batch of 1" in relayed[poison.pk].last_error
    published = [i for call in batches(log) for i in call["ids"]]
    assert sorted(published) == sorted(str(e.uuid) for e in good)  # each once


def test_a_broker_that_is_down_costs_the_batch_one_attempt_not_a_search(
    relays: Any, tmp_path: Any
) -> None:
    """Both halves failing means the broker is at fault: no further splitting."""
    log = tmp_path / "broker.jsonl"
    relays(relays={"out": file_relay(log, DOWN=True, MAX_ATTEMPTS=1)})
    from eventbus_app.relay import publish

    calls: list[int] = []
    original = publish._attempt

    def counted(name: str, messages: Any, deadline: Any) -> Any:
        calls.append(len(messages))
        return original(name, messages, deadline)

    publish._attempt = counted  # type: ignore[assignment]
    try:
        for n in range(40):
            emit(Shipped(order=n, note=""), stream=f"s{n}")
        drain()
    finally:
        publish._attempt = original  # type: ignore[assignment]
    assert calls == [40, 20, 20]
    relayed = Delivery.objects.filter(handler="relay:out")
    assert set(relayed.values_list("status", flat=True)) == {Status.DEAD}


@pytest.mark.django_db(databases=["default", "other"])
def test_nats_refuses_a_message_over_max_payload_alone(relays: Any) -> None:
    """A real NATS server's max_payload (1 MiB by default): the big message fails on its
    own; the rest of its batch is acknowledged."""
    need_broker("nats")
    options = unique_options("nats")
    relays(relays={"out": {**options, "EVENT_TYPES": ["relaytest.*"], "MAX_ATTEMPTS": 1}})
    from eventbus_app.relay.publish import publisher_for

    limit = publisher_for("out").nc.max_payload  # type: ignore[attr-defined]
    small = [emit(Shipped(order=n, note="")) for n in range(3)]
    big = emit(Shipped(order=9, note="x" * 10))
    # The stored payload is made bigger than the server takes (emit() caps payloads lower).
    OutboxEventModel = big.__class__
    OutboxEventModel.objects.filter(pk=big.pk).update(
        payload={"order": 9, "note": "x" * (limit + 10)}
    )
    drain()
    relayed = {d.event_id: d for d in Delivery.objects.filter(handler="relay:out")}
    assert {relayed[e.pk].status for e in small} == {Status.SUCCEEDED}
    assert relayed[big.pk].status == Status.DEAD
    assert "max_payload" in relayed[big.pk].last_error
    publisher = publisher_for("out")
    publisher.loop.run(  # type: ignore[attr-defined]
        publisher.js.delete_stream(options["STREAM"]),
        5,  # type: ignore[attr-defined]
    )


def test_two_messages_that_break_their_batch_each_fail_alone(relays: Any, tmp_path: Any) -> None:
    """One in each half: both halves fail, but not with the whole's error (a broker that is
    down would give the same one), so the search goes on and finds both."""
    log = tmp_path / "broker.jsonl"
    relays(relays={"out": file_relay(log, BREAK_TYPES=["relaytest.Refused"])})
    good = [emit(Shipped(order=n, note=""), stream=f"s{n}") for n in range(6)]
    first = emit(Refused(order=1), stream="p1")
    good += [emit(Shipped(order=n, note=""), stream=f"t{n}") for n in range(12)]
    second = emit(Refused(order=2), stream="p2")
    good += [emit(Shipped(order=n, note=""), stream=f"u{n}") for n in range(6)]
    drain()
    relayed = {d.event_id: d for d in Delivery.objects.filter(handler="relay:out")}
    assert {(relayed[e.pk].status, relayed[e.pk].attempts) for e in good} == {(Status.SUCCEEDED, 1)}
    assert {relayed[first.pk].status, relayed[second.pk].status} == {Status.DEAD}
