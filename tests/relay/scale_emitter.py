"""The shop's application in tests/relay/test_scale.py, as a process of its own: emits N
``testapp.Credited`` events (amounts 0..N-1, event n on stream ``s-<n % STREAMS>``) spread
evenly over SECONDS, in small transactions as web requests would, so that the relay is
publishing during the whole run and the faults land while it does.

``python -m tests.relay.scale_emitter N STREAMS SECONDS``
"""

from __future__ import annotations

import sys
import time


def main(n: int, streams: int, seconds: float) -> None:
    import django

    django.setup()
    from django.db import transaction

    from eventbus_app import emit
    from tests.testapp.events import Credited

    began = time.monotonic()
    sent = 0
    while sent < n:
        due = min(n, int(n * (time.monotonic() - began) / seconds) + 1)
        with transaction.atomic():
            for k in range(sent, due):
                emit(Credited(amount=k), stream=f"s-{k % streams}")
        sent = due
        time.sleep(0.05)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
