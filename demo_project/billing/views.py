"""Billing's one page: what it received from the shop, and what its handlers made of it."""

from __future__ import annotations

from django.conf import settings
from django.db.models import Count, Prefetch, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from eventbus_app.models import Delivery, OutboxEvent

from .models import Account, LedgerLine

SHOWN = 50


def received(request: HttpRequest) -> HttpResponse:
    inbox = OutboxEvent.objects.exclude(source="")
    events = inbox.order_by("-id").prefetch_related(
        Prefetch("deliveries", queryset=Delivery.objects.order_by("handler"))
    )[:SHOWN]
    names = dict(Account.objects.values_list("user_id", "name"))
    balances = [
        {**row, "name": names.get(row["user_id"], "")}
        for row in LedgerLine.objects.values("user_id")
        .annotate(lines=Count("pk"), balance=Sum("amount"))
        .order_by("user_id")
    ]
    outcomes = Delivery.objects.filter(event__in=inbox).aggregate(
        **{status: Count("pk", filter=Q(status=status)) for status in Delivery.Status.values}
    )
    return render(
        request,
        "billing/received.html",
        {
            "events": events,
            "received": inbox.count(),
            "outcomes": outcomes,
            "accounts": Account.objects.count(),
            "balances": balances,
            "lines": LedgerLine.objects.all()[:SHOWN],
            "shop_url": getattr(settings, "DEMO_SHOP_URL", ""),
        },
    )
