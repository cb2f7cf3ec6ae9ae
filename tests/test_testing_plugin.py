"""The pytest plugin (fixture ``eventbus``), installed through the ``pytest11`` entry point,
the factories users get, and README's testing section, run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction

from eventbus_app import emit
from eventbus_app.models import Delivery, DeliveryAttempt, OutboxEvent
from eventbus_app.testing import drain
from eventbus_app.testing.factories import (
    DeadLetterFactory,
    DeliveryFactory,
    FailedDeliveryFactory,
    OutboxEventFactory,
    RunningDeliveryFactory,
)
from eventbus_app.testing.recorder import EventBusRecorder
from tests.conftest import ROOT
from tests.testapp.events import Chain, UserRegistered, Work
from tests.testapp.models import Effect

SLOW_RETRIES = {"RETRY_BACKOFF": 3600, "RETRY_JITTER": False}


def test_the_plugin_is_installed_with_the_package(pytestconfig: pytest.Config) -> None:
    (ep,) = [e for e in entry_points(group="pytest11") if e.name == "eventbus"]
    assert ep.value == "eventbus_app.testing.plugin"
    assert pytestconfig.pluginmanager.has_plugin("eventbus")


def test_emitted_and_assertions(eventbus: EventBusRecorder) -> None:
    emit(UserRegistered(user_id=1, email="ada@example.com", name="Ada"))
    emit(Work(key="w1"))
    assert [type(e) for e in eventbus.emitted] == [UserRegistered, Work]
    found = eventbus.assert_emitted(UserRegistered, email="ada@example.com")
    assert found.name == "Ada"
    eventbus.assert_emitted(Work)
    eventbus.assert_not_emitted(Chain)
    eventbus.assert_not_emitted(UserRegistered, email="bob@example.com")
    with pytest.raises(AssertionError, match=r"Expected no Work, but 1 were emitted"):
        eventbus.assert_not_emitted(Work)


def test_a_failed_assertion_shows_the_closest_event_field_by_field(
    eventbus: EventBusRecorder,
) -> None:
    emit(UserRegistered(user_id=1, email="ada@example.com", name="Ada"))
    emit(UserRegistered(user_id=2, email="bob@example.com", name="Bob"))
    with pytest.raises(AssertionError) as failed:
        eventbus.assert_emitted(UserRegistered, user_id=2, email="bob@example.org")
    message = str(failed.value)
    assert "2 UserRegistered were. The closest (#2) differs:" in message
    assert "email: expected 'bob@example.org'" in message
    assert "got 'bob@example.com'" in message
    assert "user_id" not in message.split("differs:")[1]  # it matched
    with pytest.raises(AssertionError, match=r"No Chain was emitted\. Emitted: "):
        eventbus.assert_emitted(Chain, n=1)
    with pytest.raises(TypeError, match=r"UserRegistered has no field 'mail'"):
        eventbus.assert_emitted(UserRegistered, mail="x")


def test_drain_runs_retries_to_exhaustion_ignoring_backoff(
    eventbus: EventBusRecorder, settings: Any
) -> None:
    settings.EVENTBUS = {**settings.EVENTBUS, **SLOW_RETRIES, "MAX_ATTEMPTS": 3}
    emit(Work(key="flaky", fail_attempts=2))
    emit(Work(key="hopeless", fail_attempts=99))
    result = eventbus.drain()
    assert result["failed"] == 2 + 2 and result["dead"] == 1
    assert result["rounds"] >= 3
    record = Delivery.objects.filter(handler="testapp.record")
    assert record.get(event__payload__key="flaky").status == Delivery.Status.SUCCEEDED
    assert record.get(event__payload__key="hopeless").status == Delivery.Status.DEAD
    # The plain drain() waits for the backoff: nothing was left for it.
    assert drain()["delivered"] == 0


def test_drain_leaves_paused_handlers_and_waits_for_nothing_else(
    eventbus: EventBusRecorder, settings: Any
) -> None:
    from eventbus_app.models import HandlerState

    settings.EVENTBUS = {**settings.EVENTBUS, **SLOW_RETRIES}
    emit(Work(key="flaky", fail_attempts=1))
    HandlerState.objects.create(handler="testapp.record_async", paused=True)
    result = eventbus.drain()
    assert result["delivered"] == 1 and result["failed"] == 1
    assert Delivery.objects.get(handler="testapp.record_async").status == "pending"


def test_events_emitted_by_handlers_are_recorded(eventbus: EventBusRecorder) -> None:
    emit(Chain(n=2))
    eventbus.drain()
    assert [e.n for e in eventbus.of(Chain)] == [2, 1, 0]
    assert Effect.objects.filter(handler="testapp.chain").count() == 3


@pytest.mark.django_db(transaction=True)
def test_with_django_db_transaction_true(eventbus: EventBusRecorder) -> None:
    assert not transaction.get_connection().in_atomic_block
    emit(Chain(n=1))
    assert eventbus.drain()["delivered"] == 2
    eventbus.assert_emitted(Chain, n=0)


def test_with_transactional_db(eventbus: EventBusRecorder, transactional_db: None) -> None:
    assert not transaction.get_connection().in_atomic_block
    emit(Work(key="t"))
    assert eventbus.drain()["delivered"] == 2
    assert Effect.objects.count() == 2


def test_with_db(db: None, eventbus: EventBusRecorder) -> None:
    assert transaction.get_connection().in_atomic_block  # the test's transaction
    emit(Work(key="t"))
    assert eventbus.drain()["delivered"] == 2


def test_without_any_database_fixture_it_gets_db(eventbus: EventBusRecorder) -> None:
    emit(Work(key="t"))
    assert OutboxEvent.objects.count() == 1


def test_each_test_starts_with_nothing_recorded(eventbus: EventBusRecorder) -> None:
    assert eventbus.emitted == []


@pytest.mark.django_db
def test_factories_make_rows_in_each_state() -> None:
    event = OutboxEventFactory()
    assert event.dispatched_at is None and event.event_type == "example.SomethingHappened"
    for state in ("running", "succeeded", "failed", "dead", "discarded"):
        assert DeliveryFactory(**{state: True}).status == state
    assert RunningDeliveryFactory().lease_token is not None
    assert FailedDeliveryFactory().next_attempt_at is not None
    dead = DeadLetterFactory(handler="crm.create_customer", history=True)
    assert dead.event.dispatched_at is not None
    assert "Traceback (most recent call last)" in dead.traceback
    assert dead.error_summary == "RuntimeError: boom"
    assert list(DeliveryAttempt.objects.filter(delivery=dead).values_list("outcome", flat=True))[
        -1
    ] == ("dead")
    assert DeliveryAttempt.objects.filter(delivery=dead).count() == dead.attempts
    assert DeadLetterFactory().history.count() == 0


def readme_testing_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Testing code that emits\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "README's testing section has no python example"
    return "\n\n".join(blocks)


@pytest.mark.subprocess
def test_readme_testing_section_runs_as_written(tmp_path: Path) -> None:
    """A user's project: only the package's plugin (no tests/conftest.py), the test
    settings, and the README's example in a file of its own."""
    (tmp_path / "test_readme_example.py").write_text(readme_testing_example())
    env = dict(os.environ)
    env.pop("EVENTBUS_DB_NAME", None)
    env.update(
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        # A database of its own, apart from this run's.
        EVENTBUS_TEST_SUFFIX=env.get("EVENTBUS_TEST_SUFFIX", "main") + "_readme",
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(tmp_path),
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            "--ds=tests.settings",
            "-q",
            "--create-db",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b2 passed\b", done.stdout), done.stdout
