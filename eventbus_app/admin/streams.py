"""The stream page: every event of one stream in position order, payloads redacted, and
the aggregate's state after each one when an ``Aggregate`` class is registered for the
stream's prefix (time-travel debugging). Its URL hangs under the events admin:
``admin:eventbus_app_stream``, with ``?stream=<name>`` (names may hold any character)."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db import router
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path

from ..models import OutboxEvent
from .queries import stream_page

logger = logging.getLogger(__name__)


class StreamPage(admin.ModelAdmin):
    """Mixed into the events admin, which hosts the page's URL."""

    def stream_urls(self) -> list[URLPattern]:
        return [
            path(
                "stream/",
                self.admin_site.admin_view(self.stream_view),
                name="eventbus_app_stream",
            )
        ]

    def stream_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        stream = request.GET.get("stream", "")
        if not stream:
            raise Http404("Say which stream: ?stream=<name>")
        raw = request.GET.get("from", "1")
        start = int(raw) if raw.isdigit() and int(raw) >= 1 else 1
        figures = stream_page(stream, router.db_for_read(OutboxEvent), start=start)
        if not figures["rows"] and not figures["last_position"]:
            raise Http404(f"No events in stream {stream!r}.")
        context: dict[str, Any] = {
            **self.admin_site.each_context(request),
            "title": f"Stream {stream}",
            "opts": self.opts,
            **figures,
        }
        return TemplateResponse(request, "admin/eventbus_app/stream.html", context)
