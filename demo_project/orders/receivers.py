"""Emitting from a ``post_save`` receiver: every ``Refund`` saved as new emits ``RefundIssued``.

The receiver runs inside ``save()``. Inside ``transaction.atomic()`` the row and the event
commit together (or roll back together). In autocommit each is its own statement,
committed at once: a crash between the two leaves a refund without its event. So save refunds
inside ``transaction.atomic()`` (as ``views.order_refund`` does). ``QuerySet.update()`` and
``bulk_create()`` send no ``post_save``: rows written that way emit nothing.
"""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_save
from django.dispatch import receiver

from eventbus_app import emit

from .events import RefundIssued
from .models import Refund


@receiver(post_save, sender=Refund, dispatch_uid="orders.refund_issued")
def refund_issued(sender: type[Refund], instance: Refund, created: bool, **kwargs: Any) -> None:
    if not created:
        return
    order = instance.order
    emit(
        RefundIssued(
            refund_id=instance.pk,
            order_id=order.pk,
            user_id=order.customer_id,
            amount=instance.amount,
        ),
        using=kwargs.get("using"),
    )
