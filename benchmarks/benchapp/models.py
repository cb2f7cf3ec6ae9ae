from django.db import models
from django.db.models.functions import Now


class Order(models.Model):
    """The request path's own write."""

    id = models.BigAutoField(primary_key=True)
    customer = models.CharField(max_length=100)
    total_cents = models.IntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"order #{self.pk}"


class Mark(models.Model):
    """When a latency probe's handler started (``time.time()`` of the worker)."""

    key = models.IntegerField(primary_key=True)
    started = models.FloatField()

    def __str__(self) -> str:
        return f"probe {self.key}"


class Row(models.Model):
    """The row-writing workload's effect: one row per (event, handler), written in the
    handler's transaction. ``created`` is the database's clock, for the rate."""

    id = models.BigAutoField(primary_key=True)
    handler = models.SmallIntegerField()
    ref = models.BigIntegerField()
    created = models.DateTimeField(db_default=Now())

    def __str__(self) -> str:
        return f"row {self.handler}/{self.ref}"


class Ledger(models.Model):
    """The rebuild workload's projection: one row per stream."""

    stream = models.CharField(max_length=200, primary_key=True)
    total = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.stream}: {self.total}"
