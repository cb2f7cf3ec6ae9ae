"""Masking of sensitive payload keys (``EVENTBUS["REDACT_FIELDS"]``) for display."""

from __future__ import annotations

import json
from typing import Any

from .conf import eventbus_settings

MASK = "••••••"


def redact(value: Any, fields: Any = None) -> Any:
    """A copy of ``value`` with every dict key named in ``fields`` masked, at any depth."""
    names = {f.lower() for f in (fields if fields is not None else eventbus_settings.REDACT_FIELDS)}
    if not names:
        return value
    return _redact(value, names)


def _redact(value: Any, names: set[str]) -> Any:
    if isinstance(value, dict):
        return {
            k: MASK if isinstance(k, str) and k.lower() in names else _redact(v, names)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v, names) for v in value]
    return value


def pretty(value: Any) -> str:
    """Redacted, indented JSON (not yet HTML-escaped: templates escape it)."""
    return json.dumps(redact(value), indent=2, ensure_ascii=False, sort_keys=True)


def preview(value: Any, length: int = 80) -> str:
    text = json.dumps(redact(value), ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= length else text[: length - 1] + "…"
