from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import Account, LedgerLine


class WrittenByHandlers(admin.ModelAdmin):
    """Rows the handlers write from received events: read-only here."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Account)
class AccountAdmin(WrittenByHandlers):
    list_display = ["user_id", "name", "opened_at", "event_uuid"]
    search_fields = ["name", "event_uuid"]


@admin.register(LedgerLine)
class LedgerLineAdmin(WrittenByHandlers):
    list_display = ["id", "kind", "amount", "user_id", "order_id", "event_uuid", "recorded_at"]
    list_filter = ["kind"]
    search_fields = ["event_uuid", "order_id"]
