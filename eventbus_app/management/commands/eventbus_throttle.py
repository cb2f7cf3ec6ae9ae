"""``manage.py eventbus_throttle HANDLER --rate N | --off``: at most N deliveries per second
for a handler, across all workers (audited)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from eventbus_app.exceptions import EventBusError
from eventbus_app.management.cli import cli_actor
from eventbus_app.registry import get_handler
from eventbus_app.throttle import set_throttle, throttles


class Command(BaseCommand):
    help = "Limit a handler to N deliveries per second (across all workers), or lift it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("handler", nargs="?", help="The handler's name; none: list throttles.")
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--rate", type=float, help="Deliveries per second (> 0).")
        group.add_argument("--off", action="store_true", help="Lift the handler's limit.")
        parser.add_argument("--database", default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        name, using = options["handler"], options["database"]
        if name is None:
            for handler, rate in sorted(throttles(using).items()):
                self.stdout.write(f"{handler}: at most {rate:g}/s")
            return
        if options["rate"] is None and not options["off"]:
            raise CommandError("Give --rate N (deliveries per second) or --off")
        if get_handler(name) is None:
            raise CommandError(f"No handler named {name!r} is registered")
        try:
            set_throttle(
                name, None if options["off"] else options["rate"], actor=cli_actor(), using=using
            )
        except EventBusError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"{name}: no limit" if options["off"] else f"{name}: at most {options['rate']:g}/s"
        )
