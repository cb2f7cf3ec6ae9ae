"""The outbox and its deliveries. These rows are the truth; django-q2 only executes."""

from __future__ import annotations

import uuid as uuid_lib
from typing import Any, ClassVar

from django.db import NotSupportedError, models
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class RandomUUID(models.Func):
    """A random (version 4) UUID made by the database, for rows written with SQL that
    leaves the column out (bulk loads, another service's INSERT). ``emit()`` passes its own."""

    output_field = models.UUIDField()
    # SQLite has no uuid function. Django stores a UUID there as 32 hex digits: the version
    # nibble is 4 and the variant nibble one of 8, 9, a, b.
    _SQLITE = (
        "lower(hex(randomblob(6)) || '4' || substr(hex(randomblob(2)), 2) || "
        "substr('89ab', 1 + (random() & 3), 1) || substr(hex(randomblob(2)), 2) || "
        "hex(randomblob(6)))"
    )

    def as_sql(self, compiler: Any, connection: Any, *args: Any, **kwargs: Any) -> Any:
        if connection.vendor == "postgresql":
            kwargs["template"] = "gen_random_uuid()"  # built in since PostgreSQL 13
        elif connection.vendor == "sqlite":
            kwargs["template"] = self._SQLITE
        else:
            raise NotSupportedError(
                f"eventbus_app needs PostgreSQL or SQLite, not {connection.vendor!r}: "
                "RandomUUID has no SQL for it."
            )
        return super().as_sql(compiler, connection, *args, **kwargs)


class OutboxEvent(models.Model):
    """One emitted event, written in the emitting transaction."""

    id = models.BigAutoField(primary_key=True)
    uuid = models.UUIDField(
        _("uuid"),
        default=uuid_lib.uuid4,
        db_default=RandomUUID(),
        unique=True,
        editable=False,
        help_text=_(
            "Globally unique: the event's identity across databases and services "
            "(idempotency keys, relays). The id is unique only within one database."
        ),
    )
    event_type = models.CharField(_("event type"), max_length=200, db_index=True)
    version = models.PositiveIntegerField(_("version"), default=1)
    payload = models.JSONField(_("payload"))
    correlation_id = models.UUIDField(
        _("correlation id"),
        db_index=True,
        help_text=_("Shared by every event of one causal chain."),
    )
    causation = models.ForeignKey(
        "self",
        verbose_name=_("caused by"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="caused_events",
        help_text=_("The event whose handler emitted this one."),
    )
    depth = models.PositiveSmallIntegerField(
        _("chain depth"), default=0, help_text=_("0 for an event not emitted by a handler.")
    )
    created_at = models.DateTimeField(_("created at"), default=timezone.now, db_index=True)
    stream = models.CharField(
        _("stream"),
        max_length=200,
        blank=True,
        default="",
        db_default="",
        help_text=_('The aggregate it belongs to ("account-42"); empty: no stream.'),
    )
    position = models.PositiveIntegerField(
        _("position"),
        null=True,
        blank=True,
        help_text=_("1-based and gap-free within its stream."),
    )
    source = models.CharField(
        _("source"),
        max_length=200,
        blank=True,
        default="",
        db_default="",
        help_text=_(
            'Empty for a local event; the name of the source (EVENTBUS["SOURCES"]) it was '
            "received from, for one another service sent."
        ),
    )
    dispatched_at = models.DateTimeField(
        _("fanned out at"),
        null=True,
        blank=True,
        help_text=_("When its deliveries were created; empty until the dispatcher sees it."),
    )
    deliver_after = models.DateTimeField(
        _("deliver after"),
        null=True,
        blank=True,
        help_text=_(
            "emit(deliver_after=...): its deliveries are not run before this moment; "
            "empty: at once."
        ),
    )
    emitted_by = models.CharField(
        _("emitted by"),
        max_length=255,
        blank=True,
        default="",
        db_default="",
        help_text=_("The handler whose delivery emitted it; empty outside a handler."),
    )
    traceparent = models.CharField(
        _("trace context"),
        max_length=55,
        blank=True,
        default="",
        db_default="",
        help_text=_("W3C traceparent of the span that emitted it (OpenTelemetry, optional)."),
    )

    class Meta:
        verbose_name = _("event")
        verbose_name_plural = _("events")
        permissions = [("replay_event", "Can replay events")]
        constraints = [
            models.UniqueConstraint(
                fields=["stream", "position"],
                condition=~models.Q(stream=""),
                name="eventbus_stream_position",
            ),
        ]
        indexes = [
            # The fan-out claim: undispatched events in id order. Partial, so it stays tiny.
            models.Index(
                fields=["id"],
                name="eventbus_undispatched_idx",
                condition=models.Q(dispatched_at__isnull=True),
            ),
            # Ordered claims: a stream's events whose fan-out has not committed hold the
            # stream's later deliveries (claim._heads_only). Partial, so it stays tiny.
            models.Index(
                fields=["stream", "position"],
                name="eventbus_stream_unrouted_idx",
                condition=models.Q(dispatched_at__isnull=True) & ~models.Q(stream=""),
            ),
            # The console's source filter: received events by source, newest first.
            models.Index(
                fields=["source", "-id"],
                name="eventbus_received_idx",
                condition=~models.Q(source=""),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} #{self.pk}"


class Delivery(models.Model):
    """One (event, handler) pair: the unit that is claimed, run, retried and dead-lettered."""

    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        RUNNING = "running", _("running")
        SUCCEEDED = "succeeded", _("succeeded")
        FAILED = "failed", _("failed (will retry)")
        DEAD = "dead", _("dead")
        DISCARDED = "discarded", _("discarded")

    # States the dispatcher may claim (RUNNING only once its lease has expired).
    CLAIMABLE: ClassVar[tuple[str, ...]] = (Status.PENDING, Status.FAILED, Status.RUNNING)
    # States that no longer hold an ordered handler's later deliveries of the same stream.
    SETTLED: ClassVar[tuple[str, ...]] = (Status.SUCCEEDED, Status.DISCARDED)

    id = models.BigAutoField(primary_key=True)
    event = models.ForeignKey(
        OutboxEvent, verbose_name=_("event"), on_delete=models.CASCADE, related_name="deliveries"
    )
    handler = models.CharField(_("handler"), max_length=255)
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.PENDING
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    last_error = models.TextField(_("last error"), blank=True, default="")
    error_class = models.CharField(
        _("exception class"), max_length=255, blank=True, default="", db_index=True
    )
    traceback = models.TextField(_("traceback"), blank=True, default="")
    next_attempt_at = models.DateTimeField(
        _("next attempt at"),
        null=True,
        blank=True,
        db_default=Now(),
        help_text=_(
            "When it may be claimed next, by the database's clock. For a running delivery: "
            "when its lease expires."
        ),
    )
    lease_token = models.UUIDField(_("lease token"), null=True, blank=True, editable=False)
    replays = models.PositiveIntegerField(
        _("replays"), default=0, help_text=_("How often it was replayed after finishing.")
    )
    # Copied from the event at fan-out: ordered handlers' claims compare them without a join.
    stream = models.CharField(
        _("stream"), max_length=200, blank=True, default="", db_default="", editable=False
    )
    position = models.PositiveIntegerField(_("position"), null=True, blank=True, editable=False)
    started_at = models.DateTimeField(
        _("started at"),
        null=True,
        blank=True,
        help_text=_("When its current (or last) attempt started, by the database's clock."),
    )
    in_flight = models.PositiveSmallIntegerField(
        _("in flight"),
        default=0,
        db_default=0,
        editable=False,
        help_text=_(
            "While running: how many deliveries shared the start marker written before this "
            "one ran (1: this one alone). If its worker dies, a marker of 1 charges the "
            "attempt to this delivery; a larger one charges nobody and runs each alone."
        ),
    )
    isolate = models.BooleanField(
        _("runs alone"),
        default=False,
        db_default=False,
        help_text=_(
            "An attempt did not finish (its worker died or hung): it runs in a batch of its "
            "own until it succeeds, so it cannot take other deliveries down with it."
        ),
    )
    created_at = models.DateTimeField(_("created at"), db_default=Now())
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)
    discard_reason = models.TextField(
        _("discard reason"),
        blank=True,
        default="",
        db_default="",
        help_text=_("Why an operator discarded this dead letter (its last error is kept)."),
    )

    class Meta:
        verbose_name = _("delivery")
        verbose_name_plural = _("deliveries")
        permissions = [
            ("retry_delivery", "Can retry deliveries"),
            ("discard_delivery", "Can discard dead letters"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["event", "handler"], name="eventbus_one_per_handler"),
        ]
        indexes = [
            # The delivery claim: claimable rows by due time. Finished rows stay out of it.
            models.Index(
                fields=["next_attempt_at"],
                name="eventbus_delivery_due_idx",
                condition=models.Q(status__in=["pending", "failed", "running"]),
            ),
            models.Index(fields=["handler", "status"], name="eventbus_handler_status_idx"),
            models.Index(fields=["status", "error_class"], name="eventbus_status_error_idx"),
            # Ordered handlers: is an earlier delivery of this stream unfinished?
            models.Index(
                fields=["handler", "stream", "position"],
                name="eventbus_delivery_stream_idx",
                condition=~models.Q(stream=""),
            ),
            # Ordered claims and held streams: the unsettled rows of streams only (the claim's
            # "is an earlier one unsettled?" reads nothing else).
            models.Index(
                fields=["handler", "stream", "position"],
                name="eventbus_unsettled_stream_idx",
                condition=~models.Q(stream="") & ~models.Q(status__in=["succeeded", "discarded"]),
            ),
            # Failure groups: dead letters by handler and exception class, newest first.
            models.Index(
                fields=["handler", "error_class", "finished_at"],
                name="eventbus_dead_group_idx",
                condition=models.Q(status="dead"),
            ),
            # The console's overview: the last day's successes per handler, without reading
            # every succeeded row (millions) to find them.
            models.Index(
                fields=["finished_at", "handler"],
                name="eventbus_succeeded_idx",
                condition=models.Q(status="succeeded"),
            ),
            # The overview's lag: the oldest claimable delivery.
            models.Index(
                fields=["created_at"],
                name="eventbus_claimable_age_idx",
                condition=models.Q(status__in=["pending", "failed", "running"]),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.handler} for event #{self.event_id} ({self.status})"

    @property
    def error_summary(self) -> str:
        return self.last_error.strip().splitlines()[0] if self.last_error.strip() else ""


class DeadLetterManager(models.Manager["DeadLetter"]):
    def get_queryset(self) -> models.QuerySet[DeadLetter]:
        return super().get_queryset().filter(status=Delivery.Status.DEAD)


class DeadLetter(Delivery):
    """A delivery that exhausted its attempts or failed permanently."""

    objects = DeadLetterManager()  # type: ignore[misc]

    class Meta:
        proxy = True
        verbose_name = _("dead letter")
        verbose_name_plural = _("dead letters")


class DeliveryAttempt(models.Model):
    """History of one delivery: each failed attempt, and each finished run before a replay."""

    class Outcome(models.TextChoices):
        SUCCEEDED = "succeeded", _("succeeded")
        FAILED = "failed", _("failed")
        DEAD = "dead", _("dead")

    id = models.BigAutoField(primary_key=True)
    delivery = models.ForeignKey(
        Delivery, on_delete=models.CASCADE, related_name="history", verbose_name=_("delivery")
    )
    attempt = models.PositiveIntegerField(_("attempt"))
    outcome = models.CharField(_("outcome"), max_length=16, choices=Outcome.choices)
    error = models.TextField(_("error"), blank=True, default="")
    error_class = models.CharField(_("exception class"), max_length=255, blank=True, default="")
    traceback = models.TextField(_("traceback"), blank=True, default="")
    replays = models.PositiveIntegerField(_("replay round"), default=0)
    recorded_at = models.DateTimeField(_("recorded at"), db_default=Now())

    class Meta:
        verbose_name = _("delivery attempt")
        verbose_name_plural = _("delivery attempts")
        ordering = ["delivery", "id"]
        indexes = [
            # The overview's last-24-hours failures and chart.
            models.Index(fields=["recorded_at"], name="eventbus_attempt_recorded_idx"),
        ]

    def __str__(self) -> str:
        return f"attempt {self.attempt} of delivery #{self.delivery_id}: {self.outcome}"


class HandlerState(models.Model):
    """Operator switches per handler. A paused handler's deliveries wait, they do not fail."""

    handler = models.CharField(_("handler"), max_length=255, primary_key=True)
    paused = models.BooleanField(_("paused"), default=False)
    changed_by = models.CharField(_("changed by"), max_length=150, blank=True, default="")
    changed_at = models.DateTimeField(_("changed at"), default=timezone.now)

    class Meta:
        verbose_name = _("handler state")
        verbose_name_plural = _("handler states")

    def __str__(self) -> str:
        return f"{self.handler} ({'paused' if self.paused else 'running'})"


class OperatorAction(models.Model):
    """Audit record: who retried, replayed, discarded, paused or resumed what, and when."""

    class Kind(models.TextChoices):
        RETRY = "retry", _("retry")
        REPLAY = "replay", _("replay")
        PAUSE = "pause", _("pause")
        RESUME = "resume", _("resume")
        DISCARD = "discard", _("discard")
        THROTTLE = "throttle", _("throttle")

    id = models.BigAutoField(primary_key=True)
    kind = models.CharField(_("action"), max_length=16, choices=Kind.choices)
    actor = models.CharField(
        _("by"), max_length=150, help_text=_("User name, or the command that did it.")
    )
    created_at = models.DateTimeField(_("at"), default=timezone.now, db_index=True)
    event = models.ForeignKey(
        OutboxEvent,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="operator_actions",
    )
    delivery = models.ForeignKey(
        Delivery, null=True, blank=True, on_delete=models.CASCADE, related_name="operator_actions"
    )
    handler = models.CharField(_("handler"), max_length=255, blank=True, default="")
    detail: models.JSONField[Any, Any] = models.JSONField(_("detail"), default=dict, blank=True)

    class Meta:
        verbose_name = _("operator action")
        verbose_name_plural = _("operator actions")
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind} by {self.actor} at {self.created_at:%Y-%m-%d %H:%M:%S}"


class RetryCampaign(models.Model):
    """A canary retry of one failure group: one dead letter first, then the rest at a rate,
    stopping at the first new failure."""

    class State(models.TextChoices):
        CANARY = "canary", _("canary running")
        RELEASING = "releasing", _("releasing the rest")
        DONE = "done", _("done")
        STOPPED = "stopped", _("stopped by a new failure")
        CANCELLED = "cancelled", _("cancelled")

    id = models.BigAutoField(primary_key=True)
    handler = models.CharField(_("handler"), max_length=255)
    error_class = models.CharField(_("exception class"), max_length=255, blank=True)
    rate = models.FloatField(_("rate per second"), help_text=_("Dead letters retried per second."))
    state = models.CharField(_("state"), max_length=16, choices=State.choices, default=State.CANARY)
    canary = models.ForeignKey(
        Delivery, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    total = models.PositiveIntegerField(_("dead letters in the group"), default=0)
    released = models.PositiveIntegerField(_("retried so far"), default=0)
    last_release_at = models.DateTimeField(null=True, blank=True)
    stopped_reason = models.TextField(_("why it stopped"), blank=True, default="")
    created_by = models.CharField(_("started by"), max_length=150)
    created_at = models.DateTimeField(_("started at"), default=timezone.now)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("canary retry")
        verbose_name_plural = _("canary retries")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"canary retry of {self.handler} / {self.error_class or '-'} ({self.state})"

    @property
    def active(self) -> bool:
        return self.state in (self.State.CANARY, self.State.RELEASING)


class Snapshot(models.Model):
    """An aggregate's state after ``version`` events of its stream (``streams.Aggregate``),
    so that loading it folds only the events after. ``shape`` identifies the aggregate
    class's fields and appliers: a changed class ignores its old snapshots."""

    id = models.BigAutoField(primary_key=True)
    aggregate = models.CharField(_("aggregate class"), max_length=255)
    stream = models.CharField(_("stream"), max_length=200)
    shape = models.CharField(_("class shape"), max_length=64)
    version = models.PositiveIntegerField(_("version"))
    state: models.JSONField[Any, Any] = models.JSONField(_("state"))
    event_created_at = models.DateTimeField(
        _("last event's time"), help_text=_("Time travel uses snapshots up to this moment.")
    )
    created_at = models.DateTimeField(_("created at"), default=timezone.now)

    class Meta:
        verbose_name = _("snapshot")
        verbose_name_plural = _("snapshots")
        constraints = [
            models.UniqueConstraint(
                fields=["aggregate", "stream", "shape", "version"], name="eventbus_one_snapshot"
            ),
        ]
        indexes = [
            models.Index(
                fields=["aggregate", "stream", "shape", "-version"], name="eventbus_snapshot_idx"
            )
        ]

    def __str__(self) -> str:
        return f"{self.aggregate} {self.stream} @ {self.version}"


class WorkerRegistry(models.Model):
    """What one version of the code knows: the handlers it routes each event type to and
    the version of each event class. Every dispatcher refreshes its row (``last_seen``), so
    during a rolling deploy old and new workers see each other: fan-out creates deliveries
    for every live registry's handlers, a worker leaves work it does not know (a handler,
    an event version) to one that does, and work no live registry knows is dead-lettered
    once ``EVENTBUS['REGISTRY_GRACE_SECONDS']`` have passed."""

    fingerprint = models.CharField(_("fingerprint"), max_length=64, primary_key=True)
    routes: models.JSONField[Any, Any] = models.JSONField(
        _("routes"), default=dict, help_text=_("Event type → handler names.")
    )
    versions: models.JSONField[Any, Any] = models.JSONField(
        _("event versions"), default=dict, help_text=_("Event type → its class's version.")
    )
    first_seen = models.DateTimeField(_("first seen"), db_default=Now())
    last_seen = models.DateTimeField(_("last seen"), db_default=Now(), db_index=True)

    class Meta:
        verbose_name = _("worker registry")
        verbose_name_plural = _("worker registries")

    def __str__(self) -> str:
        return f"registry {self.fingerprint[:12]} (last seen {self.last_seen:%Y-%m-%d %H:%M})"


class HandlerThrottle(models.Model):
    """An operator's "at most ``rate`` per second" for one handler, honoured by every
    worker: a token bucket in the database (``tokens`` refill at ``rate`` per second, up to
    one second's worth), spent by claims under the row's lock."""

    handler = models.CharField(_("handler"), max_length=255, primary_key=True)
    rate = models.FloatField(_("deliveries per second"))
    tokens = models.FloatField(_("tokens"), default=0.0)
    refilled_at = models.DateTimeField(_("refilled at"), db_default=Now())
    changed_by = models.CharField(_("changed by"), max_length=150, blank=True, default="")
    changed_at = models.DateTimeField(_("changed at"), default=timezone.now)

    class Meta:
        verbose_name = _("handler throttle")
        verbose_name_plural = _("handler throttles")

    def __str__(self) -> str:
        return f"{self.handler}: at most {self.rate:g}/s"
