"""Dead letters: the deliveries list narrowed to dead ones, with the failure groups and
held streams pages."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib import admin
from django.urls import URLPattern

from ..models import DeadLetter
from .common import EventTypeFilter, ExceptionFilter, HandlerFilter
from .deliveries import DeliveryAdmin
from .failure_groups import FailureGroupsPage
from .held_streams import HeldStreamsPage

logger = logging.getLogger(__name__)


@admin.register(DeadLetter)
class DeadLetterAdmin(FailureGroupsPage, HeldStreamsPage, DeliveryAdmin):
    list_display = [
        "id",
        "handler",
        "event_link",  # "type #id", linked
        "attempts",
        "error",  # its first line names the exception; the class is a filter
        "age",
    ]
    list_filter = [HandlerFilter, EventTypeFilter, ExceptionFilter]
    change_list_template = "admin/eventbus_app/deadletter/change_list.html"

    def get_urls(self) -> list[URLPattern]:
        urls: list[Any] = [*self.failure_group_urls(), *self.held_stream_urls()]
        return urls + super().get_urls()
