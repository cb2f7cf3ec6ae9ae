"""Admin hardening: redaction in search, escaping everywhere, forged POSTs on every
state-changing endpoint, canary controls, and the replay confirmation's defaults."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from eventbus_app import emit, operations
from eventbus_app.models import Delivery, OperatorAction, RetryCampaign
from eventbus_app.testing import drain
from tests.factories import (
    DeadLetterFactory,
    DeliveryAttemptFactory,
    OutboxEventFactory,
)
from tests.testapp.events import Work

pytestmark = pytest.mark.django_db
Status = Delivery.Status
XSS = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def staff(client: Client, *codenames: str) -> Client:
    """A staff user with the view permissions plus ``codenames``."""
    user = User.objects.create_user("staff", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="eventbus_app").filter(
            codename__startswith="view_"
        )
        | Permission.objects.filter(codename__in=codenames)
    )
    client.force_login(user)
    return client


def changelist_ids(page: str) -> int:
    return page.count('class="action-select"')


# --- redaction -----------------------------------------------------------------------------


def test_search_cannot_confirm_redacted_values(admin_client: Client, settings: Any) -> None:
    """Search matches payload text but not redacted values: a guessed password or address
    cannot be confirmed by searching for it; result rows show redacted keys masked."""
    settings.EVENTBUS = {**settings.EVENTBUS, "REDACT_FIELDS": ["password", "email"]}
    OutboxEventFactory(payload={"key": "visible-key", "login": {"password": "hunter2"}})
    OutboxEventFactory(payload={"key": "other", "email": "ada@example.com"})
    url = reverse("admin:eventbus_app_outboxevent_changelist")
    found = admin_client.get(url, {"q": "visible-key"}).content.decode()
    assert changelist_ids(found) == 1
    assert "hunter2" not in found and "••••••" in found  # the preview column is masked
    for secret in ("ada@example.com", "hunter2"):
        assert changelist_ids(admin_client.get(url, {"q": secret}).content.decode()) == 0
    assert changelist_ids(admin_client.get(url, {"q": "OTHER"}).content.decode()) == 1
    settings.EVENTBUS = {**settings.EVENTBUS, "REDACT_FIELDS": []}
    assert changelist_ids(admin_client.get(url, {"q": "hunter2"}).content.decode()) == 1


def test_redaction_at_any_depth_and_case(admin_client: Client, settings: Any) -> None:
    settings.EVENTBUS = {**settings.EVENTBUS, "REDACT_FIELDS": ["password", "card_number"]}
    event = OutboxEventFactory(
        payload={
            "users": [{"name": "ada", "Password": "s3cret"}, {"PASSWORD": ["a", "b-s3cret"]}],
            "billing": {"deep": {"card_number": "4242424242424242"}},
        }
    )
    page = admin_client.get(
        reverse("admin:eventbus_app_outboxevent_change", args=[event.pk])
    ).content.decode()
    assert "s3cret" not in page and "4242424242424242" not in page
    assert "ada" in page and page.count("••••••") >= 3


# --- escaping ------------------------------------------------------------------------------


def test_errors_and_tracebacks_are_escaped_everywhere(admin_client: Client) -> None:
    dead = DeadLetterFactory(
        last_error=f"ValueError: {XSS}",
        traceback=f"Traceback (most recent call last):\nValueError: {XSS}",
        error_class="builtins.ValueError",
    )
    DeliveryAttemptFactory(delivery=dead, error=f"ValueError: {XSS}", traceback=XSS)
    OperatorAction.objects.create(kind="retry", actor=XSS, delivery=dead, event=dead.event)
    pages = [
        reverse("admin:eventbus_app_delivery_change", args=[dead.pk]),
        reverse("admin:eventbus_app_deadletter_change", args=[dead.pk]),
        reverse("admin:eventbus_app_deadletter_changelist"),
        reverse("admin:eventbus_app_delivery_changelist"),
        reverse("admin:eventbus_app_outboxevent_change", args=[dead.event_id]),
        reverse("admin:eventbus_app_deadletter_groups"),
        reverse("admin:eventbus_app_overview"),
    ]
    for url in pages:
        body = admin_client.get(url).content.decode()
        assert XSS not in body, url
    detail = admin_client.get(pages[0]).content.decode()
    assert ESCAPED in detail


def test_failure_group_links_are_url_encoded(admin_client: Client) -> None:
    DeadLetterFactory(handler="odd&name=x", error_class="builtins.KeyError")
    page = admin_client.get(reverse("admin:eventbus_app_deadletter_groups")).content.decode()
    assert "handler=odd%26name%3Dx&amp;error_class=builtins.KeyError" in page


# --- forged POSTs --------------------------------------------------------------------------


def test_forged_canary_and_cancel_posts_without_permission_change_nothing(
    client: Client,
) -> None:
    viewer = staff(client)
    DeadLetterFactory()
    groups = reverse("admin:eventbus_app_deadletter_groups")
    canary = viewer.post(
        reverse("admin:eventbus_app_deadletter_group_retry"),
        {
            "handler": "testapp.record",
            "error_class": "builtins.RuntimeError",
            "mode": "canary",
            "rate": "5",
        },
    )
    assert canary.status_code == 403
    assert not RetryCampaign.objects.exists()
    campaign = operations.start_canary(
        "testapp.record", "builtins.RuntimeError", rate=1, actor="ops"
    )
    assert 'name="cancel"' not in viewer.get(groups).content.decode()
    cancel = viewer.post(
        reverse("admin:eventbus_app_deadletter_campaign_cancel"), {"campaign": campaign.pk}
    )
    assert cancel.status_code == 403
    campaign.refresh_from_db()
    assert campaign.state == RetryCampaign.State.CANARY


def test_replay_permission_alone_does_not_allow_retry_and_vice_versa(client: Client) -> None:
    replayer = staff(client, "replay_event")
    dead = DeadLetterFactory()
    assert (
        replayer.post(reverse("admin:eventbus_app_delivery_retry", args=[dead.pk])).status_code
        == 403
    )
    replayer.post(
        reverse("admin:eventbus_app_deadletter_changelist"),
        {"action": "retry", "_selected_action": [dead.pk]},
    )
    dead.refresh_from_db()
    assert dead.status == Status.DEAD
    events = replayer.get(reverse("admin:eventbus_app_outboxevent_changelist")).content.decode()
    assert 'value="replay"' in events
    assert (
        'value="retry"'
        not in replayer.get(reverse("admin:eventbus_app_deadletter_changelist")).content.decode()
    )


def test_state_changing_endpoints_refuse_get(admin_client: Client) -> None:
    dead = DeadLetterFactory()
    for url in (
        reverse("admin:eventbus_app_delivery_retry", args=[dead.pk]),
        reverse("admin:eventbus_app_deadletter_group_retry"),
        reverse("admin:eventbus_app_deadletter_campaign_cancel"),
        reverse("admin:eventbus_app_pause"),
    ):
        assert admin_client.get(url).status_code == 405, url
    replay = reverse("admin:eventbus_app_outboxevent_replay", args=[dead.event_id])
    admin_client.get(replay, {"post": "yes", "handlers": "testapp.record"})  # only confirms
    dead.refresh_from_db()
    assert (dead.status, dead.replays) == (Status.DEAD, 0)
    assert not OperatorAction.objects.exists()


# --- canary controls -----------------------------------------------------------------------


def test_canary_rate_must_be_a_positive_number(admin_client: Client) -> None:
    DeadLetterFactory()
    url = reverse("admin:eventbus_app_deadletter_group_retry")
    for rate in ("0", "-2", "abc", "inf", "nan"):
        response = admin_client.post(
            url,
            {
                "handler": "testapp.record",
                "error_class": "builtins.RuntimeError",
                "mode": "canary",
                "rate": rate,
            },
            follow=True,
        )
        assert response.status_code == 200
        assert not RetryCampaign.objects.exists(), rate
    assert Delivery.objects.get().status == Status.DEAD


def test_cancel_a_running_canary_and_see_its_state(admin_client: Client) -> None:
    for _ in range(3):
        DeadLetterFactory()
    url = reverse("admin:eventbus_app_deadletter_groups")
    admin_client.post(
        reverse("admin:eventbus_app_deadletter_group_retry"),
        {
            "handler": "testapp.record",
            "error_class": "builtins.RuntimeError",
            "mode": "canary",
            "rate": "1",
        },
    )
    campaign = RetryCampaign.objects.get()
    page = admin_client.get(url).content.decode()
    assert "canary running" in page and "1 of 3" in page
    assert 'http-equiv="refresh"' in page  # reloads itself while it runs
    assert 'name="cancel"' in page
    response = admin_client.post(
        reverse("admin:eventbus_app_deadletter_campaign_cancel"),
        {"campaign": campaign.pk},
        follow=True,
    )
    assert "cancelled" in response.content.decode()
    campaign.refresh_from_db()
    assert campaign.state == RetryCampaign.State.CANCELLED
    assert "Cancelled by admin" in campaign.stopped_reason
    drain()
    assert operations.advance_campaign(campaign.pk).released == 1  # nothing more released
    page = admin_client.get(url).content.decode()
    assert 'http-equiv="refresh"' not in page and 'name="cancel"' not in page
    again = admin_client.post(
        reverse("admin:eventbus_app_deadletter_campaign_cancel"),
        {"campaign": campaign.pk},
        follow=True,
    )
    assert "not running" in again.content.decode()


# --- replay confirmation -------------------------------------------------------------------


def test_replay_confirmation_checks_every_handler_by_default(admin_client: Client) -> None:
    first = emit(Work(key="a"))
    second = emit(Work(key="b"))
    drain()
    url = reverse("admin:eventbus_app_outboxevent_changelist")
    page = admin_client.post(
        url, {"action": "replay", "_selected_action": [first.pk, second.pk]}
    ).content.decode()
    assert page.count('name="handlers"') == 2
    assert page.count("checked") >= 2
    assert 'name="csrfmiddlewaretoken"' in page
    response = admin_client.post(
        url,
        {
            "action": "replay",
            "_selected_action": [first.pk, second.pk],
            "post": "yes",
            "handlers": ["testapp.record", "testapp.record_async"],
        },
        follow=True,
    )
    assert "4 deliveries of 2 events" in response.content.decode()
    assert set(Delivery.objects.values_list("replays", flat=True)) == {1}


def test_replay_with_no_handler_chosen_changes_nothing(admin_client: Client) -> None:
    record = emit(Work(key="a"))
    drain()
    url = reverse("admin:eventbus_app_outboxevent_replay", args=[record.pk])
    page = admin_client.post(url, {"post": "yes"}).content.decode()
    assert "Choose at least one handler" in page
    page = admin_client.post(url, {"post": "yes", "handlers": ["not.a.handler"]}).content.decode()
    assert "Choose at least one of the listed handlers" in page
    assert set(record.deliveries.values_list("replays", flat=True)) == {0}
    assert not OperatorAction.objects.exists()


def test_replay_is_audited_on_the_event_page(admin_client: Client) -> None:
    record = emit(Work(key="a"))
    drain()
    admin_client.post(
        reverse("admin:eventbus_app_outboxevent_replay", args=[record.pk]),
        {"post": "yes", "handlers": ["testapp.record"]},
    )
    drain()
    page = admin_client.get(
        reverse("admin:eventbus_app_outboxevent_change", args=[record.pk])
    ).content.decode()
    assert "Operator actions" in page and ">admin<" in page and "replay" in page
    assert "first run" in page  # the archived earlier outcome is shown in the history


def test_pausing_an_unknown_handler_is_refused(admin_client: Client) -> None:
    response = admin_client.post(
        reverse("admin:eventbus_app_pause"), {"handler": "no.such", "pause": "1"}, follow=True
    )
    assert "Unknown handler" in response.content.decode()
    assert not OperatorAction.objects.exists()


# --- overview ------------------------------------------------------------------------------


def test_overview_shows_per_handler_bars_lag_and_recent_operator_actions(
    admin_client: Client,
) -> None:
    emit(Work(key="bad", fail_attempts=99))
    drain()
    operations.pause_handler("testapp.record", actor="night-shift")
    emit(Work(key="waits"))
    drain()
    response = admin_client.get(reverse("admin:eventbus_app_overview"))
    page = response.content.decode()
    # Rows this test made (other handlers may be listed too: registered elsewhere, or with
    # recent deliveries): testapp.record failed 5 times and succeeded once in the last day.
    rows = {r["name"]: r for r in response.context["handler_rows"]}
    ours = rows["testapp.record"]
    assert (ours["day_failed"], ours["day_ok"], ours["paused"]) == (5, 0, True)
    assert ours["failed_pct"] > 0 and ours["ok_pct"] + ours["failed_pct"] <= 100
    table = page.split('id="handlers"')[1].split("</table>")[0]
    our_row = (
        table.split("testapp.record</td>")[0].rsplit("<tr>", 1)[1]
        + table.split("testapp.record</td>")[1].split("</tr>")[0]
    )
    assert 'class="hbar"' in our_row and "Resume" in our_row
    assert table.count('class="hbar"') == len(rows)  # one 24-hour bar per handler row
    assert "oldest pending (lag)" in page and "none" not in page.split("oldest pending")[0][-80:]
    recent = page.split('id="recent-actions"')[1].split("</table>")[0]
    assert "night-shift" in recent and "pause" in recent and "testapp.record" in recent
    assert "Resume" in page  # the paused handler offers Resume
    assert "<script" not in recent


def test_overview_chart_counts_failures_not_successes_archived_by_replay(
    admin_client: Client, settings: Any
) -> None:
    bars = admin_client.get(reverse("admin:eventbus_app_overview")).context["bars"]
    before = (sum(b["failed"] for b in bars), sum(b["ok"] for b in bars))  # others' rows
    record = emit(Work(key="ok"))
    drain()
    operations.replay_events([record], actor="x")
    drain()  # two successes archived into the history, two new successes
    emit(Work(key="bad", fail_attempts=1))
    drain()  # one failed attempt, then success
    for tz in ("UTC", "Asia/Kolkata"):  # a half-hour offset: bars still line up with hours
        settings.TIME_ZONE = tz
        bars = admin_client.get(reverse("admin:eventbus_app_overview")).context["bars"]
        failed, ok = sum(b["failed"] for b in bars), sum(b["ok"] for b in bars)
        assert (failed - before[0], ok - before[1]) == (1, 4), tz


def test_attempt_history_shows_who_retried_between_the_rounds(admin_client: Client) -> None:
    emit(Work(key="stubborn", fail_attempts=99))
    drain()
    dead = Delivery.objects.get(status=Status.DEAD)
    admin_client.post(reverse("admin:eventbus_app_delivery_retry", args=[dead.pk]))
    drain()  # five more failed attempts
    for url in (
        reverse("admin:eventbus_app_delivery_change", args=[dead.pk]),
        reverse("admin:eventbus_app_outboxevent_change", args=[dead.event_id]),
    ):
        page = admin_client.get(url).content.decode()
        assert page.count('class="retry-marker"') == 1, url
        first_round, second_round = page.split('class="retry-marker"')
        assert "retried by <strong>admin</strong>" in second_round
        # Four failed attempts (and a fifth, dead) before the retry, four again after it.
        assert first_round.count('class="status status-failed"') == 4, url
        assert second_round.count('class="status status-failed"') == 4, url
