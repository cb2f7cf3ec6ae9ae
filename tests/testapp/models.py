from django.db import models


class Account(models.Model):
    """A domain row written in the same transaction as an emit()."""

    email = models.CharField(max_length=200)
    name = models.CharField(max_length=200, blank=True, default="")

    def __str__(self) -> str:
        return self.email


class Effect(models.Model):
    """One row per handler invocation that committed: duplicates and losses are counted."""

    handler = models.CharField(max_length=255)
    event_id = models.BigIntegerField()
    attempt = models.PositiveIntegerField(default=0)
    idempotency_key = models.CharField(max_length=64, blank=True, default="")
    pid = models.IntegerField(default=0)
    note = models.CharField(max_length=255, blank=True, default="")

    def __str__(self) -> str:
        return f"{self.handler} #{self.event_id}"


class Child(models.Model):
    """A row with a foreign key: Django creates it DEFERRABLE INITIALLY DEFERRED, so a
    dangling one passes its INSERT and fails at COMMIT."""

    parent = models.ForeignKey(Account, on_delete=models.CASCADE)

    def __str__(self) -> str:
        return f"child of #{self.parent_id}"


class Balance(models.Model):
    """A projection (tests/test_rebuild.py): one row per stream, folded by a handler."""

    stream = models.CharField(max_length=200, primary_key=True)
    total = models.IntegerField(default=0)
    events = models.IntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.stream}: {self.total}"
