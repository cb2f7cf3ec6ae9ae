"""The overview page (counts, lag, a 24-hour chart, handlers with their Pause/Resume
switch). Its URLs hang under the events admin: ``admin:eventbus_app_overview``."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import router
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.views.decorators.http import require_POST

from .. import operations
from ..models import Delivery, HandlerState
from ..registry import all_handlers
from .common import RETRY_PERM, actor, write_db
from .queries import overview_figures

logger = logging.getLogger(__name__)


def can_view_console(request: HttpRequest) -> bool:
    """The overview and failure groups show deliveries: they need the view permission on
    them (is_staff alone is not enough)."""
    return request.user.has_perm("eventbus_app.view_delivery") or request.user.has_perm(
        "eventbus_app.change_delivery"
    )


class OverviewPage(admin.ModelAdmin):
    """Mixed into the events admin, which hosts the page's URLs."""

    def overview_urls(self) -> list[URLPattern]:
        return [
            path(
                "overview/",
                self.admin_site.admin_view(self.overview_view),
                name="eventbus_app_overview",
            ),
            path(
                "overview/pause/",
                self.admin_site.admin_view(require_POST(self.pause_view)),
                name="eventbus_app_pause",
            ),
            path(
                "overview/throttle/",
                self.admin_site.admin_view(require_POST(self.throttle_view)),
                name="eventbus_app_throttle",
            ),
        ]

    def overview_view(self, request: HttpRequest) -> HttpResponse:
        if not can_view_console(request):
            raise PermissionDenied
        context: dict[str, Any] = {
            **self.admin_site.each_context(request),
            "title": "Event bus overview",
            "opts": self.opts,
            **overview_figures(router.db_for_read(Delivery)),
            "can_pause": request.user.has_perm(RETRY_PERM),
        }
        return TemplateResponse(request, "admin/eventbus_app/overview.html", context)

    def throttle_view(self, request: HttpRequest) -> HttpResponse:
        """Next to Pause: at most N deliveries per second for a handler, or no limit."""
        from ..exceptions import EventBusError
        from ..models import HandlerThrottle
        from ..throttle import set_throttle

        if not request.user.has_perm(RETRY_PERM):
            raise PermissionDenied
        handler = request.POST.get("handler", "")
        raw = request.POST.get("rate", "").strip()
        if handler not in all_handlers():
            self.message_user(request, f"Unknown handler {handler!r}.", messages.ERROR)
            return HttpResponseRedirect(reverse("admin:eventbus_app_overview"))
        try:
            rate = float(raw) if raw else None
            set_throttle(handler, rate, actor=actor(request), using=write_db(HandlerThrottle))
        except (ValueError, EventBusError) as exc:
            self.message_user(request, f"Not throttled: {exc} (rate {raw!r}).", messages.ERROR)
        else:
            self.message_user(
                request,
                f"Handler {handler}: at most {rate:g} deliveries per second across all workers."
                if rate
                else f"Handler {handler}: no rate limit.",
                messages.SUCCESS,
            )
        return HttpResponseRedirect(reverse("admin:eventbus_app_overview"))

    def pause_view(self, request: HttpRequest) -> HttpResponse:
        if not request.user.has_perm(RETRY_PERM):
            raise PermissionDenied
        handler = request.POST.get("handler", "")
        paused = request.POST.get("pause") == "1"
        using = write_db(HandlerState)
        if (
            handler not in all_handlers()
            and not HandlerState.objects.using(using).filter(handler=handler).exists()
        ):
            self.message_user(request, f"Unknown handler {handler!r}.", messages.ERROR)
        else:
            operations.set_paused(handler, paused, actor=actor(request), using=using)
            verb = "paused: its deliveries wait until it is resumed" if paused else "resumed"
            self.message_user(request, f"Handler {handler} {verb}.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:eventbus_app_overview"))
