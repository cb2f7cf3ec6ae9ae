"""Failed attempts log at WARNING without a traceback while they will be retried, and at
ERROR with the traceback when the delivery is dead (logger ``eventbus_app.dispatch``)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from eventbus_app import emit
from eventbus_app.testing import drain
from tests.testapp.events import Work

pytestmark = pytest.mark.django_db


def test_a_retry_warns_without_traceback_and_a_dead_letter_is_an_error_with_one(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.EVENTBUS = {**settings.EVENTBUS, "MAX_ATTEMPTS": 2, "RETRY_BACKOFF": 0}
    emit(Work(key="flaky", fail_attempts=5))  # fails both attempts: retried once, then dead
    with caplog.at_level(logging.INFO, logger="eventbus_app.dispatch"):
        drain()
    failures = [
        r
        for r in caplog.records
        if r.name == "eventbus_app.dispatch"
        and "flaky" in r.getMessage()
        and "testapp.record" in r.getMessage()
        and "record_async" not in r.getMessage()
    ]
    assert [r.levelno for r in failures] == [logging.WARNING, logging.ERROR], [
        (r.levelname, r.getMessage()) for r in failures
    ]
    retry, dead = failures
    assert retry.exc_info is None and "retrying in" in retry.getMessage()
    assert dead.exc_info is not None and dead.exc_info[0] is RuntimeError
    assert "is dead" in dead.getMessage()
    assert "Traceback" in caplog.text.split(dead.getMessage(), 1)[1]


def test_a_permanent_error_is_logged_as_an_error_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    emit(Work(key="refused", permanent=True))
    with caplog.at_level(logging.INFO, logger="eventbus_app.dispatch"):
        drain()
    [record] = [
        r
        for r in caplog.records
        if r.name == "eventbus_app.dispatch" and "refused" in r.getMessage()
    ]
    assert record.levelno == logging.ERROR and record.exc_info is not None
