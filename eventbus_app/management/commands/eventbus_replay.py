"""``manage.py eventbus_replay``: the command-line twin of the admin's ``replay`` action."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import QuerySet

from eventbus_app import operations
from eventbus_app.events import event_class
from eventbus_app.management.cli import (
    Progress,
    add_run_arguments,
    chunks,
    cli_actor,
    parse_moment,
    plural,
)
from eventbus_app.management.commands.eventbus_retry import check_handlers
from eventbus_app.models import Delivery, OutboxEvent


class Command(BaseCommand):
    help = (
        "Run events' handlers again, also those that already succeeded (all handlers, or "
        "those named by --handler). The earlier outcome stays in the delivery's history and "
        "the new run gets a new idempotency key. Select events by id, type and date range."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--event-id",
            dest="event_ids",
            type=int,
            action="append",
            default=[],
            help="Event id (repeatable).",
        )
        parser.add_argument(
            "--event-type", action="append", default=[], help="Event type (repeatable)."
        )
        parser.add_argument(
            "--since", help="Events created at or after: YYYY-MM-DD or an ISO date-time."
        )
        parser.add_argument("--until", help="Events created before: YYYY-MM-DD or ISO date-time.")
        parser.add_argument(
            "--handler",
            action="append",
            default=[],
            help="Replay to this handler only (repeatable). Default: every handler.",
        )
        parser.add_argument(
            "--all", action="store_true", help="Select every event (no other filter needed)."
        )
        add_run_arguments(parser, verb="replayed", unit="Events", batch_size=100)

    def select(self, options: dict[str, Any]) -> QuerySet[OutboxEvent]:
        using = options["database"]
        if not options["all"] and not any(
            options[f] for f in ("event_ids", "event_type", "since", "until")
        ):
            raise CommandError(
                "Say what to replay: --event-id, --event-type, --since or --until (combined "
                "with AND), or --all for every event."
            )
        qs = OutboxEvent.objects.using(using).order_by("pk").only("pk", "event_type", "created_at")
        if options["event_ids"]:
            found = set(qs.filter(pk__in=options["event_ids"]).values_list("pk", flat=True))
            missing = [str(pk) for pk in options["event_ids"] if pk not in found]
            if missing:
                raise CommandError(f"No event with id {', '.join(missing)}.")
            qs = qs.filter(pk__in=options["event_ids"])
        if options["event_type"]:
            unknown = [
                t
                for t in options["event_type"]
                if event_class(t) is None and not qs.filter(event_type=t).exists()
            ]
            if unknown:
                raise CommandError(
                    f"Unknown event type {', '.join(repr(t) for t in unknown)}: no Event class "
                    "declares it and no stored event has it."
                )
            qs = qs.filter(event_type__in=options["event_type"])
        since = parse_moment(options["since"], "--since") if options["since"] else None
        until = parse_moment(options["until"], "--until") if options["until"] else None
        if since and until and since >= until:
            raise CommandError(f"--since ({since}) must be before --until ({until}).")
        if since:
            qs = qs.filter(created_at__gte=since)
        if until:
            qs = qs.filter(created_at__lt=until)
        if options["handler"]:
            check_handlers(options["handler"], using)
        return qs

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError(f"--batch-size must be at least 1, got {options['batch_size']}")
        events = list(self.select(options))
        chosen = options["handler"] or None
        if options["dry_run"]:
            total = 0
            for event in events:
                busy = set(
                    event.deliveries.filter(
                        status__in=[Delivery.Status.PENDING, Delivery.Status.RUNNING]
                    ).values_list("handler", flat=True)
                )
                names = [
                    n
                    for n in operations.replay_handlers(event)
                    if (chosen is None or n in chosen) and n not in busy
                ]
                total += len(names)
                if names:
                    self.stdout.write(
                        f"would replay {event.event_type} #{event.pk} "
                        f"({event.created_at:%Y-%m-%d %H:%M:%S}) to {', '.join(names)}"
                    )
            self.stdout.write(
                f"{plural(total, 'delivery', 'deliveries')} of "
                f"{plural(len(events), 'event', 'events')} would be replayed "
                "(dry run: nothing changed)."
            )
            return
        actor = cli_actor()
        scheduled = 0
        show = options["progress"] == "always" or (
            options["progress"] == "auto" and len(events) > options["batch_size"]
        )
        with Progress(len(events), label="replaying", enabled=show, stream=self.stderr) as bar:
            for batch in chunks(events, options["batch_size"]):
                scheduled += operations.replay_events(
                    batch, handlers=chosen, actor=actor, using=options["database"]
                )
                bar.advance(len(batch))
        self.stdout.write(
            f"Replay scheduled: {plural(scheduled, 'delivery', 'deliveries')} of "
            f"{plural(len(events), 'event', 'events')} will run again in the background (a "
            "worker: qcluster or eventbus_drain)."
        )
