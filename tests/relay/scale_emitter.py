"""The shop's application in tests/relay/test_scale.py, as a process of its own: emits N
``testapp.Credited`` events (amounts 0..N-1, event n on stream ``s-<n % STREAMS>``) spread
evenly over SECONDS, in small transactions as web requests would, so that the relay is
publishing during the whole run and the faults land while it does. While the file HOLD
exists (a fault is due and not injected yet) its clock stops and it emits a trickle
(about 20 events a second): the relay and the consumer keep some work in hand meanwhile.

``python -m tests.relay.scale_emitter N STREAMS SECONDS HOLD``
"""

from __future__ import annotations

import os
import sys
import time


def main(n: int, streams: int, seconds: float, hold: str) -> None:
    import django

    django.setup()
    from django.db import transaction

    from eventbus_app import emit
    from tests.testapp.events import Credited

    active = 0.0  # seconds emitted at full pace (the clock stops while held)
    last = time.monotonic()
    sent = 0
    while sent < n:
        now = time.monotonic()
        if os.path.exists(hold):
            due = sent + 1
        else:
            active += now - last
            due = max(sent, int(n * active / seconds) + 1)
        last = now
        due = min(n, due)
        with transaction.atomic():
            for k in range(sent, due):
                emit(Credited(amount=k), stream=f"s-{k % streams}")
        sent = due
        time.sleep(0.05)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
