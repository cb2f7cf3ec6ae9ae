"""``manage.py eventbus_discard``: the command-line twin of the admin's ``discard``: dead
letters that should never run are marked ``discarded``, with a reason, audited."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from eventbus_app import operations
from eventbus_app.management.cli import Progress, chunks, cli_actor, plural

from .eventbus_retry import Command as RetryCommand


class Command(RetryCommand):
    """The same selection as ``eventbus_retry`` (id, handler, event type, exception class,
    age, ``--all``, ``--include-failed``), and ``--reason``."""

    verb = "discard"

    help = (
        "Discard dead letters (and, with --include-failed, failed deliveries): they never run "
        "again, their error and traceback are kept, and --reason is stored on each and in the "
        "operator audit. A discarded delivery of an ordered handler releases its stream. Select "
        "them as for eventbus_retry (combined with AND)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--reason",
            required=True,
            help="Why they will not be retried (required; kept on each delivery and audited).",
        )
        for action in parser._actions:  # the retry command's wording, said for discarding
            if action.dest == "include_failed":
                action.help = "Also discard deliveries in state 'failed' (still retrying)."
            elif action.dest == "dry_run":
                action.help = "List what would be discarded; change nothing."
            elif action.dest == "all":
                action.help = "Select every dead letter (no other filter needed)."

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError(f"--batch-size must be at least 1, got {options['batch_size']}")
        try:
            reason = operations.clean_reason(options["reason"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        deliveries = list(self.select(options))
        self.report_missing_ids(options, {d.pk for d in deliveries})
        if options["dry_run"]:
            for d in deliveries:
                self.stdout.write(
                    f"would discard #{d.pk} {d.handler} for {d.event.event_type} "
                    f"#{d.event_id} ({d.status}, {d.attempts} attempts): {d.error_summary}"
                )
            self.stdout.write(
                f"{plural(len(deliveries), 'delivery', 'deliveries')} would be discarded (dry "
                "run: nothing changed)."
            )
            return
        actor = cli_actor()
        discarded = 0
        show = options["progress"] == "always" or (
            options["progress"] == "auto" and len(deliveries) > options["batch_size"]
        )
        with Progress(len(deliveries), label="discarding", enabled=show, stream=self.stderr) as bar:
            for batch in chunks(deliveries, options["batch_size"]):
                discarded += operations.discard_deliveries(
                    batch,
                    reason=reason,
                    actor=actor,
                    using=options["database"],
                    include_failed=options["include_failed"],
                    detail={"command": "eventbus_discard"},
                )
                bar.advance(len(batch))
        self.stdout.write(
            f"Discarded {plural(discarded, 'delivery', 'deliveries')}: "
            f"{'it' if discarded == 1 else 'they'} will not run again."
            + (
                f" {len(deliveries) - discarded} changed state meanwhile and were left alone."
                if discarded < len(deliveries)
                else ""
            )
        )
