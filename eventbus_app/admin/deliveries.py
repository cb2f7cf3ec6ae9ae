"""Deliveries: the list, the read-only delivery page (traceback, attempt history), retry
(the action, and the page's *Retry this delivery* button) and discard (the action with its
confirmation page, and the dead letter page's *Discard* form, both asking for a reason)."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch, QuerySet, prefetch_related_objects
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.timesince import timesince
from django.views.decorators.http import require_POST

from .. import operations
from ..models import Delivery, OperatorAction, OutboxEvent
from .common import (
    DISCARD_PERM,
    RETRY_PERM,
    AuditRecordAdmin,
    EventTypeFilter,
    ExceptionFilter,
    HandlerFilter,
    actor,
    plural,
    write_db,
)
from .queries import SEARCH_WINDOW, search_deliveries, timeline

logger = logging.getLogger(__name__)


def short_age(obj: Delivery) -> str:
    """ "3 hours", not "3 hours, 2 minutes": the list must fit a laptop screen."""
    return timesince(obj.created_at, depth=1) if obj.created_at else ""


class DeliveryChangeList(ChangeList):
    """The page's events in one query after the page is chosen: joining them before the
    sort and limit made PostgreSQL join every matching delivery (16,000 dead letters of one
    exception class: 0.6 s)."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        prefetch_related_objects(
            list(self.result_list),
            Prefetch("event", queryset=OutboxEvent.objects.only("id", "event_type")),
        )


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
        "next_try",
    ]
    list_filter = ["status", HandlerFilter, EventTypeFilter, ExceptionFilter]
    search_fields = ["handler"]  # enables the box; get_search_results does the work
    search_help_text = (
        "Delivery or event id, handler or exception class; or error text (the newest "
        f"{SEARCH_WINDOW:,} deliveries)."
    )
    list_select_related = False  # DeliveryChangeList fetches the page's events
    ordering = ["-id"]
    actions = ["retry", "discard"]
    list_per_page = 50
    change_form_template = "admin/eventbus_app/delivery/change_form.html"
    change_list_template = "admin/eventbus_app/delivery/change_list.html"
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
        "discard_reason",
    )
    readonly_fields = fields

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return DeliveryChangeList

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        # The list shows an error's first line: never load tracebacks for 50 rows.
        return super().get_queryset(request).defer("traceback")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        return search_deliveries(queryset, search_term), False

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
        return short_age(obj)

    @admin.display(description="next try", ordering="next_attempt_at")
    def next_try(self, obj: Delivery) -> str:
        if obj.next_attempt_at is None or obj.status not in Delivery.CLAIMABLE:
            return "-"
        return timezone.localtime(obj.next_attempt_at).strftime("%m-%d %H:%M")

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(RETRY_PERM)

    @admin.action(permissions=["retry"], description="Retry selected deliveries")
    def retry(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        selected = queryset.count()
        count = operations.retry_deliveries(
            queryset, actor=actor(request), using=write_db(Delivery)
        )
        skipped = selected - count
        self.message_user(
            request,
            f"{plural(count, 'delivery', 'deliveries')} sent back to pending; "
            f"{'it runs' if count == 1 else 'they run'} in the background."
            + (f" {skipped:,} skipped (not dead or failed)." if skipped else ""),
            messages.SUCCESS if count else messages.WARNING,
        )

    def has_discard_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(DISCARD_PERM)

    @admin.action(permissions=["discard"], description="Discard selected dead letters…")
    def discard(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> HttpResponse | None:
        """Through a confirmation page that asks for the reason, like delete_selected."""
        selected = queryset.count()
        deliveries = list(
            queryset.filter(status__in=operations.DISCARDABLE)
            .select_related("event")
            .defer("traceback", "event__payload")
            .order_by("pk")
        )
        if not deliveries:
            self.message_user(
                request, "None of the selected deliveries is a dead letter.", messages.WARNING
            )
            return None
        if request.POST.get("post") == "yes":
            try:
                count = operations.discard_deliveries(
                    deliveries,
                    reason=request.POST.get("reason", ""),
                    actor=actor(request),
                    using=write_db(Delivery),
                )
            except ValueError as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                skipped = len(deliveries) - count
                self.message_user(
                    request,
                    f"{plural(count, 'dead letter', 'dead letters')} discarded: "
                    f"{'it' if count == 1 else 'they'} will not run again."
                    + (f" {skipped:,} skipped (not dead)." if skipped else ""),
                    messages.SUCCESS if count else messages.WARNING,
                )
                return None
        return discard_confirmation(
            self,
            request,
            deliveries=deliveries,
            hidden={"action": "discard", helpers.ACTION_CHECKBOX_NAME: [d.pk for d in deliveries]},
            cancel_url=reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist"),
            skipped=selected - len(deliveries),
        )

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        own = [
            path(
                "<int:pk>/retry/",
                self.admin_site.admin_view(require_POST(self.retry_one_view)),
                name=f"{info[0]}_{info[1]}_retry",
            ),
            path(
                "<int:pk>/discard/",
                self.admin_site.admin_view(require_POST(self.discard_one_view)),
                name=f"{info[0]}_{info[1]}_discard",
            ),
        ]
        return own + super().get_urls()

    def discard_one_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        if not self.has_discard_permission(request):
            raise PermissionDenied
        try:
            count = operations.discard_deliveries(
                [pk],
                reason=request.POST.get("reason", ""),
                actor=actor(request),
                using=write_db(Delivery),
            )
        except ValueError as exc:
            self.message_user(request, str(exc), messages.ERROR)
        else:
            self.message_user(
                request,
                f"Delivery #{pk} discarded: it will not run again."
                if count
                else f"Delivery #{pk} is not a dead letter; nothing to discard.",
                messages.SUCCESS if count else messages.WARNING,
            )
        return HttpResponseRedirect(reverse("admin:eventbus_app_delivery_change", args=[pk]))

    def retry_one_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        if not self.has_retry_permission(request):
            raise PermissionDenied
        count = operations.retry_deliveries([pk], actor=actor(request), using=write_db(Delivery))
        self.message_user(
            request,
            f"Delivery #{pk} sent back to pending; it runs in the background."
            if count
            else f"Delivery #{pk} is not dead or failed; nothing to retry.",
            messages.SUCCESS if count else messages.WARNING,
        )
        # Back to the page the button was on (the event page has one per delivery).
        back = request.POST.get("next", "")
        if not url_has_allowed_host_and_scheme(
            back, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            back = reverse("admin:eventbus_app_delivery_change", args=[pk])
        return HttpResponseRedirect(back)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        delivery = (
            Delivery.objects.using(self.get_queryset(request).db).filter(pk=object_id).first()
            if object_id.isdigit()
            else None
        )
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
                "can_discard": self.has_discard_permission(request)
                and delivery.status in operations.DISCARDABLE,
            }
        return super().change_view(request, object_id, form_url, extra_context)


def discard_confirmation(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    *,
    deliveries: list[Delivery],
    hidden: dict[str, Any],
    cancel_url: str,
    total: int | None = None,
    group: str = "",
    skipped: int = 0,
) -> TemplateResponse:
    """The page that asks "discard these?" and for the reason (the bulk action and a whole
    failure group post it back with ``post=yes``)."""
    fields = [
        (name, value)
        for name, values in hidden.items()
        for value in (values if isinstance(values, list) else [values])
    ]
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Discard dead letters?",
        "opts": model_admin.opts,
        "deliveries": deliveries[:20],
        "total": len(deliveries) if total is None else total,
        "group": group,
        "skipped": skipped,
        "hidden": fields,
        "reason": request.POST.get("reason", ""),
        "cancel_url": cancel_url,
        "media": model_admin.media,
    }
    return TemplateResponse(request, "admin/eventbus_app/discard_confirmation.html", context)
