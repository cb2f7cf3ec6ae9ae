from __future__ import annotations

from django.conf import settings
from django.db import models


class SignupStat(models.Model):
    """Analytics: one row per sign-up, written by a handler (the "analytics table")."""

    id = models.BigAutoField(primary_key=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    source = models.CharField(max_length=50, default="web")
    recorded_at = models.DateTimeField(auto_now_add=True)
    event_id = models.BigIntegerField(unique=True, help_text="The UserRegistered event counted.")

    def __str__(self) -> str:
        return f"sign-up of user #{self.user_id} ({self.source})"


class PaymentCustomer(models.Model):
    """The payment provider's customer id for a user (created by a handler)."""

    id = models.BigAutoField(primary_key=True)
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    provider_id = models.CharField(max_length=40)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.provider_id
