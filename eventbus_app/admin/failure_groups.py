"""The failure groups page: dead letters grouped by handler and exception class, *Retry
all*, canary retries and their cancel button, *Discard all…* (through a confirmation page
asking for the reason). Its URLs hang under the dead-letter admin."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import router
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.views.decorators.http import require_POST

from .. import operations
from ..models import Delivery, RetryCampaign
from .common import DISCARD_PERM, RETRY_PERM, actor, plural, write_db
from .deliveries import discard_confirmation
from .overview import can_view_console

logger = logging.getLogger(__name__)


class FailureGroupsPage(admin.ModelAdmin):
    """Mixed into the dead-letter admin, which hosts the page's URLs."""

    def failure_group_urls(self) -> list[URLPattern]:
        return [
            path(
                "groups/",
                self.admin_site.admin_view(self.groups_view),
                name="eventbus_app_deadletter_groups",
            ),
            path(
                "groups/retry/",
                self.admin_site.admin_view(require_POST(self.group_retry_view)),
                name="eventbus_app_deadletter_group_retry",
            ),
            path(
                "groups/discard/",
                self.admin_site.admin_view(require_POST(self.group_discard_view)),
                name="eventbus_app_deadletter_group_discard",
            ),
            path(
                "groups/cancel/",
                self.admin_site.admin_view(require_POST(self.campaign_cancel_view)),
                name="eventbus_app_deadletter_campaign_cancel",
            ),
        ]

    def groups_view(self, request: HttpRequest) -> HttpResponse:
        if not can_view_console(request):
            raise PermissionDenied
        groups = operations.failure_groups(router.db_for_read(Delivery))
        campaigns = list(RetryCampaign.objects.using(router.db_for_read(RetryCampaign))[:20])
        changelist = reverse("admin:eventbus_app_deadletter_changelist")
        for group in groups:
            query = urlencode({"handler": group["handler"], "error_class": group["error_class"]})
            group["list_url"] = f"{changelist}?{query}"
        context: dict[str, Any] = {
            **self.admin_site.each_context(request),
            "title": "Failure groups",
            "opts": self.opts,
            "groups": groups,
            "campaigns": campaigns,
            # No JavaScript: the page reloads itself while a canary retry runs.
            "has_active_campaign": any(c.active for c in campaigns),
            "can_retry": request.user.has_perm(RETRY_PERM),
            "can_discard": request.user.has_perm(DISCARD_PERM),
        }
        return TemplateResponse(request, "admin/eventbus_app/failure_groups.html", context)

    def group_discard_view(self, request: HttpRequest) -> HttpResponse:
        """First POST: the confirmation page; with ``post=yes`` and a reason: discard."""
        if not request.user.has_perm(DISCARD_PERM):
            raise PermissionDenied
        handler = request.POST.get("handler", "")
        error_class = request.POST.get("error_class", "")
        using = write_db(Delivery)
        label = f"{handler} / {error_class or '-'}"
        if request.POST.get("post") == "yes":
            try:
                count = operations.discard_group(
                    handler,
                    error_class,
                    reason=request.POST.get("reason", ""),
                    actor=actor(request),
                    using=using,
                )
            except ValueError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                self.message_user(
                    request,
                    f"{plural(count, 'dead letter', 'dead letters')} of {label} discarded.",
                    messages.SUCCESS if count else messages.WARNING,
                )
                return HttpResponseRedirect(reverse("admin:eventbus_app_deadletter_groups"))
        members = operations.group_members(handler, error_class, using)
        return discard_confirmation(
            self,
            request,
            deliveries=list(
                members.select_related("event")
                .defer("traceback", "event__payload")
                .order_by("finished_at", "pk")[:20]
            ),
            total=members.count(),
            group=label,
            hidden={"handler": handler, "error_class": error_class},
            cancel_url=reverse("admin:eventbus_app_deadletter_groups"),
        )

    def group_retry_view(self, request: HttpRequest) -> HttpResponse:
        if not request.user.has_perm(RETRY_PERM):
            raise PermissionDenied
        handler = request.POST.get("handler", "")
        error_class = request.POST.get("error_class", "")
        using = write_db(Delivery)
        if request.POST.get("mode") == "canary":
            try:
                rate = float(request.POST.get("rate", "1"))
                campaign = operations.start_canary(
                    handler, error_class, rate=rate, actor=actor(request), using=using
                )
            except ValueError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                rest = campaign.total - 1
                self.message_user(
                    request,
                    f"Canary retry started: delivery #{campaign.canary_id} first"
                    + (
                        f", then the other {plural(rest, 'dead letter', 'dead letters')} at "
                        f"{campaign.rate:g}/s unless one fails."
                        if rest
                        else " (the group's only dead letter)."
                    ),
                    messages.SUCCESS,
                )
        else:
            count = operations.retry_group(handler, error_class, actor=actor(request), using=using)
            self.message_user(
                request,
                f"{plural(count, 'dead letter', 'dead letters')} of {handler} / "
                f"{error_class or '-'} sent back to pending.",
                messages.SUCCESS if count else messages.WARNING,
            )
        return HttpResponseRedirect(reverse("admin:eventbus_app_deadletter_groups"))

    def campaign_cancel_view(self, request: HttpRequest) -> HttpResponse:
        if not request.user.has_perm(RETRY_PERM):
            raise PermissionDenied
        raw = request.POST.get("campaign", "")
        using = write_db(RetryCampaign)
        cancelled = raw.isdigit() and operations.cancel_campaign(
            int(raw), actor=actor(request), using=using
        )
        if cancelled:
            self.message_user(
                request,
                f"Canary retry #{raw} cancelled: nothing more is released.",
                messages.SUCCESS,
            )
        else:
            self.message_user(
                request, f"Canary retry #{raw} is not running; nothing to cancel.", messages.WARNING
            )
        return HttpResponseRedirect(reverse("admin:eventbus_app_deadletter_groups"))
