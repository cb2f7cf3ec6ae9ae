"""Discard (issue 13 item 4, issue 11 item 4): dead letters an operator chose not to retry,
from the admin (the dead letter's page, the bulk action's confirmation page, a whole failure
group) and the command line; a reason is required and kept, every discard is audited, the
``discard_delivery`` permission guards it, and discarding releases an ordered stream."""

from __future__ import annotations

import io
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django.db import transaction
from django.test import Client
from django.urls import reverse

from eventbus_app import Event, current_delivery, emit, operations
from eventbus_app.models import Delivery, OperatorAction, OutboxEvent
from eventbus_app.testing import drain
from tests.factories import DeadLetterFactory, DeliveryFactory

pytestmark = pytest.mark.django_db
Status = Delivery.Status
REASON = "customer deleted; nothing to send"


class Booked(Event, event_type="t.discard.Booked"):
    amount: Decimal


def staff(client: Client, *codenames: str, username: str = "staff") -> Client:
    """A staff user with the app's view permissions plus ``codenames``."""
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="eventbus_app").filter(
            codename__startswith="view_"
        )
        | Permission.objects.filter(codename__in=codenames)
    )
    client.force_login(user)
    return client


# --- the operation -------------------------------------------------------------------------


def test_discard_marks_dead_letters_keeps_the_error_and_audits_the_reason() -> None:
    dead = DeadLetterFactory(last_error="RuntimeError: boom\nmore")
    pending = DeliveryFactory()
    failed = DeliveryFactory(status=Status.FAILED, attempts=2, last_error="flaky")
    count = operations.discard_deliveries(
        [dead.pk, pending.pk, failed.pk], reason=f"  {REASON} ", actor="ops"
    )
    assert count == 1
    dead.refresh_from_db()
    assert (dead.status, dead.discard_reason) == (Status.DISCARDED, REASON)
    assert dead.last_error == "RuntimeError: boom\nmore" and dead.traceback  # kept
    assert dead.finished_at is not None and dead.next_attempt_at is None
    action = OperatorAction.objects.get()
    assert (action.kind, action.actor, action.delivery_id, action.event_id) == (
        "discard",
        "ops",
        dead.pk,
        dead.event_id,
    )
    assert action.detail == {"reason": REASON, "was": "dead"}
    pending.refresh_from_db()
    failed.refresh_from_db()
    assert (pending.status, failed.status) == (Status.PENDING, Status.FAILED)
    # Failed deliveries only when asked (the held-streams page, --include-failed).
    assert operations.discard_deliveries([failed.pk], reason="x", actor="ops", include_failed=True)
    failed.refresh_from_db()
    assert failed.status == Status.DISCARDED
    # A discarded delivery is not retried, nor discarded twice.
    assert operations.retry_deliveries([dead.pk], actor="ops") == 0
    assert operations.discard_deliveries([dead.pk], reason="again", actor="ops") == 0


@pytest.mark.parametrize("reason", ["", "   ", "x" * 2001])
def test_discard_without_a_usable_reason_changes_nothing(reason: str) -> None:
    dead = DeadLetterFactory()
    with pytest.raises(ValueError, match="reason"):
        operations.discard_deliveries([dead.pk], reason=reason, actor="ops")
    dead.refresh_from_db()
    assert dead.status == Status.DEAD
    assert not OperatorAction.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_discarding_a_dead_ordered_delivery_releases_its_stream(
    register: Any, settings: Any
) -> None:
    settings.EVENTBUS = {**settings.EVENTBUS, "MAX_ATTEMPTS": 1}
    ran: list[tuple[str, int]] = []

    @register(Booked, name="t.discard.ledger", ordered=True)
    def ledger(event: Booked) -> None:
        ctx = current_delivery()
        assert ctx is not None
        row = OutboxEvent.objects.get(pk=ctx.event_id)
        if row.stream == "ledger-a" and row.position == 2:
            raise RuntimeError("cannot book ledger-a@2")
        ran.append((row.stream, row.position or 0))

    with transaction.atomic():
        for _ in range(4):
            emit(Booked(amount=Decimal("1")), stream="ledger-a")
    drain()
    rows = Delivery.objects.filter(handler="t.discard.ledger")
    assert dict(rows.values_list("position", "status")) == {
        1: Status.SUCCEEDED,
        2: Status.DEAD,
        3: Status.PENDING,
        4: Status.PENDING,
    }
    assert drain()["delivered"] == 0  # held: the later ones wait
    dead = rows.get(position=2)
    assert operations.discard_deliveries([dead.pk], reason=REASON, actor="ops") == 1
    drain()
    assert dict(rows.values_list("position", "status")) == {
        1: Status.SUCCEEDED,
        2: Status.DISCARDED,
        3: Status.SUCCEEDED,
        4: Status.SUCCEEDED,
    }
    assert ran == [("ledger-a", 1), ("ledger-a", 3), ("ledger-a", 4)]  # in order, 2 never


# --- admin: permission ---------------------------------------------------------------------


def test_staff_without_the_discard_permission_see_no_discard_and_cannot_forge_it(
    client: Client,
) -> None:
    retrier = staff(client, "retry_delivery")
    dead = DeadLetterFactory()
    page = retrier.get(reverse("admin:eventbus_app_deadletter_change", args=[dead.pk]))
    assert 'name="discard"' not in page.content.decode()
    listing = retrier.get(reverse("admin:eventbus_app_deadletter_changelist")).content.decode()
    assert 'value="discard"' not in listing and 'value="retry"' in listing
    groups = retrier.get(reverse("admin:eventbus_app_deadletter_groups")).content.decode()
    assert "Discard all" not in groups
    forged = [
        retrier.post(
            reverse("admin:eventbus_app_delivery_discard", args=[dead.pk]), {"reason": "x"}
        ),
        retrier.post(
            reverse("admin:eventbus_app_deadletter_group_discard"),
            {
                "handler": dead.handler,
                "error_class": dead.error_class,
                "post": "yes",
                "reason": "x",
            },
        ),
        retrier.post(
            reverse("admin:eventbus_app_held_streams_discard"),
            {"delivery": dead.pk, "reason": "x"},
        ),
    ]
    assert [r.status_code for r in forged] == [403, 403, 403]
    retrier.post(
        reverse("admin:eventbus_app_deadletter_changelist"),
        {"action": "discard", "_selected_action": [dead.pk], "post": "yes", "reason": "x"},
    )
    dead.refresh_from_db()
    assert dead.status == Status.DEAD
    assert not OperatorAction.objects.exists()


def test_discard_endpoints_refuse_get(admin_client: Client) -> None:
    dead = DeadLetterFactory()
    for url in (
        reverse("admin:eventbus_app_delivery_discard", args=[dead.pk]),
        reverse("admin:eventbus_app_deadletter_group_discard"),
        reverse("admin:eventbus_app_held_streams_discard"),
        reverse("admin:eventbus_app_held_streams_retry"),
    ):
        assert admin_client.get(url, {"reason": "x", "post": "yes"}).status_code == 405, url
    dead.refresh_from_db()
    assert dead.status == Status.DEAD


# --- admin: single, bulk, group ------------------------------------------------------------


def test_discard_one_dead_letter_from_its_page_with_a_reason(client: Client) -> None:
    discarder = staff(client, "discard_delivery")
    dead = DeadLetterFactory()
    page_url = reverse("admin:eventbus_app_deadletter_change", args=[dead.pk])
    page = discarder.get(page_url).content.decode()
    assert 'form="eventbus-discard"' in page and 'name="reason"' in page
    # The form is outside the change form (a nested form is dropped by browsers).
    assert page.index('id="eventbus-discard"') > page.index("</form>")
    url = reverse("admin:eventbus_app_delivery_discard", args=[dead.pk])
    empty = discarder.post(url, {"reason": " "}, follow=True).content.decode()
    assert "A reason is required" in empty
    dead.refresh_from_db()
    assert dead.status == Status.DEAD
    done = discarder.post(url, {"reason": REASON}, follow=True).content.decode()
    assert f"Delivery #{dead.pk} discarded" in done
    assert REASON in done  # shown on the page, and in its audit table
    dead.refresh_from_db()
    assert (dead.status, dead.discard_reason) == (Status.DISCARDED, REASON)
    action = OperatorAction.objects.get(kind="discard")
    assert (action.actor, action.detail["reason"]) == ("staff", REASON)
    again = discarder.post(url, {"reason": REASON}, follow=True).content.decode()
    assert "is not a dead letter" in again
    event_page = discarder.get(
        reverse("admin:eventbus_app_outboxevent_change", args=[dead.event_id])
    ).content.decode()
    assert "discarded" in event_page and REASON in event_page


def test_bulk_discard_goes_through_a_confirmation_page_that_asks_for_the_reason(
    admin_client: Client,
) -> None:
    dead = [DeadLetterFactory() for _ in range(3)]
    pending = DeliveryFactory()
    url = reverse("admin:eventbus_app_delivery_changelist")
    selected = [d.pk for d in dead] + [pending.pk]
    page = admin_client.post(url, {"action": "discard", "_selected_action": selected})
    body = page.content.decode()
    assert page.status_code == 200 and "Discard dead letters?" in body
    assert 'name="reason"' in body and "3 dead letters" in body
    assert "1 of the selected delivery is not dead" in body
    assert body.count('name="_selected_action"') == 3  # only the eligible ones go on
    assert not OperatorAction.objects.exists()  # nothing changed yet
    confirm = {"action": "discard", "_selected_action": [d.pk for d in dead], "post": "yes"}
    refused = admin_client.post(url, {**confirm, "reason": ""}).content.decode()
    assert "A reason is required" in refused and 'name="reason"' in refused
    assert Delivery.objects.filter(status=Status.DEAD).count() == 3
    done = admin_client.post(url, {**confirm, "reason": REASON}, follow=True).content.decode()
    assert "3 dead letters discarded" in done
    assert set(
        Delivery.objects.filter(pk__in=confirm["_selected_action"]).values_list(
            "status", "discard_reason"
        )
    ) == {(Status.DISCARDED, REASON)}
    assert OperatorAction.objects.filter(kind="discard", actor="admin").count() == 3
    pending.refresh_from_db()
    assert pending.status == Status.PENDING


def test_discard_a_whole_failure_group(admin_client: Client) -> None:
    group = [DeadLetterFactory(error_class="builtins.KeyError") for _ in range(3)]
    other = DeadLetterFactory(error_class="builtins.ValueError")
    groups_url = reverse("admin:eventbus_app_deadletter_groups")
    assert "Discard all…" in admin_client.get(groups_url).content.decode()
    url = reverse("admin:eventbus_app_deadletter_group_discard")
    chosen = {"handler": "testapp.record", "error_class": "builtins.KeyError"}
    confirm = admin_client.post(url, chosen).content.decode()
    assert "testapp.record / builtins.KeyError" in confirm and "(3)" in confirm
    assert 'name="reason"' in confirm and 'value="builtins.KeyError"' in confirm
    assert not OperatorAction.objects.exists()
    done = admin_client.post(
        url, {**chosen, "post": "yes", "reason": REASON}, follow=True
    ).content.decode()
    assert "3 dead letters of testapp.record / builtins.KeyError discarded" in done
    assert {d.status for d in Delivery.objects.filter(pk__in=[g.pk for g in group])} == {
        Status.DISCARDED
    }
    other.refresh_from_db()
    assert other.status == Status.DEAD
    assert "builtins.KeyError" not in admin_client.get(groups_url).content.decode()


def test_discard_reasons_are_escaped(admin_client: Client) -> None:
    xss = "<script>alert(1)</script>"
    dead = DeadLetterFactory()
    operations.discard_deliveries([dead.pk], reason=xss, actor=xss)
    for url in (
        reverse("admin:eventbus_app_delivery_change", args=[dead.pk]),
        reverse("admin:eventbus_app_outboxevent_change", args=[dead.event_id]),
        reverse("admin:eventbus_app_overview"),
        reverse("admin:eventbus_app_operatoraction_changelist"),
    ):
        body = admin_client.get(url).content.decode()
        assert xss not in body, url


# --- command line --------------------------------------------------------------------------


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_cli_discard_needs_a_reason_and_a_selection() -> None:
    DeadLetterFactory()
    with pytest.raises(CommandError, match="--reason"):
        run("eventbus_discard", "--all")
    with pytest.raises(CommandError, match="A reason is required"):
        run("eventbus_discard", "--all", "--reason", "  ")
    with pytest.raises(CommandError, match="Say what to discard"):
        run("eventbus_discard", "--reason", REASON)
    assert Delivery.objects.get().status == Status.DEAD


def test_cli_discard_selects_like_retry_dry_run_and_audits(monkeypatch: Any) -> None:
    monkeypatch.setenv("USER", "night-shift")
    monkeypatch.setenv("LOGNAME", "night-shift")
    key_errors = [DeadLetterFactory(error_class="builtins.KeyError") for _ in range(2)]
    value_error = DeadLetterFactory(error_class="builtins.ValueError")
    failed = DeliveryFactory(status=Status.FAILED, error_class="builtins.KeyError")
    out, _ = run("eventbus_discard", "--exception", "KeyError", "--reason", REASON, "--dry-run")
    assert out.count("would discard") == 2 and "2 deliveries would be discarded" in out
    assert not Delivery.objects.filter(status=Status.DISCARDED).exists()
    out, err = run(
        "eventbus_discard",
        "--exception",
        "KeyError",
        "--id",
        str(value_error.pk),
        "--reason",
        REASON,
    )
    assert "Discarded 0 deliveries" in out  # --id and --exception combine with AND
    assert f"Skipped delivery #{value_error.pk}" in err
    out, _ = run("eventbus_discard", "--exception", "KeyError", "--reason", REASON)
    assert "Discarded 2 deliveries" in out
    assert {d.status for d in Delivery.objects.filter(pk__in=[k.pk for k in key_errors])} == {
        Status.DISCARDED
    }
    actions = OperatorAction.objects.filter(kind="discard")
    assert {(a.actor, a.detail["reason"], a.detail["command"]) for a in actions} == {
        ("cli:night-shift", REASON, "eventbus_discard")
    }
    failed.refresh_from_db()
    assert failed.status == Status.FAILED
    out, _ = run("eventbus_discard", "--id", str(failed.pk), "--include-failed", "--reason", "x")
    assert "Discarded 1 delivery" in out
