from django.db import models


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
