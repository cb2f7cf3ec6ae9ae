from __future__ import annotations

import uuid
from decimal import Decimal

from django.conf import settings
from django.db import models, router, transaction
from django.utils import timezone

from eventbus_app import emit

from .events import OrderShipped


class Order(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    customer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    product = models.CharField(max_length=100)
    quantity = models.PositiveIntegerField(default=1)
    unit_price = models.DecimalField(max_digits=10, decimal_places=2)
    created_at = models.DateTimeField(auto_now_add=True)
    shipped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.quantity} x {self.product}"

    @property
    def total(self) -> Decimal:
        return self.unit_price * self.quantity

    def ship(self) -> bool:
        """Mark the order shipped and emit ``OrderShipped``; False if it was shipped already.

        Emitting from a model method: the UPDATE and the event share one transaction (this
        method's own, or the caller's if it has one), so the event exists if and only if the
        order is shipped, whoever calls it. ``Order.objects.update(shipped_at=...)`` goes
        around it and emits nothing.
        """
        using = self._state.db or router.db_for_write(Order)
        with transaction.atomic(using=using):
            now = timezone.now()
            # A conditional UPDATE: of two concurrent calls only one ships (and emits).
            if (
                not Order.objects.using(using)
                .filter(pk=self.pk, shipped_at=None)
                .update(shipped_at=now)
            ):
                return False
            emit(
                OrderShipped(order_id=self.pk, user_id=self.customer_id, shipped_at=now),
                using=using,
            )
            self.shipped_at = now
        return True


class Invoice(models.Model):
    id = models.BigAutoField(primary_key=True)
    order = models.OneToOneField(Order, on_delete=models.CASCADE, related_name="invoice")
    number = models.CharField(max_length=20, unique=True)
    total = models.DecimalField(max_digits=12, decimal_places=2)
    created_at = models.DateTimeField(auto_now_add=True)
    document = models.TextField(blank=True, help_text="The rendered invoice (PDF-like text).")
    rendered_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.number


class Refund(models.Model):
    """Money given back on an order. Saving a new one emits ``RefundIssued`` (``receivers.py``)."""

    id = models.BigAutoField(primary_key=True)
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="refunds")
    amount = models.DecimalField(max_digits=10, decimal_places=2)
    reason = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"refund of {self.amount} on {self.order_id}"
