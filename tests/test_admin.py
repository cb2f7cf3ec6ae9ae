from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from eventbus_app import emit
from eventbus_app.models import (
    DeadLetter,
    Delivery,
    HandlerState,
    OperatorAction,
    OutboxEvent,
    RetryCampaign,
)
from eventbus_app.testing import drain
from tests.factories import DeadLetterFactory, OutboxEventFactory
from tests.testapp.events import Chain, Everything, Work
from tests.testapp.models import Effect

pytestmark = pytest.mark.django_db
Status = Delivery.Status
XSS = "<script>alert(1)</script>"


@pytest.fixture
def viewer(client: Client) -> Client:
    """A staff user who may look at everything but retry or replay nothing."""
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="eventbus_app", codename__startswith="view_"
        )
    )
    client.force_login(user)
    return client


def failing_event(key: str = "k") -> OutboxEvent:
    record = emit(Work(key=key, fail_attempts=99))
    drain()
    return record


def test_event_list_shows_summary_filters_and_searches(admin_client: Client) -> None:
    record = failing_event()
    url = reverse("admin:eventbus_app_outboxevent_changelist")
    page = admin_client.get(url).content.decode()
    assert "1 succeeded, 1 dead" in page
    assert "testapp.Work" in page
    assert str(record.correlation_id)[:8] in page
    other = emit(Chain(n=0))
    assert f">{other.pk}<" not in admin_client.get(url, {"delivery_state": "dead"}).content.decode()
    for term in (str(record.pk), str(record.correlation_id), '"k"'):
        body = admin_client.get(url, {"q": term}).content.decode()
        assert "1 succeeded, 1 dead" in body, term


def test_event_page_is_read_only_escaped_and_redacted(admin_client: Client, settings: Any) -> None:
    settings.EVENTBUS = {**settings.EVENTBUS, "REDACT_FIELDS": ["password", "email"]}
    record = OutboxEventFactory(
        payload={"key": XSS, "profile": {"email": "ada@example.com", "password": "hunter2"}},
    )
    page = admin_client.get(
        reverse("admin:eventbus_app_outboxevent_change", args=[record.pk])
    ).content.decode()
    assert XSS not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "ada@example.com" not in page
    assert "hunter2" not in page
    assert "••••••" in page
    listing = admin_client.get(reverse("admin:eventbus_app_outboxevent_changelist")).content
    assert b"hunter2" not in listing and XSS.encode() not in listing
    # Audit records: no add, no change.
    assert admin_client.get(reverse("admin:eventbus_app_outboxevent_add")).status_code == 403
    before = OutboxEvent.objects.get(pk=record.pk).payload
    admin_client.post(
        reverse("admin:eventbus_app_outboxevent_change", args=[record.pk]), {"event_type": "x"}
    )
    assert OutboxEvent.objects.get(pk=record.pk).payload == before
    assert OutboxEvent.objects.get(pk=record.pk).event_type == "testapp.Work"


def test_event_page_shows_deliveries_history_and_causal_chain(admin_client: Client) -> None:
    emit(Chain(n=2))
    failing_event()
    drain()
    first, middle, last = OutboxEvent.objects.filter(event_type="testapp.Chain").order_by("id")
    page = admin_client.get(
        reverse("admin:eventbus_app_outboxevent_change", args=[middle.pk])
    ).content.decode()
    for linked in (first, last):
        assert reverse("admin:eventbus_app_outboxevent_change", args=[linked.pk]) in page
    assert "(this event)" in page
    assert "testapp.chain" in page
    dead = Delivery.objects.get(status=Status.DEAD)
    page = admin_client.get(
        reverse("admin:eventbus_app_outboxevent_change", args=[dead.event_id])
    ).content.decode()
    assert "Attempt history (5)" in page
    assert "flaky k attempt 1" in page and "flaky k attempt 5" in page


def test_dead_letters_list_only_dead_ones_with_filters(admin_client: Client) -> None:
    failing_event("a")
    DeadLetterFactory(error_class="builtins.KeyError", last_error="KeyError: " + XSS)
    url = reverse("admin:eventbus_app_deadletter_changelist")
    page = admin_client.get(url).content.decode()
    assert page.count('class="action-select"') == 2
    assert XSS not in page
    only_key = admin_client.get(url, {"error_class": "builtins.KeyError"}).content.decode()
    assert only_key.count('class="action-select"') == 1
    by_handler = admin_client.get(url, {"handler": "testapp.record"}).content.decode()
    assert by_handler.count('class="action-select"') == 2
    assert DeadLetter.objects.count() == 2


def test_retry_action_sends_dead_letters_back_and_records_who(admin_client: Client) -> None:
    record = failing_event()
    dead = Delivery.objects.get(status=Status.DEAD)
    Delivery.objects.filter(pk=dead.pk).update()
    response = admin_client.post(
        reverse("admin:eventbus_app_deadletter_changelist"),
        {"action": "retry", "_selected_action": [dead.pk]},
        follow=True,
    )
    assert "1 delivery sent back to pending" in response.content.decode()
    dead.refresh_from_db()
    assert (dead.status, dead.attempts) == (Status.PENDING, 0)
    action = OperatorAction.objects.get(kind="retry")
    assert (action.actor, action.delivery_id, action.event_id) == ("admin", dead.pk, record.pk)
    # The event page shows who retried it.
    page = admin_client.get(
        reverse("admin:eventbus_app_outboxevent_change", args=[record.pk])
    ).content.decode()
    assert "admin" in page and "retry" in page


def test_retry_button_on_the_delivery_page(admin_client: Client) -> None:
    failing_event()
    dead = Delivery.objects.get(status=Status.DEAD)
    page = admin_client.get(reverse("admin:eventbus_app_delivery_change", args=[dead.pk]))
    body = page.content.decode()
    assert "Retry this delivery" in body
    assert "Traceback of the last failure" in body
    assert (
        admin_client.get(reverse("admin:eventbus_app_delivery_retry", args=[dead.pk])).status_code
        == 405
    )
    admin_client.post(reverse("admin:eventbus_app_delivery_retry", args=[dead.pk]))
    dead.refresh_from_db()
    assert dead.status == Status.PENDING


def test_replay_through_confirmation_keeps_history(admin_client: Client) -> None:
    record = emit(Work(key="r"))
    drain()
    url = reverse("admin:eventbus_app_outboxevent_changelist")
    confirm = admin_client.post(url, {"action": "replay", "_selected_action": [record.pk]})
    body = confirm.content.decode()
    assert "Replay events?" in body
    assert 'value="testapp.record"' in body and 'value="testapp.record_async"' in body
    assert not OperatorAction.objects.exists()
    admin_client.post(
        url,
        {
            "action": "replay",
            "_selected_action": [record.pk],
            "post": "yes",
            "handlers": ["testapp.record"],
        },
    )
    replayed = record.deliveries.get(handler="testapp.record")
    untouched = record.deliveries.get(handler="testapp.record_async")
    assert (replayed.status, replayed.replays) == (Status.PENDING, 1)
    assert (untouched.status, untouched.replays) == (Status.SUCCEEDED, 0)
    assert list(replayed.history.values_list("outcome", "replays")) == [("succeeded", 0)]
    drain()
    effects = Effect.objects.filter(event_id=record.pk, handler="testapp.record")
    assert effects.count() == 2
    assert len(set(effects.values_list("idempotency_key", flat=True))) == 2
    action = OperatorAction.objects.get(kind="replay")
    assert (action.actor, action.detail) == ("admin", {"handlers": ["testapp.record"]})


def test_replay_button_on_the_event_page(admin_client: Client) -> None:
    record = emit(Work(key="r"))
    drain()
    page = admin_client.get(reverse("admin:eventbus_app_outboxevent_change", args=[record.pk]))
    replay_url = reverse("admin:eventbus_app_outboxevent_replay", args=[record.pk])
    assert replay_url in page.content.decode()
    assert "Replay events?" in admin_client.get(replay_url).content.decode()
    admin_client.post(replay_url, {"post": "yes", "handlers": ["testapp.record_async"]})
    assert record.deliveries.get(handler="testapp.record_async").replays == 1


def test_failure_groups_and_one_click_group_retry(admin_client: Client) -> None:
    for i in range(3):
        failing_event(f"k{i}")
    DeadLetterFactory(error_class="builtins.KeyError")
    page = admin_client.get(reverse("admin:eventbus_app_deadletter_groups")).content.decode()
    assert "builtins.RuntimeError" in page and "Retry all 3" in page
    assert "builtins.KeyError" in page and "Retry all 1" in page
    admin_client.post(
        reverse("admin:eventbus_app_deadletter_group_retry"),
        {"handler": "testapp.record", "error_class": "builtins.RuntimeError", "mode": "all"},
    )
    assert Delivery.objects.filter(status=Status.PENDING).count() == 3
    assert Delivery.objects.filter(status=Status.DEAD).count() == 1


def test_canary_retry_releases_the_rest_after_the_canary_succeeds(
    admin_client: Client, register: Any
) -> None:
    from eventbus_app import Event
    from eventbus_app.operations import advance_campaign

    class Call(Event, event_type="t.Call"):
        n: int

    healthy = {"on": False}

    @register(Call, name="t.api", max_attempts=1)
    def api(event: Call) -> None:
        if not healthy["on"]:
            raise ConnectionError("api down")

    for n in range(4):
        emit(Call(n=n))
    drain()
    assert Delivery.objects.filter(handler="t.api", status=Status.DEAD).count() == 4
    healthy["on"] = True
    admin_client.post(
        reverse("admin:eventbus_app_deadletter_group_retry"),
        {
            "handler": "t.api",
            "error_class": "builtins.ConnectionError",
            "mode": "canary",
            "rate": "1000",
        },
    )
    campaign = RetryCampaign.objects.get()
    assert campaign.state == "canary" and campaign.released == 1
    assert Delivery.objects.filter(handler="t.api", status=Status.PENDING).count() == 1
    advance_campaign(campaign.pk)  # the canary has not run yet: nothing more is released
    assert Delivery.objects.filter(handler="t.api", status=Status.PENDING).count() == 1
    drain()
    campaign = advance_campaign(campaign.pk)
    assert campaign.state == "releasing"
    assert campaign.released == 4
    drain()
    assert advance_campaign(campaign.pk).state == "done"
    assert Delivery.objects.filter(handler="t.api", status=Status.SUCCEEDED).count() == 4
    page = admin_client.get(reverse("admin:eventbus_app_deadletter_groups")).content.decode()
    assert "4 of 4" in page


def test_canary_retry_stops_at_the_first_new_failure(register: Any) -> None:
    from eventbus_app import Event
    from eventbus_app.operations import advance_campaign, start_canary

    class Flaky(Event, event_type="t.Flaky"):
        n: int

    @register(Flaky, name="t.flaky", max_attempts=1)
    def flaky(event: Flaky) -> None:
        raise ConnectionError("still down")

    for n in range(5):
        emit(Flaky(n=n))
    drain()
    campaign = start_canary("t.flaky", "builtins.ConnectionError", rate=1000, actor="ops")
    drain()
    campaign = advance_campaign(campaign.pk)
    assert campaign.state == "stopped"
    assert "failed again" in campaign.stopped_reason
    assert Delivery.objects.filter(handler="t.flaky", status=Status.DEAD).count() == 5
    assert campaign.released == 1


def test_overview_counts_chart_and_pause(admin_client: Client) -> None:
    failing_event()
    index = admin_client.get(reverse("admin:app_list", args=["eventbus_app"])).content.decode()
    assert reverse("admin:eventbus_app_overview") in index
    page = admin_client.get(reverse("admin:eventbus_app_overview")).content.decode()
    assert 'id="hourly-chart"' in page
    assert "testapp.record" in page
    assert "Pause" in page
    admin_client.post(
        reverse("admin:eventbus_app_pause"), {"handler": "testapp.record", "pause": "1"}
    )
    assert HandlerState.objects.get(handler="testapp.record").paused
    record = emit(Work(key="waits"))
    drain()
    assert record.deliveries.get(handler="testapp.record").status == Status.PENDING
    admin_client.post(
        reverse("admin:eventbus_app_pause"), {"handler": "testapp.record", "pause": "0"}
    )
    drain()
    assert record.deliveries.get(handler="testapp.record").status == Status.SUCCEEDED
    kinds = list(OperatorAction.objects.order_by("id").values_list("kind", "actor"))
    assert kinds == [("pause", "admin"), ("resume", "admin")]


def test_staff_without_permissions_sees_no_actions_and_forged_posts_change_nothing(
    viewer: Client,
) -> None:
    record = failing_event()
    dead = Delivery.objects.get(status=Status.DEAD)
    dl_list = viewer.get(reverse("admin:eventbus_app_deadletter_changelist"))
    assert dl_list.status_code == 200
    assert 'value="retry"' not in dl_list.content.decode()
    ev_list = viewer.get(reverse("admin:eventbus_app_outboxevent_changelist")).content.decode()
    assert 'value="replay"' not in ev_list
    ev_page = viewer.get(
        reverse("admin:eventbus_app_outboxevent_change", args=[record.pk])
    ).content.decode()
    assert "Replay…" not in ev_page
    d_page = viewer.get(reverse("admin:eventbus_app_delivery_change", args=[dead.pk]))
    assert "Retry this delivery" not in d_page.content.decode()
    groups = viewer.get(reverse("admin:eventbus_app_deadletter_groups")).content.decode()
    assert "Retry all" not in groups and "Canary retry" not in groups
    overview = viewer.get(reverse("admin:eventbus_app_overview")).content.decode()
    assert 'name="pause"' not in overview
    # Forged POSTs.
    viewer.post(
        reverse("admin:eventbus_app_deadletter_changelist"),
        {"action": "retry", "_selected_action": [dead.pk]},
    )
    viewer.post(
        reverse("admin:eventbus_app_outboxevent_changelist"),
        {
            "action": "replay",
            "_selected_action": [record.pk],
            "post": "yes",
            "handlers": ["testapp.record"],
        },
    )
    forged = [
        (reverse("admin:eventbus_app_delivery_retry", args=[dead.pk]), {}),
        (
            reverse("admin:eventbus_app_outboxevent_replay", args=[record.pk]),
            {"post": "yes", "handlers": ["testapp.record"]},
        ),
        (
            reverse("admin:eventbus_app_deadletter_group_retry"),
            {"handler": "testapp.record", "error_class": "builtins.RuntimeError", "mode": "all"},
        ),
        (reverse("admin:eventbus_app_pause"), {"handler": "testapp.record", "pause": "1"}),
    ]
    for url, data in forged:
        assert viewer.post(url, data).status_code == 403, url
    dead.refresh_from_db()
    assert dead.status == Status.DEAD
    assert not OperatorAction.objects.exists()
    assert not HandlerState.objects.exists()
    assert not RetryCampaign.objects.exists()


def test_state_changes_need_csrf(admin_user: User) -> None:
    failing_event()
    dead = Delivery.objects.get(status=Status.DEAD)
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    response = client.post(reverse("admin:eventbus_app_delivery_retry", args=[dead.pk]))
    assert response.status_code == 403
    dead.refresh_from_db()
    assert dead.status == Status.DEAD


def test_every_field_type_renders_escaped(admin_client: Client) -> None:
    from tests.test_events import everything

    record = emit(Everything(**{**everything().__dict__, "tags": [XSS]}))
    page = admin_client.get(
        reverse("admin:eventbus_app_outboxevent_change", args=[record.pk])
    ).content.decode()
    assert XSS not in page
    assert "Zürich" in page


@pytest.mark.django_db
def test_a_delayed_event_shows_when_it_falls_due(admin_client: Any) -> None:
    from datetime import timedelta

    from eventbus_app import emit
    from tests.testapp.events import Work

    record = emit(Work(key="later"), deliver_after=timedelta(hours=2))
    page = admin_client.get(f"/admin/eventbus_app/outboxevent/{record.pk}/change/")
    text = page.content.decode()
    assert "Falls due" in text
    assert "(in 1 h 59 min)" in text or "(in 2 h 0 min)" in text
    listing = admin_client.get("/admin/eventbus_app/outboxevent/").content.decode()
    assert "not fanned out yet; falls due" in listing
