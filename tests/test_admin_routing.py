"""Issue 10, the console's leftovers: the overview and failure groups need the app's view
permission (is_staff is not enough), and the admin's retry, replay, pause (and discard) act
on the database the router sends the rows to, not on ``default``."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from eventbus_app import emit
from eventbus_app.models import Delivery, HandlerState, OperatorAction, OutboxEvent
from eventbus_app.testing import drain
from tests.factories import DeadLetterFactory
from tests.testapp.events import Work

Status = Delivery.Status
CONSOLE = [
    "admin:eventbus_app_overview",
    "admin:eventbus_app_deadletter_groups",
    "admin:eventbus_app_held_streams",
]


class EventbusOnOther:
    """Reads and writes of eventbus_app's rows go to ``other``; everything else (users,
    sessions) stays on ``default``."""

    def db_for_read(self, model: type[Any], **hints: Any) -> str | None:
        return "other" if model._meta.app_label == "eventbus_app" else None

    db_for_write = db_for_read


@pytest.mark.django_db
@pytest.mark.parametrize("name", CONSOLE)
def test_staff_without_the_view_permission_get_403_on_console_pages(
    client: Client, name: str
) -> None:
    user = User.objects.create_user("staff-only", password="pw", is_staff=True)
    client.force_login(user)
    assert client.get(reverse(name)).status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="view_delivery"))
    user = User.objects.get(pk=user.pk)  # a fresh permission cache
    client.force_login(user)
    assert client.get(reverse(name)).status_code == 200


@pytest.mark.django_db(databases=["default", "other"])
def test_admin_operations_act_on_the_routers_database(admin_client: Client, settings: Any) -> None:
    emit(Work(key="decoy", fail_attempts=99))  # on default: must stay as it is
    drain()
    settings.DATABASE_ROUTERS = [f"{__name__}.EventbusOnOther"]
    dead = DeadLetterFactory()  # the router puts it on other
    discard_me = DeadLetterFactory()
    assert Delivery.objects.using("other").filter(pk=dead.pk).exists()
    decoys = dict(Delivery.objects.using("default").values_list("pk", "status"))
    # The same ids on default would be hit by an operation that ignores the router.
    retried = admin_client.post(
        reverse("admin:eventbus_app_delivery_retry", args=[dead.pk]), follow=True
    )
    assert f"Delivery #{dead.pk} sent back to pending" in retried.content.decode()
    assert Delivery.objects.using("other").get(pk=dead.pk).status == Status.PENDING
    admin_client.post(
        reverse("admin:eventbus_app_delivery_discard", args=[discard_me.pk]), {"reason": "r"}
    )
    assert Delivery.objects.using("other").get(pk=discard_me.pk).status == Status.DISCARDED
    drain("other")
    event = OutboxEvent.objects.using("other").get(pk=dead.event_id)
    replayed = admin_client.post(
        reverse("admin:eventbus_app_outboxevent_replay", args=[event.pk]),
        {"post": "yes", "handlers": ["testapp.record"]},
        follow=True,
    )
    assert "Replay scheduled: 1 delivery" in replayed.content.decode()
    assert Delivery.objects.using("other").get(pk=dead.pk).replays == 1
    pause = {"handler": "testapp.record", "pause": "1"}
    admin_client.post(reverse("admin:eventbus_app_pause"), pause)
    assert HandlerState.objects.using("other").get(handler="testapp.record").paused
    kinds = set(OperatorAction.objects.using("other").values_list("kind", flat=True))
    assert kinds == {"retry", "discard", "replay", "pause"}
    # Nothing of it reached default.
    assert not OperatorAction.objects.using("default").exists()
    assert not HandlerState.objects.using("default").exists()
    assert dict(Delivery.objects.using("default").values_list("pk", "status")) == decoys
    assert set(Delivery.objects.using("default").values_list("replays", flat=True)) == {0}
