"""``nats``: NATS JetStream through nats-py. Publish: ``js.publish`` with header
``Nats-Msg-Id`` = the event's uuid (the stream's duplicate window drops a re-publish), the
stream's ack awaited. Consume: a durable pull consumer, ``ack_sync`` after the inbox
committed.

Options: ``URL`` (``nats://127.0.0.1:4222``), ``STREAM`` (``"EVENTBUS"``, created if missing,
with subjects ``<SUBJECT_PREFIX>.>``), ``SUBJECT_PREFIX`` (``"eventbus"``: an event goes to
``eventbus.<event type>``), ``DUPLICATE_WINDOW`` (seconds, 120); sources also ``DURABLE``
(the consumer's durable name, ``"eventbus_<name>"``), ``FILTER`` (``"<prefix>.>"``),
``MAX_ACK_PENDING`` (1: see below) and ``ACK_WAIT`` (seconds, 10: how soon a dead
consumer's message is given again).

``MAX_ACK_PENDING`` = 1 keeps per-stream order across a consumer's crash: JetStream gives
the one unacked message again before any later one. With more in flight, a crash lets
later messages overtake the unacked ones (they come back after ``ACK_WAIT``): faster, but
the receiver's order per stream may then differ from the sender's.

A batch is published with ``publish_async`` (every message sent, then the acks awaited
together): one round trip per batch. nats-py is asyncio; both classes run their own event
loop in a thread (``aio.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import nats
from nats.js.api import ConsumerConfig, StreamConfig
from nats.js.errors import NotFoundError

from .aio import LoopThread
from .base import Consumer as BaseConsumer
from .base import Message, Outcome, PublishError, Received
from .base import Publisher as BasePublisher

# This backend's own options, besides BACKEND, URL and the common ones (system checks
# flag any other key as a likely typo).
RELAY_OPTIONS = ("STREAM", "SUBJECT_PREFIX", "DUPLICATE_WINDOW")
SOURCE_OPTIONS = (
    "STREAM",
    "SUBJECT_PREFIX",
    "DUPLICATE_WINDOW",
    "DURABLE",
    "FILTER",
    "MAX_ACK_PENDING",
    "ACK_WAIT",
)


async def _connect(options: dict[str, Any]) -> Any:
    return await nats.connect(
        options.get("URL", "nats://127.0.0.1:4222"),
        connect_timeout=5,
        max_reconnect_attempts=0,  # a lost connection fails the attempt; we reconnect
        allow_reconnect=False,
    )


async def _ensure_stream(js: Any, options: dict[str, Any]) -> str:
    stream = options.get("STREAM", "EVENTBUS")
    prefix = options.get("SUBJECT_PREFIX", "eventbus")
    try:
        await js.stream_info(stream)
    except NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=stream,
                subjects=[f"{prefix}.>"],
                duplicate_window=float(options.get("DUPLICATE_WINDOW", 120)),
            )
        )
    return prefix


class Publisher(BasePublisher):
    def __init__(self, name: str, options: dict[str, Any]) -> None:
        super().__init__(name, options)
        self.loop = LoopThread()
        try:
            self.nc = self.loop.run(_connect(options), self.timeout)
            self.js = self.nc.jetstream(timeout=self.timeout)
            self.prefix = self.loop.run(_ensure_stream(self.js, options), self.timeout)
        except BaseException:
            self.loop.stop()
            raise

    def publish_many(self, messages: Sequence[Message]) -> list[Outcome]:
        return self.loop.run(self._publish_many(messages), self.timeout + 1)

    async def _publish_many(self, messages: Sequence[Message]) -> list[Outcome]:
        # A message over the server's max_payload would make publish_async raise for the
        # whole batch: it is refused on its own, unsent.
        limit = int(self.nc.max_payload)
        outcomes: list[Outcome] = [
            PublishError(
                f"message {m.id} is {_size(m):,} bytes with its headers, over the NATS "
                f"server's max_payload ({limit:,})"
            )
            if _size(m) > limit
            else None
            for m in messages
        ]
        sent = [i for i, o in enumerate(outcomes) if o is None]
        acks = []
        try:
            # One time limit around sending and acks alike (publish_async's own wait_stall
            # would wrap every send in a task of its own: several times slower).
            async with asyncio.timeout(self.timeout):
                for i in sent:
                    m = messages[i]
                    acks.append(
                        await self.js.publish_async(
                            f"{self.prefix}.{m.type}",
                            m.body,
                            headers={"Nats-Msg-Id": m.id, **m.headers},
                        )
                    )
                results = await asyncio.gather(*acks, return_exceptions=True)
        except TimeoutError:
            confirmed = sum(a.done() and not a.cancelled() and a.exception() is None for a in acks)
            raise PublishError(
                f"JetStream acknowledged {confirmed} of {len(sent)} messages within "
                f"{self.timeout:g} s"
            ) from None
        finally:
            for ack in acks:
                ack.cancel()  # frees its place among the pending publishes (a no-op if done)
        for i, result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):
                outcomes[i] = PublishError(f"JetStream refused message {messages[i].id}: {result}")
        return outcomes

    def is_open(self) -> bool:
        return not (self.nc.is_closed or self.nc.is_connecting)

    def close(self) -> None:
        try:
            self.loop.run(self.nc.close(), 5)
        except BaseException:  # already broken (or interrupted): the loop goes anyway
            pass
        finally:
            self.loop.stop()


def _size(message: Message) -> int:
    """What the server compares with max_payload: the body and the header block (HPUB)."""
    headers = {"Nats-Msg-Id": message.id, **message.headers}
    block = len("NATS/1.0\r\n\r\n") + sum(len(f"{k}: {v}\r\n") for k, v in headers.items())
    return len(message.body) + block


class Consumer(BaseConsumer):
    def __init__(self, name: str, options: dict[str, Any]) -> None:
        super().__init__(name, options)
        self.max_ack_pending = int(options.get("MAX_ACK_PENDING", 1))
        self.loop = LoopThread()
        try:
            self.nc = self.loop.run(_connect(options), 10)
            self.js = self.nc.jetstream(timeout=10)
            prefix = self.loop.run(_ensure_stream(self.js, options), 10)
            self.sub = self.loop.run(
                self.js.pull_subscribe(
                    options.get("FILTER", f"{prefix}.>"),
                    durable=options.get("DURABLE", f"eventbus_{name}"),
                    stream=options.get("STREAM", "EVENTBUS"),
                    config=ConsumerConfig(
                        # 1: a consumer that dies holds one message, which JetStream gives
                        # again (after ACK_WAIT) before any later one: per-stream order
                        # survives crashes. More: faster, but a crash may reorder.
                        max_ack_pending=self.max_ack_pending,
                        ack_wait=float(options.get("ACK_WAIT", 10)),
                    ),
                ),
                10,
            )
        except BaseException:
            self.loop.stop()
            raise

    def receive(self, limit: int, timeout: float) -> list[Received]:
        async def fetch() -> list[Any]:
            try:
                # Never ask for more than may be in flight: fetch would wait out its
                # timeout for messages the server cannot send yet.
                batch = min(limit, self.max_ack_pending)
                return list(await self.sub.fetch(batch, timeout=timeout))
            except (TimeoutError, nats.errors.TimeoutError):  # nothing came
                return []

        return [Received(body=m.data, token=m) for m in self.loop.run(fetch(), timeout + 10)]

    def ack(self, message: Received) -> None:
        self.loop.run(message.token.ack_sync(timeout=10), 15)

    def lag(self) -> int | None:
        info = self.loop.run(self.sub.consumer_info(), 10)
        return int(info.num_pending) + int(info.num_ack_pending)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run(self.nc.close(), 5)
        self.loop.stop()
