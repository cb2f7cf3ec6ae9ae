"""An order becomes an invoice, and the invoice a document: a causal chain of events.

``create_invoice`` handles ``OrderPlaced`` and emits ``InvoiceCreated`` from inside the
handler, so the new event's ``causation_id`` is the order's event and both share one
``correlation_id``; ``render_invoice`` then renders the document.
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.core.mail import send_mail
from django.utils import timezone

from eventbus_app import current_delivery, emit, handler

from .events import InvoiceCreated, OrderPlaced, OrderShipped, RefundIssued
from .models import Invoice, Order

WIDTH = 56


@handler(OrderPlaced, name="orders.create_invoice")
def create_invoice(event: OrderPlaced) -> None:
    ctx = current_delivery()
    using = ctx.using if ctx else "default"
    order = Order.objects.using(using).get(pk=event.order_id)
    invoice, created = Invoice.objects.using(using).get_or_create(
        order=order,
        defaults={
            "number": f"INV-{order.created_at:%Y}-{str(order.pk)[:6].upper()}",
            "total": event.total,
        },
    )
    if created:
        emit(InvoiceCreated(invoice_id=invoice.pk, order_id=order.pk, number=invoice.number))


def render_document(invoice: Invoice) -> str:
    order = invoice.order
    rule = "─" * WIDTH
    line = f"{order.quantity} x {order.product}"
    lines = [
        "%PDF-1.7 (well, almost)",
        rule,
        f"{'INVOICE ' + invoice.number:<{WIDTH - 12}}{order.created_at:%Y-%m-%d}",
        rule,
        f"Bill to: {order.customer.get_full_name() or order.customer.username}",
        f"         {order.customer.email}",
        "",
        f"{line:<{WIDTH - 15}}{order.unit_price:>8} EUR ea",
        rule,
        f"{'Total':<{WIDTH - 14}}{invoice.total:>10} EUR",
        rule,
        "Thank you for your order.",
    ]
    return "\n".join(lines) + "\n"


@handler(InvoiceCreated, name="orders.render_invoice")
def render_invoice(event: InvoiceCreated) -> None:
    ctx = current_delivery()
    using = ctx.using if ctx else "default"
    invoice = (
        Invoice.objects.using(using).select_related("order__customer").get(pk=event.invoice_id)
    )
    invoice.document = render_document(invoice)
    invoice.rendered_at = timezone.now()
    invoice.save(using=using, update_fields=["document", "rendered_at"])


def _customer(user_id: int) -> User:
    ctx = current_delivery()
    return User.objects.using(ctx.using if ctx else "default").get(pk=user_id)


@handler(OrderShipped, name="orders.email_shipping_notice")
def email_shipping_notice(event: OrderShipped) -> None:
    customer = _customer(event.user_id)
    send_mail(
        subject="Your order is on its way",
        message=f"Order {event.order_id} shipped at {event.shipped_at:%Y-%m-%d %H:%M} UTC.\n",
        from_email="shop@example.com",
        recipient_list=[customer.email],
    )


@handler(RefundIssued, name="orders.email_refund_notice")
def email_refund_notice(event: RefundIssued) -> None:
    customer = _customer(event.user_id)
    send_mail(
        subject=f"Refund of {event.amount} EUR",
        message=f"We refunded {event.amount} EUR on order {event.order_id}.\n",
        from_email="shop@example.com",
        recipient_list=[customer.email],
    )
