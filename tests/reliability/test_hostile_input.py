"""Scenario 6: hostile payloads, property-based.

Every generated event is either stored and read back from PostgreSQL (``jsonb`` normalises
numbers and key order) equal to what was emitted, value and type, or rejected by ``emit()``
with a ``PayloadError`` naming the field; the domain row written in the same transaction is
then rolled back with it. The admin change page of every stored event renders its payload
escaped.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any

import pytest
from django.db import transaction
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from eventbus_app import emit
from eventbus_app.exceptions import PayloadError
from eventbus_app.models import OutboxEvent
from tests.testapp.models import Account

from .conftest import FULL, report
from .events import Hostile

pytestmark = [pytest.mark.postgres, pytest.mark.reliability]

EXAMPLES = 1500 if FULL else 200
LIMIT = 4096  # MAX_PAYLOAD_BYTES in these tests, so oversized payloads are common

nasty_chars = st.sampled_from(
    ["\x00", "\ud800", "\udfff", "<", "&", '"', "\u2028", "é", "\U0001f600"]
)
texts = st.one_of(
    st.text(max_size=40),
    st.lists(st.one_of(st.characters(), nasty_chars), max_size=20).map("".join),
    st.sampled_from(["<script>alert(1)</script>", "</textarea><b>x", "{{ x }}", "%(x)s"]),
    st.integers(LIMIT // 2, LIMIT * 2).map(lambda n: "x" * n),
)
numbers = st.one_of(
    st.integers(),
    st.integers(-(10**40), 10**40),
    st.sampled_from([2**63, -(2**63) - 1, 10**300]),
    st.sampled_from([4299, 4300, 5000]).map(lambda digits: 10**digits),
    st.floats(),  # NaN and infinities included
    st.sampled_from([1e16, -1e16, 1.5e300, 1e-300, 5e-324, 0.1, 1e15, 2.0**53 + 2.0]),
)
unserialisable = st.sampled_from(
    [object(), {1, 2}, b"bytes", Decimal("1.5"), complex(1, 2), Ellipsis, {1: "int key"}]
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, texts),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=12,
)


def nested(depth: int, leaf: Any) -> Any:
    for i in range(depth):
        leaf = [leaf] if i % 2 else {"k": leaf}
    return leaf


blobs = st.one_of(
    json_values,
    st.builds(nested, st.integers(0, 90), json_values),
    st.builds(lambda v, bad: [v, bad], json_values, unserialisable),
)


def same(a: Any, b: Any) -> bool:
    """Equal in value and type, recursively (dict order aside: jsonb sorts keys)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


stats = {"stored": 0, "rejected": 0}


@pytest.mark.django_db
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(  # about half the examples are storable, half carry something to reject
    text=st.one_of(st.text(), st.text(), texts),
    number=st.one_of(
        st.floats(allow_nan=False, allow_infinity=False), st.floats(), st.integers(), unserialisable
    ),
    count=st.one_of(st.integers(), st.integers(-(2**80), 2**80), numbers, unserialisable),
    blob=blobs,
    mapping=st.dictionaries(texts, blobs, max_size=3),
)
@example(  # jsonb prints 1e+16 as 10000000000000000: it must still come back a float
    text="<script>", number=1e16, count=10**300, blob=[1e16, -1.5e300, 1e-300, 5e-324], mapping={}
)
@example(text="\x00", number=0.0, count=0, blob=None, mapping={})
@example(text="", number=0.0, count=10**4300, blob=None, mapping={})
@example(text="", number=float("nan"), count=0, blob=None, mapping={})
@example(text="", number=0.0, count=0, blob={"x": "\ud800"}, mapping={})
@example(text="", number=0.0, count=0, blob=nested(80, 1), mapping={})
@example(text="", number=2**60 + 1, count=0, blob=None, mapping={})
@example(text="x" * LIMIT, number=0.0, count=0, blob=None, mapping={})
def test_payloads_are_stored_exactly_or_rejected_naming_the_field(
    django_settings: Any, text: Any, number: Any, count: Any, blob: Any, mapping: Any
) -> None:
    event = Hostile(text=text, number=number, count=count, blob=blob, mapping=mapping)
    before = (Account.objects.count(), OutboxEvent.objects.count())
    try:
        with transaction.atomic():
            Account.objects.create(email="hostile@example.com")
            record = emit(event)
    except PayloadError as exc:
        stats["rejected"] += 1
        assert re.match(r"\w+", exc.field).group() in {  # type: ignore[union-attr]
            "text",
            "number",
            "count",
            "blob",
            "mapping",
        }, str(exc)
        assert repr(exc.field) in str(exc)
        assert (Account.objects.count(), OutboxEvent.objects.count()) == before
        return
    stats["stored"] += 1
    assert (Account.objects.count(), OutboxEvent.objects.count()) == (
        before[0] + 1,
        before[1] + 1,
    )
    stored = OutboxEvent.objects.get(pk=record.pk)  # a real read: jsonb's own form
    again = Hostile.from_json(stored.payload, stored.version)
    # A float field holds the float of an int given to it (an int that fits exactly).
    assert type(again.number) is float and again.number == event.number
    for name in ("text", "count", "blob", "mapping"):
        assert same(getattr(again, name), getattr(event, name)), name


@pytest.fixture
def django_settings(settings: Any) -> Any:
    settings.EVENTBUS = {**settings.EVENTBUS, "MAX_PAYLOAD_BYTES": LIMIT, "NUDGE": False}
    return settings


def test_zz_report_hostile_input_figures() -> None:
    if stats["stored"] or stats["rejected"]:
        report(
            "hostile input",
            events=stats["stored"] + stats["rejected"],
            deliveries=0,
            faults=f"{EXAMPLES} generated payloads",
            lost=0,
            twice_tx=0,
            twice_file=None,
            stored=stats["stored"],
            rejected=stats["rejected"],
        )


def strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *strings_in(v)]]
    return []


markup = st.builds(
    lambda inner, n: f"<hostile-{n}>{inner}</hostile-{n}>",
    st.one_of(
        st.sampled_from(["<script>alert(1)</script>", "</pre><img src=x onerror=alert(1)>"]),
        st.lists(st.sampled_from(["<", ">", "&", '"', "'", "a", "é", "/"]), max_size=6).map(
            "".join
        ),
    ),
    st.integers(0, 99),
)
stored_values = st.recursive(
    st.one_of(st.none(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), markup),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(markup, inner, max_size=3)
    ),
    max_leaves=8,
)


@pytest.mark.django_db
@settings(
    max_examples=EXAMPLES // 4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(text=markup, blob=stored_values, mapping=st.dictionaries(markup, stored_values, max_size=2))
def test_admin_pages_render_every_stored_payload_escaped(
    admin_client: Any, django_settings: Any, text: str, blob: Any, mapping: Any
) -> None:
    from django.urls import reverse

    record = emit(Hostile(text=text, number=1.0, count=1, blob=blob, mapping=mapping))
    payload = OutboxEvent.objects.get(pk=record.pk).payload
    pages = [
        reverse("admin:eventbus_app_outboxevent_change", args=[record.pk]),
        reverse("admin:eventbus_app_outboxevent_changelist") + f"?id={record.pk}",
    ]
    for url in pages:
        response = admin_client.get(url)
        assert response.status_code == 200, url
        html = response.content.decode()
        assert strings_in(payload)
        assert "<hostile-" not in html, url  # every stored string is shown escaped
