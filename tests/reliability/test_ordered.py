"""An ordered handler (``@handler(..., ordered=True)``) with 4 workers under repeated
SIGKILL: each stream's deliveries run one at a time, in position order, each exactly once
for its database effects, and every stream completes."""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from typing import Any

import pytest
from django.db import transaction

from eventbus_app import emit
from eventbus_app.models import Delivery
from tests.testapp.models import Effect

from .conftest import Status, Workers, kill, report, sized, wait_until
from .events import Step

pytestmark = [pytest.mark.postgres, pytest.mark.reliability, pytest.mark.subprocess]


def test_ordered_handler_keeps_per_stream_order_under_kill_9(
    workers: Workers, rel_env: dict[str, str]
) -> None:
    streams, per_stream = sized(40, 200), sized(15, 20)
    kills_wanted = sized(10, 30)
    rng = random.Random(11)
    with transaction.atomic():
        for position in range(per_stream):  # interleaved, as real traffic is
            for s in range(streams):
                emit(Step(n=position), stream=f"order-{s}")
    total = streams * per_stream
    done = Delivery.objects.filter(handler="rel.ordered", status=Status.SUCCEEDED)
    live = [workers.drain() for _ in range(4)]
    kills = 0
    started = time.monotonic()
    while kills < kills_wanted and done.count() < total:
        time.sleep(rng.uniform(0.3, 1.0))
        victim = rng.choice(live)
        if victim.poll() is None:
            kill(victim)
            kills += 1
        live = [p for p in live if p.poll() is None]
        live += [workers.drain() for _ in range(4 - len(live))]

    def finished() -> bool:
        if done.count() >= total:
            return True
        alive = [p for p in workers.procs if p.poll() is None]
        for _ in range(4 - len(alive)):
            workers.drain()
        return False

    try:
        wait_until(finished, 300, "every stream to complete")
    except AssertionError:
        stuck = list(
            Delivery.objects.exclude(status=Status.SUCCEEDED)
            .order_by("stream", "position")
            .values_list("stream", "position", "status", "attempts", "isolate", "in_flight")[:20]
        )
        errors = set(Delivery.objects.exclude(last_error="").values_list("error_class", flat=True))
        raise AssertionError(f"stuck (first 20): {stuck}; errors seen: {errors}") from None
    elapsed = time.monotonic() - started
    per: dict[str, list[int]] = defaultdict(list)
    for note in (
        Effect.objects.filter(handler="rel.ordered").order_by("id").values_list("note", flat=True)
    ):
        stream, position = note.rsplit(":", 1)
        per[stream].append(int(position))
    out_of_order = [s for s, positions in per.items() if positions != sorted(positions)]
    twice = [s for s, positions in per.items() if len(positions) != len(set(positions))]
    every = list(range(1, per_stream + 1))
    incomplete = [s for s, positions in per.items() if sorted(positions) != every]
    report(
        "ordered handler under kill -9",
        events=total,
        deliveries=total,
        faults=f"{kills} SIGKILLs of 4 drains, {streams} streams x {per_stream} events",
        lost=total - sum(len(set(p)) for p in per.values()),
        twice_tx=len(twice),
        twice_file=None,
        out_of_order_streams=len(out_of_order),
        seconds=round(elapsed, 1),
    )
    assert (out_of_order, twice, incomplete) == ([], [], [])
    assert len(per) == streams
    assert not Delivery.objects.exclude(status=Status.SUCCEEDED).exists()


def test_no_two_workers_run_one_stream_at_once(workers: Workers, rel_env: dict[str, Any]) -> None:
    """Each run records whether an earlier delivery of its stream was still unsettled when
    it started (by the database): with 4 workers none was."""
    streams, per_stream = 10, 10
    with transaction.atomic():
        for position in range(per_stream):
            for s in range(streams):
                emit(Step(n=position), stream=f"lane-{s}")
    # Two streams' heads a claim and 20 ms a run: a worker cannot take every stream at
    # once, nor finish them all before the others have started on a loaded machine (with
    # a claim of 100 and 2 ms a run, one worker once did it all).
    settings = {**json.loads(rel_env["EVENTBUS_TEST_SETTINGS"]), "BATCH_SIZE": 2}
    env = {
        **rel_env,
        "EVENTBUS_TEST_SETTINGS": json.dumps(settings),
        "REL_ORDERED_SECONDS": "0.02",
    }
    procs = [workers.drain(env=env) for _ in range(4)]
    for proc in procs:
        proc.wait(timeout=300)
    assert [p.returncode for p in procs] == [0] * 4, [workers.output(p) for p in procs]
    effects = list(Effect.objects.filter(handler="rel.ordered").order_by("id"))
    assert len(effects) == streams * per_stream
    assert len({e.pid for e in effects}) >= 2  # the streams were shared by the workers
    per: dict[str, list[int]] = defaultdict(list)
    for e in effects:
        stream, position = e.note.rsplit(":", 1)
        per[stream].append(int(position))
    assert all(p == list(range(1, per_stream + 1)) for p in per.values()), per
