from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS

from eventbus_app.stats import collect, parse_conditions

# Exit status when a --fail-if condition holds (1 is Django's for a usage error).
FAILED_CONDITION = 2


class Command(BaseCommand):
    help = (
        "Eventbus figures for on-call: deliveries per state, lag (how long the oldest due "
        "work has been due), the oldest pending delivery, per-handler succeeded / failed / "
        "dead in the last hour and day, and held streams. --fail-if exits with status 2 "
        "when a condition holds, for health checks and cron."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print the figures as JSON.")
        parser.add_argument(
            "--fail-if",
            metavar="CONDITIONS",
            help="Comma-separated conditions, e.g. 'dead>0,lag>60s' (names: dead, failed, "
            "pending, running, lag, oldest_pending, held, not_fanned_out, delayed; durations "
            "take s/m/h/d). Exit status 2, naming the conditions that hold, if any does.",
        )
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS, help="Database alias.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            conditions = parse_conditions(options["fail_if"]) if options["fail_if"] else []
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        stats = collect(options["database"])
        if options["json"]:
            self.stdout.write(json.dumps(stats, indent=2, sort_keys=True))
        else:
            self._print(stats)
        failing = []
        for condition in conditions:
            holds, value = condition.holds(stats)
            if holds:
                failing.append(f"{condition.text} (is {value:g})")
        if failing:
            raise CommandError(
                "eventbus_stats --fail-if: " + "; ".join(failing), returncode=FAILED_CONDITION
            )

    def _print(self, stats: dict[str, Any]) -> None:
        out = self.stdout.write
        d = stats["deliveries"]
        out(f"eventbus on {stats['database']!r} at {stats['at']}")
        out("deliveries: " + ", ".join(f"{state} {n}" for state, n in d.items()))
        out(
            f"events not fanned out: {stats['events_not_fanned_out']}; "
            f"delayed (deliver_after in the future): {stats['delayed_events']}"
        )
        out(f"lag: {stats['lag_seconds']:.1f} s")
        if stats["oldest_pending"]:
            out(
                f"oldest pending: {stats['oldest_pending']} "
                f"({stats['oldest_pending_age_seconds']:.0f} s ago)"
            )
        else:
            out("oldest pending: none")
        handlers = stats["handlers"]
        if handlers:
            width = max(len(name) for name in handlers)
            out(f"{'handler':<{width}}  last hour (ok/failed/dead)  last day (ok/failed/dead)")
            for name, w in handlers.items():
                hour, day = w["hour"], w["day"]
                out(
                    f"{name:<{width}}  "
                    f"{hour['succeeded']:>6} {hour['failed']:>6} {hour['dead']:>6}       "
                    f"{day['succeeded']:>6} {day['failed']:>6} {day['dead']:>6}"
                )
        held = stats["held_streams"]
        out(f"held streams: {len(held)}")
        for row in held:
            out(
                f"  {row['handler']} {row['stream']} at position {row['position']}: "
                f"{row['status']} after {row['attempts']} attempts: {row['last_error']}"
            )
