"""A throttle holds across workers: 3 drain processes share one handler limited to 4 per
second; the runs' start times (by the database's clock) never pack more than a bucket's
worth into any second."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import transaction

from eventbus_app import emit
from eventbus_app.models import Delivery
from eventbus_app.throttle import set_throttle
from tests.testapp.models import Effect

from .conftest import Status, Workers, report
from .events import Paced

pytestmark = [pytest.mark.postgres, pytest.mark.reliability, pytest.mark.subprocess]

RATE, EVENTS = 4.0, 24


def test_a_throttle_holds_across_worker_processes(
    workers: Workers, rel_env: dict[str, Any]
) -> None:
    env = dict(
        rel_env, EVENTBUS_TEST_SETTINGS=json.dumps({"LEASE_SECONDS": 30, "HANDLER_TIMEOUT": 5})
    )
    set_throttle("rel.throttled", RATE, actor="test")
    with transaction.atomic():
        for n in range(EVENTS):
            emit(Paced(n=n))
    procs = [workers.drain(env=env) for _ in range(3)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0, workers.output(proc)
    rows = Delivery.objects.filter(handler="rel.throttled")
    assert set(rows.values_list("status", flat=True)) == {Status.SUCCEEDED}
    starts = sorted(
        float(n)
        for n in Effect.objects.filter(handler="rel.throttled").values_list("note", flat=True)
    )
    assert len(starts) == EVENTS
    # A bucket holds one second's worth: in any one-second window at most RATE + RATE runs
    # (a full bucket plus what refills meanwhile), and the whole takes about EVENTS / RATE.
    busiest = max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts)
    span = starts[-1] - starts[0]
    pids = set(Effect.objects.filter(handler="rel.throttled").values_list("pid", flat=True))
    report(
        "throttle across workers",
        events=EVENTS,
        deliveries=EVENTS,
        faults=f"3 drains share a handler throttled to {RATE:g}/s",
        lost=0,
        twice_tx=0,
        twice_file=None,
        busiest_second=busiest,
        span_s=round(span, 1),
        workers_used=len(pids),
    )
    assert busiest <= 2 * RATE
    assert span >= (EVENTS - 2 * RATE) / RATE - 0.5
