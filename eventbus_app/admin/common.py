"""What every console page shares: permissions, the database to act on, read-only audit
admins, the list filters and a paginator that does not count millions of rows."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib import admin
from django.core.paginator import Paginator
from django.db import router
from django.db.models import Exists, OuterRef, QuerySet
from django.http import HttpRequest
from django.utils.functional import cached_property

from ..models import Delivery, OutboxEvent
from . import queries

logger = logging.getLogger(__name__)

Status = Delivery.Status
RETRY_PERM = "eventbus_app.retry_delivery"
REPLAY_PERM = "eventbus_app.replay_event"
DISCARD_PERM = "eventbus_app.discard_delivery"


def actor(request: HttpRequest) -> str:
    return request.user.get_username()


def write_db(model: type[Any]) -> str:
    """Where an operation on ``model``'s rows acts: the router's write database, as Django's
    own ``delete_selected`` does (the admin lists the rows the router reads, and with
    replicas those are copies of the write database's)."""
    return router.db_for_write(model)


def plural(count: int, singular: str, plural_form: str) -> str:
    return f"{count:,} {singular if count == 1 else plural_form}"


class CountingPaginator(Paginator):
    """Counts exactly up to ``queries.EXACT_COUNT``; beyond that, PostgreSQL's estimate
    (``estimated`` is then True and the list says "about"). A COUNT over millions of rows
    is what made the unfiltered lists slow."""

    estimated = False

    @cached_property
    def count(self) -> int:
        total, exact = queries.count_or_estimate(self.object_list)  # type: ignore[arg-type]
        self.estimated = not exact
        return total

    @property
    def count_display(self) -> str:
        return f"{self.count:,}"


class AuditRecordAdmin(admin.ModelAdmin):
    """Rows that record what happened: viewable, never added, edited or deleted here."""

    paginator = CountingPaginator
    show_full_result_count = False  # a second COUNT, of the whole table

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- filters -----------------------------------------------------------------------------


class DistinctValueFilter(admin.SimpleListFilter):
    """Filter on the distinct values a column holds (handlers, exception classes, types),
    read from the column's index (a skip scan on PostgreSQL), not from the whole table."""

    model: type[Any] = Delivery
    field = ""
    lookup = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        using = router.db_for_read(model_admin.model)
        return [(v, v) for v in queries.distinct_values(self.model, self.field, using) if v]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value():
            return queryset.filter(**{self.lookup or self.field: self.value()})
        return queryset


class HandlerFilter(DistinctValueFilter):
    title = "handler"
    parameter_name = "handler"
    field = "handler"


class EventTypeFilter(DistinctValueFilter):
    """On deliveries: the types come from the events table's index (a join over millions
    of deliveries to list them would be slow)."""

    title = "event type"
    parameter_name = "event_type"
    model = OutboxEvent
    field = "event_type"
    lookup = "event__event_type"


class ExceptionFilter(DistinctValueFilter):
    title = "exception class"
    parameter_name = "error_class"
    field = "error_class"


class SourceFilter(admin.SimpleListFilter):
    """Local events, or those received from one of ``EVENTBUS["SOURCES"]`` (shown where
    the service has sources)."""

    title = "source"
    parameter_name = "source"
    LOCAL = "-"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        from ..conf import eventbus_settings

        sources = eventbus_settings.SOURCES
        names = set(sources) if isinstance(sources, dict) else set()
        if not names:
            return []  # a service that receives nothing: no filter to show
        return [(self.LOCAL, "local (emitted here)"), *((n, n) for n in sorted(names))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value == self.LOCAL:
            return queryset.filter(source="")
        if value:
            return queryset.filter(source=value)
        return queryset


class OutboxEventTypeFilter(DistinctValueFilter):
    title = "event type"
    parameter_name = "event_type"
    model = OutboxEvent
    field = "event_type"


class DeliveryStateFilter(admin.SimpleListFilter):
    title = "delivery state"
    parameter_name = "delivery_state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("undispatched", "not fanned out yet"), *Status.choices]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value == "undispatched":
            return queryset.filter(dispatched_at__isnull=True)
        if value in Status.values:
            # A semi-join, not a DISTINCT over the joined deliveries.
            deliveries = Delivery.objects.filter(event=OuterRef("pk"), status=value)
            return queryset.filter(Exists(deliveries))
        return queryset
