"""factory-boy factories for eventbus_app's models."""

from __future__ import annotations

import uuid

import factory
from factory.django import DjangoModelFactory

from eventbus_app.models import Delivery, DeliveryAttempt, OutboxEvent


class OutboxEventFactory(DjangoModelFactory[OutboxEvent]):
    class Meta:
        model = OutboxEvent

    event_type = "testapp.Work"
    version = 1
    payload = factory.Sequence(lambda n: {"key": f"k{n}", "fail_attempts": 0})
    correlation_id = factory.LazyFunction(uuid.uuid4)
    depth = 0


class DeliveryFactory(DjangoModelFactory[Delivery]):
    class Meta:
        model = Delivery

    event = factory.SubFactory(OutboxEventFactory)
    handler = "testapp.record"
    status = Delivery.Status.PENDING
    attempts = 0


class DeadLetterFactory(DeliveryFactory):
    status = Delivery.Status.DEAD
    attempts = 5
    last_error = "RuntimeError: boom"
    error_class = "builtins.RuntimeError"
    traceback = 'Traceback (most recent call last):\n  File "x.py", line 1\nRuntimeError: boom'


class DeliveryAttemptFactory(DjangoModelFactory[DeliveryAttempt]):
    class Meta:
        model = DeliveryAttempt

    delivery = factory.SubFactory(DeliveryFactory)
    attempt = 1
    outcome = DeliveryAttempt.Outcome.FAILED
    error = "RuntimeError: boom"
    error_class = "builtins.RuntimeError"
