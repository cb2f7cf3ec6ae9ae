"""The event map page, in Chromium: the demo's sign-up fans out to its handlers, the order
chain shows who emitted what, and a ghost handler and a dead-end type are flagged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User

from demo_project.demo.seed import seed

from .conftest import login

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_event_map_draws_handlers_chains_and_flags(
    browser: Callable[..., Any], register: Any
) -> None:
    from eventbus_app import Event

    class Orphan(Event, event_type="t.map.Orphan"):  # nobody handles it
        n: int

    class Ghosted(Event, event_type="t.map.Ghosted"):
        n: int

    @register(Ghosted, name="t.map.ghost")  # registered, never ran
    def ghost(event: Ghosted) -> None: ...

    User.objects.create_superuser("root", "root@example.com", "pw")
    seed()
    with browser() as page:
        login(page, "root", "pw")
        page.goto("/admin/eventbus_app/outboxevent/overview/")
        page.click("#event-map-link")
        page.wait_for_url("**/event-map/")
        svg = page.locator("svg#event-map")
        assert svg.count() == 1
        # The sign-up's handlers are nodes, with an arrow each from the event type.
        names = page.eval_on_selector_all("svg#event-map g", "gs => gs.map(g => g.dataset.name)")
        assert "accounts.UserRegistered" in names
        assert "accounts.notify_team_chat" in names
        assert page.locator("svg#event-map path.handles").count() >= 4
        # The order chain: the invoice handler was seen to emit InvoiceCreated.
        assert page.locator("svg#event-map path.emits").count() >= 1
        assert "emits" in (svg.text_content() or "")
        flags = page.inner_text("#event-map-flags")
        assert "t.map.ghost" in flags and "never ran" in flags
        assert "t.map.Orphan" in flags and "no handler" in flags
        flagged = page.eval_on_selector_all(
            "svg#event-map g.flagged", "gs => gs.map(g => g.dataset.name)"
        )
        assert "t.map.ghost" in flagged and "t.map.Orphan" in flagged
        assert "flowchart LR" in (page.text_content("#event-map-mermaid") or "")
        # No script and no external resource on the page.
        assert page.locator("script[src^='http']").count() == 0


def test_a_delayed_event_shows_when_it_falls_due(browser: Callable[..., Any]) -> None:
    from datetime import timedelta

    from eventbus_app import emit
    from tests.testapp.events import Work

    User.objects.create_superuser("root", "root@example.com", "pw")
    record = emit(Work(key="later"), deliver_after=timedelta(hours=3))
    with browser() as page:
        login(page, "root", "pw")
        page.goto("/admin/eventbus_app/outboxevent/")
        row = page.locator("#result_list tr", has_text="testapp.Work")
        assert "falls due" in row.inner_text()
        page.goto(f"/admin/eventbus_app/outboxevent/{record.pk}/change/")
        due = page.locator(".field-falls_due").inner_text()
        assert "(in 2 h 59 min)" in due or "(in 3 h 0 min)" in due
