from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from eventbus_app import (
    Event,
    EventDefinitionError,
    EventTypeConflict,
    PayloadError,
    PayloadMismatch,
    emit,
)
from eventbus_app.events import event_class
from eventbus_app.models import OutboxEvent
from tests.testapp.events import Address, Everything, OrderPlaced, Plan, UserRegistered


def everything() -> Everything:
    return Everything(
        at=dt.datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=ZoneInfo("Europe/Berlin")),
        day=dt.date(2026, 2, 28),
        clock=dt.time(23, 59, 58, 999),
        amount=Decimal("12345678901234567890.000123"),
        ref=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        plan=Plan.PRO,
        address=Address(street="Main St 1", city="Zürich"),
        tags=["a", "ß", "🙂"],
        pair=(7, "seven"),
        scores=(0.1, 1e16, -0.0, 3.0),
        labels=frozenset({"x", "y"}),
        counts={"a": 1, "b": 2**70},
        by_id={1: Address("s", "c"), 20: Address("t", "d")},
        maybe=None,
        either="text",
        blob={"nested": [1, 2.5, None, True, {"k": "v"}], "big": -(2**80)},
    )


def test_subclass_is_a_frozen_dataclass_with_type_and_version() -> None:
    event = UserRegistered(user_id=1, email="a@example.com")
    assert dataclasses.is_dataclass(event)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.user_id = 2  # type: ignore[misc]
    assert UserRegistered.event_type == "testapp.UserRegistered"
    assert UserRegistered.version == 1
    assert OrderPlaced.event_type == "shop.OrderPlaced"
    assert OrderPlaced.version == 2
    assert event_class("shop.OrderPlaced") is OrderPlaced


def test_two_classes_with_one_type_fail_at_import_naming_both() -> None:
    with pytest.raises(EventTypeConflict) as err:

        class Impostor(Event, event_type="shop.OrderPlaced"):
            order_id: int

    message = str(err.value)
    assert "'shop.OrderPlaced'" in message
    assert "tests.testapp.events.OrderPlaced" in message
    assert "Impostor" in message


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"event_type": ""}, "event_type"),
        ({"version": 0}, "version"),
        ({"version": "2"}, "version"),
    ],
)
def test_bad_class_keywords_are_rejected(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(EventDefinitionError, match=needle):

        class Bad(Event, **kwargs):
            x: int


def test_unsupported_annotations_fail_at_class_creation() -> None:
    with pytest.raises(EventDefinitionError, match="'handle'"):

        class WithObject(Event, event_type="t.WithObject"):
            handle: object

    with pytest.raises(EventDefinitionError, match="ambiguous"):

        class WithUnion(Event, event_type="t.WithUnion"):
            when: dt.date | str

    with pytest.raises(EventDefinitionError, match="frozenset"):

        class WithSet(Event, event_type="t.WithSet"):
            tags: set[str]


class Bare(Event, event_type="t.Bare"):
    """Bare containers, as users write them."""

    meta: dict
    items: list
    t: tuple
    rows: list[dict] | None = None


def test_bare_containers_mean_containers_of_json_values() -> None:
    from eventbus_app.codec import field_types

    assert field_types(Bare) == {
        "meta": dict[str, Any],
        "items": list[Any],
        "t": tuple[Any, ...],
        "rows": list[dict[str, Any]] | None,
    }
    event = Bare(meta={"a": [1, {"b": None}]}, items=[1, "x", 2.5], t=(1, "two"), rows=[{}])
    assert Bare.from_json(event.to_json(), 1) == event


@pytest.mark.django_db
def test_bare_containers_round_trip_through_the_database() -> None:
    event = Bare(meta={"k": "v", "n": [1, 2]}, items=[True, None], t=("a", 1))
    stored = OutboxEvent.objects.get(pk=emit(event).pk)
    assert Bare.from_json(stored.payload, stored.version) == event


def test_bare_containers_still_refuse_non_json_values_naming_the_field() -> None:
    with pytest.raises(PayloadError, match=r"meta\['k'\].*annotate the field"):
        Bare(meta={"k": object()}, items=[], t=()).to_json()
    with pytest.raises(PayloadError, match="keys must be str"):
        Bare(meta={1: "x"}, items=[], t=()).to_json()


@pytest.mark.parametrize(
    ("annotation", "fix"),
    [
        (frozenset, "frozenset needs its item type, e.g. frozenset[str]"),
        (set, "use frozenset[str]"),
        (dict[object, int], "use dict[str, int]"),
        (object, "or Any for plain JSON values"),
    ],
)
def test_what_cannot_round_trip_is_refused_with_the_fix(annotation: Any, fix: str) -> None:
    with pytest.raises(EventDefinitionError) as err:
        type("Refused", (Event,), {"__annotations__": {"x": annotation}}, event_type="t.Refused")
    assert "'x'" in str(err.value) and fix in str(err.value)


def test_codec_round_trips_every_supported_type_in_memory() -> None:
    event = everything()
    payload = event.to_json()
    back = Everything.from_json(payload, Everything.version)
    assert back == event
    assert type(back.scores[1]) is float
    assert back.at.utcoffset() == event.at.utcoffset()


@pytest.mark.django_db
def test_codec_round_trips_through_the_database() -> None:
    event = everything()
    record = emit(event)
    stored = OutboxEvent.objects.get(pk=record.pk)
    assert Everything.from_json(stored.payload, stored.version) == event


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("at", dt.datetime(2026, 1, 1), "naive datetime"),
        ("amount", Decimal("NaN"), "finite"),
        ("scores", (float("inf"),), "NaN or infinity"),
        ("tags", ["ok", "bad\ud800"], "lone surrogate"),
        ("tags", ["nul\x00"], "NUL"),
        ("counts", {"a": "1"}, "expected int"),
        ("pair", (1, 2, 3), "2 items"),
        ("blob", {"x": object()}, "not a JSON value"),
        ("blob", {"x": float("nan")}, "NaN"),
        ("plan", "pro", "expected Plan"),
    ],
)
def test_unserialisable_values_raise_naming_type_and_field(
    field: str, value: Any, problem: str
) -> None:
    from django.db import transaction

    from tests.testapp.models import Account

    bad = dataclasses.replace(everything(), **{field: value})
    with pytest.raises(PayloadError) as err, transaction.atomic():
        Account.objects.create(email="x@example.com")
        emit(bad)
    assert err.value.event_type == "testapp.Everything"
    assert err.value.field.split("[")[0].split(".")[0] == field
    assert problem in str(err.value)
    assert "testapp.Everything" in str(err.value)
    assert not Account.objects.exists()
    assert not OutboxEvent.objects.exists()


@pytest.mark.django_db
def test_payload_over_the_size_limit_is_rejected(settings: Any) -> None:
    settings.EVENTBUS = {**settings.EVENTBUS, "MAX_PAYLOAD_BYTES": 200}
    with pytest.raises(PayloadError, match="MAX_PAYLOAD_BYTES"):
        emit(UserRegistered(user_id=1, email="x" * 300))
    assert not OutboxEvent.objects.exists()
    emit(UserRegistered(user_id=1, email="x" * 20))


def test_deep_nesting_is_rejected_with_the_path() -> None:
    deep: Any = "leaf"
    for _ in range(100):
        deep = {"d": deep}
    event = dataclasses.replace(everything(), blob={"root": deep})
    with pytest.raises(PayloadError, match="nested deeper"):
        event.to_json()


def test_stored_payload_that_no_longer_fits_raises_payload_mismatch() -> None:
    with pytest.raises(PayloadMismatch, match="no longer fits"):
        UserRegistered.from_json({"user_id": "not-an-int", "email": "a"}, 1)
    with pytest.raises(PayloadMismatch, match="renamed_field"):
        UserRegistered.from_json({"user_id": 1, "email": "a", "renamed_field": 1}, 1)


def test_upcast_converts_payloads_of_older_versions() -> None:
    class Renamed(Event, event_type="t.Renamed", version=3):
        full_name: str

        @classmethod
        def upcast(cls, payload: dict[str, Any], version: int) -> dict[str, Any]:
            if version < 3:
                payload["full_name"] = payload.pop("name")
            return payload

    assert Renamed.from_json({"name": "Ada"}, 2) == Renamed(full_name="Ada")
    assert Renamed.from_json({"full_name": "Ada"}, 3) == Renamed(full_name="Ada")
