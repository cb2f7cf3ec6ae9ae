"""The failure console: events, deliveries, dead letters, failure groups, overview.

Events and deliveries are an audit record: read-only here. What changes state (retry,
replay, pause, canary) goes through ``operations.py``, needs the ``retry_delivery`` or
``replay_event`` permission, is POST with CSRF, and is recorded with the user's name.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Min, Q, QuerySet
from django.db.models.functions import TruncHour
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.timesince import timesince
from django.views.decorators.http import require_POST

from . import operations
from .conf import eventbus_settings
from .models import (
    DeadLetter,
    Delivery,
    DeliveryAttempt,
    HandlerState,
    OperatorAction,
    OutboxEvent,
    RetryCampaign,
)
from .redaction import pretty, preview, redact
from .registry import all_handlers

Status = Delivery.Status
RETRY_PERM = "eventbus_app.retry_delivery"
REPLAY_PERM = "eventbus_app.replay_event"
TREE_LIMIT = 200
SEARCH_SCAN = 1000  # payload-search candidates checked against their redacted text


def _actor(request: HttpRequest) -> str:
    return request.user.get_username()


class AuditRecordAdmin(admin.ModelAdmin):
    """Rows that record what happened: viewable, never added, edited or deleted here."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- filters -----------------------------------------------------------------------------


class DistinctValueFilter(admin.SimpleListFilter):
    """Filter on the distinct values a column holds (handlers, exception classes, types)."""

    field = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        values = (
            model_admin.get_queryset(request)
            .order_by()
            .values_list(self.field, flat=True)
            .distinct()
        )
        return [(v, v) for v in sorted(set(values)) if v][:200]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value():
            return queryset.filter(**{self.field: self.value()})
        return queryset


class HandlerFilter(DistinctValueFilter):
    title = "handler"
    parameter_name = "handler"
    field = "handler"


class EventTypeFilter(DistinctValueFilter):
    title = "event type"
    parameter_name = "event_type"
    field = "event__event_type"


class ExceptionFilter(DistinctValueFilter):
    title = "exception class"
    parameter_name = "error_class"
    field = "error_class"


class OutboxEventTypeFilter(DistinctValueFilter):
    title = "event type"
    parameter_name = "event_type"
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
            return queryset.filter(deliveries__status=value).distinct()
        return queryset


# --- events ------------------------------------------------------------------------------


@admin.register(OutboxEvent)
class OutboxEventAdmin(AuditRecordAdmin):
    list_display = ["id", "event_type", "created", "correlation", "delivery_summary", "data"]
    list_filter = [OutboxEventTypeFilter, "created_at", DeliveryStateFilter]
    search_help_text = "Event id, correlation id, event type or payload text."
    search_fields = ["event_type"]  # enables the box; get_search_results does the work
    date_hierarchy = "created_at"
    ordering = ["-id"]
    actions = ["replay"]
    list_per_page = 50
    change_form_template = "admin/eventbus_app/outboxevent/change_form.html"
    change_list_template = "admin/eventbus_app/outboxevent/change_list.html"
    # The payload is shown redacted by the template, never as a raw field.
    fields = (
        "id",
        "event_type",
        "version",
        "correlation_id",
        "causation",
        "depth",
        "created_at",
        "dispatched_at",
    )
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[OutboxEvent]:
        counts = {
            f"n_{status}": Count("deliveries", filter=Q(deliveries__status=status))
            for status in Status.values
        }
        return super().get_queryset(request).annotate(**counts)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        if term.isdigit():
            return queryset.filter(pk=int(term)), False
        try:
            return queryset.filter(correlation_id=uuid.UUID(term)), False
        except ValueError:
            pass
        matches = queryset.filter(Q(event_type__icontains=term) | Q(payload__icontains=term))
        if not eventbus_settings.REDACT_FIELDS:
            return matches, False
        # A redacted value must not be confirmable by searching for it: match the redacted
        # text of the newest SEARCH_SCAN candidates the database found.
        needle = term.casefold()
        ids = [
            pk
            for pk, event_type, payload in matches.order_by("-pk").values_list(
                "pk", "event_type", "payload"
            )[:SEARCH_SCAN]
            if needle in event_type.casefold()
            or needle in json.dumps(redact(payload), ensure_ascii=False).casefold()
        ]
        return queryset.filter(pk__in=ids), False

    @admin.display(description="created", ordering="created_at")
    def created(self, obj: OutboxEvent) -> str:
        return timezone.localtime(obj.created_at).strftime("%Y-%m-%d %H:%M:%S")

    @admin.display(description="correlation")
    def correlation(self, obj: OutboxEvent) -> str:
        return str(obj.correlation_id)[:8]

    @admin.display(description="deliveries")
    def delivery_summary(self, obj: OutboxEvent) -> str:
        if obj.dispatched_at is None:
            return "not fanned out yet"
        parts = [
            f"{getattr(obj, f'n_{status}', 0)} {label}"
            for status, label in (
                (Status.SUCCEEDED, "succeeded"),
                (Status.PENDING, "pending"),
                (Status.RUNNING, "running"),
                (Status.FAILED, "failed"),
                (Status.DEAD, "dead"),
            )
            if getattr(obj, f"n_{status}", 0)
        ]
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
                    actor=_actor(request),
                )
                self.message_user(
                    request,
                    f"Replay scheduled: {count} deliveries of {len(events)} events will run "
                    "again in the background.",
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
        ]
        return own + super().get_urls()

    def replay_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        if not self.has_replay_permission(request):
            raise PermissionDenied
        event = get_object_or_404(OutboxEvent, pk=pk)
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
        event = OutboxEvent.objects.filter(pk=object_id).first() if object_id.isdigit() else None
        if event is not None:
            deliveries = list(event.deliveries.order_by("handler").prefetch_related("history"))
            actions = OperatorAction.objects.filter(
                Q(event=event) | Q(delivery__event=event)
            ).select_related("delivery")
            retries: dict[int, list[OperatorAction]] = {}
            for action in actions.filter(kind=OperatorAction.Kind.RETRY):
                retries.setdefault(action.delivery_id or 0, []).append(action)
            for d in deliveries:
                d.timeline = timeline(d.history.all(), retries.get(d.pk, []))  # type: ignore[attr-defined]
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
            }
        return super().change_view(request, object_id, form_url, extra_context)

    # overview and pause

    def overview_view(self, request: HttpRequest) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": "Event bus overview",
            "opts": self.opts,
            **overview_figures(),
            "can_pause": request.user.has_perm(RETRY_PERM),
        }
        return TemplateResponse(request, "admin/eventbus_app/overview.html", context)

    def pause_view(self, request: HttpRequest) -> HttpResponse:
        if not request.user.has_perm(RETRY_PERM):
            raise PermissionDenied
        handler = request.POST.get("handler", "")
        paused = request.POST.get("pause") == "1"
        if (
            handler not in all_handlers()
            and not HandlerState.objects.filter(handler=handler).exists()
        ):
            self.message_user(request, f"Unknown handler {handler!r}.", messages.ERROR)
        else:
            operations.set_paused(handler, paused, actor=_actor(request))
            verb = "paused: its deliveries wait until it is resumed" if paused else "resumed"
            self.message_user(request, f"Handler {handler} {verb}.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:eventbus_app_overview"))


def timeline(
    history: Iterable[DeliveryAttempt], retries: Iterable[OperatorAction]
) -> list[dict[str, Any]]:
    """A delivery's recorded attempts with the operators' retries between them, oldest first
    (a retry starts a fresh set of attempts, so attempt numbers restart after it)."""
    items = [{"attempt": h, "at": h.recorded_at} for h in history]
    items += [{"retry": a, "at": a.created_at} for a in retries]
    return sorted(items, key=lambda item: item["at"])


def correlation_tree(event: OutboxEvent) -> list[tuple[OutboxEvent, int]]:
    """Every event of the correlation, depth-first by causation, with its indent."""
    members = list(
        OutboxEvent.objects.filter(correlation_id=event.correlation_id).order_by("id")[:TREE_LIMIT]
    )
    by_parent: dict[int | None, list[OutboxEvent]] = {}
    ids = {e.pk for e in members}
    for e in members:
        parent = e.causation_id if e.causation_id in ids else None
        by_parent.setdefault(parent, []).append(e)
    out: list[tuple[OutboxEvent, int]] = []
    stack = [(e, 0) for e in reversed(by_parent.get(None, []))]
    while stack:
        node, level = stack.pop()
        out.append((node, level))
        stack.extend((c, level + 1) for c in reversed(by_parent.get(node.pk, [])))
    return out


def overview_figures() -> dict[str, Any]:
    now = timezone.now()
    by_state = dict(
        Delivery.objects.order_by()
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    undispatched = OutboxEvent.objects.filter(dispatched_at__isnull=True)
    oldest = [
        undispatched.aggregate(m=Min("created_at"))["m"],
        Delivery.objects.filter(status__in=Delivery.CLAIMABLE).aggregate(m=Min("created_at"))["m"],
    ]
    oldest_pending = min((t for t in oldest if t is not None), default=None)
    handlers: dict[str, dict[str, Any]] = {
        name: {"name": name, "hour_ok": 0, "hour_failed": 0, "day_ok": 0, "day_failed": 0}
        for name in sorted(all_handlers())
    }
    paused = set(HandlerState.objects.filter(paused=True).values_list("handler", flat=True))
    for window, since in (("hour", now - timedelta(hours=1)), ("day", now - timedelta(days=1))):
        ok = (
            Delivery.objects.filter(status=Status.SUCCEEDED, finished_at__gte=since)
            .order_by()
            .values_list("handler")
            .annotate(n=Count("id"))
        )
        failed = (
            DeliveryAttempt.objects.filter(
                recorded_at__gte=since,
                outcome__in=[DeliveryAttempt.Outcome.FAILED, DeliveryAttempt.Outcome.DEAD],
            )
            .order_by()
            .values_list("delivery__handler")
            .annotate(n=Count("id"))
        )
        for key, rows in ((f"{window}_ok", ok), (f"{window}_failed", failed)):
            for name, n in rows:
                handlers.setdefault(
                    name,
                    {"name": name, "hour_ok": 0, "hour_failed": 0, "day_ok": 0, "day_failed": 0},
                )[key] = n
    busiest = max([1, *(r["day_ok"] + r["day_failed"] for r in handlers.values())])
    for row in handlers.values():
        row["paused"] = row["name"] in paused
        row["registered"] = row["name"] in all_handlers()
        # Widths (percent of the busiest handler) of its 24-hour bar in the table.
        row["ok_pct"] = round(100 * row["day_ok"] / busiest, 1)
        row["failed_pct"] = round(100 * row["day_failed"] / busiest, 1)
    # 24 hourly bars, the last one the current hour, on the hours of the current time zone
    # (TruncHour truncates there too, so the keys match).
    start = timezone.localtime(now).replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)
    hourly_ok = dict(
        Delivery.objects.filter(status=Status.SUCCEEDED, finished_at__gte=start)
        .annotate(hour=TruncHour("finished_at"))
        .order_by()
        .values_list("hour")
        .annotate(n=Count("id"))
    )
    hourly_failed = dict(
        DeliveryAttempt.objects.filter(
            recorded_at__gte=start,
            # Not the successes archived by a replay.
            outcome__in=[DeliveryAttempt.Outcome.FAILED, DeliveryAttempt.Outcome.DEAD],
        )
        .annotate(hour=TruncHour("recorded_at"))
        .order_by()
        .values_list("hour")
        .annotate(n=Count("id"))
    )
    hours = [start + timedelta(hours=i) for i in range(24)]
    peak = max([1, *hourly_ok.values(), *hourly_failed.values()])
    bars = []
    for i, hour in enumerate(hours):
        ok_n, failed_n = hourly_ok.get(hour, 0), hourly_failed.get(hour, 0)
        ok_h = round(80 * ok_n / peak)
        failed_h = round(80 * failed_n / peak)
        bars.append(
            {
                "x": 10 + i * 24,
                "hour": hour,
                "ok": ok_n,
                "failed": failed_n,
                "ok_h": ok_h,
                "ok_y": 90 - ok_h,
                "failed_h": failed_h,
                "failed_y": 90 - ok_h - failed_h,
            }
        )
    return {
        "by_state": [(label, by_state.get(value, 0), value) for value, label in Status.choices],
        "undispatched": undispatched.count(),
        "oldest_pending": oldest_pending,
        "lag": timesince(oldest_pending, now) if oldest_pending else None,
        "handler_rows": list(handlers.values()),
        "bars": bars,
        "peak": peak,
        "campaigns": RetryCampaign.objects.all()[:10],
        "recent_actions": OperatorAction.objects.select_related("event")[:15],
    }


# --- deliveries and dead letters -----------------------------------------------------------


@admin.register(Delivery)
class DeliveryAdmin(AuditRecordAdmin):
    list_display = [
        "id",
        "handler",
        "event_link",  # "type #id", linked
        "status",
        "attempts",
        "error",
        "age",
        "next_attempt_at",
    ]
    list_filter = ["status", HandlerFilter, EventTypeFilter, ExceptionFilter]
    search_fields = ["handler", "last_error", "error_class", "=event__id"]
    list_select_related = ["event"]
    ordering = ["-id"]
    actions = ["retry"]
    list_per_page = 50
    change_form_template = "admin/eventbus_app/delivery/change_form.html"
    fields = (
        "event_link",
        "event_type",
        "handler",
        "status",
        "attempts",
        "replays",
        "next_attempt_at",
        "created_at",
        "finished_at",
        "error_class",
        "last_error",
    )
    readonly_fields = fields

    @admin.display(description="event", ordering="event_id")
    def event_link(self, obj: Delivery) -> str:
        url = reverse("admin:eventbus_app_outboxevent_change", args=[obj.event_id])
        return format_html('<a href="{}">{} #{}</a>', url, obj.event.event_type, obj.event_id)

    @admin.display(description="event type", ordering="event__event_type")
    def event_type(self, obj: Delivery) -> str:
        return obj.event.event_type

    @admin.display(description="error")
    def error(self, obj: Delivery) -> str:
        summary = obj.error_summary
        return summary if len(summary) <= 100 else summary[:99] + "…"

    @admin.display(description="age", ordering="created_at")
    def age(self, obj: Delivery) -> str:
        return timesince(obj.created_at) if obj.created_at else ""

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(RETRY_PERM)

    @admin.action(permissions=["retry"], description="Retry selected deliveries")
    def retry(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        selected = queryset.count()
        count = operations.retry_deliveries(queryset, actor=_actor(request))
        skipped = selected - count
        self.message_user(
            request,
            f"{count} deliveries sent back to pending; they run in the background."
            + (f" {skipped} skipped (not dead or failed)." if skipped else ""),
            messages.SUCCESS if count else messages.WARNING,
        )

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        own = [
            path(
                "<int:pk>/retry/",
                self.admin_site.admin_view(require_POST(self.retry_one_view)),
                name=f"{info[0]}_{info[1]}_retry",
            )
        ]
        return own + super().get_urls()

    def retry_one_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        if not self.has_retry_permission(request):
            raise PermissionDenied
        count = operations.retry_deliveries([pk], actor=_actor(request))
        self.message_user(
            request,
            f"Delivery #{pk} sent back to pending."
            if count
            else f"Delivery #{pk} is not dead or failed; nothing to retry.",
            messages.SUCCESS if count else messages.WARNING,
        )
        return HttpResponseRedirect(reverse("admin:eventbus_app_delivery_change", args=[pk]))

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        delivery = Delivery.objects.filter(pk=object_id).first() if object_id.isdigit() else None
        if delivery is not None:
            extra_context = {
                **(extra_context or {}),
                "delivery": delivery,
                "history": timeline(
                    delivery.history.all(),
                    delivery.operator_actions.filter(kind=OperatorAction.Kind.RETRY),
                ),
                "operator_actions": delivery.operator_actions.all()[:50],
                "can_retry": self.has_retry_permission(request)
                and delivery.status in operations.RETRYABLE,
            }
        return super().change_view(request, object_id, form_url, extra_context)


@admin.register(DeadLetter)
class DeadLetterAdmin(DeliveryAdmin):
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
        own = [
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
                "groups/cancel/",
                self.admin_site.admin_view(require_POST(self.campaign_cancel_view)),
                name="eventbus_app_deadletter_campaign_cancel",
            ),
        ]
        return own + super().get_urls()

    def groups_view(self, request: HttpRequest) -> HttpResponse:
        groups = operations.failure_groups()
        campaigns = list(RetryCampaign.objects.all()[:20])
        changelist = reverse("admin:eventbus_app_deadletter_changelist")
        for group in groups:
            query = urlencode({"handler": group["handler"], "error_class": group["error_class"]})
            group["list_url"] = f"{changelist}?{query}"
        context = {
            **self.admin_site.each_context(request),
            "title": "Failure groups",
            "opts": self.opts,
            "groups": groups,
            "campaigns": campaigns,
            # No JavaScript: the page reloads itself while a canary retry runs.
            "has_active_campaign": any(c.active for c in campaigns),
            "can_retry": self.has_retry_permission(request),
        }
        return TemplateResponse(request, "admin/eventbus_app/failure_groups.html", context)

    def group_retry_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_retry_permission(request):
            raise PermissionDenied
        handler = request.POST.get("handler", "")
        error_class = request.POST.get("error_class", "")
        if request.POST.get("mode") == "canary":
            try:
                rate = float(request.POST.get("rate", "1"))
                campaign = operations.start_canary(
                    handler, error_class, rate=rate, actor=_actor(request)
                )
            except ValueError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                self.message_user(
                    request,
                    f"Canary retry started: delivery #{campaign.canary_id} first, then the "
                    f"other {campaign.total - 1} at {campaign.rate:g}/s unless one fails.",
                    messages.SUCCESS,
                )
        else:
            count = operations.retry_group(handler, error_class, actor=_actor(request))
            self.message_user(
                request,
                f"{count} dead letters of {handler} / {error_class or '-'} sent back to pending.",
                messages.SUCCESS if count else messages.WARNING,
            )
        return HttpResponseRedirect(reverse("admin:eventbus_app_deadletter_groups"))

    def campaign_cancel_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_retry_permission(request):
            raise PermissionDenied
        raw = request.POST.get("campaign", "")
        if raw.isdigit() and operations.cancel_campaign(int(raw), actor=_actor(request)):
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


@admin.register(OperatorAction)
class OperatorActionAdmin(AuditRecordAdmin):
    list_display = ["created_at", "kind", "actor", "handler", "event", "delivery"]
    list_filter = ["kind", "created_at"]
    search_fields = ["actor", "handler"]
    list_select_related = ["event", "delivery"]


@admin.register(RetryCampaign)
class RetryCampaignAdmin(AuditRecordAdmin):
    list_display = ["id", "handler", "error_class", "state", "released", "total", "created_by"]
    list_filter = ["state"]


@admin.register(HandlerState)
class HandlerStateAdmin(AuditRecordAdmin):
    list_display = ["handler", "paused", "changed_by", "changed_at"]
