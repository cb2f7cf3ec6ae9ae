from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS
from django.utils import timezone
from tqdm import tqdm

from eventbus_app.retention import CHUNK, parse_age, prunable, prune


class Command(BaseCommand):
    help = (
        "Delete finished events older than --older-than, with their deliveries and history, "
        "in chunks (one short transaction each). Dead letters, events with live deliveries "
        "(pending, running, failed) and events not yet fanned out are never deleted; events "
        "of streams only with --streams."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            required=True,
            metavar="AGE",
            help="Age of the events to delete: a number and s/m/h/d/w, e.g. 30d.",
        )
        parser.add_argument(
            "--keep-failures",
            action="store_true",
            help="Also keep events that ever failed, were discarded or acted on by an operator.",
        )
        parser.add_argument(
            "--streams",
            action="store_true",
            help="Also delete old events of streams (event sourcing: their history is gone).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be deleted; delete nothing."
        )
        parser.add_argument(
            "--chunk", type=int, default=CHUNK, help=f"Events per transaction (default {CHUNK})."
        )
        parser.add_argument(
            "--progress",
            choices=("auto", "always", "never"),
            default="auto",
            help="Progress bar on stderr (auto: when it is a terminal).",
        )
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS, help="Database alias.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            age = parse_age(options["older_than"], "--older-than")
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if options["chunk"] < 1:
            raise CommandError(f"--chunk must be 1 or more, got {options['chunk']}")
        cutoff = timezone.now() - age
        using = options["database"]
        flags = {"keep_failures": options["keep_failures"], "streams": options["streams"]}
        total = prunable(cutoff, using=using, **flags).count()
        if options["dry_run"]:
            self.stdout.write(
                f"eventbus_prune: would delete {total} events created before "
                f"{cutoff:%Y-%m-%d %H:%M:%S %Z} (dry run: nothing deleted)"
            )
            return
        show = options["progress"] == "always" or (
            options["progress"] == "auto" and sys.stderr.isatty()
        )
        with tqdm(total=total, unit="event", disable=not show, file=sys.stderr) as bar:
            result = prune(
                cutoff, using=using, chunk=options["chunk"], progress=bar.update, **flags
            )
        figures = result.as_dict()
        self.stdout.write(
            f"eventbus_prune: deleted {result.events} events, {result.deliveries} deliveries "
            f"and {result.attempts} attempts created before {cutoff:%Y-%m-%d %H:%M:%S %Z} in "
            f"{result.chunks} chunks (longest {figures['longest_chunk_seconds']:.3f} s)"
        )
