"""The ``http`` source: a view that receives what an ``http`` relay POSTs.

``path("eventbus/", include("eventbus_app.relay.urls"))`` serves ``/eventbus/<source>/``.
Each request must carry a valid ``Eventbus-Signature`` made with the source's ``SECRET``,
and a timestamp within ``REPLAY_WINDOW`` seconds (300) of this clock; anything else gets
401 and nothing is stored. A signed message goes to the inbox like any consumer's: 202
stored, 200 duplicate (dropped), 202 unreadable (kept as a dead letter: the sender
retrying would not make it readable).
"""

from __future__ import annotations

import logging

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .config import source_options
from .inbox import Outcome, receive
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
    outcome = receive(source, body, using=options["DATABASE"])
    status = 200 if outcome is Outcome.DUPLICATE else 202
    return JsonResponse({"outcome": outcome.value}, status=status)
