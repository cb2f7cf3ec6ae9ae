"""The dispatcher loop: settle, claim, fan out and run, until nothing is due."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.db import DatabaseError, connections

from ..conf import eventbus_settings
from ..exceptions import EventBusError
from .claim import claim, claim_throttled, reclaim_unfinished
from .execute import Counts, deliver
from .fanout import fan_out_leased

logger = logging.getLogger("eventbus_app.dispatch")


@contextmanager
def _recovering(using: str, counts: Counts) -> Iterator[None]:
    """Survive a lost database connection: log it, drop the connection, carry on later."""
    try:
        yield
    except (DatabaseError, EventBusError) as exc:
        counts.errors += 1
        logger.warning("eventbus dispatcher on %r hit %s: %s", using, type(exc).__name__, exc)
        conn = connections[using]
        if conn.in_atomic_block:
            raise
        conn.close()


# Settling unfinished attempts and running isolated deliveries is rare work: a round does
# it at most this often per process and database (and always in a round that found nothing
# else), so fresh events do not wait for it.
MAINTENANCE_SECONDS = 1.0
_maintained: dict[str, float] = {}


def run_once(using: str = "default", counts: Counts | None = None) -> Counts:
    """One round: one fan-out batch whose deliveries are leased to this worker and run at
    once; one claimed batch of due deliveries (retries, resumed handlers, expired leases);
    then, now and then, settle unfinished attempts and run one delivery that must run alone.

    ``counts`` (if given) is updated as work commits, so it shows the progress made before
    an error."""
    counts = Counts() if counts is None else counts
    claimed_at = time.monotonic()
    fanned_out, token, fresh = fan_out_leased(using)
    counts.fanned_out += fanned_out
    if fresh:
        deliver(using, token, fresh, claimed_at=claimed_at, counts=counts)
    claimed_at = time.monotonic()
    token, claimed = claim(using)
    if claimed:
        deliver(using, token, claimed, claimed_at=claimed_at, counts=counts)
    claimed_at = time.monotonic()
    throttled, counts.throttle_wait = claim_throttled(using)
    for token, rows in throttled:
        deliver(using, token, rows, claimed_at=claimed_at, counts=counts)
    alone: list[object] = []
    settled = 0
    now = time.monotonic()
    if not (fanned_out or claimed) or now - _maintained.get(using, 0.0) > MAINTENANCE_SECONDS:
        _maintained[using] = now
        settled = reclaim_unfinished(using)
        counts.settled += settled
        claimed_at = time.monotonic()
        token, isolated = claim(using, isolated=True)
        if isolated:
            deliver(using, token, isolated, claimed_at=claimed_at, counts=counts)
        alone = list(isolated)
    counts.more = bool(counts.fanned_out or claimed or alone or settled or throttled)
    batch = eventbus_settings.BATCH_SIZE
    counts.full = counts.full or len(claimed) >= batch or fanned_out >= batch
    return counts


def run(
    using: str = "default",
    *,
    seconds: float | None = None,
    max_errors: int = 5,
    on_backlog: Callable[[], None] | None = None,
) -> Counts:
    """Work until nothing is due (or ``seconds`` have passed; then ``more`` is True).

    ``on_backlog`` is called once, after the first batch that came back full: the caller
    may ask more workers to share the backlog."""
    total = Counts()
    deadline = time.monotonic() + seconds if seconds is not None else None
    consecutive_errors = 0
    while True:
        before = total.errors
        step = Counts()
        with _recovering(using, total):
            run_once(using, step)
        total.add(step)
        if step.full and not total.full:
            total.full = True
            if on_backlog is not None:
                on_backlog()
        if total.errors > before:
            # Errors count as consecutive only while no work commits: a worker whose
            # connection keeps dropping but who gets work done between drops keeps going.
            progressed = step.fanned_out or step.delivered or step.failed or step.dead
            consecutive_errors = 1 if progressed else consecutive_errors + 1
            if consecutive_errors >= max_errors:
                total.more = True
                return total
            time.sleep(min(0.1 * 2**consecutive_errors, 2.0))
            continue
        consecutive_errors = 0
        if not step.more and step.throttle_wait:
            # Only throttled work is left: wait for its next token (within the budget).
            left = deadline - time.monotonic() if deadline is not None else step.throttle_wait
            if left > 0:
                time.sleep(min(step.throttle_wait, left))
                continue
        if not step.more:
            total.more = bool(step.throttle_wait)
            return total
        if deadline is not None and time.monotonic() >= deadline:
            total.more = True
            return total
