"""A database router for the check tests: eventbus_app lives only on ``default``."""

from __future__ import annotations

from typing import Any


class OutboxOnDefault:
    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        if app_label == "eventbus_app":
            return db == "default"
        return None
