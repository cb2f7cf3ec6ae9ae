from __future__ import annotations

from decimal import Decimal

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from eventbus_app.models import OutboxEvent

from .models import Order, Refund
from .services import place_order

PRODUCTS = {
    "Espresso machine": Decimal("249.00"),
    "Coffee beans, 1 kg": Decimal("18.50"),
    "Milk frother": Decimal("39.90"),
}


class OrderForm(forms.Form):
    product = forms.ChoiceField(choices=[(p, f"{p} — {v} EUR") for p, v in PRODUCTS.items()])
    quantity = forms.IntegerField(min_value=1, max_value=20, initial=1)


@login_required
def order_create(request: HttpRequest) -> HttpResponse:
    form = OrderForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        product = form.cleaned_data["product"]
        order = place_order(
            request.user,  # type: ignore[arg-type]
            product=product,
            quantity=form.cleaned_data["quantity"],
            unit_price=PRODUCTS[product],
        )
        messages.success(request, "Order placed. The invoice is created in the background.")
        return redirect("orders:order", order_id=order.pk)
    orders = Order.objects.filter(customer=request.user).select_related("invoice")[:20]
    return render(request, "orders/order_form.html", {"form": form, "orders": orders})


@login_required
def order_detail(request: HttpRequest, order_id: str) -> HttpResponse:
    order = get_object_or_404(Order, pk=order_id)
    if order.customer_id != request.user.pk and not request.user.is_staff:
        return HttpResponse("Not your order.", status=403)
    invoice = getattr(order, "invoice", None)
    refunds = list(order.refunds.order_by("id"))
    placed = OutboxEvent.objects.filter(
        event_type="orders.OrderPlaced", payload__order_id=str(order.pk)
    ).first()
    chain = (
        list(OutboxEvent.objects.filter(correlation_id=placed.correlation_id).order_by("id"))
        if placed
        else []
    )
    return render(
        request,
        "orders/order_detail.html",
        {"order": order, "invoice": invoice, "chain": chain, "refunds": refunds},
    )


def _own_order(request: HttpRequest, order_id: str) -> Order | HttpResponse:
    order = get_object_or_404(Order, pk=order_id)
    if order.customer_id != request.user.pk and not request.user.is_staff:
        return HttpResponse("Not your order.", status=403)
    return order


@login_required
@require_POST
def order_ship(request: HttpRequest, order_id: str) -> HttpResponse:
    """Emitting from a model method: ``order.ship()`` changes the row and emits
    ``OrderShipped`` in one transaction. (Shipping is the shop's job; the demo lets the
    customer press the button.)"""
    order = _own_order(request, order_id)
    if isinstance(order, HttpResponse):
        return order
    if order.ship():
        messages.success(request, "Shipped: order.ship() emitted OrderShipped with the change.")
    else:
        messages.info(request, "This order was shipped already: nothing emitted.")
    return redirect("orders:order", order_id=order.pk)


@login_required
@require_POST
def order_refund(request: HttpRequest, order_id: str) -> HttpResponse:
    """Emitting from a ``post_save`` receiver: saving a new ``Refund`` emits
    ``RefundIssued``. Inside ``transaction.atomic()``, so the row and the event commit
    together."""
    order = _own_order(request, order_id)
    if isinstance(order, HttpResponse):
        return order
    with transaction.atomic():
        Refund.objects.create(order=order, amount=Decimal("5.00"), reason="demo goodwill")
    messages.success(request, "Refunded 5.00 EUR: the post_save receiver emitted RefundIssued.")
    return redirect("orders:order", order_id=order.pk)
