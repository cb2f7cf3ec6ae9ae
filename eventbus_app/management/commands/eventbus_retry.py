"""``manage.py eventbus_retry``: the command-line twin of the admin's ``retry`` action."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Q, QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone

from eventbus_app import operations
from eventbus_app.management.cli import (
    Progress,
    add_run_arguments,
    chunks,
    cli_actor,
    parse_age,
    plural,
)
from eventbus_app.models import Delivery
from eventbus_app.registry import all_handlers

Status = Delivery.Status


def check_handlers(names: list[str], using: str) -> None:
    """Every name must be registered or appear on a delivery row (a removed handler)."""
    known = set(all_handlers())
    unknown = [
        n
        for n in names
        if n not in known and not Delivery.objects.using(using).filter(handler=n).exists()
    ]
    if unknown:
        listing = ", ".join(sorted(known)) or "none"
        raise CommandError(
            f"Unknown handler {', '.join(repr(n) for n in unknown)}: no handler is registered "
            f"under that name and no delivery names it. Registered handlers: {listing}"
        )


class Command(BaseCommand):
    verb = "retry"  # eventbus_discard shares the selection
    help = (
        "Send dead letters (and, with --include-failed, failed deliveries) back to pending, "
        "due now with a fresh set of attempts; a worker runs them in the background. Select "
        "them by id, handler, event type, exception class and age (combined with AND)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--id",
            dest="ids",
            type=int,
            action="append",
            default=[],
            help="Delivery id (repeatable).",
        )
        parser.add_argument(
            "--handler", action="append", default=[], help="Handler name (repeatable)."
        )
        parser.add_argument(
            "--event-type",
            action="append",
            default=[],
            help='Event type, like "accounts.UserRegistered" (repeatable).',
        )
        parser.add_argument(
            "--exception",
            action="append",
            default=[],
            help='Exception class: "builtins.TimeoutError" or just "TimeoutError" (repeatable).',
        )
        parser.add_argument(
            "--older-than",
            help="Only deliveries that failed at least this long ago: 30m, 2h, 3d, 1w.",
        )
        parser.add_argument(
            "--newer-than", help="Only deliveries that failed within this age: 30m, 2h, 3d."
        )
        parser.add_argument(
            "--include-failed",
            action="store_true",
            help="Also retry deliveries in state 'failed' (still retrying) now, with fresh "
            "attempts. Default: dead letters only.",
        )
        parser.add_argument(
            "--all", action="store_true", help="Select every dead letter (no other filter needed)."
        )
        add_run_arguments(parser, verb="retried", unit="Deliveries", batch_size=500)

    def select(self, options: dict[str, Any]) -> QuerySet[Delivery]:
        using = options["database"]
        filters = ("ids", "handler", "event_type", "exception", "older_than", "newer_than")
        if not options["all"] and not any(options[f] for f in filters):
            raise CommandError(
                f"Say what to {self.verb}: --id, --handler, --event-type, --exception, "
                "--older-than or --newer-than (combined with AND), or --all for every dead letter."
            )
        statuses = [Status.DEAD, Status.FAILED] if options["include_failed"] else [Status.DEAD]
        qs = (
            Delivery.objects.using(using)
            .filter(status__in=statuses)
            .select_related("event")
            # Not the payloads nor the tracebacks: a selection may be large.
            .only(
                "pk",
                "handler",
                "status",
                "attempts",
                "last_error",
                "event_id",
                "event__event_type",
            )
            .annotate(failed_at=Coalesce("finished_at", "created_at"))
        )
        if options["ids"]:
            qs = qs.filter(pk__in=options["ids"])
        if options["handler"]:
            check_handlers(options["handler"], using)
            qs = qs.filter(handler__in=options["handler"])
        if options["event_type"]:
            qs = qs.filter(event__event_type__in=options["event_type"])
        if options["exception"]:
            match = Q()
            for name in options["exception"]:
                match |= Q(error_class=name) | Q(error_class__endswith=f".{name}")
            qs = qs.filter(match)
        now = timezone.now()
        if options["older_than"]:
            qs = qs.filter(failed_at__lte=now - parse_age(options["older_than"], "--older-than"))
        if options["newer_than"]:
            qs = qs.filter(failed_at__gte=now - parse_age(options["newer_than"], "--newer-than"))
        return qs.order_by("pk")

    def report_missing_ids(self, options: dict[str, Any], found: set[int]) -> None:
        """Say why an ``--id`` asked for is not in the selection."""
        for pk in options["ids"]:
            if pk not in found:
                state = (
                    Delivery.objects.using(options["database"])
                    .filter(pk=pk)
                    .values_list("status", flat=True)
                    .first()
                )
                self.stderr.write(
                    f"Skipped delivery #{pk}: "
                    + (f"it is {state}, not a match" if state else "no such delivery")
                )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError(f"--batch-size must be at least 1, got {options['batch_size']}")
        qs = self.select(options)
        deliveries = list(qs)
        self.report_missing_ids(options, {d.pk for d in deliveries})
        if options["dry_run"]:
            for d in deliveries:
                self.stdout.write(
                    f"would retry #{d.pk} {d.handler} for {d.event.event_type} "
                    f"#{d.event_id} ({d.status}, {d.attempts} attempts): {d.error_summary}"
                )
            self.stdout.write(
                f"{plural(len(deliveries), 'delivery', 'deliveries')} would be retried (dry "
                "run: nothing changed)."
            )
            return
        actor = cli_actor()
        retried = 0
        show = options["progress"] == "always" or (
            options["progress"] == "auto" and len(deliveries) > options["batch_size"]
        )
        with Progress(len(deliveries), label="retrying", enabled=show, stream=self.stderr) as bar:
            for batch in chunks(deliveries, options["batch_size"]):
                retried += operations.retry_deliveries(
                    batch,
                    actor=actor,
                    using=options["database"],
                    detail={"command": "eventbus_retry"},
                )
                bar.advance(len(batch))
        self.stdout.write(
            f"Retried {plural(retried, 'delivery', 'deliveries')}: back to pending, due now; a "
            f"worker (qcluster or eventbus_drain) runs {'it' if retried == 1 else 'them'}."
            + (
                f" {len(deliveries) - retried} changed state meanwhile and were left alone."
                if retried < len(deliveries)
                else ""
            )
        )
