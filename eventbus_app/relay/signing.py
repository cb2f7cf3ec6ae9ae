"""``Eventbus-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``.

The timestamp is signed with the body, so an old request cannot be given a new time; the
receiver refuses timestamps outside its replay window (and the inbox drops a replayed
event's uuid anyway)."""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Eventbus-Signature"


class BadSignature(Exception):
    pass


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_digest(secret, t, body)}"


def verify(secret: str, header: str, body: bytes, window: float, now: float | None = None) -> int:
    """Check ``header`` against ``body``; returns its timestamp or raises BadSignature."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        (t_text,) = parts["t"]
        timestamp = int(t_text)
    except (KeyError, ValueError):
        raise BadSignature("no t=<unix seconds> in the signature header") from None
    signatures = parts.get("v1", [])
    expected = _digest(secret, timestamp, body)
    # Several v1= are allowed (a sender rotating its secret signs with both).
    if not any(hmac.compare_digest(expected, s) for s in signatures):
        raise BadSignature("the signature does not match the body and timestamp")
    age = (time.time() if now is None else now) - timestamp
    if abs(age) > window:
        raise BadSignature(f"timestamp {timestamp} is {age:.0f} s off, outside {window:g} s")
    return timestamp
