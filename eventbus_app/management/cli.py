"""Shared pieces of the operator commands (``eventbus_retry``, ``eventbus_replay``)."""

from __future__ import annotations

import getpass
import os
import re
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.core.management.base import CommandError, CommandParser, OutputWrapper
from django.db import DEFAULT_DB_ALIAS
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

T = TypeVar("T")

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def plural(count: int, singular: str, plural_form: str) -> str:
    """``1 delivery``, ``2 deliveries``."""
    return f"{count} {singular if count == 1 else plural_form}"


def cli_actor() -> str:
    """``cli:<os user>``: who ran the command, for the operator audit."""
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry and no LOGNAME/USER (containers)
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"cli:{user}"


def parse_age(value: str, option: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``3d``, ``1w`` → a timedelta; CommandError otherwise."""
    match = _AGE.match(value or "")
    if not match:
        raise CommandError(
            f"{option} {value!r} is not an age: use a number and a unit, "
            "s/m/h/d/w (for example 30m, 2h or 3d)"
        )
    amount, unit = float(match.group(1)), match.group(2).lower()
    return timedelta(**{_UNITS[unit]: amount})


def parse_moment(value: str, option: str) -> datetime:
    """An ISO date (``2026-11-28``, midnight) or date-time; naive ones are in TIME_ZONE."""
    try:
        moment = parse_datetime(value)
        if moment is None:
            day = parse_date(value)
            if day is not None:
                moment = datetime(day.year, day.month, day.day)
    except ValueError as exc:  # well-formed but impossible, like 2026-02-30
        raise CommandError(f"{option} {value!r} is not a valid date: {exc}") from None
    if moment is None:
        raise CommandError(
            f"{option} {value!r} is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][+HH:MM]"
        )
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Progress:
    """A plain text progress bar on stderr: ``[#####.....] 50/100``, redrawn with ``\\r``.

    Drawn only when asked to (long runs); at the end a newline keeps the last state visible.
    """

    def __init__(self, total: int, *, label: str, enabled: bool, stream: Any = None) -> None:
        self.total = total
        self.done = 0
        self.label = label
        self.enabled = enabled and total > 0
        self.stream: Any = stream if stream is not None else sys.stderr
        self.width = 30

    def __enter__(self) -> Progress:
        self._draw()
        return self

    def advance(self, n: int) -> None:
        self.done = min(self.total, self.done + n)
        self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        filled = round(self.width * self.done / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        self._write(f"\r{self.label} [{bar}] {self.done}/{self.total}")

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._write("\n")

    def _write(self, text: str) -> None:
        if isinstance(self.stream, OutputWrapper):  # a command's self.stderr adds newlines
            self.stream.write(text, ending="")
        else:
            self.stream.write(text)
        self.stream.flush()


def add_run_arguments(parser: CommandParser, *, verb: str, unit: str, batch_size: int) -> None:
    """The options eventbus_retry and eventbus_replay share: --dry-run, --database,
    --batch-size, --progress."""
    parser.add_argument(
        "--dry-run", action="store_true", help=f"List what would be {verb}; change nothing."
    )
    parser.add_argument("--database", default=DEFAULT_DB_ALIAS, help="Database alias.")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=batch_size,
        help=f"{unit} per transaction ({batch_size}).",
    )
    parser.add_argument(
        "--progress",
        choices=["auto", "always", "never"],
        default="auto",
        help="Progress bar on stderr: auto = when there is more than one batch.",
    )
