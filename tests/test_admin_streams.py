"""The console's stream pages (issue 11 items 4 and 6): held streams (which delivery holds
an ordered handler's stream, since when, how many wait; *Retry* and *Discard & release*)
and a stream's events in order with the aggregate's state after each one."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.db import transaction
from django.test import Client
from django.urls import reverse

from eventbus_app import Event, current_delivery, emit
from eventbus_app.admin.queries import held_streams
from eventbus_app.models import Delivery, OperatorAction, OutboxEvent
from eventbus_app.streams import Aggregate, applies
from eventbus_app.testing import drain

pytestmark = pytest.mark.django_db(transaction=True)
Status = Delivery.Status
XSS = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
HANDLER = "t.held.projection"


class Opened(Event, event_type="t.held.Opened"):
    owner: str
    email: str = ""


class Paid(Event, event_type="t.held.Paid"):
    amount: Decimal
    note: str = ""


class Renamed(Event, event_type="t.held.Renamed"):
    owner: str


class Wallet(Aggregate, stream_prefix="wallet"):
    owner: str = ""
    email: str = ""
    balance: Decimal = Decimal("0")
    payments: int = 0

    @applies(Opened)
    def _opened(self, event: Opened) -> None:
        self.owner, self.email = event.owner, event.email

    @applies(Paid)
    def _paid(self, event: Paid) -> None:
        self.balance += event.amount
        self.payments += 1


@pytest.fixture
def ordered(register: Any, settings: Any) -> dict[str, int]:
    """An ordered handler of Paid that fails for the streams and positions in the dict."""
    settings.EVENTBUS = {**settings.EVENTBUS, "MAX_ATTEMPTS": 1}
    broken: dict[str, int] = {}

    @register(Paid, name=HANDLER, ordered=True)
    def projection(event: Paid) -> None:
        ctx = current_delivery()
        assert ctx is not None
        row = OutboxEvent.objects.get(pk=ctx.event_id)
        if broken.get(row.stream) == row.position:
            raise RuntimeError(f"cannot project {row.stream}@{row.position}")

    return broken


def pay(stream: str, n: int) -> None:
    with transaction.atomic():
        for i in range(n):
            emit(Paid(amount=Decimal(i + 1)), stream=stream)


def statuses(stream: str) -> dict[int | None, str]:
    return dict(
        Delivery.objects.filter(handler=HANDLER, stream=stream).values_list("position", "status")
    )


def test_held_streams_lists_the_delivery_holding_each_stream(
    ordered: dict[str, int], admin_client: Client
) -> None:
    ordered.update({"wallet-a": 2, "wallet-b": 1})
    pay("wallet-a", 4)  # held at 2 (dead), 2 waiting
    pay("wallet-b", 1)  # dead at its last event: nothing waits, still held
    pay("wallet-c", 3)  # all succeed
    drain()
    rows = held_streams()
    assert [(r["stream"], r["delivery"].position, r["waiting"]) for r in rows] == [
        ("wallet-a", 2, 2),
        ("wallet-b", 1, 0),
    ]
    holder = Delivery.objects.get(handler=HANDLER, stream="wallet-a", position=2)
    assert rows[0]["delivery"].pk == holder.pk and rows[0]["since"] is not None
    page = admin_client.get(reverse("admin:eventbus_app_held_streams")).content.decode()
    assert "wallet-a" in page and "wallet-b" in page and "wallet-c" not in page
    assert reverse("admin:eventbus_app_delivery_change", args=[holder.pk]) in page
    assert "cannot project wallet-a@2" in page
    assert f"{reverse('admin:eventbus_app_stream')}?stream=wallet-a" in page
    assert 'value="Retry"' in page and "Discard &amp; release" in page
    # Linked from the overview and the dead-letter list.
    held_url = reverse("admin:eventbus_app_held_streams")
    for url in ("admin:eventbus_app_overview", "admin:eventbus_app_deadletter_changelist"):
        assert f'href="{held_url}"' in admin_client.get(reverse(url)).content.decode(), url


def test_a_pending_head_with_deliveries_waiting_is_held_a_lone_one_is_not(
    ordered: dict[str, int],
) -> None:
    pay("wallet-p", 3)
    pay("wallet-q", 1)
    Delivery.objects.all().delete()
    OutboxEvent.objects.update(dispatched_at=None)
    from eventbus_app.dispatch.fanout import fan_out

    fan_out("default")
    rows = held_streams()
    assert [(r["stream"], r["delivery"].position, r["waiting"]) for r in rows] == [
        ("wallet-p", 1, 2)
    ]
    assert rows[0]["delivery"].status == Status.PENDING


def test_retry_from_held_streams_releases_the_stream_once_it_succeeds(
    ordered: dict[str, int], admin_client: Client
) -> None:
    ordered["wallet-r"] = 2
    pay("wallet-r", 3)
    drain()
    holder = Delivery.objects.get(handler=HANDLER, stream="wallet-r", position=2)
    ordered.clear()  # the cause is fixed
    done = admin_client.post(
        reverse("admin:eventbus_app_held_streams_retry"),
        {"delivery": holder.pk, "stream": "wallet-r"},
        follow=True,
    ).content.decode()
    assert f"Delivery #{holder.pk} sent back to pending" in done
    drain()
    assert set(statuses("wallet-r").values()) == {Status.SUCCEEDED}
    assert held_streams() == []
    assert OperatorAction.objects.get(kind="retry").detail == {"held_stream": "wallet-r"}


def test_discard_and_release_needs_a_reason_and_the_permission(
    ordered: dict[str, int], admin_client: Client, client: Client
) -> None:
    ordered["wallet-d"] = 1
    pay("wallet-d", 3)
    drain()
    holder = Delivery.objects.get(handler=HANDLER, stream="wallet-d", position=1)
    url = reverse("admin:eventbus_app_held_streams_discard")
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.set(
        Permission.objects.filter(codename__in=["view_delivery", "retry_delivery"])
    )
    client.force_login(viewer)
    page = client.get(reverse("admin:eventbus_app_held_streams")).content.decode()
    assert "wallet-d" in page and 'value="Retry"' in page and 'name="discard"' not in page
    assert client.post(url, {"delivery": holder.pk, "reason": "x"}).status_code == 403
    refused = admin_client.post(url, {"delivery": holder.pk, "reason": ""}, follow=True)
    assert "A reason is required" in refused.content.decode()
    assert statuses("wallet-d")[1] == Status.DEAD
    done = admin_client.post(
        url, {"delivery": holder.pk, "stream": "wallet-d", "reason": "bad import"}, follow=True
    ).content.decode()
    assert "stream wallet-d released" in done
    drain()
    assert statuses("wallet-d") == {
        1: Status.DISCARDED,
        2: Status.SUCCEEDED,
        3: Status.SUCCEEDED,
    }
    action = OperatorAction.objects.get(kind="discard")
    assert (action.actor, action.detail["reason"], action.detail["held_stream"]) == (
        "admin",
        "bad import",
        "wallet-d",
    )


def test_held_streams_escape_hostile_streams_and_errors(
    ordered: dict[str, int], admin_client: Client
) -> None:
    stream = f"wallet-{XSS}"
    ordered[stream] = 1
    pay(stream, 2)
    drain()
    Delivery.objects.filter(status=Status.DEAD).update(last_error=f"ValueError: {XSS}")
    page = admin_client.get(reverse("admin:eventbus_app_held_streams")).content.decode()
    assert XSS not in page and ESCAPED in page


# --- the stream page ---------------------------------------------------------------------


def wallet(stream_id: str) -> list[OutboxEvent]:
    account = Wallet.load(stream_id)
    account.record(Opened(owner="ann", email="ann@example.com"))
    account.record(Paid(amount=Decimal("5"), note="first"))
    account.record(Paid(amount=Decimal("7")))
    return account.save()


def test_the_stream_page_shows_every_event_and_the_state_after_each(
    admin_client: Client, settings: Any
) -> None:
    settings.EVENTBUS = {**settings.EVENTBUS, "REDACT_FIELDS": ["email"]}
    stored = wallet("7")
    event_page = admin_client.get(
        reverse("admin:eventbus_app_outboxevent_change", args=[stored[1].pk])
    ).content.decode()
    url = reverse("admin:eventbus_app_stream")
    assert f'href="{url}?stream=wallet-7#position-2"' in event_page
    response = admin_client.get(url, {"stream": "wallet-7"})
    page = response.content.decode()
    rows = response.context["rows"]
    assert [r["event"].position for r in rows] == [1, 2, 3]
    assert [r["event"].event_type for r in rows] == ["t.held.Opened", "t.held.Paid", "t.held.Paid"]
    paid = ["balance", "payments"]
    assert [r["changed"] for r in rows] == [["email", "owner"], paid, paid]
    assert '"balance": "12"' in rows[2]["state"] and '"payments": 2' in rows[2]["state"]
    assert "tests.test_admin_streams.Wallet" in page
    # Redacted in payloads and in the aggregate's state alike.
    assert "ann@example.com" not in page and "••••••" in page
    assert page.index('id="position-1"') < page.index('id="position-2"')


def test_a_stream_without_an_aggregate_shows_its_events_only(admin_client: Client) -> None:
    emit(Renamed(owner="x"), stream="misc-1")
    emit(Renamed(owner="y"), stream="misc-1")
    response = admin_client.get(reverse("admin:eventbus_app_stream"), {"stream": "misc-1"})
    assert [r["event"].position for r in response.context["rows"]] == [1, 2]
    assert "No Aggregate class is registered" in response.content.decode()
    assert "state" not in response.context["rows"][0]
    missing = admin_client.get(reverse("admin:eventbus_app_stream"), {"stream": "nothing-9"})
    assert missing.status_code == 404
    assert admin_client.get(reverse("admin:eventbus_app_stream")).status_code == 404


def test_a_fold_that_fails_is_reported_at_its_event(admin_client: Client) -> None:
    wallet("8")
    emit(Renamed(owner="z"), stream="wallet-8")  # Wallet has no @applies for it
    emit(Paid(amount=Decimal("1")), stream="wallet-8")
    response = admin_client.get(reverse("admin:eventbus_app_stream"), {"stream": "wallet-8"})
    rows = response.context["rows"]
    assert [bool(r.get("state")) for r in rows] == [True, True, True, False, False]
    assert "AggregateError" in rows[3]["error"] and "t.held.Renamed" in rows[3]["error"]
    assert "position 4" in response.content.decode()


def test_the_stream_page_pages_through_long_streams(admin_client: Client) -> None:
    from eventbus_app.admin import queries

    wallet("9")
    pay("wallet-9", 4)  # positions 4..7
    page = queries.stream_page("wallet-9", start=3, size=2)
    assert [r["event"].position for r in page["rows"]] == [3, 4]
    assert (page["previous_start"], page["next_start"], page["last_position"]) == (1, 5, 7)
    # Folded up to position 2 first: the state after 3 is the whole stream's up to there.
    assert '"balance": "12"' in page["rows"][0]["state"]
    response = admin_client.get(reverse("admin:eventbus_app_stream"), {"stream": "wallet-9"})
    assert response.context["next_start"] is None


def test_the_stream_page_escapes_hostile_payloads_and_names(admin_client: Client) -> None:
    stream = f"wallet-{XSS}"
    account = Wallet.load(XSS)
    account.record(Opened(owner=XSS, email="e"))
    account.record(Paid(amount=Decimal("1"), note=f'"><img src=x onerror=alert(1)>{XSS}'))
    account.save()
    response = admin_client.get(reverse("admin:eventbus_app_stream"), {"stream": stream})
    page = response.content.decode()
    assert response.status_code == 200
    assert XSS not in page and "<img src=x" not in page and ESCAPED in page
    event = OutboxEvent.objects.filter(stream=stream).first()
    assert event is not None
    event_page = admin_client.get(
        reverse("admin:eventbus_app_outboxevent_change", args=[event.pk])
    ).content.decode()
    assert XSS not in event_page and "stream=wallet-%3Cscript%3E" in event_page


def test_the_stream_page_needs_the_view_permission(client: Client) -> None:
    wallet("10")
    user = User.objects.create_user("nobody", password="pw", is_staff=True)
    client.force_login(user)
    url = reverse("admin:eventbus_app_stream")
    assert client.get(url, {"stream": "wallet-10"}).status_code == 403
    assert client.get(reverse("admin:eventbus_app_held_streams")).status_code == 403
