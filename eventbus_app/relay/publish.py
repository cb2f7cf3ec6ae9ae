"""The relay handler: a claimed batch of deliveries published together, each counted as
succeeded only once the broker confirmed its message.

The dispatcher hands a relay every delivery of it that one claim leased (``HandlerSpec.
batch``, see ``dispatch/execute.py``); the backend sends them all, then waits for the
confirms together. A relay is an ordered handler, so a claim holds at most one event per
stream: per-stream order at the broker holds whatever a batch's outcomes are.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from ..context import current_delivery
from ..events import Event
from ..exceptions import EventBusError
from ..models import Delivery, OutboxEvent
from .backends import load_backend
from .backends.base import Message, Outcome, Publisher
from .cloudevents import CONTENT_TYPE, encode, to_cloudevent
from .config import relay_options

logger = logging.getLogger(__name__)

# One publisher per relay and process (a connection is worth reusing); dropped after an
# error so the next attempt connects afresh.
_publishers: dict[str, Publisher] = {}
_lock = threading.Lock()


def publisher_for(name: str) -> Publisher:
    with _lock:
        publisher = _publishers.get(name)
        if publisher is None:
            options = relay_options(name)
            backend = load_backend(options["BACKEND"])
            publisher = _publishers[name] = backend.Publisher(name, options)
        return publisher


def forget_publisher(name: str) -> None:
    with _lock:
        publisher = _publishers.pop(name, None)
    if publisher is not None:
        try:
            publisher.close()
        except BaseException:  # closing a broken connection: nothing left to save
            logger.debug("closing relay %s's publisher failed", name, exc_info=True)


def message_for(record: OutboxEvent, source: str, causation_uuid: UUID | None = None) -> Message:
    return Message(
        id=str(record.uuid),
        type=record.event_type,
        subject=record.stream,
        body=encode(to_cloudevent(record, source, causation_uuid)),
        headers={"content-type": CONTENT_TYPE},
    )


def publish_deliveries(name: str, deliveries: Sequence[Delivery], using: str) -> list[Outcome]:
    """Publish the events of ``deliveries`` (in their order) through relay ``name``; one
    outcome per delivery, None where the broker confirmed it. Raises when the batch failed
    as a whole (the connection broke, a timeout): the publisher is then made anew."""
    options = relay_options(name)
    source = options.get("SOURCE", "/eventbus_app")
    causes = {d.event.causation_id for d in deliveries if d.event.causation_id}
    uuids: dict[int, Any] = (
        dict(OutboxEvent.objects.using(using).filter(pk__in=causes).values_list("pk", "uuid"))
        if causes
        else {}
    )
    messages = [
        message_for(d.event, source, uuids.get(d.event.causation_id or 0)) for d in deliveries
    ]
    try:
        return publisher_for(name).publish_many(messages)
    except BaseException:
        forget_publisher(name)  # also after a timeout interrupted it mid-frame
        raise


def relay_batch(name: str) -> Callable[[Sequence[Delivery], str], list[Outcome]]:
    def relay(deliveries: Sequence[Delivery], using: str) -> list[Outcome]:
        return publish_deliveries(name, deliveries, using)

    relay.__qualname__ = relay.__name__ = f"relay_{name}_batch"
    return relay


def relay_handler(name: str) -> Callable[[Event], None]:
    """The relay as a one-delivery handler (the dispatcher uses ``relay_batch``; this is
    what calling the registered function does)."""

    def relay(event: Event) -> None:
        context = current_delivery()
        if context is None:
            raise EventBusError(f"relay:{name} runs as a handler, for one delivery")
        delivery = (
            Delivery.objects.using(context.using)
            .select_related("event")
            .get(pk=context.delivery_id)
        )
        Publisher.raise_for(publish_deliveries(name, [delivery], context.using))

    relay.__qualname__ = relay.__name__ = f"relay_{name}"
    return relay


def close_all() -> None:
    for name in list(_publishers):
        forget_publisher(name)


__all__ = [
    "close_all",
    "forget_publisher",
    "message_for",
    "publish_deliveries",
    "publisher_for",
    "relay_batch",
]
