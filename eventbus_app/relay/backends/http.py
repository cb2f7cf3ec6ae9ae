"""``http``: the CloudEvents HTTP binding (structured mode), for a service without a broker.

Relay options: ``URL`` (the receiving service's source view), ``SECRET`` (signs each
request, see ``signing.py``), ``TIMEOUT`` (seconds, 10). A 2xx answer is the confirm.
The receiving side is a Django view (``eventbus_app.relay.views``), not a Consumer.
"""

from __future__ import annotations

import urllib.error
import urllib.request

from ..cloudevents import CONTENT_TYPE
from ..signing import HEADER, sign
from .base import Message, PublishError
from .base import Publisher as BasePublisher

# This backend's own options, besides BACKEND, URL and the common ones (system checks
# flag any other key as a likely typo).
RELAY_OPTIONS = ("SECRET",)
SOURCE_OPTIONS = ("SECRET", "REPLAY_WINDOW", "MAX_BODY_BYTES")


class Publisher(BasePublisher):
    def publish(self, message: Message) -> None:
        headers = {"Content-Type": CONTENT_TYPE, "Ce-Id": message.id}
        secret = self.options.get("SECRET")
        if secret:
            headers[HEADER] = sign(secret, message.body)
        request = urllib.request.Request(
            self.options["URL"], data=message.body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            detail = exc.read(500).decode(errors="replace")
            raise PublishError(f"{self.options['URL']} answered {exc.code}: {detail}") from None
        if not 200 <= status < 300:
            raise PublishError(f"{self.options['URL']} answered {status}")
