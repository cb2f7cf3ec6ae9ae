"""``manage.py eventbus_rebuild HANDLER``: replay a projection's events (see
``eventbus_app/streams/rebuild.py``)."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from eventbus_app.exceptions import EventBusError
from eventbus_app.management.cli import parse_moment, plural
from eventbus_app.registry import all_handlers, get_handler
from eventbus_app.streams.rebuild import rebuild, selection


class Command(BaseCommand):
    help = (
        "Replay the events a handler handles, in order per stream: in place, or with "
        "--shadow into shadow tables that are swapped in at the end in one transaction."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("handler", help="The handler's name (as stored on deliveries).")
        parser.add_argument("--stream", help="Only this stream's events.")
        parser.add_argument("--since", help="Only events created since this date or date-time.")
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Say what would be replayed (with --shadow: build and compare, do not swap).",
        )
        parser.add_argument(
            "--shadow",
            action="store_true",
            help="Rebuild the handler's writes= models into shadow tables, print the "
            "difference and swap them in one transaction.",
        )
        parser.add_argument("--database", default=None, help="Database alias (default: router).")
        parser.add_argument(
            "--progress",
            choices=["auto", "always", "never"],
            default="auto",
            help="Progress bar on stderr (auto: when stderr is a terminal).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        spec = get_handler(options["handler"])
        if spec is None:
            known = ", ".join(sorted(all_handlers())) or "none"
            raise CommandError(f"No handler named {options['handler']!r}. Registered: {known}")
        since = parse_moment(options["since"], "--since") if options["since"] else None
        using = options["database"]
        total = selection(spec, stream=options["stream"], since=since, using=using).count()
        show = options["progress"] == "always" or (
            options["progress"] == "auto" and sys.stderr.isatty()
        )
        bar = tqdm(total=total, unit="event", disable=not show, file=sys.stderr)
        try:
            result = rebuild(
                spec,
                stream=options["stream"],
                since=since,
                shadow=options["shadow"],
                dry_run=options["dry_run"],
                using=using,
                progress=bar.update,
            )
        except EventBusError as exc:
            raise CommandError(str(exc)) from None
        finally:
            bar.close()
        if options["dry_run"] and not options["shadow"]:
            self.stdout.write(
                f"Would replay {plural(result.events, 'event', 'events')} through {spec.name}."
            )
            return
        rate = result.events / result.seconds if result.seconds else 0.0
        self.stdout.write(
            f"Replayed {plural(result.events, 'event', 'events')} through {spec.name} in "
            f"{result.seconds:.1f} s ({rate:.0f} events/s)."
        )
        for diff in result.differences:
            changed = f", {diff.changed} changed" if diff.by == "primary key" else ""
            self.stdout.write(
                f"  {diff.table}: {diff.added} added{changed}, {diff.removed} removed "
                f"(compared by {diff.by})"
            )
        if options["shadow"]:
            self.stdout.write(
                "Swapped the rebuilt tables in." if result.swapped else "Dry run: nothing swapped."
            )
