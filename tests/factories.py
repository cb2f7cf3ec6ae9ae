"""The app's own tests' factories: ``eventbus_app.testing.factories`` with the test app's
defaults (``testapp.Work`` events for the ``testapp.record`` handler)."""

from __future__ import annotations

import factory

from eventbus_app.testing import factories as base
from eventbus_app.testing.factories import DeliveryAttemptFactory

__all__ = [
    "DeadLetterFactory",
    "DeliveryAttemptFactory",
    "DeliveryFactory",
    "FailedDeliveryFactory",
    "OutboxEventFactory",
    "SucceededDeliveryFactory",
]


class OutboxEventFactory(base.OutboxEventFactory):
    event_type = "testapp.Work"
    payload = factory.Sequence(lambda n: {"key": f"k{n}", "fail_attempts": 0})


class DeliveryFactory(base.DeliveryFactory):
    # Not fanned out: a drain in these tests may fan it out (other handlers get theirs).
    event = factory.SubFactory(OutboxEventFactory)
    handler = "testapp.record"


class SucceededDeliveryFactory(DeliveryFactory):
    succeeded = True


class FailedDeliveryFactory(DeliveryFactory):
    failed = True


class DeadLetterFactory(DeliveryFactory):
    dead = True
