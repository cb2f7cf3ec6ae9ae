"""eventbus handlers of the benchmark (found by eventbus_app's autodiscovery)."""

from __future__ import annotations

import time

from eventbus_app import current_delivery, handler

from .events import Bulk, Credit, Lap, LapFree, OrderPlaced, Ping, Written
from .models import Ledger, Mark, Row


@handler(OrderPlaced, name="bench.noop1")
def noop1(event: OrderPlaced) -> None:
    pass


@handler(OrderPlaced, name="bench.noop2")
def noop2(event: OrderPlaced) -> None:
    pass


@handler(OrderPlaced, name="bench.noop3")
def noop3(event: OrderPlaced) -> None:
    pass


@handler(OrderPlaced, name="bench.noop4")
def noop4(event: OrderPlaced) -> None:
    pass


@handler(Ping, name="bench.ping")
def ping(event: Ping) -> None:
    started = time.time()
    ctx = current_delivery()
    Mark.objects.using(ctx.using if ctx else "default").create(key=event.key, started=started)


@handler(Bulk, name="bench.bulk")
def bulk(event: Bulk) -> None:
    pass


def _write(handler: int, event: Written) -> None:
    ctx = current_delivery()
    Row.objects.using(ctx.using if ctx else "default").create(handler=handler, ref=event.ref)


@handler(Written, name="bench.write1")
def write1(event: Written) -> None:
    _write(1, event)


@handler(Written, name="bench.write2")
def write2(event: Written) -> None:
    _write(2, event)


@handler(Written, name="bench.write3")
def write3(event: Written) -> None:
    _write(3, event)


@handler(Written, name="bench.write4")
def write4(event: Written) -> None:
    _write(4, event)


@handler(Lap, name="bench.lap_ordered", ordered=True)
def lap_ordered(event: Lap) -> None:
    pass


@handler(LapFree, name="bench.lap_free")
def lap_free(event: LapFree) -> None:
    pass


@handler(Credit, name="bench.ledger", writes=[Ledger])
def ledger(event: Credit) -> None:
    """A projection for the rebuild measurement (an upsert by stream)."""
    from django.db.models import F

    from eventbus_app.models import OutboxEvent

    ctx = current_delivery()
    using = ctx.using if ctx else "default"
    stream = (
        OutboxEvent.objects.using(using)
        .values_list("stream", flat=True)
        .get(pk=ctx.event_id if ctx else 0)
    )
    updated = Ledger.objects.using(using).filter(pk=stream).update(total=F("total") + event.amount)
    if not updated:
        Ledger.objects.using(using).create(stream=stream, total=event.amount)
