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
import time
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from ..context import current_delivery
from ..dispatch.retry import describe
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
        if publisher is not None and not publisher.is_open():
            _publishers.pop(name)  # the broker closed it while idle: connect afresh
            threading.Thread(target=_close, args=(name, publisher), daemon=True).start()
            publisher = None
        if publisher is None:
            options = relay_options(name)
            backend = load_backend(options["BACKEND"])
            publisher = _publishers[name] = backend.Publisher(name, options)
        return publisher


def forget_publisher(name: str) -> None:
    """Drop relay ``name``'s publisher; it is closed in a thread of its own, so that a
    broker that does not answer (or a time limit firing) cannot hold the worker here."""
    with _lock:
        publisher = _publishers.pop(name, None)
    if publisher is not None:
        threading.Thread(
            target=_close, args=(name, publisher), name=f"eventbus-close-{name}", daemon=True
        ).start()


def _close(name: str, publisher: Publisher) -> None:
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


def publish_deliveries(
    name: str, deliveries: Sequence[Delivery], using: str, seconds: float | None = None
) -> list[Outcome]:
    """Publish the events of ``deliveries`` (in their order) through relay ``name``; one
    outcome per delivery, None where the broker confirmed it, the exception otherwise (a
    broken connection or a broker that does not answer fails them all). ``seconds``: the
    time the relay may take."""
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
    deadline = time.monotonic() + seconds if seconds is not None else None
    return _publish(name, messages, deadline)


def _publish(name: str, messages: list[Message], deadline: float | None) -> list[Outcome]:
    result = _attempt(name, messages, deadline)
    return result if isinstance(result, list) else _isolate(name, messages, deadline, result)


def _attempt(name: str, messages: list[Message], deadline: float | None) -> Any:
    """The outcomes of publishing ``messages`` as one batch, or the exception it raised
    (the publisher is then made anew)."""
    try:
        publisher = publisher_for(name)
        publisher.deadline = deadline
        return publisher.publish_many(messages)
    except Exception as exc:
        forget_publisher(name)
        return exc
    except BaseException:  # a time limit interrupted it mid-frame
        forget_publisher(name)
        raise


def _isolate(
    name: str, messages: list[Message], deadline: float | None, error: Exception
) -> list[Outcome]:
    """``messages`` failed together with ``error``: try their halves on their own, as long
    as the time left allows another attempt (one may take the relay's ``TIMEOUT``), so that
    a message that breaks its batch (too big for the broker, say) fails alone and its
    neighbours are published. Both halves failing with the very error of the whole means
    the broker or the connection is at fault: every message gets it, no further search."""
    if len(messages) == 1:
        return [error]
    timeout = float(relay_options(name).get("TIMEOUT", 10.0))
    half = len(messages) // 2
    halves = (messages[:half], messages[half:])
    results: list[Any] = []
    for part in halves:
        if deadline is not None and time.monotonic() + timeout + 1 > deadline:
            results.append(error)  # no time for another attempt: charged with the error
        else:
            results.append(_attempt(name, part, deadline))
    if all(isinstance(r, Exception) and describe(r) == describe(error) for r in results):
        return [error] * len(messages)
    outcomes: list[Outcome] = []
    for part, result in zip(halves, results, strict=True):
        outcomes += result if isinstance(result, list) else _isolate(name, part, deadline, result)
    return outcomes


def relay_batch(name: str) -> Callable[[Sequence[Delivery], str, float], list[Outcome]]:
    def relay(deliveries: Sequence[Delivery], using: str, seconds: float) -> list[Outcome]:
        # Stop a second short of the time limit, so that what was confirmed is recorded.
        return publish_deliveries(name, deliveries, using, max(seconds - 1.0, 0.1))

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
