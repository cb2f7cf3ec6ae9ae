"""``redis``: Redis Streams. Publish: ``XADD`` (the reply is the confirm), a batch in one
pipeline. Consume: a consumer group (``XREADGROUP``), ``XACK`` after the inbox committed.

Options: ``URL`` (``redis://127.0.0.1:6379/0``), ``STREAM`` (the stream key, ``"eventbus"``),
``MAXLEN`` (approximate trim, none by default); sources also ``GROUP`` (``"eventbus"``),
``CONSUMER`` (this consumer's name, ``"eventbus_consume"``) and ``CLAIM_IDLE_SECONDS`` (60:
another consumer's message unacked that long is taken over).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from .base import Consumer as BaseConsumer
from .base import Message, Outcome, PublishError, Received
from .base import Publisher as BasePublisher

# This backend's own options, besides BACKEND, URL and the common ones (system checks
# flag any other key as a likely typo).
RELAY_OPTIONS = ("STREAM", "MAXLEN")
SOURCE_OPTIONS = ("STREAM", "GROUP", "CONSUMER", "CLAIM_IDLE_SECONDS")


def _client(options: dict[str, Any], timeout: float | None) -> redis.Redis:
    return redis.Redis.from_url(
        options.get("URL", "redis://127.0.0.1:6379/0"),
        socket_connect_timeout=5,
        socket_timeout=timeout,
    )


class Publisher(BasePublisher):
    def __init__(self, name: str, options: dict[str, Any]) -> None:
        super().__init__(name, options)
        self.client = _client(options, self.timeout)
        self.stream = options.get("STREAM", "eventbus")

    def publish_many(self, messages: Sequence[Message]) -> list[Outcome]:
        # One round trip: a pipeline (not MULTI: each XADD stands alone) whose replies are
        # the confirms, in order.
        maxlen = self.options.get("MAXLEN")
        pipe = self.client.pipeline(transaction=False)
        for m in messages:
            fields = {"id": m.id, "type": m.type, "body": m.body}
            pipe.xadd(self.stream, fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
        replies = pipe.execute(raise_on_error=False)
        return [
            PublishError(f"Redis refused message {m.id}: {r}") if isinstance(r, Exception) else None
            for m, r in zip(messages, replies, strict=True)
        ]

    def close(self) -> None:
        self.client.close()


class Consumer(BaseConsumer):
    def __init__(self, name: str, options: dict[str, Any]) -> None:
        super().__init__(name, options)
        self.stream = options.get("STREAM", "eventbus")
        self.group = options.get("GROUP", "eventbus")
        self.consumer = options.get("CONSUMER", "eventbus_consume")
        self.claim_idle_ms = int(float(options.get("CLAIM_IDLE_SECONDS", 60)) * 1000)
        self.client = _client(options, None)
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        # First what this consumer was given and never acked (it was stopped or killed).
        self.pending = True

    def receive(self, limit: int, timeout: float) -> list[Received]:
        if self.pending:
            entries = self._read("0", limit, None)
            if entries:
                return entries
            self.pending = False
            reply: Any = self.client.xautoclaim(
                self.stream, self.group, self.consumer, self.claim_idle_ms, count=limit
            )
            claimed = reply[1]
            if claimed:
                self.pending = True  # read them through "0" next time, with the others
                return [Received(body=f[b"body"], token=i) for i, f in claimed if f]
        return self._read(">", limit, int(timeout * 1000) or 1)

    def _read(self, start: str, limit: int, block: int | None) -> list[Received]:
        reply: Any = self.client.xreadgroup(
            self.group, self.consumer, {self.stream: start}, count=limit, block=block
        )
        out: list[Received] = []
        for _, entries in reply or []:
            for entry_id, fields in entries:
                out.append(Received(body=(fields or {}).get(b"body", b""), token=entry_id))
        return out

    def ack(self, message: Received) -> None:
        self.client.xack(self.stream, self.group, message.token)

    def ack_many(self, messages: Sequence[Received]) -> None:
        if messages:
            self.client.xack(self.stream, self.group, *(m.token for m in messages))

    def lag(self) -> int | None:
        groups: Any = self.client.xinfo_groups(self.stream)
        for group in groups:
            if group["name"].decode() == self.group:
                lag = group.get("lag")
                return (int(lag) if lag is not None else 0) + int(group.get("pending", 0))
        return None

    def close(self) -> None:
        self.client.close()
