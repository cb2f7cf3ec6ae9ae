"""eventbus handlers of the benchmark (found by eventbus_app's autodiscovery)."""

from __future__ import annotations

import time

from eventbus_app import current_delivery, handler

from .events import Bulk, OrderPlaced, Ping
from .models import Mark


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
