"""Every state-changing button of the console, clicked in a real browser, and the lists at
1280 x 800 (issue 10: the nested "Retry this delivery" form posted to the change form and
got a 403; the lists overflowed a laptop screen)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User

from demo_project.demo import fakes
from demo_project.demo.models import FakeService
from demo_project.demo.seed import seed
from eventbus_app.models import DeadLetter, Delivery, HandlerState, OutboxEvent, RetryCampaign

from .conftest import login

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "browser-pw"
CHAT = "accounts.notify_team_chat"
EMOJI = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf]")


@pytest.fixture
def seeded() -> list[DeadLetter]:
    User.objects.create_superuser("root", "root@example.com", PASSWORD)
    seed()
    dead = list(DeadLetter.objects.filter(handler=CHAT).order_by("pk"))
    assert len(dead) >= 3
    return dead


def test_every_state_changing_button_works_when_clicked(
    browser: Callable[..., Any], seeded: list[DeadLetter]
) -> None:
    first, second = seeded[0], seeded[1]
    event = OutboxEvent.objects.filter(event_type="accounts.UserRegistered").order_by("pk")[0]
    fakes.set_mode(fakes.CHAT, FakeService.Mode.UP)
    with browser() as page:
        login(page, "root", PASSWORD)
        # Retry this delivery, on a dead letter's page (it said what to do first).
        page.goto(f"/admin/eventbus_app/deadletter/{first.pk}/change/")
        assert "Fix the cause first" in page.inner_text("#what-to-do")
        page.click("input[name=retry]")
        page.wait_for_url(f"**/delivery/{first.pk}/change/")
        assert f"Delivery #{first.pk} sent back to pending" in page.inner_text(".messagelist")
        # Retry, per delivery, on the event page of the second dead letter.
        page.goto(f"/admin/eventbus_app/outboxevent/{second.event_id}/change/")
        page.click(f"input[name=retry-{second.pk}]")
        page.wait_for_url(f"**/outboxevent/{second.event_id}/change/")
        assert f"Delivery #{second.pk} sent back to pending" in page.inner_text(".messagelist")
        # Replay, from the event page.
        page.goto(f"/admin/eventbus_app/outboxevent/{event.pk}/change/")
        page.click("text=Replay…")
        page.click("input[value='Yes, replay']")
        replayed = page.inner_text(".messagelist")
        assert re.search(r"Replay scheduled: \d deliveries of 1 event ", replayed), replayed
        # Pause and resume, on the overview (linked from the dead-letter list).
        page.goto("/admin/eventbus_app/deadletter/")
        page.click(".object-tools a:has-text('Overview')")
        page.wait_for_url("**/overview/")
        row = page.locator("#handlers tr", has_text=CHAT)
        assert "active" in row.inner_text()
        row.locator("input[value=Pause]").click()
        assert f"Handler {CHAT} paused" in page.inner_text(".messagelist")
        assert "paused" in page.locator("#handlers tr", has_text=CHAT).inner_text()
        page.locator("#handlers tr", has_text=CHAT).locator("input[value=Resume]").click()
        assert f"Handler {CHAT} resumed" in page.inner_text(".messagelist")
        # Canary retry, then cancel it; then Retry all the rest.
        page.goto("/admin/eventbus_app/deadletter/groups/")
        group = page.locator("#failure-groups tr.group", has_text=CHAT)
        group.locator("input[name=rate]").fill("0.5")
        group.locator("input[name=canary]").click()
        assert "Canary retry started" in page.inner_text(".messagelist")
        page.locator("#campaigns input[name=cancel]").click()
        assert "cancelled: nothing more is released" in page.inner_text(".messagelist")
        group = page.locator("#failure-groups tr.group", has_text=CHAT)
        group.locator("input[name=retry_all]").click()
        assert "sent back to pending" in page.inner_text(".messagelist")
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == (Delivery.Status.PENDING, Delivery.Status.PENDING)
    assert {a.actor for a in first.operator_actions.all()} == {"root"}
    assert event.deliveries.filter(replays=1).count() >= 3
    assert HandlerState.objects.get(handler=CHAT).paused is False
    campaign = RetryCampaign.objects.get()
    assert (campaign.state, campaign.rate) == (RetryCampaign.State.CANCELLED, 0.5)
    assert not DeadLetter.objects.filter(handler=CHAT).exists()


def test_the_lists_fit_a_laptop_screen_and_show_no_emoji(
    browser: Callable[..., Any], seeded: list[DeadLetter]
) -> None:
    pages = [
        "/admin/eventbus_app/deadletter/",
        "/admin/eventbus_app/outboxevent/",
        "/admin/eventbus_app/delivery/",
    ]
    others = [
        "/admin/eventbus_app/",
        "/admin/eventbus_app/outboxevent/overview/",
        "/admin/eventbus_app/deadletter/groups/",
    ]
    with browser() as page:
        page.set_viewport_size({"width": 1280, "height": 800})
        # The navigation sidebar open, as a newcomer first sees it.
        page.add_init_script("window.localStorage.setItem('django.admin.navSidebarIsOpen', 'true')")
        login(page, "root", PASSWORD)
        for url in pages:
            page.goto(url)
            overflow = page.evaluate(
                "() => { const r = document.querySelector('#changelist .results');"
                " return [document.documentElement.scrollWidth - window.innerWidth,"
                " r.scrollWidth - r.clientWidth]; }"
            )
            assert overflow[0] <= 0 and overflow[1] <= 0, f"{url} overflows by {overflow} px"
            assert page.locator(".object-tools a:has-text('Overview')").count() == 1, url
            assert not EMOJI.search(page.inner_text("body")), url
        for url in others:
            page.goto(url)
            assert not EMOJI.search(page.inner_text("body")), url
        page.goto("/admin/eventbus_app/outboxevent/overview/")
        assert "now" in (page.text_content("#chart-now") or "")


def test_throttle_next_to_pause_is_set_and_lifted_by_clicking(
    browser: Callable[..., Any], seeded: list[DeadLetter]
) -> None:
    from eventbus_app.models import HandlerThrottle, OperatorAction

    with browser() as page:
        login(page, "root", PASSWORD)
        page.goto("/admin/eventbus_app/outboxevent/overview/")
        row = page.locator("#handlers tr", has_text=CHAT)
        row.locator("input[name=rate]").fill("2.5")
        row.locator("input[value=Throttle]").click()
        page.wait_for_url("**/overview/")
        assert "at most 2.5 deliveries per second" in page.inner_text(".messagelist")
        row = page.locator("#handlers tr", has_text=CHAT)
        assert "at most 2.5/s" in row.inner_text()
        row.locator("input[value='No limit']").click()
        page.wait_for_url("**/overview/")
        assert "no rate limit" in page.inner_text(".messagelist")
    # (The database is checked after the browser: its driver runs an event loop here.)
    assert not HandlerThrottle.objects.filter(handler=CHAT).exists()
    kinds = list(
        OperatorAction.objects.filter(kind="throttle", handler=CHAT)
        .order_by("id")
        .values_list("actor", "detail")
    )
    assert kinds == [("root", {"rate": 2.5}), ("root", {"rate": None})]
