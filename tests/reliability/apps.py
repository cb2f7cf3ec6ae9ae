"""The reliability suite's app: its events, handlers and a sign-up view.

``EVENTBUS_TEST_CLOCK_SKEW`` (seconds) shifts this process's wall clock (``time.time`` and
``django.utils.timezone.now``): the clock test runs workers with a skewed clock that way.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

from django.apps import AppConfig


class ReliabilityConfig(AppConfig):
    name = "tests.reliability"
    label = "reliability"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        skew = float(os.environ.get("EVENTBUS_TEST_CLOCK_SKEW") or 0)
        if skew:
            skew_clock(skew)


def skew_clock(seconds: float) -> None:
    from django.utils import timezone

    real_time, real_now = time.time, timezone.now
    time.time = lambda: real_time() + seconds
    timezone.now = lambda: real_now() + timedelta(seconds=seconds)
