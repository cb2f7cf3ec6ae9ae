"""The relay handler: one delivery = one event published and confirmed by the broker.

Batching (several confirms awaited together) is left for later: the dispatcher runs a
relay's deliveries of one stream one at a time anyway (``ordered=True``), which is what
keeps per-stream order at the broker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..context import current_delivery
from ..events import Event
from ..exceptions import EventBusError
from ..models import OutboxEvent
from .backends import load_backend
from .backends.base import Message, Publisher
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
        except Exception:  # closing a broken connection: nothing left to save
            logger.debug("closing relay %s's publisher failed", name, exc_info=True)


def message_for(record: OutboxEvent, source: str) -> Message:
    return Message(
        id=str(record.uuid),
        type=record.event_type,
        subject=record.stream,
        body=encode(to_cloudevent(record, source)),
        headers={"content-type": CONTENT_TYPE},
    )


def relay_handler(name: str) -> Callable[[Event], None]:
    def relay(event: Event) -> None:
        delivery = current_delivery()
        if delivery is None:
            raise EventBusError(f"relay:{name} runs as a handler, for one delivery")
        record = (
            OutboxEvent.objects.using(delivery.using)
            .select_related("causation")
            .get(pk=delivery.event_id)
        )
        options = relay_options(name)
        message = message_for(record, options.get("SOURCE", "/eventbus_app"))
        try:
            publisher_for(name).publish(message)
        except BaseException:
            forget_publisher(name)  # also after a timeout interrupted it mid-frame
            raise

    relay.__qualname__ = relay.__name__ = f"relay_{name}"
    return relay


def close_all() -> None:
    for name in list(_publishers):
        forget_publisher(name)


__all__ = ["close_all", "forget_publisher", "message_for", "publisher_for"]
