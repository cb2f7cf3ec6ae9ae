"""The event map (eventbus_app.eventmap) and manage.py eventbus_graph."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command

from eventbus_app import Event, emit
from eventbus_app.eventmap import build
from eventbus_app.testing import drain
from tests.factories import OutboxEventFactory
from tests.testapp.events import Chain, Work

pytestmark = pytest.mark.django_db


def graph(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("eventbus_graph", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_handlers_per_event_type_and_what_they_were_seen_to_emit(register: Any) -> None:
    class Nobody(Event, event_type="testapp.Nobody"):
        x: int

    @register(Work, name="test.ghost")
    def ghost(event: Work) -> None: ...

    emit(Chain(n=2))
    emit(Work(key="w"))
    drain()
    OutboxEventFactory(event_type="gone.Removed")  # stored, class no longer here
    event_map = build()
    assert event_map.handles["testapp.Chain"] == ["testapp.chain"]
    assert event_map.handles["testapp.Work"] == [
        "test.ghost",
        "testapp.record",
        "testapp.record_async",
    ]
    assert event_map.emits == {"testapp.chain": {"testapp.Chain": 2}}
    assert "testapp.record" not in event_map.never_ran
    assert "testapp.balances" in event_map.never_ran  # registered, never ran here
    assert "testapp.Nobody" in event_map.unhandled
    assert "gone.Removed" in event_map.unhandled and "gone.Removed" in event_map.undeclared
    assert "testapp.Work" not in event_map.unhandled
    # The delivery ran "test.ghost" too (it was registered before the drain).
    assert "test.ghost" not in event_map.never_ran


def test_never_ran_flags_a_handler_without_attempts(register: Any) -> None:
    @register(Work, name="test.late")
    def late(event: Work) -> None: ...

    assert "test.late" in build().never_ran


def test_the_command_prints_mermaid_with_flags() -> None:
    emit(Chain(n=1))
    drain()
    chart, flags = graph()
    lines = chart.splitlines()
    assert lines[0] == "flowchart LR"
    ids = {}
    for line in lines:
        for name in ("testapp.Chain", "testapp.chain"):
            if f'"{name}' in line:
                ids[name] = line.split("[")[0].split("(")[0].strip()
    event_id, handler_id = ids["testapp.Chain"], ids["testapp.chain"]
    assert f"    {event_id} --> {handler_id}" in lines
    assert f"    {handler_id} -- emits 1 --> {event_id}" in lines
    assert any("testapp.balances (never ran)" in line for line in lines)
    assert "never ran: " in flags and "testapp.balances" in flags
    assert any(line.startswith("    class ") and "flagged" in line for line in lines)
    fenced, _ = graph("--markdown")
    assert fenced.startswith("```mermaid\nflowchart LR\n") and fenced.endswith("```\n")
    as_json = json.loads(graph("--json")[0])
    assert as_json["emits"] == {"testapp.chain": {"testapp.Chain": 1}}


def test_labels_with_quotes_stay_inside_their_node() -> None:
    OutboxEventFactory(event_type='odd."Type"')
    chart, _ = graph()
    assert '["odd.#quot;Type#quot; (no handler) (no class)"]' in chart
