"""``http``: the CloudEvents HTTP binding, for a service without a broker: each event POSTed
in structured mode (``application/cloudevents+json``); with ``BATCHED`` (both sides
eventbus_app), a batch in batched mode (``application/cloudevents-batch+json``, a JSON
array), which the source view stores in one transaction.

Relay options: ``URL`` (the receiving service's source view), ``SECRET`` (signs each
request, see ``signing.py``), ``TIMEOUT`` (seconds per request, 10), ``BATCHED`` (False),
``BATCH_BYTES`` (a batched request's body at most, 512 KiB: half the source view's default
``MAX_BODY_BYTES``). A 2xx answer is the confirm (in batched mode, one that lists an
outcome for every event). The receiving side is a Django view
(``eventbus_app.relay.views``), not a Consumer.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence

from ..cloudevents import BATCH_CONTENT_TYPE, CONTENT_TYPE
from ..signing import HEADER, sign
from .base import Message, NotAttempted, Outcome, PublishError
from .base import Publisher as BasePublisher

# This backend's own options, besides BACKEND, URL and the common ones (system checks
# flag any other key as a likely typo).
RELAY_OPTIONS = ("SECRET", "BATCHED", "BATCH_BYTES")
SOURCE_OPTIONS = ("SECRET", "REPLAY_WINDOW", "MAX_BODY_BYTES")

BATCH_BYTES = 512 * 1024


class Publisher(BasePublisher):
    answered = 0  # messages of the batch in hand that have their outcome

    def publish_many(self, messages: Sequence[Message]) -> list[Outcome]:
        """Structured mode: one POST per event, in order, each answered on its own. With
        ``BATCHED``: as few batched-mode requests as fit in ``BATCH_BYTES``; a request is
        confirmed only by an answer that gives an outcome for each of its events (an
        eventbus_app http source's), and one answered 413 goes again event by event."""
        self.answered = 0
        if not self.options.get("BATCHED") or len(messages) == 1:
            return [self._one(m) for m in messages]
        outcomes: list[Outcome] = []
        for chunk in _chunks(messages, int(self.options.get("BATCH_BYTES", BATCH_BYTES))):
            outcomes += self._batch(chunk)
        return outcomes

    def _late(self) -> bool:
        """Whether the relay's time limit is too near for another request (each request's
        own timeout is cut to what is left). The first answer of a batch is always waited
        for: something must progress."""
        if not self.answered or self.deadline is None:
            return False
        return self.deadline - time.monotonic() < 1.0

    def _one(self, message: Message) -> Outcome:
        if self._late():
            return NotAttempted("the relay's time limit came first")
        refused, _ = self._post(message.body, CONTENT_TYPE, f"event {message.id}")
        self.answered += 1
        return refused

    def _batch(self, chunk: list[Message]) -> list[Outcome]:
        if self._late():
            return [NotAttempted("the relay's time limit came first")] * len(chunk)
        body = b"[" + b",".join(m.body for m in chunk) + b"]"
        refused, answer = self._post(body, BATCH_CONTENT_TYPE, f"a batch of {len(chunk)}")
        if isinstance(refused, PublishError) and refused.args[0].startswith("413"):
            return [self._one(m) for m in chunk]  # too big together: one by one
        self.answered += len(chunk)
        if refused is not None:
            return [refused] * len(chunk)
        try:
            each = json.loads(answer).get("outcomes")
        except (ValueError, AttributeError):
            each = None
        if not isinstance(each, list) or len(each) != len(chunk):
            # A 2xx that does not account for each event (a receiver without batched mode
            # keeps the array as one unreadable message): nothing counts as confirmed.
            why = PublishError(
                f"{self.options['URL']} answered a batch without an outcome per event: it "
                "does not take batched mode; remove BATCHED from this relay"
            )
            return [why] * len(chunk)
        return [None] * len(chunk)

    def _post(self, body: bytes, content_type: str, what: str) -> tuple[Outcome, bytes]:
        """POST ``body``: (None, the answer) on 2xx, (why not, b"") otherwise: a refusal,
        or a connection that could not be made or timed out."""
        headers = {"Content-Type": content_type}
        secret = self.options.get("SECRET")
        if secret:
            headers[HEADER] = sign(secret, body)
        url = self.options["URL"]
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        timeout = self.timeout
        if self.deadline is not None:  # never past the relay's time limit
            timeout = max(min(timeout, self.deadline - time.monotonic()), 0.5)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, answer = response.status, response.read(1024 * 1024)
        except urllib.error.HTTPError as exc:
            detail = exc.read(500).decode(errors="replace")
            return PublishError(f"{exc.code} from {url} for {what}: {detail}"), b""
        except OSError as exc:  # refused, reset, timed out: this request's outcome
            reason = getattr(exc, "reason", exc)
            return PublishError(f"{url} did not answer {what}: {reason}"), b""
        if not 200 <= status < 300:
            return PublishError(f"{status} from {url} for {what}"), b""
        return None, answer


def _chunks(messages: Sequence[Message], limit: int) -> Iterator[list[Message]]:
    chunk: list[Message] = []
    size = 2
    for message in messages:
        if chunk and size + len(message.body) + 1 > limit:
            yield chunk
            chunk, size = [], 2
        chunk.append(message)
        size += len(message.body) + 1
    if chunk:
        yield chunk
