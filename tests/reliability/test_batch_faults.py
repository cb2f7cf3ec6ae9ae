"""The faults that used to take a whole batch down, each from one misbehaving handler, with
real eventbus_drain processes on PostgreSQL: a write that fails only at COMMIT (a deferred
foreign key), an error text the database cannot store, transaction-scoped state
(set_config(…, true), SET LOCAL, an advisory xact lock), and a raising on-commit callback.
The good neighbour runs in the same batches: every one of its deliveries succeeds exactly
once, charged one attempt, and sees none of the others' state."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import transaction

from eventbus_app import emit
from eventbus_app.models import Delivery
from tests.testapp.models import Effect

from .conftest import Status, Workers, report
from .events import Misbehave
from .handlers import BAD

pytestmark = [pytest.mark.postgres, pytest.mark.reliability, pytest.mark.subprocess]

EVENTS = 30


def test_each_fault_fails_its_own_delivery_only(workers: Workers, rel_env: dict[str, Any]) -> None:
    env = dict(
        rel_env,
        EVENTBUS_TEST_SETTINGS=json.dumps(
            {"LEASE_SECONDS": 30, "HANDLER_TIMEOUT": 5, "RETRY_BACKOFF": 0}
        ),
    )
    with transaction.atomic():
        for n in range(EVENTS):
            emit(Misbehave(n=n))
    procs = [workers.drain(env=env) for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=240) == 0, workers.output(proc)
    rows = Delivery.objects.filter(event__event_type="reliability.Misbehave")
    good = rows.filter(handler="rel.mis_good")
    assert set(good.values_list("status", "attempts")) == {(Status.SUCCEEDED, 1)}
    effects = Effect.objects.filter(handler="rel.mis_good")
    assert effects.count() == EVENTS
    assert set(effects.values_list("note", flat=True)) == {"|0|0"}  # no leaked state

    fk = rows.get(handler="rel.mis_deferred_fk", event__payload__n=BAD)
    assert (fk.status, fk.attempts) == (Status.DEAD, 2)
    assert "IntegrityError" in fk.last_error and "committing" in fk.last_error
    nul = rows.get(handler="rel.mis_nul", event__payload__n=BAD)
    assert nul.status == Status.DEAD and "a NUL \\x00 in the message" in nul.last_error
    for name in ("rel.mis_deferred_fk", "rel.mis_nul"):
        others = rows.filter(handler=name).exclude(event__payload__n=BAD)
        assert set(others.values_list("status", "attempts")) == {(Status.SUCCEEDED, 1)}
        assert Effect.objects.filter(handler=name).count() == EVENTS - 1  # rolled back once
    for name in ("rel.mis_state", "rel.mis_on_commit"):
        assert set(rows.filter(handler=name).values_list("status", "attempts")) == {
            (Status.SUCCEEDED, 1)
        }
        assert Effect.objects.filter(handler=name).count() == EVENTS
    logs = "".join(workers.output(p) for p in procs)
    assert logs.count("An on-commit callback of handler rel.mis_on_commit") == EVENTS
    report(
        "batch faults",
        events=EVENTS,
        deliveries=EVENTS * 5,
        faults="a commit-time FK failure, a NUL in an error, SET LOCAL/set_config/xact lock, "
        "a raising on-commit callback",
        lost=0,
        twice_tx=0,
        twice_file=None,
        dead=2,
    )
