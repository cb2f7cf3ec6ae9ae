"""Billing's own tables, written only by its handlers (``handlers.py``)."""

from __future__ import annotations

from django.db import models


class Account(models.Model):
    """A shop customer as billing knows them: opened by the shop's ``UserRegistered``."""

    id = models.BigAutoField(primary_key=True)
    user_id = models.BigIntegerField(unique=True, help_text="The user's id in the shop.")
    name = models.CharField(max_length=150)
    email = models.EmailField()
    opened_at = models.DateTimeField(help_text="When the user registered in the shop.")
    event_uuid = models.UUIDField(unique=True, help_text="The shop's UserRegistered event.")

    class Meta:
        verbose_name = "billing account"

    def __str__(self) -> str:
        return f"{self.name} (shop user #{self.user_id})"


class LedgerLine(models.Model):
    """One line per received order or refund; a refund's amount is negative."""

    class Kind(models.TextChoices):
        CHARGE = "charge", "charge (OrderPlaced)"
        REFUND = "refund", "refund (RefundIssued)"

    id = models.BigAutoField(primary_key=True)
    event_uuid = models.UUIDField(
        unique=True, help_text="The shop's event: one line per event, whatever the retries."
    )
    kind = models.CharField(max_length=10, choices=Kind.choices)
    user_id = models.BigIntegerField(db_index=True, help_text="The customer's id in the shop.")
    order_id = models.UUIDField(help_text="The shop's order.")
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "ledger line"
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} EUR, order {self.order_id}"
