"""The only module that talks to django-q2.

Tasks carry a database alias and nothing else: django-q2 pickles task arguments, and our
rows hold the truth. Task functions never raise, so django-q2's own re-delivery (``retry``,
``ack_failures``, ``max_attempts``) never runs anything behind the dispatcher's back; and a
task that is lost (the Redis broker drops a task when its worker dies) loses nothing,
because the sweep schedule finds the work again.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from datetime import timedelta
from typing import Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError

from . import wakeup
from .conf import eventbus_settings

logger = logging.getLogger(__name__)

DISPATCH = "eventbus_app.tasks.dispatch"
SWEEP = "eventbus_app.tasks.sweep"
SCHEDULE_NAME = "eventbus_app.sweep"

_broker: tuple[int, Any] | None = None


def _get_broker() -> Any:
    """One broker per process: django-q2 otherwise opens a connection per enqueue."""
    global _broker
    from django_q.brokers import get_broker

    if _broker is None or _broker[0] != os.getpid():
        _broker = (os.getpid(), get_broker())
    return _broker[1]


# After a failed nudge, this process skips nudges for this long, then lets one request try
# again: a broker that is down must not cost every emitting request a connection timeout
# (redis-py retries a refused connection for seconds). The sweep finds the events meanwhile.
NUDGE_RETRY_SECONDS = 10.0
_nudges_paused_until = 0.0


def nudge(using: str = DEFAULT_DB_ALIAS) -> bool:
    """Ask a worker to dispatch now. Never raises: a lost nudge only waits for the sweep."""
    global _broker, _nudges_paused_until
    from django_q.tasks import async_task

    now = time.monotonic()
    if now < _nudges_paused_until:
        return False
    if _nudges_paused_until:  # the broker was down: this call probes, the others skip
        _nudges_paused_until = now + NUDGE_RETRY_SECONDS
    try:
        async_task(DISPATCH, using, save=False, broker=_get_broker(), task_name="eventbus dispatch")
    except Exception:
        _broker = None  # reconnect next time
        _nudges_paused_until = time.monotonic() + NUDGE_RETRY_SECONDS
        logger.warning(
            "Could not enqueue the eventbus dispatcher (broker down?); the outbox keeps the "
            "events and the sweep schedule will dispatch them. Nudges from this process "
            "pause for %.0f s.",
            NUDGE_RETRY_SECONDS,
            exc_info=True,
        )
        return False
    _nudges_paused_until = 0.0
    return True


_pending: set[str] = set()
_in_flight = 0
_pending_lock = threading.Condition()
_wake = threading.Event()
_nudger: tuple[int, threading.Thread] | None = None
# How long an exiting process waits for the nudger thread to send what is pending: a broker
# that answers takes milliseconds, and one that does not is not worth seconds of every
# script's exit (the sweep finds the events).
EXIT_FLUSH_SECONDS = 1.5
# The nudger thread's pause after each send (see _send_pending).
NUDGE_COALESCE_SECONDS = 0.005


def nudge_in_background(using: str = DEFAULT_DB_ALIAS) -> None:
    """Hand the nudge to this process's nudger thread (``EVENTBUS['NUDGE_BACKGROUND']``).

    The committing request does not wait for the broker, and aliases nudged while the
    thread is busy are sent once. Pending nudges are sent when the process exits normally
    (a script that emits and ends); one lost with a killed process only waits for the
    sweep. django-q2's ORM broker (a database write, which a background thread should not
    hold a connection for) and its sync mode (the task would run in the thread) nudge at
    once."""
    global _nudger
    from django_q.conf import Conf

    if Conf.ORM or Conf.SYNC:
        nudge(using)
        return
    with _pending_lock:
        _pending.add(using)
        if _nudger is None or _nudger[0] != os.getpid() or not _nudger[1].is_alive():
            thread = threading.Thread(target=_send_pending, name="eventbus-nudger", daemon=True)
            _nudger = (os.getpid(), thread)
            thread.start()
    _wake.set()


def _send_pending() -> None:
    global _in_flight
    while True:
        _wake.wait()
        _wake.clear()
        with _pending_lock:
            aliases = sorted(_pending)
            _pending.clear()
            _in_flight += 1
        try:
            for using in aliases:
                nudge(using)
        finally:
            with _pending_lock:
                _in_flight -= 1
                _pending_lock.notify_all()
        # Commits that land meanwhile share the next nudge: under load the process sends a
        # few hundred nudges a second, not one per commit (the push costs CPU in this
        # process, and every nudge is a task for the workers). Idle, nothing waits.
        time.sleep(NUDGE_COALESCE_SECONDS)


def _reset_in_child() -> None:
    """After fork: the parent's nudger thread is not here, and it may have held the lock."""
    global _pending_lock, _wake, _in_flight, _nudger
    _pending_lock = threading.Condition()
    _wake = threading.Event()
    _pending.clear()
    _in_flight = 0
    _nudger = None


os.register_at_fork(after_in_child=_reset_in_child)


@atexit.register
def _flush_at_exit() -> None:
    """Wait (briefly) until the nudger thread has sent every pending nudge.

    A broker that is down costs a push seconds (redis-py retries a refused connection), so
    the wait is bounded; what is not sent by then is logged (the thread would be killed
    before it could say so) and left to the sweep. A broker already known to be down is not
    waited for at all."""
    if _nudger is None or _nudger[0] != os.getpid() or not _nudger[1].is_alive():
        return
    with _pending_lock:
        if not _pending and not _in_flight:
            return
        if time.monotonic() < _nudges_paused_until:
            unsent = sorted(_pending)
            _pending.clear()
            logger.warning(
                "Exiting without nudging the eventbus dispatcher for %s: the broker was down "
                "a moment ago. The outbox keeps the events; the sweep schedule will "
                "dispatch them.",
                ", ".join(map(repr, unsent)),
            )
            return
    _wake.set()
    with _pending_lock:
        sent = _pending_lock.wait_for(lambda: not _pending and not _in_flight, EXIT_FLUSH_SECONDS)
        if not sent:
            logger.warning(
                "Exiting before the broker took the eventbus nudge (no answer in %.1f s; is "
                "it down?). The outbox keeps the events; the sweep schedule will dispatch "
                "them.",
                EXIT_FLUSH_SECONDS,
            )


class _Capture:
    """A broker for ``async_task`` that keeps the signed package instead of sending it."""

    def __init__(self, list_key: str) -> None:
        self.list_key = list_key
        self.package: str | None = None

    def enqueue(self, package: str) -> str:
        self.package = package
        return "with the emitting transaction"  # django-q2 logs "Enqueued [key] <this>"


def queue_row_in_transaction(using: str) -> tuple[str, str] | None:
    """With django-q2's ORM broker on the emitting database: the ``(key, payload)`` of its
    queue row for a dispatch task, built and signed by django-q2's own ``async_task``, for
    ``emit()`` to write in the emitting transaction (it commits or rolls back with the
    events, and no commit-time work is left). None where that does not apply."""
    from django_q.conf import Conf

    if Conf.ORM != using or Conf.SYNC or Conf.BROKER_CLASS:
        return None
    from django_q.tasks import async_task

    capture = _Capture(_get_broker().list_key or Conf.CLUSTER_NAME)
    async_task(DISPATCH, using, save=False, broker=capture, task_name="eventbus dispatch")
    assert capture.package is not None
    return capture.list_key, capture.package


# A dispatch task that finds a backlog (a full batch) asks this many helpers to join it, at
# most: one per other worker of the cluster.
MAX_HELPERS = 7
_recruited_until: dict[str, float] = {}


def dispatch(using: str = DEFAULT_DB_ALIAS, helper: bool = False) -> dict[str, Any]:
    """django-q2 task: work until idle or ``DISPATCH_SECONDS``, then hand over.

    One nudge starts one task, so a backlog (after an outage, or a burst that outran the
    nudges) would be drained by one worker. A task that finds one enqueues ``helper``
    tasks for the cluster's other workers; helpers work until idle or their time is up and
    then end: they recruit nobody and hand over to nobody, so their number stays bounded
    (the task that recruited them hands over as usual)."""
    return _dispatch(using, eventbus_settings.DISPATCH_SECONDS, helper=helper, listen=True)


def _dispatch(using: str, seconds: float, *, helper: bool, listen: bool) -> dict[str, Any]:
    from django_q.conf import Conf

    from . import dispatch as dispatcher

    def recruit() -> None:
        # Once per DISPATCH_SECONDS per process: every nudge during a backlog starts a task
        # that finds it full, and helpers are still at work from the last call.
        now = time.monotonic()
        if now < _recruited_until.get(using, 0.0):
            return
        _recruited_until[using] = now + eventbus_settings.DISPATCH_SECONDS
        for _ in range(min(MAX_HELPERS, max(int(Conf.WORKERS or 1) - 1, 0))):
            _enqueue(using, helper=True)

    deadline = time.monotonic() + seconds
    counts = dispatcher.Counts()

    def work() -> bool:
        """Dispatch until idle or the deadline; True if it went idle in time."""
        step = dispatcher.run(
            using,
            seconds=max(deadline - time.monotonic(), 0.0),
            on_backlog=None if helper else recruit,
        )
        counts.add(step)
        counts.more = step.more
        return not step.more

    try:
        if work() and listen and not helper:
            # EVENTBUS['NOTIFY']: idle, this task may stay as the database's listener.
            wakeup.listen(using, deadline - time.monotonic(), work)
    except Exception:  # never let django-q2 see a failure: it would re-deliver the task
        logger.exception("eventbus dispatch on %r failed; the sweep will retry", using)
        return {"error": True}
    if helper:
        return counts.as_dict()
    if counts.more:
        nudge(using)
    else:
        try:
            wait = dispatcher.next_due_in(using)
        except DatabaseError:
            wait = None
        # A retry due before the next sweep gets a timely wake-up instead of waiting for it.
        if wait is not None and 0 < wait < eventbus_settings.SWEEP_MINUTES * 60:
            wake_later(using, wait)
    return counts.as_dict()


def _enqueue(using: str, helper: bool) -> None:
    from django_q.tasks import async_task

    try:
        async_task(
            DISPATCH, using, helper, save=False, broker=_get_broker(), task_name="eventbus helper"
        )
    except Exception:
        logger.warning("Could not enqueue an eventbus helper task", exc_info=True)


_timers: dict[str, tuple[int, float, threading.Timer]] = {}
_timers_lock = threading.Lock()


def wake_later(using: str, seconds: float) -> None:
    """Nudge the dispatcher in ``seconds`` from a timer thread of this (worker) process.

    One timer per database alias, the earliest wins. Cheap, and if the process dies first
    the sweep schedule does the same job a little later.
    """
    due = time.monotonic() + seconds
    with _timers_lock:
        current = _timers.get(using)
        if current and current[0] == os.getpid() and current[1] <= due:
            return
        if current:
            current[2].cancel()
        timer = threading.Timer(seconds, _wake_up, args=(using,))
        timer.daemon = True
        _timers[using] = (os.getpid(), due, timer)
        timer.start()


def _wake_up(using: str) -> None:
    from django.db import connections

    with _timers_lock:
        _timers.pop(using, None)
    try:
        nudge(using)
    finally:
        connections.close_all()  # this thread's own connections, if the nudge opened any


# Part of django-q2's task timeout the sweep leaves unplanned: the round in progress at its
# deadline, the campaign checks and the task's own bookkeeping.
SWEEP_RESERVE = 0.2


def sweep_budget() -> float:
    """Seconds one sweep may spend dispatching, all databases together: what fits in
    django-q2's ``timeout`` (``Q_CLUSTER['timeout']``, read through its ``Conf.TIMEOUT``),
    and never more than ``DISPATCH_SECONDS`` per database."""
    from django_q.conf import Conf

    wanted = eventbus_settings.DISPATCH_SECONDS * max(len(eventbus_settings.DATABASES), 1)
    timeout = Conf.TIMEOUT
    if not timeout:
        return float(wanted)
    return max(min(float(wanted), float(timeout) * (1 - SWEEP_RESERVE) - 1.0), 0.0)


def sweep() -> dict[str, Any]:
    """Scheduled task: dispatch on every configured database (lost nudges, dead workers),
    and restart canary retries whose driving task was lost.

    The whole sweep fits in django-q2's timeout (``sweep_budget``): each database gets an
    equal share of what is left when its turn comes, a database with work left over gets a
    dispatch task of its own (a nudge), the sweep never stays as a NOTIFY listener, and it
    drives no canary retry itself (one task chain per campaign does that)."""
    started = time.monotonic()
    budget = sweep_budget()
    aliases = list(eventbus_settings.DATABASES)
    results: dict[str, Any] = {}
    for i, using in enumerate(aliases):
        left = budget - (time.monotonic() - started)
        share = max(left / (len(aliases) - i), 0.0)
        results[using] = _dispatch(using, share, helper=False, listen=False)
        try:
            restart_lost_campaigns(using)
        except DatabaseError:
            logger.exception("Could not check the canary retries on %r", using)
    # Retention comes last and gets only what dispatching left of the budget: a busy
    # sweep prunes nothing, the next idle one catches up.
    for using in aliases:
        left = budget - (time.monotonic() - started)
        if left <= 0:
            break
        _apply_retention(using, min(RETENTION_SECONDS, left))
    return results


# At most this long of each sweep goes to EVENTBUS["RETENTION"] per database (a chunk in
# progress at the end finishes: about 0.1 s for 1,000 events).
RETENTION_SECONDS = 2.0


def _apply_retention(using: str, seconds: float) -> None:
    from .retention import apply_retention

    try:
        apply_retention(using, seconds=seconds)
    except ValueError:
        logger.error("EVENTBUS['RETENTION'] is invalid; nothing is pruned", exc_info=True)
    except DatabaseError:
        logger.exception("Could not apply EVENTBUS['RETENTION'] on %r", using)


CAMPAIGN = "eventbus_app.tasks.campaign"
# A campaign whose row has not changed for this long has lost its driving task (a task
# steps it at least every half second): the sweep starts a new chain.
CAMPAIGN_LOST_SECONDS = 60.0


def restart_lost_campaigns(using: str) -> int:
    """Start a new driver for each active campaign no task has stepped for a while. The new
    token ends the old chain, should its task turn up after all. Returns how many."""
    from django.utils import timezone

    from . import campaigns

    lost_for = max(CAMPAIGN_LOST_SECONDS, 2.0 * eventbus_settings.DISPATCH_SECONDS)
    stale = campaigns.active_campaigns(using).filter(
        updated_at__lt=timezone.now() - timedelta(seconds=lost_for)
    )
    restarted = 0
    for campaign_id in stale.values_list("pk", flat=True):
        token = campaigns.touch(campaign_id, using)
        if token is not None:
            logger.info("Canary retry #%s had no driving task; starting one", campaign_id)
            run_campaign_soon(campaign_id, using, token)
            restarted += 1
    return restarted


def run_campaign_soon(
    campaign_id: int, using: str = DEFAULT_DB_ALIAS, token: str | None = None
) -> None:
    """Enqueue the task that drives a canary retry (never raises; the sweep restarts a
    campaign whose task is lost)."""
    from django_q.tasks import async_task

    try:
        async_task(CAMPAIGN, campaign_id, using, token, save=False, broker=_get_broker())
    except Exception:
        logger.warning(
            "Could not enqueue canary retry #%s; the sweep will restart it",
            campaign_id,
            exc_info=True,
        )


def campaign(campaign_id: int, using: str = DEFAULT_DB_ALIAS, token: str | None = None) -> bool:
    """django-q2 task: advance a canary retry for up to ``DISPATCH_SECONDS``, then hand over
    to a successor carrying the campaign's token. A task whose token is stale (another
    chain drives the campaign) ends at once, without a successor. Returns True while the
    campaign runs and this task handed it over."""
    from . import campaigns

    deadline = time.monotonic() + eventbus_settings.DISPATCH_SECONDS
    try:
        while True:
            step = campaigns.step_campaign(campaign_id, using, token=token)
            if step.stale:
                return False
            token = campaigns.token_of(step.campaign)
            if step.released:
                nudge(using)
            if not step.campaign.active:
                return False
            if time.monotonic() >= deadline:
                break
            time.sleep(min(0.5, max(0.05, 1 / step.campaign.rate)))
    except Exception:
        logger.exception(
            "Canary retry #%s failed to advance; the sweep will restart it", campaign_id
        )
        return False
    run_campaign_soon(campaign_id, using, token)
    return True


def ensure_schedule(using: str = DEFAULT_DB_ALIAS) -> None:
    """Create or update the sweep schedule (idempotent; run after ``migrate``)."""
    from django_q.models import Schedule

    try:
        Schedule.objects.using(using).update_or_create(
            name=SCHEDULE_NAME,
            defaults={
                "func": SWEEP,
                "schedule_type": Schedule.MINUTES,
                "minutes": eventbus_settings.SWEEP_MINUTES,
                "repeats": -1,
            },
        )
    except DatabaseError:
        logger.warning("Could not create the eventbus sweep schedule on %r", using, exc_info=True)
