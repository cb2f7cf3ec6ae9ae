"""Aggregates: state rebuilt by folding a stream's events, saved as new events.

::

    class Account(Aggregate, stream_prefix="account", snapshot_every=100):
        owner: str = ""
        balance: Decimal = Decimal("0")

        @applies(Deposited)
        def _deposited(self, event: Deposited) -> None:
            self.balance += event.amount

    account = Account.load("42")           # folds "account-42"; empty if the stream is new
    account.record(Deposited(amount=Decimal("10")))   # applied now, stored on save()
    account.save()                          # emit(..., expected_version=...) per event

An Aggregate subclass is a (mutable) dataclass of its annotated fields, each with a
default; field types are those an Event may have (they are stored in snapshots as JSON).
Folding an event the class has no ``@applies`` method for raises :class:`AggregateError`
naming both; list event classes it should skip in ``ignores = (SomeEvent,)``.

**Snapshots** (``snapshot_every=N``) are written by ``save()`` each time the version passes
a multiple of N, and by ``load()`` when it had to fold N events or more, so ``load`` reads
at most about N events. Each snapshot records the aggregate's *shape* (its fields, their
types, its appliers): a class that changed ignores the old snapshots and folds from the
start. Time travel (``as_of=`` / ``version=``) uses only snapshots from before that point.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from django.db import router, transaction

from .. import codec
from ..events import Event
from ..exceptions import AggregateError, EventDefinitionError

A = TypeVar("A", bound="Aggregate")
F = TypeVar("F", bound=Callable[..., Any])

_APPLIES = "_eventbus_applies"


def applies(event_cls: type[Event]) -> Callable[[F], F]:
    """Mark an Aggregate method as the one that folds ``event_cls`` (and its subclasses)."""
    if not (isinstance(event_cls, type) and issubclass(event_cls, Event)):
        raise EventDefinitionError(f"@applies needs an Event subclass, got {event_cls!r}")

    def mark(func: F) -> F:
        setattr(func, _APPLIES, event_cls)
        return func

    return mark


class Aggregate:
    """Base class of event-sourced aggregates (see the module's docstring)."""

    stream_prefix: ClassVar[str] = ""
    snapshot_every: ClassVar[int | None] = None
    ignores: ClassVar[tuple[type[Event], ...]] = ()
    _appliers: ClassVar[dict[type[Event], str]]
    _shape: ClassVar[str]

    # Set on instances by load(); not dataclass fields.
    id: str
    version: int
    _pending: list[Event]

    def __init_subclass__(
        cls,
        *,
        stream_prefix: str | None = None,
        snapshot_every: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if stream_prefix is not None:
            if not isinstance(stream_prefix, str) or not stream_prefix:
                raise EventDefinitionError(
                    f"{cls.__qualname__}: stream_prefix must be a non-empty str, got "
                    f"{stream_prefix!r}"
                )
            cls.stream_prefix = stream_prefix
        if snapshot_every is not None:
            if not isinstance(snapshot_every, int) or snapshot_every < 1:
                raise EventDefinitionError(
                    f"{cls.__qualname__}: snapshot_every must be an int >= 1, got "
                    f"{snapshot_every!r}"
                )
            cls.snapshot_every = snapshot_every
        if not cls.stream_prefix:
            cls.stream_prefix = cls.__name__.lower()
        dataclasses.dataclass(cls)
        for field in dataclasses.fields(cls):  # type: ignore[arg-type]
            if (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            ):
                raise EventDefinitionError(
                    f"{cls.__qualname__}.{field.name} needs a default: an aggregate starts "
                    "empty and is built by its events"
                )
        try:
            for name, tp in codec.field_types(cls).items():
                codec.check_annotation(tp, name)
        except codec.CodecError as exc:
            raise EventDefinitionError(
                f"{cls.__qualname__}: field {exc.path!r}: {exc.problem}"
            ) from None
        appliers: dict[type[Event], str] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                event_cls = getattr(value, _APPLIES, None)
                if event_cls is not None:
                    appliers[event_cls] = attr
        cls._appliers = appliers
        cls._shape = _shape(cls)
        _by_prefix[cls.stream_prefix] = cls  # the latest class of a prefix wins

    # --- identity --------------------------------------------------------------------------

    @classmethod
    def stream_for(cls, aggregate_id: str | int) -> str:
        return f"{cls.stream_prefix}-{aggregate_id}"

    @property
    def stream(self) -> str:
        return self.stream_for(self.id)

    @classmethod
    def snapshot_key(cls) -> str:
        return f"{cls.__module__}.{cls.__qualname__}"

    # --- folding ---------------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        """Fold one event into the state (what load() and record() do)."""
        for klass in type(event).__mro__:
            name = self._appliers.get(klass)
            if name is not None:
                getattr(self, name)(event)
                return
        if isinstance(event, self.ignores):
            return
        raise AggregateError(
            f"{type(self).__qualname__} has no @applies method for {event.event_type} "
            f"({type(event).__qualname__}) in stream {self.stream!r}. Add one, or list the "
            f"class in {type(self).__qualname__}.ignores to skip it."
        )

    @classmethod
    def load(
        cls: type[A],
        aggregate_id: str | int,
        *,
        as_of: datetime | None = None,
        version: int | None = None,
        using: str | None = None,
    ) -> A:
        """The aggregate folded from its stream: all of it, or up to ``version`` (a
        position) or to the moment ``as_of``. Empty (version 0) if the stream is new."""
        from ..dispatch.execute import load_event
        from ..models import OutboxEvent
        from .store import records

        using = using or router.db_for_read(OutboxEvent)
        self = cls()
        self.id = str(aggregate_id)
        self.version = 0
        self._pending = []
        snapshot = _latest_snapshot(cls, self.stream, using, as_of=as_of, version=version)
        if snapshot is not None:
            restored = codec.decode_fields(cls, snapshot.state)
            for field in dataclasses.fields(cls):  # type: ignore[arg-type]
                setattr(self, field.name, getattr(restored, field.name))
            self.version = snapshot.version
        folded = 0
        last = None
        for record in records(
            self.stream,
            to_position=version,
            as_of=as_of,
            after_position=self.version,
            using=using,
        ):
            self.apply(load_event(record))
            self.version = record.position or self.version
            folded += 1
            last = record
        time_travel = as_of is not None or version is not None
        if cls.snapshot_every and folded >= cls.snapshot_every and not time_travel and last:
            _store_snapshot(self, last.created_at, using)
        return self

    @classmethod
    def history(
        cls: type[A], aggregate_id: str | int, *, using: str | None = None
    ) -> list[tuple[Any, dict[str, Any]]]:
        """Each stored event of the stream with the aggregate's state (its fields, as JSON)
        after it, oldest first: time-travel debugging for the console."""
        from ..dispatch.execute import load_event
        from .store import records

        self = cls()
        self.id = str(aggregate_id)
        self.version = 0
        self._pending = []
        steps = []
        for record in records(self.stream, using=using):
            self.apply(load_event(record))
            self.version = record.position or self.version
            steps.append((record, codec.encode_fields(self)))
        return steps

    # --- writing ---------------------------------------------------------------------------

    def record(self, event: Event) -> None:
        """Apply ``event`` now; it is stored by the next save()."""
        if not isinstance(event, Event):
            raise AggregateError(f"record() takes an Event instance, got {event!r:.80}")
        if not hasattr(self, "_pending"):
            raise AggregateError(
                f"{type(self).__qualname__}() was built directly: use "
                f"{type(self).__qualname__}.load(id) (it also loads a new, empty one)"
            )
        self.apply(event)
        self._pending.append(event)
        self.version += 1

    @property
    def pending(self) -> list[Event]:
        """Events recorded and not saved yet."""
        return list(getattr(self, "_pending", []))

    def save(self, *, using: str | None = None) -> list[Any]:
        """Store the recorded events, each with ``expected_version``, in one transaction;
        returns their OutboxEvent rows. Raises WrongExpectedVersion (and stores nothing) if
        another writer appended to the stream since this aggregate was loaded."""
        from ..models import OutboxEvent
        from ..outbox import emit

        using = using or router.db_for_write(OutboxEvent)
        pending: list[Event] = list(getattr(self, "_pending", []))
        if not pending:
            return []
        base = self.version - len(pending)
        stored = []
        with transaction.atomic(using=using):
            for offset, event in enumerate(pending):
                stored.append(
                    emit(event, stream=self.stream, expected_version=base + offset, using=using)
                )
            every = type(self).snapshot_every
            if every and (self.version // every) > (base // every):
                _store_snapshot(self, stored[-1].created_at, using)
        self._pending = []
        return stored


_by_prefix: dict[str, type[Aggregate]] = {}


def aggregate_for_stream(stream: str) -> tuple[type[Aggregate], str] | None:
    """The Aggregate class whose ``stream_prefix`` names ``stream`` ("account-42" →
    ``(Account, "42")``), for pages that show a stream's state after each event."""
    prefix, sep, aggregate_id = stream.rpartition("-")
    cls = _by_prefix.get(prefix) if sep else None
    return (cls, aggregate_id) if cls is not None else None


def _shape(cls: type[Aggregate]) -> str:
    """A digest of what a snapshot's meaning depends on: fields, their types, appliers."""
    parts = [cls.snapshot_key()]
    parts += [f"{name}:{tp!r}" for name, tp in sorted(codec.field_types(cls).items())]
    parts += sorted(
        f"{event_cls.event_type}@{event_cls.version}>{name}"
        for event_cls, name in cls._appliers.items()
    )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _latest_snapshot(
    cls: type[Aggregate],
    stream: str,
    using: str,
    *,
    as_of: datetime | None,
    version: int | None,
) -> Any:
    from ..models import Snapshot

    rows = Snapshot.objects.using(using).filter(
        aggregate=cls.snapshot_key(), stream=stream, shape=cls._shape
    )
    if version is not None:
        rows = rows.filter(version__lte=version)
    if as_of is not None:
        rows = rows.filter(event_created_at__lte=as_of)
    return rows.order_by("-version").first()


def _store_snapshot(aggregate: Aggregate, event_created_at: datetime, using: str) -> None:
    from ..models import Snapshot

    Snapshot.objects.using(using).bulk_create(
        [
            Snapshot(
                aggregate=aggregate.snapshot_key(),
                stream=aggregate.stream,
                shape=type(aggregate)._shape,
                version=aggregate.version,
                state=codec.encode_fields(aggregate),
                event_created_at=event_created_at,
            )
        ],
        ignore_conflicts=True,
    )
