"""Service B's handler of the latency probe. Service A installs the same app (it emits the
same classes) but must not run the probe itself: the handler is registered in B only."""

from __future__ import annotations

import time

from django.conf import settings

from eventbus_app import handler

from .events import Ping
from .models import Arrival

if getattr(settings, "RELAYBENCH_SERVICE", "a") == "b":

    @handler(Ping, name="relaybench.arrived")
    def arrived(event: Ping) -> None:
        started = time.time()  # first thing: the handler's start is what is measured
        # A delivery that runs twice (at least once) keeps its first start.
        Arrival.objects.get_or_create(key=event.key, defaults={"started": started})
