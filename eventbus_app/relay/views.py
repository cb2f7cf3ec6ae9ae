"""The ``http`` source: a view that receives what an ``http`` relay POSTs.

``path("eventbus/", include("eventbus_app.relay.urls"))`` serves ``/eventbus/<source>/``.
Each request must carry a valid ``Eventbus-Signature`` made with the source's ``SECRET``,
and a timestamp within ``REPLAY_WINDOW`` seconds (300) of this clock; anything else gets
401 and nothing is stored. A signed message goes to the inbox like any consumer's: 202
stored, 200 duplicate (dropped), 202 unreadable (kept as a dead letter: the sender
retrying would not make it readable). A batch (``application/cloudevents-batch+json``)
is stored in one transaction and answered 202 with each event's outcome (200 when every
one was a duplicate).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .cloudevents import BATCH_CONTENT_TYPE
from .config import source_options
from .inbox import Outcome, receive, receive_many
from .signing import HEADER, BadSignature, verify

logger = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024  # default MAX_BODY_BYTES


@csrf_exempt
@require_POST
def inbox(request: HttpRequest, source: str) -> HttpResponse:
    try:
        options = source_options(source)
    except ImproperlyConfigured:
        return JsonResponse({"error": f"no source {source!r}"}, status=404)
    if options["BACKEND"] != "http":
        return JsonResponse({"error": f"source {source!r} is not an http source"}, status=404)
    secret = options.get("SECRET")
    if not secret:
        logger.error("http source %r has no SECRET: refusing unsigned input", source)
        return JsonResponse({"error": "this source has no SECRET configured"}, status=503)
    length = int(request.headers.get("Content-Length") or 0)
    if length > int(options.get("MAX_BODY_BYTES", MAX_BODY)):
        return JsonResponse({"error": "body too large"}, status=413)
    body = request.body
    try:
        verify(
            secret,
            request.headers.get(HEADER, ""),
            body,
            float(options.get("REPLAY_WINDOW", 300)),
        )
    except BadSignature as exc:
        logger.warning("http source %r refused a request: %s", source, exc)
        return JsonResponse({"error": f"bad signature: {exc}"}, status=401)
    if request.content_type == BATCH_CONTENT_TYPE:
        return _batch(source, body, options["DATABASE"])
    outcome = receive(source, body, using=options["DATABASE"])
    status = 200 if outcome is Outcome.DUPLICATE else 202
    return JsonResponse({"outcome": outcome.value}, status=status)


def _batch(source: str, body: bytes, using: str) -> HttpResponse:
    """Batched mode: a JSON array of CloudEvents, stored in one transaction. An element
    that is no CloudEvent is kept as an unreadable dead letter like a single one; a body
    that is no JSON array is kept whole as one."""
    try:
        events = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        events = None
    if not isinstance(events, list):
        outcome = receive(source, body, using=using)  # kept raw, with why it is unreadable
        return JsonResponse({"outcome": outcome.value}, status=202)
    outcomes = receive_many(source, [encode_element(e) for e in events], using=using)
    counts = {o.value: outcomes.count(o) for o in Outcome}
    status = 200 if outcomes and counts[Outcome.DUPLICATE.value] == len(outcomes) else 202
    return JsonResponse({"outcomes": [o.value for o in outcomes], **counts}, status=status)


def encode_element(event: Any) -> bytes:
    # ASCII: a lone surrogate stays an escape (decode() then refuses it, as for a single
    # event), where UTF-8 could not encode it at all.
    return json.dumps(event, separators=(",", ":")).encode()
