from __future__ import annotations

import os
import time

from eventbus_app import PermanentError, current_delivery, emit, handler

from .events import Chain, Credited, Work
from .models import Balance, Effect


def _record(name: str, note: str = "") -> None:
    ctx = current_delivery()
    assert ctx is not None
    Effect.objects.using(ctx.using).create(
        handler=name,
        event_id=ctx.event_id,
        attempt=ctx.attempt,
        idempotency_key=ctx.idempotency_key,
        pid=os.getpid(),
        note=note,
    )


@handler(Work, name="testapp.record")
def record(event: Work) -> None:
    if event.sleep:
        time.sleep(event.sleep)
    ctx = current_delivery()
    assert ctx is not None
    if event.permanent:
        raise PermanentError(f"refused {event.key}")
    if ctx.attempt <= event.fail_attempts:
        _record("testapp.record", note="rolled back")  # must roll back with the failure
        raise RuntimeError(f"flaky {event.key} attempt {ctx.attempt}")
    _record("testapp.record")


@handler(Work, name="testapp.record_async")
async def record_async(event: Work) -> None:
    from asgiref.sync import sync_to_async

    await sync_to_async(_record)("testapp.record_async")


@handler(Chain, name="testapp.chain")
def chain(event: Chain) -> None:
    _record("testapp.chain")
    if event.n > 0:
        emit(Chain(n=event.n - 1))


@handler(Credited, name="testapp.balances", ordered=True, writes=[Balance])
def balances(event: Credited) -> None:
    """A projection: not idempotent (it adds), so rebuilds start from empty tables."""
    from django.db.models import F

    from eventbus_app.models import OutboxEvent

    ctx = current_delivery()
    assert ctx is not None
    stream = (
        OutboxEvent.objects.using(ctx.using).values_list("stream", flat=True).get(pk=ctx.event_id)
    )
    row, _ = Balance.objects.using(ctx.using).get_or_create(stream=stream)
    Balance.objects.using(ctx.using).filter(pk=row.pk).update(
        total=F("total") + event.amount, events=F("events") + 1
    )
