"""``rabbitmq``: AMQP 0-9-1 through pika. Publish: persistent messages to a topic exchange,
routing key = the event type, ``mandatory`` (a message no queue takes is an error, not lost
silently), **publisher confirms** (``publish`` returns after the broker's ack). Consume: a
durable queue bound to the exchange, manual acks after the inbox committed.

Options: ``URL`` (``amqp://guest:guest@127.0.0.1:5672/%2F``), ``EXCHANGE`` (``"eventbus"``,
declared durable, type topic); sources also ``QUEUE`` (``"eventbus.<name>"``) and
``BINDINGS`` (routing-key patterns, ``["#"]``: every type).
"""

from __future__ import annotations

from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from .base import Consumer as BaseConsumer
from .base import Message, PublishError, Received
from .base import Publisher as BasePublisher

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
    def __init__(self, name: str, options: dict[str, Any]) -> None:
        super().__init__(name, options)
        self.connection, self.channel, self.exchange = _channel(options, self.timeout)
        self.channel.confirm_delivery()

    def publish(self, message: Message) -> None:
        try:
            self.channel.basic_publish(
                self.exchange,
                message.type,
                message.body,
                properties=pika.BasicProperties(
                    content_type=message.headers.get("content-type"),
                    delivery_mode=pika.DeliveryMode.Persistent,
                    message_id=message.id,
                ),
                mandatory=True,
            )
        except pika.exceptions.UnroutableError:
            raise PublishError(
                f"no queue is bound to exchange {self.exchange!r} for {message.type!r}: "
                "start the receiving side's consumer once (it declares its queue)"
            ) from None
        except pika.exceptions.NackError:
            raise PublishError(f"RabbitMQ refused (nack) message {message.id}") from None

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


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
