"""factory-boy factories for eventbus_app's models (``pip install factory-boy``).

Rows as the dispatcher would leave them, for tests of code that reads them (a dashboard,
a health check, a management command)::

    from eventbus_app.testing.factories import DeadLetterFactory, OutboxEventFactory

    event = OutboxEventFactory(event_type="accounts.UserRegistered", payload={"user_id": 1})
    dead = DeadLetterFactory(event=event, handler="crm.create_customer")
    DeliveryFactory(status="failed")        # or a trait: DeliveryFactory(failed=True)

Each state has a factory (``PendingDeliveryFactory`` … ``DiscardedDeliveryFactory``) and a
trait of ``DeliveryFactory`` (``running=True``, ``succeeded=True``, ``failed=True``,
``dead=True``, ``discarded=True``). ``OutboxEventFactory`` makes an event not yet fanned
out (the dispatcher would create its deliveries); a delivery's own event is fanned out.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import factory
from django.utils import timezone
from factory.django import DjangoModelFactory

from ..models import Delivery, DeliveryAttempt, OutboxEvent

Status = Delivery.Status

TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "handlers.py", line 12, in create_customer\n'
    "    client.create(email=event.email)\n"
    "RuntimeError: boom\n"
)


class OutboxEventFactory(DjangoModelFactory[OutboxEvent]):
    """An emitted event. ``payload`` is stored as given (it is not checked against a class)."""

    class Meta:
        model = OutboxEvent

    event_type = "example.SomethingHappened"
    version = 1
    payload = factory.Sequence(lambda n: {"n": n})
    correlation_id = factory.LazyFunction(uuid.uuid4)
    depth = 0
    created_at = factory.LazyFunction(timezone.now)

    class Params:
        # Its deliveries exist: the dispatcher will not fan it out again.
        dispatched = factory.Trait(dispatched_at=factory.LazyFunction(timezone.now))


class DeliveryFactory(DjangoModelFactory[Delivery]):
    """A delivery (pending unless a trait or ``status`` says otherwise)."""

    class Meta:
        model = Delivery

    event = factory.SubFactory(OutboxEventFactory, dispatched=True)
    handler = "example.handler"
    status = Status.PENDING
    attempts = 0
    stream = factory.SelfAttribute("event.stream")
    position = factory.SelfAttribute("event.position")
    next_attempt_at = factory.LazyFunction(timezone.now)

    class Params:
        running = factory.Trait(
            status=Status.RUNNING,
            lease_token=factory.LazyFunction(uuid.uuid4),
            next_attempt_at=factory.LazyFunction(lambda: timezone.now() + timedelta(minutes=5)),
            started_at=factory.LazyFunction(timezone.now),
            in_flight=1,
        )
        succeeded = factory.Trait(
            status=Status.SUCCEEDED,
            attempts=1,
            next_attempt_at=None,
            finished_at=factory.LazyFunction(timezone.now),
        )
        failed = factory.Trait(
            status=Status.FAILED,
            attempts=1,
            last_error="RuntimeError: boom",
            error_class="builtins.RuntimeError",
            traceback=TRACEBACK,
            next_attempt_at=factory.LazyFunction(lambda: timezone.now() + timedelta(seconds=30)),
        )
        dead = factory.Trait(
            status=Status.DEAD,
            attempts=5,
            last_error="RuntimeError: boom",
            error_class="builtins.RuntimeError",
            traceback=TRACEBACK,
            next_attempt_at=None,
            finished_at=factory.LazyFunction(timezone.now),
        )
        discarded = factory.Trait(
            status=Status.DISCARDED,
            attempts=5,
            last_error="RuntimeError: boom",
            error_class="builtins.RuntimeError",
            traceback=TRACEBACK,
            next_attempt_at=None,
            finished_at=factory.LazyFunction(timezone.now),
            discard_reason="customer deleted their account",
        )


class PendingDeliveryFactory(DeliveryFactory):
    pass


class RunningDeliveryFactory(DeliveryFactory):
    running = True


class SucceededDeliveryFactory(DeliveryFactory):
    succeeded = True


class FailedDeliveryFactory(DeliveryFactory):
    failed = True


class DiscardedDeliveryFactory(DeliveryFactory):
    discarded = True


class DeliveryAttemptFactory(DjangoModelFactory[DeliveryAttempt]):
    """One recorded attempt of a delivery (its history)."""

    class Meta:
        model = DeliveryAttempt

    delivery = factory.SubFactory(DeliveryFactory)
    attempt = 1
    outcome = DeliveryAttempt.Outcome.FAILED
    error = "RuntimeError: boom"
    error_class = "builtins.RuntimeError"
    traceback = TRACEBACK


class DeadLetterFactory(DeliveryFactory):
    """A dead letter with its error and traceback. ``history=True`` also records its failed
    attempts (one ``DeliveryAttempt`` per attempt, the last one ``dead``), as the event
    page shows them."""

    dead = True

    class Meta:
        skip_postgeneration_save = True  # the hook writes other rows, not this one

    @factory.post_generation
    def history(obj: Delivery, create: bool, extracted: object, **kwargs: object) -> None:
        if not create or not extracted:
            return
        for attempt in range(1, obj.attempts + 1):
            last = attempt == obj.attempts
            DeliveryAttempt.objects.using(obj._state.db).create(
                delivery=obj,
                attempt=attempt,
                outcome=DeliveryAttempt.Outcome.DEAD if last else DeliveryAttempt.Outcome.FAILED,
                error=obj.last_error,
                error_class=obj.error_class,
                traceback=obj.traceback,
            )
