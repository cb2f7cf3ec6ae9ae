"""The audit trail and the switches: operator actions, canary retries, handler states."""

from __future__ import annotations

import logging

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from ..models import HandlerState, OperatorAction, RetryCampaign
from .common import AuditRecordAdmin

logger = logging.getLogger(__name__)


@admin.register(OperatorAction)
class OperatorActionAdmin(AuditRecordAdmin):
    list_display = ["created_at", "kind", "actor", "handler", "event", "delivery"]
    list_filter = ["kind", "created_at"]
    search_fields = ["actor", "handler"]
    list_select_related = ["event", "delivery"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[OperatorAction]:
        return super().get_queryset(request).defer("event__payload", "delivery__traceback")


@admin.register(RetryCampaign)
class RetryCampaignAdmin(AuditRecordAdmin):
    list_display = ["id", "handler", "error_class", "state", "released", "total", "created_by"]
    list_filter = ["state"]


@admin.register(HandlerState)
class HandlerStateAdmin(AuditRecordAdmin):
    list_display = ["handler", "paused", "changed_by", "changed_at"]
