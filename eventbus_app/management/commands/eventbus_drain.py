from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from eventbus_app.conf import eventbus_settings
from eventbus_app.dispatch import Counts, run


class Command(BaseCommand):
    help = (
        "Do all due eventbus work in this process (fan-out, deliveries, due retries, expired "
        "leases) until none is due, then exit. Safe to run several at once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--database",
            action="append",
            dest="databases",
            help="Database alias to drain (repeatable). Default: EVENTBUS['DATABASES'].",
        )
        parser.add_argument(
            "--seconds",
            type=float,
            default=None,
            help="Stop after this long even if work remains (exit code stays 0).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        total = Counts()
        for using in options["databases"] or eventbus_settings.DATABASES:
            total.add(run(using, seconds=options["seconds"]))
        self.stdout.write(
            f"eventbus_drain: fanned out {total.fanned_out} events; delivered {total.delivered}, "
            f"failed {total.failed}, dead {total.dead}"
            + (f", lease lost {total.lease_lost}" if total.lease_lost else "")
            + (f", database errors {total.errors}" if total.errors else "")
            + ("; stopped with work remaining" if total.more else "")
        )
