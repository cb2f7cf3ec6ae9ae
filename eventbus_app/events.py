"""Event classes and the registry of event types.

Subclassing :class:`Event` turns the class into a frozen dataclass and registers it under
its ``event_type`` so stored events can be turned back into objects.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, dataclass_transform

from . import codec
from .exceptions import EventDefinitionError, EventTypeConflict, PayloadError, PayloadMismatch

_types: dict[str, type[Event]] = {}


def _default_app_label(module: str) -> str:
    """The app label of the app containing ``module``, else its package's last name."""
    from django.apps import apps

    if apps.apps_ready:
        config = apps.get_containing_app_config(module)
        if config is not None:
            return config.label
    parts = module.split(".")
    return parts[-2] if len(parts) > 1 else parts[0]


@dataclass_transform(frozen_default=True)
class Event:
    """Base class of domain events: immutable, typed facts.

    Subclasses are made frozen dataclasses automatically::

        class OrderPlaced(Event, event_type="shop.OrderPlaced", version=2):
            order_id: UUID
            total: Decimal
    """

    event_type: ClassVar[str] = ""
    version: ClassVar[int] = 1

    def __init_subclass__(
        cls, *, event_type: str | None = None, version: int | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if event_type is not None and (not isinstance(event_type, str) or not event_type):
            raise EventDefinitionError(
                f"{cls.__qualname__}: event_type must be a non-empty str, got {event_type!r}"
            )
        if version is not None and (
            not isinstance(version, int) or isinstance(version, bool) or version < 1
        ):
            raise EventDefinitionError(
                f"{cls.__qualname__}: version must be an int >= 1, got {version!r}"
            )
        cls.event_type = event_type or f"{_default_app_label(cls.__module__)}.{cls.__name__}"
        cls.version = version if version is not None else 1
        dataclasses.dataclass(frozen=True)(cls)
        try:
            for name, tp in codec.field_types(cls).items():
                codec.check_annotation(tp, name)
        except codec.CodecError as exc:
            raise EventDefinitionError(
                f"{cls.__qualname__} ({cls.event_type}): field {exc.path!r}: {exc.problem}"
            ) from None
        except NameError as exc:
            raise EventDefinitionError(
                f"{cls.__qualname__}: cannot resolve a field annotation ({exc}); import the "
                "type at module level"
            ) from None
        _register(cls)

    @classmethod
    def upcast(cls, payload: dict[str, Any], version: int) -> dict[str, Any]:
        """Turn a payload stored by an older ``version`` of this class into the current form.

        The default runs the ``@upcaster`` steps registered for this class, one version at a
        time (``upcasting.py``); a step with no upcaster keeps the payload. Override it to
        convert in one place instead.
        """
        from .upcasting import upcast_chain

        return upcast_chain(cls, payload, version)

    def to_json(self) -> dict[str, Any]:
        """The payload as stored; raises :class:`PayloadError` naming a bad field."""
        try:
            return codec.encode_fields(self)
        except codec.CodecError as exc:
            raise PayloadError(self.event_type, exc.path, exc.problem) from None

    @classmethod
    def from_json(
        cls, payload: Any, version: int | None = None, *, ignore_unknown: bool = False
    ) -> Event:
        """Rebuild an event from its stored payload (and stored version).

        ``ignore_unknown``: top-level fields the class does not declare are left out rather
        than refused. Events received from another service are read so (a tolerant reader:
        the sender may add a field before the receiver declares it); local events are not,
        where an unknown field means the class lost one."""
        if not isinstance(payload, dict):
            raise PayloadMismatch(
                f"Stored payload of {cls.event_type} is {type(payload).__name__}, not an object"
            )
        if version is not None and version != cls.version:
            payload = cls.upcast(dict(payload), version)
        if ignore_unknown:
            declared = codec.field_types(cls)
            payload = {k: v for k, v in payload.items() if k in declared}
        try:
            return codec.decode_fields(cls, payload)
        except codec.CodecError as exc:
            raise PayloadMismatch(
                f"Stored payload of {cls.event_type} v{version or cls.version} no longer fits "
                f"{cls.__module__}.{cls.__qualname__} v{cls.version}: {exc}. Override "
                f"{cls.__name__}.upcast() to convert old payloads."
            ) from None


def _register(cls: type[Event]) -> None:
    existing = _types.get(cls.event_type)
    if existing is not None and (existing.__module__, existing.__qualname__) != (
        cls.__module__,
        cls.__qualname__,
    ):
        raise EventTypeConflict(
            f"event_type {cls.event_type!r} is declared twice: by "
            f"{existing.__module__}.{existing.__qualname__} and by "
            f"{cls.__module__}.{cls.__qualname__}. Pass event_type=... to one of them."
        )
    _types[cls.event_type] = cls  # a re-imported module replaces its own class


def event_class(event_type: str) -> type[Event] | None:
    return _types.get(event_type)


def registered_event_types() -> dict[str, type[Event]]:
    return dict(_types)


def payload_size(payload: dict[str, Any]) -> int:
    return len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode())
