"""``http``: the CloudEvents HTTP binding, for a service without a broker: one event in
structured mode (``application/cloudevents+json``), a batch in batched mode
(``application/cloudevents-batch+json``, a JSON array).

Relay options: ``URL`` (the receiving service's source view), ``SECRET`` (signs each
request, see ``signing.py``), ``TIMEOUT`` (seconds, 10), ``BATCH_BYTES`` (a request's body
at most, 512 KiB: half the source view's default ``MAX_BODY_BYTES``). A 2xx answer is the
confirm. The receiving side is a Django view (``eventbus_app.relay.views``), not a Consumer.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence

from ..cloudevents import BATCH_CONTENT_TYPE, CONTENT_TYPE
from ..signing import HEADER, sign
from .base import Message, Outcome, PublishError
from .base import Publisher as BasePublisher

# This backend's own options, besides BACKEND, URL and the common ones (system checks
# flag any other key as a likely typo).
RELAY_OPTIONS = ("SECRET", "BATCH_BYTES")
SOURCE_OPTIONS = ("SECRET", "REPLAY_WINDOW", "MAX_BODY_BYTES")

BATCH_BYTES = 512 * 1024


class Publisher(BasePublisher):
    def publish_many(self, messages: Sequence[Message]) -> list[Outcome]:
        """One event: structured mode. More: batched mode, as few requests as fit in
        ``BATCH_BYTES`` each; the source view stores a request's events in one transaction,
        so its 2xx confirms all of them."""
        if len(messages) == 1:
            return [self._post(messages[0].body, CONTENT_TYPE, messages[0].id)]
        outcomes: list[Outcome] = []
        failed: Outcome = None
        for chunk in _chunks(messages, int(self.options.get("BATCH_BYTES", BATCH_BYTES))):
            if failed is None:
                body = b"[" + b",".join(m.body for m in chunk) + b"]"
                failed = self._post(body, BATCH_CONTENT_TYPE, f"{len(chunk)} events")
            outcomes += [failed] * len(chunk)
        return outcomes

    def _post(self, body: bytes, content_type: str, what: str) -> Outcome:
        """POST ``body``; None once answered 2xx, the refusal otherwise. A connection that
        cannot be made or times out raises (the batch fails as a whole)."""
        headers = {"Content-Type": content_type}
        secret = self.options.get("SECRET")
        if secret:
            headers[HEADER] = sign(secret, body)
        url = self.options["URL"]
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            detail = exc.read(500).decode(errors="replace")
            return PublishError(f"{url} answered {exc.code} to {what}: {detail}")
        if not 200 <= status < 300:
            return PublishError(f"{url} answered {status} to {what}")
        return None


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
