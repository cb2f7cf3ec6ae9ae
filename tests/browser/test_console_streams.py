"""Discard, held streams and the stream page, clicked in a real browser (issues 11 and 13):
discard a dead letter with a reason; *Retry* and *Discard & release* on the held-streams
page, then the dispatcher (run in-process after the browser closes) completes both streams;
from an event page to its stream's page, with the aggregate's state after each event."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import transaction

from demo_project.demo.seed import seed
from eventbus_app import Event, current_delivery, emit
from eventbus_app.models import DeadLetter, Delivery, OperatorAction, OutboxEvent
from eventbus_app.testing import drain

from .conftest import login, screenshot

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "browser-pw"
CHAT = "accounts.notify_team_chat"
LEDGER = "t.browser.ledger"
Status = Delivery.Status


class Posted(Event, event_type="t.browser.Posted"):
    amount: Decimal


@pytest.fixture
def root() -> User:
    return User.objects.create_superuser("root", "root@example.com", PASSWORD)


def test_discard_a_dead_letter_from_its_page_with_a_reason(
    browser: Callable[..., Any], root: User
) -> None:
    seed()
    dead = DeadLetter.objects.filter(handler=CHAT).order_by("pk")[0]
    with browser() as page:
        login(page, "root", PASSWORD)
        page.goto(f"/admin/eventbus_app/deadletter/{dead.pk}/change/")
        # Without a reason the browser refuses to submit (required) and nothing changes.
        page.click("input[name=discard]")
        assert page.url.endswith(f"/deadletter/{dead.pk}/change/")
        page.fill("#discard-reason", "Chat channel archived; nobody to notify")
        page.click("input[name=discard]")
        page.wait_for_url(f"**/delivery/{dead.pk}/change/")
        assert f"Delivery #{dead.pk} discarded" in page.inner_text(".messagelist")
        assert "Chat channel archived" in page.inner_text("#what-to-do")
        assert "discard" in page.inner_text("#audit")
        assert page.locator("input[name=discard]").count() == 0
        assert page.locator("input[name=retry]").count() == 0
    dead.refresh_from_db()
    assert (dead.status, dead.discard_reason) == (
        Status.DISCARDED,
        "Chat channel archived; nobody to notify",
    )
    action = OperatorAction.objects.get(kind="discard")
    assert (action.actor, action.delivery_id) == ("root", dead.pk)


def test_retry_and_discard_and_release_on_the_held_streams_page(
    browser: Callable[..., Any], root: User, register: Any, settings: Any
) -> None:
    settings.EVENTBUS = {**settings.EVENTBUS, "MAX_ATTEMPTS": 1}
    broken = {"ledger-r": 2, "ledger-d": 1}

    @register(Posted, name=LEDGER, ordered=True)
    def ledger(event: Posted) -> None:
        ctx = current_delivery()
        assert ctx is not None
        row = OutboxEvent.objects.get(pk=ctx.event_id)
        if broken.get(row.stream) == row.position:
            raise RuntimeError(f"ledger rejected {row.stream}@{row.position}")

    for stream in ("ledger-r", "ledger-d"):
        with transaction.atomic():
            for i in range(3):
                emit(Posted(amount=Decimal(i + 1)), stream=stream)
    drain()
    rows = Delivery.objects.filter(handler=LEDGER)
    assert rows.filter(status=Status.PENDING).count() == 3  # 1 + 2 waiting behind the dead
    broken.pop("ledger-r")  # its cause is fixed; ledger-d's is not: it will be discarded
    with browser() as page:
        login(page, "root", PASSWORD)
        page.goto("/admin/eventbus_app/deadletter/")
        page.click(".object-tools a:has-text('Held streams')")
        page.wait_for_url("**/held-streams/")
        held_r = page.locator("#held-streams tr.held", has_text="ledger-r")
        assert "ledger rejected ledger-r@2" in held_r.inner_text()
        assert held_r.locator("td").nth(6).inner_text() == "1"  # one waits behind it
        held_d = page.locator("#held-streams tr.held", has_text="ledger-d")
        assert held_d.locator("td").nth(6).inner_text() == "2"
        screenshot(page, "held-streams.png")
        held_r.locator("input[name=retry]").click()
        assert "sent back to pending" in page.inner_text(".messagelist")
        held_d = page.locator("#held-streams tr.held", has_text="ledger-d")
        held_d.locator("input[name=reason]").fill("bad import, re-sent as ledger-d2")
        held_d.locator("input[name=discard]").click()
        assert "stream ledger-d released" in page.inner_text(".messagelist")
    drain()  # the dispatcher, in-process, once the browser is closed
    assert dict(rows.filter(stream="ledger-r").values_list("position", "status")) == {
        1: Status.SUCCEEDED,
        2: Status.SUCCEEDED,
        3: Status.SUCCEEDED,
    }
    assert dict(rows.filter(stream="ledger-d").values_list("position", "status")) == {
        1: Status.DISCARDED,
        2: Status.SUCCEEDED,
        3: Status.SUCCEEDED,
    }
    discard = OperatorAction.objects.get(kind="discard")
    assert (discard.actor, discard.detail["reason"]) == (
        "root",
        "bad import, re-sent as ledger-d2",
    )
    with browser() as page:
        login(page, "root", PASSWORD)
        page.goto("/admin/eventbus_app/deadletter/held-streams/")
        assert "No held streams" in page.inner_text("#held-streams")


def test_open_a_stream_page_from_an_event_page_and_see_the_states(
    browser: Callable[..., Any], root: User
) -> None:
    seed()  # alice: created, renamed, email changed (the demo's UserProfile aggregate)
    renamed = OutboxEvent.objects.get(event_type="accounts.UserRenamed")
    stream = renamed.stream
    assert stream.startswith("user-") and renamed.position == 2
    with browser() as page:
        login(page, "root", PASSWORD)
        page.goto(f"/admin/eventbus_app/outboxevent/{renamed.pk}/change/")
        page.click("#stream-link")
        page.wait_for_url("**/outboxevent/stream/?stream=*")
        assert stream in page.inner_text("#stream-summary")
        assert "UserProfile" in page.inner_text("#stream-summary")
        rows = page.locator("#stream-events tr.stream-event")
        assert rows.count() == 3
        types = [rows.nth(i).locator("td").nth(1).inner_text() for i in range(3)]
        assert [t.split(" #")[0] for t in types] == [
            "accounts.UserCreated",
            "accounts.UserRenamed",
            "accounts.UserEmailChanged",
        ]
        states = [rows.nth(i).locator("td.state pre").inner_text() for i in range(3)]
        assert '"name": "Alice Martin"' in states[0]
        assert '"name": "Alice Martin-Durand"' in states[1]
        assert '"email": "alice.md@example.com"' in states[2]
        assert "changed: name" in rows.nth(1).inner_text()
        screenshot(page, "stream.png")
