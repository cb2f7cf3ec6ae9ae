"""CloudEvents 1.0, structured content mode, JSON (https://cloudevents.io).

An event goes out as::

    {"specversion": "1.0", "id": "<OutboxEvent.uuid>", "source": "<the relay's SOURCE>",
     "type": "shop.OrderPlaced", "time": "2026-12-01T21:00:00.123456Z",
     "subject": "order-42", "sequence": "3",            # stream and position, when it has one
     "dataschema": "urn:eventbus:shop.OrderPlaced:2", "eventversion": 2,
     "correlationid": "<uuid>", "causationid": "<uuid of the causing event>",
     "datacontenttype": "application/json", "data": {...the payload...}}

Extension attributes (lowercase, as the spec requires): ``eventversion``, ``correlationid``,
``causationid``, ``sequence`` (the spec's Sequence extension) and ``traceparent`` (the
Distributed Tracing extension) when the event carries one. The SDK (``cloudevents`` on PyPI)
is not used: the mapping is these few lines, and the SDK would be one more dependency.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from ..models import OutboxEvent

CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"  # the HTTP binding's batched mode
SPECVERSION = "1.0"


class UnreadableMessage(Exception):
    """A received message is not a CloudEvent this inbox can store."""


def to_cloudevent(
    record: OutboxEvent, source: str, causation_uuid: UUID | None = None
) -> dict[str, Any]:
    """``causation_uuid``: the causing event's uuid, when the caller looked it up (a batch
    does, in one query); otherwise it is read through ``record.causation``."""
    causation = causation_uuid
    if causation is None and record.causation_id:
        causation = record.causation.uuid if record.causation else None
    created = record.created_at.astimezone(UTC)
    event: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": str(record.uuid),
        "source": source,
        "type": record.event_type,
        "time": created.isoformat().replace("+00:00", "Z"),
        "dataschema": f"urn:eventbus:{record.event_type}:{record.version}",
        "eventversion": record.version,
        "correlationid": str(record.correlation_id),
        "datacontenttype": "application/json",
        "data": record.payload,
    }
    if record.stream:
        event["subject"] = record.stream
        event["sequence"] = str(record.position)
    if causation is not None:
        event["causationid"] = str(causation)
    traceparent = record.traceparent  # stored by emit() when OpenTelemetry is on
    if traceparent:
        event["traceparent"] = traceparent
    return event


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Incoming:
    """A received CloudEvent, checked: what the inbox stores."""

    uuid: UUID
    source: str
    type: str
    version: int
    time: datetime | None
    subject: str
    correlation_id: UUID | None
    causation_uuid: UUID | None
    traceparent: str
    data: dict[str, Any]


def _uuid(value: Any, attribute: str) -> UUID:
    try:
        return UUID(str(value))
    except ValueError:
        raise UnreadableMessage(f"{attribute} must be a UUID, got {value!r:.80}") from None


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # what no database text column can hold


def _unstorable(value: Any, path: str) -> str | None:
    """Where ``value`` holds a NUL or a lone surrogate (JSON can escape them; PostgreSQL
    cannot store them), or None."""
    if isinstance(value, str):
        found = _UNSTORABLE.search(value)
        return (
            f"{path or 'the event'} holds {found.group()!r}, which cannot be stored"
            if found
            else None
        )
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            bad = _unstorable(key, where) or _unstorable(item, where)
            if bad:
                return bad
    elif isinstance(value, list):
        for i, item in enumerate(value):
            bad = _unstorable(item, f"{path}[{i}]")
            if bad:
                return bad
    return None


def decode(body: bytes) -> Incoming:
    """Parse and check one structured-mode CloudEvent; raises UnreadableMessage."""
    try:
        event = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise UnreadableMessage(f"not JSON: {exc}") from None
    if not isinstance(event, dict):
        raise UnreadableMessage(f"a CloudEvent is a JSON object, got {type(event).__name__}")
    bad = _unstorable(event, "")
    if bad:
        raise UnreadableMessage(bad)
    if event.get("specversion") != SPECVERSION:
        raise UnreadableMessage(f"specversion must be '1.0', got {event.get('specversion')!r}")
    for attribute in ("id", "source", "type"):
        if not isinstance(event.get(attribute), str) or not event[attribute]:
            raise UnreadableMessage(f"required attribute {attribute!r} is missing or empty")
    data = event.get("data")
    if not isinstance(data, dict):
        raise UnreadableMessage("data must be a JSON object (the event's fields)")
    version = event.get("eventversion", 1)
    if isinstance(version, str) and version.isdigit():
        version = int(version)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version < 2**31:
        raise UnreadableMessage(
            f"eventversion must be an integer from 1 to 2**31 - 1, got {version!r:.40}"
        )
    when = None
    if event.get("time") is not None:
        try:
            when = datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00"))
        except ValueError:
            raise UnreadableMessage(f"time is not RFC 3339: {event['time']!r:.80}") from None
        if when.tzinfo is None:
            raise UnreadableMessage(f"time needs a UTC offset: {event['time']!r:.80}")
    subject = event.get("subject") or ""
    if not isinstance(subject, str) or len(subject) > 200:
        raise UnreadableMessage("subject (the stream) must be a string of 200 characters at most")
    if len(event["type"]) > 200:
        raise UnreadableMessage("type is longer than 200 characters")
    traceparent = event.get("traceparent") or ""
    if not isinstance(traceparent, str) or len(traceparent) > 55:
        traceparent = ""  # not W3C trace context: the trace is lost, the event is not
    return Incoming(
        uuid=_uuid(event["id"], "id"),
        source=event["source"],
        type=event["type"],
        version=version,
        time=when,
        subject=subject,
        correlation_id=(
            _uuid(event["correlationid"], "correlationid") if event.get("correlationid") else None
        ),
        causation_uuid=(
            _uuid(event["causationid"], "causationid") if event.get("causationid") else None
        ),
        traceparent=traceparent,
        data=data,
    )
