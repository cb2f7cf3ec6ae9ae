"""Demo console logging: one line per handler failure; the admin shows the tracebacks."""

from __future__ import annotations

import logging


class OneLineFormatter(logging.Formatter):
    def formatException(self, ei: object) -> str:
        return ""

    def formatStack(self, stack_info: str) -> str:
        return ""
