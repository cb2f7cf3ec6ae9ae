"""Events: the list, the read-only event page (payload, deliveries, causal chain, audit)
and replay (action and confirmation page)."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone

from .. import operations
from ..models import Delivery, OperatorAction, OutboxEvent
from ..redaction import pretty, preview
from ..streams.aggregate import aggregate_for_stream
from .common import (
    REPLAY_PERM,
    RETRY_PERM,
    AuditRecordAdmin,
    DeliveryStateFilter,
    OutboxEventTypeFilter,
    SourceFilter,
    actor,
    plural,
    write_db,
)
from .event_map import EventMapPage
from .overview import OverviewPage
from .queries import (
    SEARCH_WINDOW,
    TREE_LIMIT,
    correlation_tree,
    delivery_counts,
    search_events,
    timeline,
)
from .streams import StreamPage

logger = logging.getLogger(__name__)

Status = Delivery.Status
SUMMARY_ORDER = (
    (Status.SUCCEEDED, "succeeded"),
    (Status.PENDING, "pending"),
    (Status.RUNNING, "running"),
    (Status.FAILED, "failed"),
    (Status.DEAD, "dead"),
    (Status.DISCARDED, "discarded"),
)


class EventChangeList(ChangeList):
    """Counts the deliveries of the shown page's events only (one grouped query), instead
    of annotating five aggregates onto a COUNT over the whole table."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        events = list(self.result_list)
        counts = delivery_counts((e.pk for e in events), self.queryset.db)
        for event in events:
            event.delivery_counts = counts.get(event.pk, {})


@admin.register(OutboxEvent)
class OutboxEventAdmin(OverviewPage, StreamPage, EventMapPage, AuditRecordAdmin):
    list_display = ["id", "event_type", "created", "correlation", "delivery_summary", "data"]
    list_filter = [OutboxEventTypeFilter, SourceFilter, "created_at", DeliveryStateFilter]
    search_help_text = (
        "Event id, correlation id or event type; or payload text (the newest "
        f"{SEARCH_WINDOW:,} events)."
    )
    search_fields = ["event_type"]  # enables the box; get_search_results does the work
    ordering = ["-id"]
    actions = ["replay"]
    list_per_page = 50
    change_form_template = "admin/eventbus_app/outboxevent/change_form.html"
    change_list_template = "admin/eventbus_app/outboxevent/change_list.html"
    # The payload is shown redacted by the template, never as a raw field.
    fields = (
        "id",
        "uuid",
        "event_type",
        "version",
        "stream",
        "position",
        "source",
        "correlation_id",
        "causation",
        "emitted_by",
        "depth",
        "created_at",
        "falls_due",
        "dispatched_at",
        "traceparent",
    )
    readonly_fields = fields

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return EventChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        return search_events(queryset, search_term), False

    @admin.display(description="created", ordering="created_at")
    def created(self, obj: OutboxEvent) -> str:
        return timezone.localtime(obj.created_at).strftime("%Y-%m-%d %H:%M:%S")

    @admin.display(description="falls due")
    def falls_due(self, obj: OutboxEvent) -> str:
        """emit(deliver_after=...): when its handlers may run (and how long until then)."""
        if obj.deliver_after is None:
            return "at once"
        when = timezone.localtime(obj.deliver_after).strftime("%Y-%m-%d %H:%M:%S")
        left = (obj.deliver_after - timezone.now()).total_seconds()
        if left <= 0:
            return f"{when} (due)"
        return f"{when} (in {int(left // 3600)} h {int(left % 3600 // 60)} min)"

    @admin.display(description="deliveries")
    def delivery_summary(self, obj: OutboxEvent) -> str:
        summary = self._delivery_summary(obj)
        if obj.deliver_after is not None and obj.deliver_after > timezone.now():
            return f"{summary}; falls due {timezone.localtime(obj.deliver_after):%Y-%m-%d %H:%M}"
        return summary

    @admin.display(description="correlation")
    def correlation(self, obj: OutboxEvent) -> str:
        return str(obj.correlation_id)[:8]

    def _delivery_summary(self, obj: OutboxEvent) -> str:
        if obj.dispatched_at is None:
            return "not fanned out yet"
        counts: dict[str, int] = getattr(obj, "delivery_counts", None) or {}
        parts = [f"{counts[s]} {label}" for s, label in SUMMARY_ORDER if counts.get(s)]
        return ", ".join(parts) or "no handlers"

    @admin.display(description="payload")
    def data(self, obj: OutboxEvent) -> str:
        return preview(obj.payload)

    # permissions and actions

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(REPLAY_PERM)

    @admin.action(permissions=["replay"], description="Replay selected events…")
    def replay(self, request: HttpRequest, queryset: QuerySet[OutboxEvent]) -> Any:
        return self._replay_confirmation(request, list(queryset), from_action=True)

    def _replay_confirmation(
        self, request: HttpRequest, events: list[OutboxEvent], *, from_action: bool
    ) -> HttpResponse | None:
        available = sorted({h for e in events for h in operations.replay_handlers(e)})
        if request.POST.get("post") == "yes":
            chosen = request.POST.getlist("handlers")
            unknown = sorted(set(chosen) - set(available))
            if unknown or not chosen:
                self.message_user(
                    request,
                    f"Choose at least one of the listed handlers (not {', '.join(unknown)})."
                    if unknown
                    else "Choose at least one handler to replay.",
                    messages.ERROR,
                )
            else:
                count = operations.replay_events(
                    events,
                    handlers=None if set(chosen) == set(available) else chosen,
                    actor=actor(request),
                    using=write_db(OutboxEvent),
                )
                self.message_user(
                    request,
                    f"Replay scheduled: {plural(count, 'delivery', 'deliveries')} of "
                    f"{plural(len(events), 'event', 'events')} will run again in the "
                    "background.",
                    messages.SUCCESS,
                )
                return (
                    None
                    if from_action
                    else HttpResponseRedirect(
                        reverse("admin:eventbus_app_outboxevent_change", args=[events[0].pk])
                    )
                )
        context = {
            **self.admin_site.each_context(request),
            "title": "Replay events?",
            "opts": self.opts,
            "events": events,
            "handlers": available,
            "from_action": from_action,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        return TemplateResponse(request, "admin/eventbus_app/replay_confirmation.html", context)

    def get_urls(self) -> list[URLPattern]:
        own = [
            path(
                "<int:pk>/replay/",
                self.admin_site.admin_view(self.replay_view),
                name="eventbus_app_outboxevent_replay",
            ),
            *self.overview_urls(),
            *self.stream_urls(),
            *self.event_map_urls(),
        ]
        return own + super().get_urls()

    def replay_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        if not self.has_replay_permission(request):
            raise PermissionDenied
        event = get_object_or_404(self.get_queryset(request), pk=pk)
        response = self._replay_confirmation(request, [event], from_action=False)
        assert response is not None
        return response

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        event = (
            self.get_queryset(request).filter(pk=object_id).first() if object_id.isdigit() else None
        )
        if event is not None:
            using = event._state.db
            deliveries = list(
                Delivery.objects.using(using)
                .filter(event=event)
                .order_by("handler")
                .prefetch_related("history")
            )
            actions = (
                OperatorAction.objects.using(using)
                .filter(Q(event=event) | Q(delivery__event=event))
                .select_related("delivery")
            )
            retries: dict[int, list[OperatorAction]] = {}
            for action in actions.filter(kind=OperatorAction.Kind.RETRY):
                retries.setdefault(action.delivery_id or 0, []).append(action)
            for d in deliveries:
                d.timeline = timeline(d.history.all(), retries.get(d.pk, []))  # type: ignore[attr-defined]
                d.retryable = d.status in operations.RETRYABLE  # type: ignore[attr-defined]
            extra_context = {
                **(extra_context or {}),
                "payload_json": pretty(event.payload),
                "deliveries": deliveries,
                "operator_actions": actions[:100],
                "parent": event.causation,
                "children": list(event.caused_events.order_by("id")[:TREE_LIMIT]),
                "tree": correlation_tree(event),
                "can_replay": self.has_replay_permission(request),
                "can_retry": request.user.has_perm(RETRY_PERM),
                "has_aggregate": bool(event.stream)
                and aggregate_for_stream(event.stream) is not None,
            }
        return super().change_view(request, object_id, form_url, extra_context)
