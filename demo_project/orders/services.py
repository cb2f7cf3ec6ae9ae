from __future__ import annotations

from decimal import Decimal

from django.contrib.auth.models import User
from django.db import transaction

from eventbus_app import emit

from .events import OrderPlaced
from .models import Order


def place_order(user: User, *, product: str, quantity: int, unit_price: Decimal) -> Order:
    with transaction.atomic():
        order = Order.objects.create(
            customer=user, product=product, quantity=quantity, unit_price=unit_price
        )
        emit(OrderPlaced(order_id=order.pk, user_id=user.pk, total=order.total))
    return order
