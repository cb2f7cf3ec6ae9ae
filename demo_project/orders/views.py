from __future__ import annotations

from decimal import Decimal

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from eventbus_app.models import OutboxEvent

from .models import Order
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
    placed = OutboxEvent.objects.filter(
        event_type="orders.OrderPlaced", payload__order_id=str(order.pk)
    ).first()
    chain = (
        list(OutboxEvent.objects.filter(correlation_id=placed.correlation_id).order_by("id"))
        if placed
        else []
    )
    return render(
        request, "orders/order_detail.html", {"order": order, "invoice": invoice, "chain": chain}
    )
