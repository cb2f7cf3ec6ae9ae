"""The failure console in a real browser: log in, dead letters, retry, replay, failure
groups, permissions; the screenshots in docs/screenshots/ come from here."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User

from demo_project.demo import fakes
from demo_project.demo.models import FakeService
from demo_project.demo.seed import seed
from eventbus_app import registry
from eventbus_app.models import DeadLetter, Delivery, OutboxEvent

from .conftest import login, screenshot

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "browser-pw"
CHAT = "accounts.notify_team_chat"


@pytest.fixture
def admin_user() -> User:
    return User.objects.create_superuser("root", "root@example.com", PASSWORD)


@pytest.fixture
def seeded(admin_user: User) -> dict[str, Any]:
    """The demo's own data: sign-ups, orders, chat dead letters, flaky payment retries."""
    seed()
    dead = list(DeadLetter.objects.filter(handler=CHAT).order_by("pk"))
    assert len(dead) >= 3
    return {"dead": dead}


def _wait_for_text(page: Any, selector: str, text: str, seconds: float = 60) -> None:
    """Reload until ``selector`` shows ``text`` (work that runs in another process)."""
    deadline = time.monotonic() + seconds
    while True:
        if text.lower() in page.inner_text(selector).lower():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{selector} never showed {text!r}: {page.inner_text(selector)}")
        page.wait_for_timeout(500)
        page.reload()


def test_log_in_and_see_the_dead_letters(
    browser: Callable[..., Any], seeded: dict[str, Any]
) -> None:
    dead = seeded["dead"][0]
    with browser() as page:
        login(page, "root", PASSWORD)
        page.click("a[href='/admin/eventbus_app/']")  # the app index
        page.click("text=Dead letters")
        page.wait_for_url("**/deadletter/")
        rows = page.locator("#result_list tbody tr")
        assert rows.count() == len(seeded["dead"])
        first = rows.filter(has_text=f"{dead.pk}").first
        assert CHAT in first.inner_text()
        assert "ServiceUnavailable" in page.inner_text("#result_list")
        screenshot(page, "dead-letters.png")
        # Its change page shows the full traceback.
        page.goto(f"/admin/eventbus_app/deadletter/{dead.pk}/change/")
        assert "503 Service Unavailable" in page.inner_text("#traceback")


def test_retry_a_dead_letter_and_watch_it_succeed(
    browser: Callable[..., Any], seeded: dict[str, Any], spawn: Callable[..., Any]
) -> None:
    dead = seeded["dead"][0]
    fakes.set_mode(fakes.CHAT, FakeService.Mode.UP)  # the webhook is back
    spawn("qcluster")
    with browser() as page:
        login(page, "root", PASSWORD)
        page.goto("/admin/eventbus_app/deadletter/")
        page.check(f"#result_list input[name=_selected_action][value='{dead.pk}']")
        page.select_option("select[name=action]", "retry")
        page.click("button[name=index]")
        assert "1 delivery sent back to pending" in page.inner_text(".messagelist")
        page.goto(f"/admin/eventbus_app/delivery/{dead.pk}/change/")
        _wait_for_text(page, ".field-status", "Succeeded")
        page.goto("/admin/eventbus_app/deadletter/")
        assert page.locator("#result_list tbody tr").count() == len(seeded["dead"]) - 1
    dead.refresh_from_db()
    assert dead.status == Delivery.Status.SUCCEEDED
    assert dead.operator_actions.get().actor == "root"


def test_replay_an_event_to_one_chosen_handler(
    browser: Callable[..., Any], seeded: dict[str, Any], manage: Callable[..., Any]
) -> None:
    event = OutboxEvent.objects.filter(event_type="accounts.UserRegistered").order_by("pk")[0]
    before = {d.handler: (d.status, d.replays) for d in event.deliveries.all()}
    assert before["accounts.record_signup"] == (Delivery.Status.SUCCEEDED, 0)
    with browser() as page:
        login(page, "root", PASSWORD)
        page.goto(f"/admin/eventbus_app/outboxevent/{event.pk}/change/")
        page.click("text=Replay…")
        page.wait_for_url("**/replay/")
        boxes = page.locator("input[name=handlers]")
        assert boxes.count() == 4
        for i in range(boxes.count()):
            if boxes.nth(i).get_attribute("value") != "accounts.record_signup":
                boxes.nth(i).uncheck()
        page.click("input[value='Yes, replay']")
        assert "Replay scheduled: 1 delivery of 1 event" in page.inner_text(".messagelist")
        result = manage("eventbus_drain")
        assert result.returncode == 0, result.stderr
        page.reload()
        row = page.locator("#deliveries tbody tr", has_text="accounts.record_signup").first
        assert "succeeded" in row.inner_text().lower()
    after = {d.handler: (d.status, d.replays) for d in event.deliveries.all()}
    assert after["accounts.record_signup"] == (Delivery.Status.SUCCEEDED, 1)
    others = {h: v for h, v in after.items() if h != "accounts.record_signup"}
    assert others == {h: v for h, v in before.items() if h != "accounts.record_signup"}


def test_a_failure_group_retried_in_one_click(
    browser: Callable[..., Any], seeded: dict[str, Any], manage: Callable[..., Any]
) -> None:
    count = len(seeded["dead"])
    fakes.set_mode(fakes.CHAT, FakeService.Mode.UP)
    with browser() as page:
        login(page, "root", PASSWORD)
        page.goto("/admin/eventbus_app/deadletter/groups/")
        group = page.locator("#failure-groups tr.group", has_text=CHAT)
        assert "ServiceUnavailable" in group.inner_text()
        screenshot(page, "failure-groups.png")
        group.locator(f"input[value='Retry all {count}']").click()
        assert f"{count} dead letters of {CHAT}" in page.inner_text(".messagelist")
        result = manage("eventbus_drain")
        assert result.returncode == 0, result.stderr
        page.reload()
        assert "No dead letters." in page.inner_text("#failure-groups")
    assert not DeadLetter.objects.exists()


def test_causal_chain_and_overview(browser: Callable[..., Any], seeded: dict[str, Any]) -> None:
    # The overview lists registered handlers: show the demo's only (the live server runs in
    # this process; the registry is restored after the test).
    for name in list(registry.all_handlers()):
        if name.startswith("testapp."):
            registry.unregister(name)
    invoice_event = OutboxEvent.objects.filter(event_type="orders.InvoiceCreated").first()
    assert invoice_event is not None and invoice_event.causation_id
    with browser() as page:
        login(page, "root", PASSWORD)
        page.goto(f"/admin/eventbus_app/outboxevent/{invoice_event.pk}/change/")
        chain = page.inner_text("#causal-chain")
        assert f"orders.OrderPlaced #{invoice_event.causation_id}" in chain
        assert "(this event)" in chain
        screenshot(page, "event-causal-chain.png")
        page.click(f"#causal-chain a:has-text('orders.OrderPlaced #{invoice_event.causation_id}')")
        page.wait_for_url(f"**/{invoice_event.causation_id}/change/")
        assert f"orders.InvoiceCreated #{invoice_event.pk}" in page.inner_text("#causal-chain")
        page.goto("/admin/eventbus_app/")
        page.click("text=Event bus overview")
        page.wait_for_url("**/overview/")
        assert "Event bus overview" in page.inner_text("#content")
        screenshot(page, "overview.png")


def test_staff_without_permissions_sees_no_actions(
    browser: Callable[..., Any], seeded: dict[str, Any]
) -> None:
    viewer = User.objects.create_user("viewer", "viewer@example.com", PASSWORD, is_staff=True)
    viewer.user_permissions.set(
        Permission.objects.filter(
            codename__in=["view_outboxevent", "view_delivery", "view_deadletter"]
        )
    )
    dead = seeded["dead"][0]
    event = OutboxEvent.objects.filter(event_type="accounts.UserRegistered").first()
    assert event is not None
    with browser() as page:
        login(page, "viewer", PASSWORD)
        page.goto("/admin/eventbus_app/deadletter/")
        assert page.locator("#result_list tbody tr").count() == len(seeded["dead"])
        assert page.locator("select[name=action] option[value=retry]").count() == 0
        page.goto(f"/admin/eventbus_app/delivery/{dead.pk}/change/")
        assert page.locator("input[name=retry]").count() == 0
        page.goto(f"/admin/eventbus_app/outboxevent/{event.pk}/change/")
        assert page.locator("text=Replay…").count() == 0
        page.goto("/admin/eventbus_app/outboxevent/")
        assert page.locator("select[name=action] option[value=replay]").count() == 0
        page.goto("/admin/eventbus_app/deadletter/groups/")
        assert page.locator("#failure-groups input[type=submit]").count() == 0
        # A forged POST (with a valid CSRF token) changes nothing.
        token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
        for url, data in [
            ("/admin/eventbus_app/deadletter/groups/retry/", {"handler": CHAT, "mode": "all"}),
            (f"/admin/eventbus_app/delivery/{dead.pk}/retry/", {}),
            (f"/admin/eventbus_app/outboxevent/{event.pk}/replay/", {"post": "yes"}),
        ]:
            response = page.request.post(
                url, form=data, headers={"X-CSRFToken": token, "Referer": page.url}
            )
            assert response.status == 403, url
    dead.refresh_from_db()
    assert dead.status == Delivery.Status.DEAD
