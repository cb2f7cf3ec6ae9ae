"""The held-streams page: streams an ordered handler cannot make progress on (a failed or
dead delivery at their head, or later deliveries waiting), with *Retry* and *Discard &
release*. Its URLs hang under the dead-letter admin."""

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
from ..models import Delivery
from .common import DISCARD_PERM, RETRY_PERM, actor, write_db
from .overview import can_view_console
from .queries import HELD_LIMIT, held_streams

logger = logging.getLogger(__name__)


class HeldStreamsPage(admin.ModelAdmin):
    """Mixed into the dead-letter admin, which hosts the page's URLs."""

    def held_stream_urls(self) -> list[URLPattern]:
        return [
            path(
                "held-streams/",
                self.admin_site.admin_view(self.held_streams_view),
                name="eventbus_app_held_streams",
            ),
            path(
                "held-streams/retry/",
                self.admin_site.admin_view(require_POST(self.held_retry_view)),
                name="eventbus_app_held_streams_retry",
            ),
            path(
                "held-streams/discard/",
                self.admin_site.admin_view(require_POST(self.held_discard_view)),
                name="eventbus_app_held_streams_discard",
            ),
        ]

    def held_streams_view(self, request: HttpRequest) -> HttpResponse:
        if not can_view_console(request):
            raise PermissionDenied
        rows = held_streams(router.db_for_read(Delivery))
        for row in rows:
            row["retryable"] = row["delivery"].status in operations.RETRYABLE
        context: dict[str, Any] = {
            **self.admin_site.each_context(request),
            "title": "Held streams",
            "opts": self.opts,
            "rows": rows,
            "limit": HELD_LIMIT,
            "can_retry": request.user.has_perm(RETRY_PERM),
            "can_discard": request.user.has_perm(DISCARD_PERM),
        }
        return TemplateResponse(request, "admin/eventbus_app/held_streams.html", context)

    def _posted_delivery(self, request: HttpRequest) -> int | None:
        raw = request.POST.get("delivery", "")
        return int(raw) if raw.isdigit() else None

    def held_retry_view(self, request: HttpRequest) -> HttpResponse:
        if not request.user.has_perm(RETRY_PERM):
            raise PermissionDenied
        pk = self._posted_delivery(request)
        count = (
            operations.retry_deliveries(
                [pk],
                actor=actor(request),
                using=write_db(Delivery),
                detail={"held_stream": request.POST.get("stream", "")},
            )
            if pk is not None
            else 0
        )
        self.message_user(
            request,
            f"Delivery #{pk} sent back to pending; its stream goes on once it succeeds."
            if count
            else f"Delivery #{pk} is not dead or failed; nothing to retry.",
            messages.SUCCESS if count else messages.WARNING,
        )
        return HttpResponseRedirect(reverse("admin:eventbus_app_held_streams"))

    def held_discard_view(self, request: HttpRequest) -> HttpResponse:
        if not request.user.has_perm(DISCARD_PERM):
            raise PermissionDenied
        pk = self._posted_delivery(request)
        stream = request.POST.get("stream", "")
        try:
            # A failed head holds its stream as firmly as a dead one: both can be released.
            count = (
                operations.discard_deliveries(
                    [pk],
                    reason=request.POST.get("reason", ""),
                    actor=actor(request),
                    using=write_db(Delivery),
                    include_failed=True,
                    detail={"held_stream": stream},
                )
                if pk is not None
                else 0
            )
        except ValueError as exc:
            self.message_user(request, str(exc), messages.ERROR)
        else:
            self.message_user(
                request,
                f"Delivery #{pk} discarded; stream {stream} released: the deliveries behind "
                "it run now."
                if count
                else f"Delivery #{pk} is not dead or failed; nothing to discard.",
                messages.SUCCESS if count else messages.WARNING,
            )
        return HttpResponseRedirect(reverse("admin:eventbus_app_held_streams"))
