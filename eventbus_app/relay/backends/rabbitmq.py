"""``rabbitmq``: AMQP 0-9-1 through pika. Publish: persistent messages to a topic exchange,
routing key = the event type, ``mandatory`` (a message no queue takes is an error, not lost
silently), **publisher confirms** (a batch is sent whole, then its acks are awaited). Consume: a
durable queue bound to the exchange, manual acks after the inbox committed.

Options: ``URL`` (``amqp://guest:guest@127.0.0.1:5672/%2F``), ``EXCHANGE`` (``"eventbus"``,
declared durable, type topic); sources also ``QUEUE`` (``"eventbus.<name>"``) and
``BINDINGS`` (routing-key patterns, ``["#"]``: every type).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pika
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.adapters.blocking_connection import BlockingChannel

from .aio import LoopThread
from .base import Consumer as BaseConsumer
from .base import Message, Outcome, PublishError, Received
from .base import Publisher as BasePublisher

# This backend's own options, besides BACKEND, URL and the common ones (system checks
# flag any other key as a likely typo).
RELAY_OPTIONS = ("EXCHANGE",)
SOURCE_OPTIONS = ("EXCHANGE", "QUEUE", "BINDINGS")

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


def _channel(options: dict[str, Any], timeout: float) -> tuple[Any, BlockingChannel, str]:
    parameters = pika.URLParameters(options.get("URL", DEFAULT_URL))
    parameters.socket_timeout = timeout
    parameters.blocked_connection_timeout = timeout
    parameters.connection_attempts = 1
    connection = pika.BlockingConnection(parameters)
    channel = connection.channel()
    exchange = options.get("EXCHANGE", "eventbus")
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    return connection, channel, exchange


class Publisher(BasePublisher):
    """Publisher confirms for a batch at a time: every message is sent, then the broker's
    acks (one may cover several messages: ``multiple``) are awaited together. pika's
    blocking adapter waits for each confirm before the next publish, so this uses pika's
    asyncio adapter, on a loop thread of its own (``aio.py``)."""

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        super().__init__(name, options)
        self.exchange = options.get("EXCHANGE", "eventbus")
        self.connection: AsyncioConnection | None = None
        self.channel: Any = None
        self.broken: str = ""  # why the connection or channel closed
        self.sequence = 0  # delivery tags: the broker numbers a channel's publishes from 1
        self.waiting: dict[int, tuple[asyncio.Future[None], str]] = {}  # tag → (confirm, id)
        self.returned: dict[str, str] = {}  # message id → why the broker returned it
        self.calls: set[asyncio.Future[Any]] = set()  # opening steps under way
        self.loop = LoopThread()
        try:
            self.loop.run(self._open(), self.timeout + 1)
        except BaseException:
            self.close()
            raise

    # --- the connection (on the loop thread) -----------------------------------------------

    def _step(self) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.calls.add(future)
        future.add_done_callback(self.calls.discard)
        return future

    async def _open(self) -> None:
        parameters = pika.URLParameters(self.options.get("URL", DEFAULT_URL))
        parameters.socket_timeout = self.timeout
        parameters.connection_attempts = 1
        opened = self._step()
        self.connection = AsyncioConnection(
            parameters,
            on_open_callback=lambda _c: _settle(opened, None),
            on_open_error_callback=lambda _c, exc: _settle(opened, exc),
            on_close_callback=lambda _c, exc: self._closed(f"connection closed: {exc}"),
            custom_ioloop=asyncio.get_running_loop(),
        )
        await opened
        channel = self._step()
        self.connection.channel(on_open_callback=lambda ch: _settle(channel, None, ch))
        self.channel = await channel
        self.channel.add_on_close_callback(lambda _ch, exc: self._closed(f"channel closed: {exc}"))
        self.channel.add_on_return_callback(self._on_return)
        declared = self._step()
        self.channel.exchange_declare(
            self.exchange,
            exchange_type="topic",
            durable=True,
            callback=lambda _frame: _settle(declared, None),
        )
        await declared
        confirming = self._step()
        self.channel.confirm_delivery(
            self._on_confirm, callback=lambda _frame: _settle(confirming, None)
        )
        await confirming

    def _closed(self, why: str) -> None:
        self.broken = self.broken or why
        error = PublishError(f"RabbitMQ {why}")
        for future in [*self.calls, *(f for f, _ in self.waiting.values())]:
            _settle(future, error)
        self.waiting.clear()

    def _on_return(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        # Comes before the message's ack: the ack then means "returned", not "stored".
        self.returned[properties.message_id] = (
            f"no queue is bound to exchange {self.exchange!r} for {method.routing_key!r} "
            f"({method.reply_code} {method.reply_text}): start the receiving side's consumer "
            "once (it declares its queue)"
        )

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        tag = method.delivery_tag
        tags = sorted(t for t in self.waiting if t <= tag) if method.multiple else [tag]
        for t in tags:
            entry = self.waiting.pop(t, None)
            if entry is None:
                continue
            future, message_id = entry
            why = self.returned.pop(message_id, None)
            if not acked:
                _settle(future, PublishError(f"RabbitMQ refused (nack) message {message_id}"))
            elif why is not None:
                _settle(future, PublishError(why))
            else:
                _settle(future, None)

    # --- publishing ------------------------------------------------------------------------

    def publish_many(self, messages: Sequence[Message]) -> list[Outcome]:
        return self.loop.run(self._publish_many(messages), self.timeout + 1)

    async def _publish_many(self, messages: Sequence[Message]) -> list[Outcome]:
        if self.broken:
            raise PublishError(f"RabbitMQ {self.broken}")
        loop = asyncio.get_running_loop()
        confirms: list[asyncio.Future[None]] = []
        for m in messages:
            self.sequence += 1
            future: asyncio.Future[None] = loop.create_future()
            self.waiting[self.sequence] = (future, m.id)
            confirms.append(future)
            self.channel.basic_publish(
                self.exchange,
                m.type,
                m.body,
                properties=pika.BasicProperties(
                    content_type=m.headers.get("content-type"),
                    delivery_mode=pika.DeliveryMode.Persistent,
                    message_id=m.id,
                ),
                mandatory=True,
            )
        try:
            async with asyncio.timeout(self.timeout):
                results = await asyncio.gather(*confirms, return_exceptions=True)
        except TimeoutError:
            raise PublishError(
                f"RabbitMQ confirmed {_confirmed(confirms)} of {len(confirms)} messages "
                f"within {self.timeout:g} s"
            ) from None
        if self.broken:  # the connection went while we waited: the whole batch fails
            raise PublishError(f"RabbitMQ {self.broken}")
        return [_outcome(r) for r in results]

    def is_open(self) -> bool:
        return not self.broken

    def close(self) -> None:
        connection = self.connection
        try:
            if connection is not None and not (connection.is_closed or connection.is_closing):

                async def close() -> None:
                    connection.close()

                self.loop.run(close(), 5)
                deadline = time.monotonic() + 5
                while not connection.is_closed and time.monotonic() < deadline:
                    time.sleep(0.01)
        except BaseException:  # already broken (or interrupted): the loop goes anyway
            pass
        finally:
            self.loop.stop()


def _outcome(result: object) -> Outcome:
    """A confirm future's result: None (acked), else why not (a cancelled one included)."""
    if result is None:
        return None
    if isinstance(result, Exception):
        return result
    return PublishError(f"RabbitMQ gave no confirm ({result!r})")


def _confirmed(confirms: list[asyncio.Future[None]]) -> int:
    return sum(f.done() and not f.cancelled() and f.exception() is None for f in confirms)


def _settle(future: asyncio.Future[Any], error: BaseException | None, value: Any = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class Consumer(BaseConsumer):
    def __init__(self, name: str, options: dict[str, Any]) -> None:
        super().__init__(name, options)
        self.connection, self.channel, exchange = _channel(options, 10.0)
        self.queue = options.get("QUEUE", f"eventbus.{name}")
        self.channel.queue_declare(self.queue, durable=True)
        for pattern in options.get("BINDINGS", ["#"]):
            self.channel.queue_bind(self.queue, exchange, routing_key=pattern)
        self.messages: Any = None

    def receive(self, limit: int, timeout: float) -> list[Received]:
        if self.messages is None:
            # pika keeps one generator per queue; its parameters cannot change later.
            self.channel.basic_qos(prefetch_count=limit)
            self.messages = self.channel.consume(self.queue, inactivity_timeout=timeout)
        out: list[Received] = []
        while len(out) < limit:
            method, _, body = next(self.messages)
            if method is None:
                break  # nothing within the timeout
            out.append(Received(body=body, token=method.delivery_tag))
            if not self.channel.get_waiting_message_count():
                break  # hand over what has arrived rather than wait for more
        return out

    def ack(self, message: Received) -> None:
        self.channel.basic_ack(message.token)

    def lag(self) -> int | None:
        reply = self.channel.queue_declare(self.queue, durable=True, passive=True)
        return int(reply.method.message_count)

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()  # unacked messages are requeued
