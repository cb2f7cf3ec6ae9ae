from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.models import User
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from eventbus_app.models import Delivery, HandlerState, OutboxEvent

from . import fakes
from .models import FakeService


def _counts(deliveries: QuerySet[Delivery]) -> dict[str, int]:
    return deliveries.aggregate(
        **{status: Count("pk", filter=Q(status=status)) for status in Delivery.Status.values}
    )


def home(request: HttpRequest) -> HttpResponse:
    billing_url = getattr(settings, "DEMO_BILLING_URL", "")
    return render(
        request,
        "demo/home.html",
        {
            "services": [(name, fakes.mode(name)) for name in fakes.SERVICES],
            "modes": FakeService.Mode.choices,
            "counts": _counts(Delivery.objects.all()),
            # The second service: where it runs, and how the shop's relay to it is doing.
            "billing_url": billing_url,
            "relayed": _counts(Delivery.objects.filter(handler="relay:billing"))
            if billing_url
            else {},
            "relay_paused": HandlerState.objects.filter(
                handler="relay:billing", paused=True
            ).exists(),
            "events": OutboxEvent.objects.order_by("-id")[:12],
            "users": User.objects.filter(is_staff=False).order_by("-id")[:10],
        },
    )


@require_POST
def set_service(request: HttpRequest) -> HttpResponse:
    name, mode = request.POST.get("name", ""), request.POST.get("mode", "")
    if name in fakes.SERVICES and mode in FakeService.Mode.values:
        fakes.set_mode(name, mode)
        messages.success(request, f"The fake {name} service is now {mode}.")
    return redirect("demo:home")


def mailbox(request: HttpRequest) -> HttpResponse:
    """The welcome emails (file-based email backend), newest first."""
    folder = Path(getattr(settings, "EMAIL_FILE_PATH", "") or "")
    mails = []
    if str(folder) and folder.is_dir():
        for path in sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime)[-20:]:
            mails.append({"name": path.name, "text": path.read_text(errors="replace")})
    return render(request, "demo/mailbox.html", {"mails": list(reversed(mails))})
