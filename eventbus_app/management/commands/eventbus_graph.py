from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import DEFAULT_DB_ALIAS

from eventbus_app.eventmap import build


class Command(BaseCommand):
    help = (
        "Print the event map as a Mermaid flowchart: each event type's handlers (this "
        "code's registry) and the event types each handler has been seen to emit (the "
        "outbox). Handlers that never ran and event types nobody handles are flagged."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--markdown",
            action="store_true",
            help="Wrap it in a ```mermaid fence, for a Markdown document.",
        )
        parser.add_argument("--json", action="store_true", help="Print the map as JSON.")
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS, help="Database alias.")

    def handle(self, *args: Any, **options: Any) -> None:
        event_map = build(options["database"])
        if options["json"]:
            self.stdout.write(json.dumps(event_map.as_dict(), indent=2, sort_keys=True))
            return
        chart = event_map.mermaid()
        if options["markdown"]:
            chart = f"```mermaid\n{chart}```\n"
        self.stdout.write(chart, ending="")
        # The flags also as text, so they are read without rendering the chart.
        err = self.stderr.write
        if event_map.never_ran:
            err("never ran: " + ", ".join(event_map.never_ran))
        if event_map.unhandled:
            err("no handler: " + ", ".join(event_map.unhandled))
