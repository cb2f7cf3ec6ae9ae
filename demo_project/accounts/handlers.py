"""The four side effects of a sign-up, each run in the background, independently."""

from __future__ import annotations

from django.core.mail import send_mail

from eventbus_app import DeliveryContext, current_delivery, handler

from ..demo.fakes import ChatWebhook, PaymentClient
from .events import UserRegistered
from .models import PaymentCustomer, SignupStat


def _ctx() -> DeliveryContext:
    ctx = current_delivery()
    assert ctx is not None, "runs inside a delivery"
    return ctx


@handler(UserRegistered, name="accounts.send_welcome_email")
def send_welcome_email(event: UserRegistered) -> None:
    send_mail(
        subject=f"Welcome, {event.name}!",
        message=(
            f"Hello {event.name},\n\nthanks for signing up to the eventbus demo shop.\n"
            "This mail was sent by a handler of UserRegistered, in the background.\n"
        ),
        from_email="shop@example.com",
        recipient_list=[event.email],
    )


@handler(UserRegistered, name="accounts.create_payment_customer", max_attempts=8)
def create_payment_customer(event: UserRegistered) -> None:
    ctx = _ctx()
    customer = PaymentClient().create_customer(
        email=event.email, name=event.name, idempotency_key=ctx.idempotency_key
    )
    PaymentCustomer.objects.using(ctx.using).update_or_create(
        user_id=event.user_id, defaults={"provider_id": customer["id"]}
    )


@handler(UserRegistered, name="accounts.record_signup")
def record_signup(event: UserRegistered) -> None:
    ctx = _ctx()
    SignupStat.objects.using(ctx.using).get_or_create(
        event_id=ctx.event_id, defaults={"user_id": event.user_id}
    )


@handler(UserRegistered, name="accounts.notify_team_chat", max_attempts=3)
def notify_team_chat(event: UserRegistered) -> None:
    ChatWebhook().post(f":tada: {event.name} <{event.email}> just signed up")
