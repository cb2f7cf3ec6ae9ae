"""The loop behind ``manage.py eventbus_consume NAME``.

Per batch received: the inbox stores its messages (one transaction), then the consumer acks
them; so a crash anywhere loses nothing (the broker redelivers what was not acked; the
inbox drops what it already has). ``stop`` (SIGTERM) is checked between batches: the batch
in hand is stored and acked, nothing more is taken. A broker or
database error closes the connection and reconnects after a backoff (0.5 s doubling to 30 s).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from django.db import close_old_connections

from .backends import load_backend
from .backends.base import Consumer
from .config import source_options
from .inbox import receive_many

logger = logging.getLogger(__name__)

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0


def run(
    name: str,
    stop: threading.Event,
    *,
    batch: int = 100,
    poll: float = 1.0,
    report_every: float = 10.0,
    report: Callable[[str], None] = print,
) -> Counter[str]:
    options = check_source(name)
    backend = load_backend(options["BACKEND"])
    database = options["DATABASE"]
    counts: Counter[str] = Counter()
    backoff = BACKOFF_START
    next_report = time.monotonic() + report_every
    while not stop.is_set():
        consumer: Consumer | None = None
        try:
            consumer = backend.Consumer(name, options)
            report(f"{name}: connected ({options['BACKEND']})")
            while not stop.is_set():
                messages = consumer.receive(batch, poll)
                if messages:
                    # One transaction for what arrived together, then the acks: a crash
                    # before them only makes the broker deliver again what the inbox has.
                    outcomes = receive_many(name, [m.body for m in messages], database)
                    counts.update(o.value for o in outcomes)
                    consumer.ack_many(messages)
                backoff = BACKOFF_START
                if time.monotonic() >= next_report:
                    next_report = time.monotonic() + report_every
                    report(_line(name, counts, consumer))
            report(_line(name, counts, consumer))
        except Exception as exc:
            logger.warning(
                "source %s: %s; reconnecting in %.1f s", name, exc, backoff, exc_info=True
            )
            report(f"{name}: {type(exc).__name__}: {exc}; reconnecting in {backoff:.1f} s")
            close_old_connections()  # a broken database connection is made again
            stop.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
        finally:
            if consumer is not None:
                try:
                    consumer.close()
                except Exception:
                    logger.debug("closing source %s failed", name, exc_info=True)
    report(f"{name}: stopped")
    return counts


def check_source(name: str) -> dict[str, Any]:
    """The source's options; ValueError / ImproperlyConfigured if it cannot be consumed."""
    options = source_options(name)
    if options["BACKEND"] == "http":
        raise ValueError(
            f"source {name!r} is an http source: it is a view (include "
            "eventbus_app.relay.urls), not a consumer"
        )
    load_backend(options["BACKEND"])
    return options


def _line(name: str, counts: Counter[str], consumer: Consumer) -> str:
    try:
        lag: object = consumer.lag()
    except Exception as exc:
        lag = f"unknown ({type(exc).__name__})"
    return (
        f"{name}: lag={lag} stored={counts['stored']} duplicates={counts['duplicate']} "
        f"dead={counts['dead']}"
    )
