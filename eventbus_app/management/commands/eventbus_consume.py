"""``manage.py eventbus_consume NAME``: receive a source's messages into the inbox."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from eventbus_app.relay import consume


class Command(BaseCommand):
    help = (
        "Consume EVENTBUS['SOURCES'][NAME] until SIGTERM or Ctrl-C: each message is stored "
        "in the inbox and acknowledged after its commit; prints the lag every --report "
        "seconds."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="a key of EVENTBUS['SOURCES']")
        parser.add_argument("--batch", type=int, default=100, help="messages per receive")
        parser.add_argument("--report", type=float, default=10.0, help="seconds between lag lines")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            consume.check_source(options["name"])
        except (ValueError, ImproperlyConfigured) as exc:
            raise CommandError(str(exc)) from exc
        stop = threading.Event()

        def stopping(signum: int, frame: Any) -> None:
            stop.set()  # finish the message in hand, ack it, then leave

        previous = {s: signal.signal(s, stopping) for s in (signal.SIGTERM, signal.SIGINT)}

        def report(line: str) -> None:
            self.stdout.write(line)
            self.stdout.flush()

        try:
            consume.run(
                options["name"],
                stop,
                batch=options["batch"],
                report_every=options["report"],
                report=report,
            )
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
