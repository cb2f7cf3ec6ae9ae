from django.db import models


class Arrival(models.Model):
    """When service B's handler of a latency probe started (``time.time()`` of B's worker;
    both services run on one machine, so one clock)."""

    key = models.IntegerField(primary_key=True)
    started = models.FloatField()

    def __str__(self) -> str:
        return f"probe {self.key}"
