"""The http backend and source: a signed POST per event; the view checks the signature and
the replay window, and stores nothing it refuses."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from django.test import Client

from eventbus_app import Event, emit
from eventbus_app.models import Delivery, OutboxEvent
from eventbus_app.relay.cloudevents import BATCH_CONTENT_TYPE, encode
from eventbus_app.relay.signing import HEADER, sign
from eventbus_app.testing import drain

SECRET = "s3cret-for-tests"
URL = "/eventbus/shop/"


class Paid(Event, event_type="httptest.Paid"):
    invoice: int


def cloudevent(**over: Any) -> dict[str, Any]:
    event = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "/shop",
        "type": "httptest.Paid",
        "time": "2026-12-01T10:00:00Z",
        "subject": "invoice-9",
        "correlationid": str(uuid.uuid4()),
        "datacontenttype": "application/json",
        "data": {"invoice": 9},
    }
    event.update(over)
    return event


@pytest.fixture
def source(relays: Any, settings: Any) -> None:
    settings.ROOT_URLCONF = "tests.relay.urls"
    relays(sources={"shop": {"BACKEND": "http", "SECRET": SECRET, "REPLAY_WINDOW": 300}})


def post(client: Client, body: bytes, signature: str | None) -> Any:
    headers = {HEADER: signature} if signature is not None else {}
    return client.post(URL, body, content_type="application/cloudevents+json", headers=headers)


@pytest.mark.django_db
def test_a_signed_cloudevent_is_stored_once(source: None, client: Client) -> None:
    event = cloudevent()
    body = encode(event)
    response = post(client, body, sign(SECRET, body))
    assert response.status_code == 202, response.content
    stored = OutboxEvent.objects.get(source="shop")
    assert (str(stored.uuid), stored.event_type, stored.payload, stored.stream) == (
        event["id"],
        "httptest.Paid",
        {"invoice": 9},
        "invoice-9",
    )
    assert str(stored.correlation_id) == event["correlationid"]
    # The same message again (a retry after a lost response): acknowledged, dropped.
    again = post(client, body, sign(SECRET, body))
    assert again.status_code == 200 and again.json() == {"outcome": "duplicate"}
    assert OutboxEvent.objects.filter(source="shop").count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "case",
    [
        "no signature",
        "wrong secret",
        "body changed",
        "old timestamp",
        "future timestamp",
        "garbage header",
        "garbage body unsigned",
    ],
)
def test_hostile_requests_are_refused_and_store_nothing(
    source: None, client: Client, case: str
) -> None:
    body = encode(cloudevent())
    now = int(time.time())
    signature: str | None = {
        "no signature": None,
        "wrong secret": sign("not-the-secret", body),
        "body changed": sign(SECRET, body.replace(b"9", b"8")),
        "old timestamp": sign(SECRET, body, now - 301),
        "future timestamp": sign(SECRET, body, now + 301),
        "garbage header": "t=abc,v1=zz",
        "garbage body unsigned": "",
    }[case]
    if case == "garbage body unsigned":
        body = b"\x00\xffnot json"
    response = post(client, body, signature)
    assert response.status_code == 401, response.content
    assert not OutboxEvent.objects.exists()


@pytest.mark.django_db
def test_other_methods_and_unknown_sources_are_refused(source: None, client: Client) -> None:
    assert client.get(URL).status_code == 405
    body = encode(cloudevent())
    assert post_to(client, "/eventbus/nobody/", body).status_code == 404
    assert not OutboxEvent.objects.exists()


def post_to(client: Client, url: str, body: bytes) -> Any:
    return client.post(
        url, body, content_type="application/json", headers={HEADER: sign(SECRET, body)}
    )


@pytest.mark.django_db
def test_a_source_without_secret_refuses_everything(relays: Any, settings: Any) -> None:
    settings.ROOT_URLCONF = "tests.relay.urls"
    relays(sources={"shop": {"BACKEND": "http"}})
    body = encode(cloudevent())
    assert Client().post(URL, body, content_type="application/json").status_code == 503
    assert not OutboxEvent.objects.exists()


@pytest.mark.django_db
def test_a_signed_but_unreadable_message_is_kept_as_a_dead_letter(
    source: None, client: Client
) -> None:
    body = b'{"specversion": "0.3", "oops": '
    response = post(client, body, sign(SECRET, body))
    assert response.status_code == 202 and response.json() == {"outcome": "dead"}
    kept = OutboxEvent.objects.get(source="shop")
    assert kept.event_type == "eventbus_app.unreadable"
    assert kept.payload["text"] == body.decode()
    dead = Delivery.objects.get(event=kept)
    assert dead.status == Delivery.Status.DEAD
    assert "not JSON" in dead.last_error
    assert drain()["delivered"] == 0  # nothing for the dispatcher: it is dead already
    # Redelivered: the same bytes are the same message.
    assert post(client, body, sign(SECRET, body)).json() == {"outcome": "duplicate"}


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_http_relay_to_a_live_server(relays: Any, settings: Any, live_server: Any) -> None:
    """The http backend POSTs to a real server (this test's live server), whose source
    writes to the "other" database: two services, one process."""
    settings.ROOT_URLCONF = "tests.relay.urls"
    relays(
        relays={"billing": {"BACKEND": "http", "URL": f"{live_server.url}{URL}", "SECRET": SECRET}},
        sources={"shop": {"BACKEND": "http", "SECRET": SECRET, "DATABASE": "other"}},
    )
    sent = [emit(Paid(invoice=n), stream="invoice-1") for n in range(3)]
    counts = drain()
    assert counts["dead"] == 0, counts
    received = OutboxEvent.objects.using("other").filter(source="shop").order_by("position")
    assert [r.uuid for r in received] == [s.uuid for s in sent]
    assert set(
        Delivery.objects.filter(handler="relay:billing").values_list("status", flat=True)
    ) == {Delivery.Status.SUCCEEDED}


@pytest.mark.django_db
def test_a_refusing_receiver_fails_the_relay_delivery(
    relays: Any, settings: Any, live_server: Any
) -> None:
    settings.ROOT_URLCONF = "tests.relay.urls"
    relays(
        relays={
            "billing": {
                "BACKEND": "http",
                "URL": f"{live_server.url}{URL}",
                "SECRET": "wrong",
                "MAX_ATTEMPTS": 1,
            }
        },
        sources={"shop": {"BACKEND": "http", "SECRET": SECRET, "DATABASE": "other"}},
    )
    emit(Paid(invoice=1))
    drain()
    dead = Delivery.objects.get(handler="relay:billing")
    assert dead.status == Delivery.Status.DEAD
    assert "401" in dead.last_error


def post_batch(client: Client, body: bytes, signature: str | None) -> Any:
    headers = {HEADER: signature} if signature is not None else {}
    return client.post(URL, body, content_type=BATCH_CONTENT_TYPE, headers=headers)


@pytest.mark.django_db
def test_a_signed_batch_is_stored_in_one_go_with_each_events_outcome(
    source: None, client: Client
) -> None:
    first = cloudevent(subject="invoice-1")
    body = encode(first)
    assert post(client, body, sign(SECRET, body)).status_code == 202
    second = cloudevent(subject="invoice-1", data={"invoice": 10})
    batch = [first, second, {"specversion": "1.0", "id": "x"}, cloudevent(subject="")]
    body = b"[" + b",".join(encode(e) for e in batch) + b"]"
    response = post_batch(client, body, sign(SECRET, body))
    assert response.status_code == 202, response.content
    assert response.json() == {
        "outcomes": ["duplicate", "stored", "dead", "stored"],
        "stored": 2,
        "duplicate": 1,
        "dead": 1,
    }
    received = OutboxEvent.objects.filter(source="shop").exclude(
        event_type="eventbus_app.unreadable"
    )
    assert sorted(str(r.uuid) for r in received) == sorted(
        [first["id"], second["id"], batch[3]["id"]]
    )
    assert [r.position for r in received.filter(stream="invoice-1").order_by("position")] == [1, 2]
    kept = OutboxEvent.objects.get(event_type="eventbus_app.unreadable")
    assert "required attribute 'source'" in Delivery.objects.get(event=kept).last_error
    # The whole batch again (a retry after a lost answer): every one a duplicate.
    again = post_batch(client, body, sign(SECRET, body))
    assert again.status_code == 200 and again.json()["duplicate"] == 4


@pytest.mark.django_db
def test_a_batch_with_a_bad_signature_stores_nothing(source: None, client: Client) -> None:
    body = b"[" + encode(cloudevent()) + b"]"
    assert post_batch(client, body, sign("not-the-secret", body)).status_code == 401
    assert not OutboxEvent.objects.exists()


@pytest.mark.django_db
def test_a_batch_that_is_no_json_array_is_kept_whole_as_one_dead_letter(
    source: None, client: Client
) -> None:
    body = b'{"not": "an array"}'
    response = post_batch(client, body, sign(SECRET, body))
    assert response.status_code == 202 and response.json() == {"outcome": "dead"}
    kept = OutboxEvent.objects.get(source="shop")
    assert kept.event_type == "eventbus_app.unreadable"
    assert kept.payload["text"] == body.decode()


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_the_http_relay_sends_a_claim_as_one_signed_batch(
    relays: Any, settings: Any, live_server: Any
) -> None:
    """Many streams' events in one claim: one request, all stored by the receiver."""
    from django.core.signals import request_finished

    settings.ROOT_URLCONF = "tests.relay.urls"
    relay = {"BACKEND": "http", "URL": f"{live_server.url}{URL}", "SECRET": SECRET}
    relays(
        relays={"billing": {**relay, "BATCHED": True}},
        sources={"shop": {"BACKEND": "http", "SECRET": SECRET, "DATABASE": "other"}},
    )
    requests: list[int] = []

    def count(**kwargs: Any) -> None:
        requests.append(1)

    request_finished.connect(count)
    try:
        sent = [emit(Paid(invoice=n), stream=f"invoice-{n}") for n in range(40)]
        counts = drain()
    finally:
        request_finished.disconnect(count)
    assert counts["dead"] == 0, counts
    received = OutboxEvent.objects.using("other").filter(source="shop")
    assert sorted(r.uuid for r in received) == sorted(s.uuid for s in sent)
    assert len(requests) == 1  # one claim: one POST


def test_a_batch_is_split_into_requests_that_fit() -> None:
    from eventbus_app.relay.backends.base import Message
    from eventbus_app.relay.backends.http import _chunks

    messages = [Message(id=str(n), type="t", subject="", body=b"x" * 100) for n in range(10)]
    chunks = list(_chunks(messages, 350))
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    assert [m for c in chunks for m in c] == messages
    # One event bigger than the limit still goes (alone): the receiver's limit decides.
    assert [len(c) for c in _chunks([Message("a", "t", "", b"x" * 999)], 350)] == [1]


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_without_batched_the_http_relay_posts_each_event(
    relays: Any, settings: Any, live_server: Any
) -> None:
    from django.core.signals import request_finished

    settings.ROOT_URLCONF = "tests.relay.urls"
    relays(
        relays={"billing": {"BACKEND": "http", "URL": f"{live_server.url}{URL}", "SECRET": SECRET}},
        sources={"shop": {"BACKEND": "http", "SECRET": SECRET, "DATABASE": "other"}},
    )
    requests: list[int] = []

    def count(**kwargs: Any) -> None:
        requests.append(1)

    request_finished.connect(count)
    try:
        sent = [emit(Paid(invoice=n), stream=f"invoice-{n}") for n in range(5)]
        drain()
    finally:
        request_finished.disconnect(count)
    received = OutboxEvent.objects.using("other").filter(source="shop")
    assert sorted(r.uuid for r in received) == sorted(s.uuid for s in sent)
    assert len(requests) == 5


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_a_batch_too_big_for_the_receiver_goes_again_event_by_event(
    relays: Any, settings: Any, live_server: Any
) -> None:
    settings.ROOT_URLCONF = "tests.relay.urls"
    relays(
        relays={
            "billing": {
                "BACKEND": "http",
                "URL": f"{live_server.url}{URL}",
                "SECRET": SECRET,
                "BATCHED": True,
            }
        },
        # A single event fits, ten together do not: the view answers the batch 413.
        sources={
            "shop": {
                "BACKEND": "http",
                "SECRET": SECRET,
                "DATABASE": "other",
                "MAX_BODY_BYTES": 1500,
            }
        },
    )
    sent = [emit(Paid(invoice=n), stream=f"invoice-{n}") for n in range(10)]
    counts = drain()
    assert counts["dead"] == 0 and counts["failed"] == 0, counts
    received = OutboxEvent.objects.using("other").filter(source="shop")
    assert sorted(r.uuid for r in received) == sorted(s.uuid for s in sent)


@pytest.mark.django_db
def test_batched_mode_to_a_receiver_without_it_confirms_nothing(relays: Any) -> None:
    """A CloudEvents endpoint that answers 2xx without an outcome per event (it does not
    take batched mode): the relay's deliveries fail; none counts as published."""
    import http.server
    import threading

    bodies: list[bytes] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(202)
            self.end_headers()
            self.wfile.write(b'{"outcome": "dead"}')

        def log_message(self, *args: Any) -> None: ...

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        relays(
            relays={
                "billing": {
                    "BACKEND": "http",
                    "URL": url,
                    "SECRET": SECRET,
                    "BATCHED": True,
                    "MAX_ATTEMPTS": 1,
                }
            }
        )
        for n in range(3):
            emit(Paid(invoice=n), stream=f"invoice-{n}")
        drain()
    finally:
        server.shutdown()
        server.server_close()
    relayed = Delivery.objects.filter(handler="relay:billing")
    assert set(relayed.values_list("status", flat=True)) == {Delivery.Status.DEAD}
    assert all("does not take batched mode" in d.last_error for d in relayed)
    assert len(bodies) == 1 and bodies[0].startswith(b"[")


@pytest.mark.django_db
def test_a_lone_surrogate_in_a_batch_is_kept_as_a_dead_letter_not_a_500(
    source: None, client: Client
) -> None:
    import json

    good = cloudevent(subject="")
    bad = cloudevent(subject="", data={"invoice": "\ud800"})
    body = json.dumps([good, bad]).encode()  # ASCII: the surrogate is an escape
    response = post_batch(client, body, sign(SECRET, body))
    assert response.status_code == 202, response.content
    assert response.json()["outcomes"] == ["stored", "dead"]
