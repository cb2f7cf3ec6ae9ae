"""Rolling deploys: old and new workers, whose registries differ, side by side.

The new release adds a handler (``rel.deploy_new_only``) and a version 2 of the event class.
An old worker must create the new handler's deliveries when it fans out, leave them (and
events stored by version 2) to a new worker instead of dead-lettering them, and work no live
worker knows is dead-lettered only after the grace period."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from django.db import transaction

from eventbus_app import emit
from eventbus_app.models import Delivery, OutboxEvent, WorkerRegistry
from tests.testapp.models import Effect

from .conftest import Status, Workers, report
from .events import Deploy

pytestmark = [pytest.mark.postgres, pytest.mark.reliability, pytest.mark.subprocess]

OLD, NEW = 20, 5


def test_old_and_new_workers_leave_each_other_what_they_do_not_know(
    workers: Workers, rel_env: dict[str, str]
) -> None:
    settings_json = json.dumps({"LEASE_SECONDS": 3, "HANDLER_TIMEOUT": 1})
    old_env = dict(rel_env, EVENTBUS_TEST_SETTINGS=settings_json)
    new_env = dict(old_env, EVENTBUS_TEST_NEW_CODE="1")

    def drain(env: dict[str, str]) -> str:
        proc = workers.drain(env=env)
        assert proc.wait(timeout=120) == 0, workers.output(proc)
        return workers.output(proc)

    drain(new_env)  # the new release starts somewhere: its registry is published
    assert WorkerRegistry.objects.count() == 1
    with transaction.atomic():
        for n in range(OLD):
            emit(Deploy(n=n))  # this test process runs the old code: version 1
        for n in range(NEW):  # what the new release's web servers emit: version 2
            OutboxEvent.objects.create(
                event_type="reliability.Deploy",
                version=2,
                payload={"n": OLD + n, "region": "us"},
                correlation_id=uuid.uuid4(),
            )

    drain(old_env)
    rows = Delivery.objects.filter(event__event_type="reliability.Deploy")
    # The old worker fanned out for the new handler too, and ran none of its deliveries.
    assert rows.filter(handler="rel.deploy_new_only").count() == OLD + NEW
    assert set(rows.filter(handler="rel.deploy_new_only").values_list("status", flat=True)) == {
        Status.PENDING
    }
    both = rows.filter(handler="rel.deploy_both")
    assert both.filter(status=Status.SUCCEEDED, event__version=1).count() == OLD
    # Version 2 payloads wait for the new code, uncharged.
    assert set(both.filter(event__version=2).values_list("status", "attempts")) == {
        (Status.PENDING, 0)
    }
    assert not rows.filter(status=Status.DEAD).exists()

    time.sleep(2.5)  # the deliveries the old worker gave back fall due again
    drain(new_env)
    assert set(rows.values_list("status", flat=True)) == {Status.SUCCEEDED}
    assert Effect.objects.filter(handler="rel.deploy_new_only").count() == OLD + NEW
    assert Effect.objects.filter(handler="rel.deploy_both").count() == OLD + NEW
    report(
        "rolling deploy",
        events=OLD + NEW,
        deliveries=2 * (OLD + NEW),
        faults="an old and a new release side by side (a new handler, a version 2 payload)",
        lost=0,
        twice_tx=0,
        twice_file=None,
        dead_letters=0,
    )


def test_work_no_live_worker_knows_is_dead_lettered_after_the_grace_period(
    workers: Workers, rel_env: dict[str, str], settings: Any
) -> None:
    env = dict(
        rel_env,
        EVENTBUS_TEST_SETTINGS=json.dumps(
            {"LEASE_SECONDS": 3, "HANDLER_TIMEOUT": 1, "REGISTRY_GRACE_SECONDS": 3}
        ),
    )
    emit(Deploy(n=1))
    WorkerRegistry.objects.create(
        fingerprint="a-release-since-rolled-back",
        routes={"reliability.Deploy": ["rel.retired"]},
        versions={"reliability.Deploy": 1},
    )
    proc = workers.drain(env=env)
    assert proc.wait(timeout=120) == 0, workers.output(proc)
    retired = Delivery.objects.get(handler="rel.retired")
    assert retired.status == Status.PENDING  # a live registry knows it: it waits

    time.sleep(3.5)  # that registry is no longer seen
    proc = workers.drain(env=env)
    assert proc.wait(timeout=120) == 0, workers.output(proc)
    retired.refresh_from_db()
    assert retired.status == Status.DEAD
    assert "nor in any worker seen in the last 3 s" in retired.last_error
    assert Delivery.objects.get(handler="rel.deploy_both").status == Status.SUCCEEDED
