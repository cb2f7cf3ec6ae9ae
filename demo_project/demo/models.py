from __future__ import annotations

from django.db import models


class FakeService(models.Model):
    """How a pretend outside service behaves; the demo's home page flips it."""

    class Mode(models.TextChoices):
        UP = "up", "up"
        FLAKY = "flaky", "flaky (first attempt of each call times out)"
        DOWN = "down", "down"

    name = models.CharField(max_length=50, primary_key=True)
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.UP)

    class Meta:
        verbose_name = "fake outside service"

    def __str__(self) -> str:
        return f"{self.name}: {self.mode}"
