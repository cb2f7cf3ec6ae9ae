from __future__ import annotations

from typing import Any

import pytest
from django.core.management import call_command
from django.test import override_settings

from eventbus_app.checks import (
    check_django_q,
    check_outbox_databases,
    check_settings,
    check_sqlite,
    notify_messages,
    sqlite_messages,
)
from eventbus_app.conf import OPTIONS, eventbus_settings
from tests.conftest import ON_POSTGRES


def ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages]


def test_defaults_resolve_lazily_and_reset_on_setting_changed() -> None:
    assert eventbus_settings.MAX_CHAIN_DEPTH == OPTIONS["MAX_CHAIN_DEPTH"].default
    with override_settings(EVENTBUS={"MAX_CHAIN_DEPTH": 3}):
        assert eventbus_settings.MAX_CHAIN_DEPTH == 3
    assert eventbus_settings.MAX_CHAIN_DEPTH == OPTIONS["MAX_CHAIN_DEPTH"].default
    with pytest.raises(AttributeError, match="Unknown EVENTBUS setting 'NOPE'"):
        _ = eventbus_settings.NOPE


def test_every_documented_key_exists() -> None:
    for key in (
        "MAX_ATTEMPTS",
        "RETRY_BACKOFF",
        "RETRY_BACKOFF_MAX",
        "LEASE_SECONDS",
        "MAX_CHAIN_DEPTH",
        "MAX_PAYLOAD_BYTES",
        "REDACT_FIELDS",
    ):
        assert key in OPTIONS


@pytest.mark.parametrize(
    ("value", "expected", "needle"),
    [
        ({"MAX_ATEMPTS": 3}, "eventbus_app.E002", "'MAX_ATEMPTS'"),
        ({"MAX_ATTEMPTS": "3"}, "eventbus_app.E003", "EVENTBUS['MAX_ATTEMPTS'] must be int"),
        ({"MAX_ATTEMPTS": True}, "eventbus_app.E003", "MAX_ATTEMPTS"),
        ({"LEASE_SECONDS": 0}, "eventbus_app.E004", "LEASE_SECONDS"),
        ({"REDACT_FIELDS": "email"}, "eventbus_app.E003", "REDACT_FIELDS"),
        ({"REDACT_FIELDS": ["email", 3]}, "eventbus_app.E003", "REDACT_FIELDS"),
        ({"DATABASES": ["nope"]}, "eventbus_app.E005", "'nope'"),
        ("not a dict", "eventbus_app.E001", "EVENTBUS must be a dict"),
    ],
)
def test_bad_settings_are_check_errors_that_name_the_key(
    value: Any, expected: str, needle: str
) -> None:
    with override_settings(EVENTBUS=value):
        messages = check_settings()
    assert ids(messages) == [expected]
    assert needle in messages[0].msg


def test_valid_settings_pass() -> None:
    with override_settings(EVENTBUS={"LEASE_SECONDS": 1, "RETRY_BACKOFF": 0.5}):
        assert check_settings() == []


def test_notify_on_a_database_that_is_not_postgresql_is_a_warning() -> None:
    sqlite = {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
    postgres = {"ENGINE": "django.db.backends.postgresql", "NAME": "x"}
    messages = notify_messages({"default": postgres, "local": sqlite}, ["default", "local"])
    assert ids(messages) == ["eventbus_app.W016"]
    assert "['local']" in messages[0].msg
    assert notify_messages({"default": postgres, "local": sqlite}, ["default"]) == []
    with override_settings(EVENTBUS={"NOTIFY": True}):  # reaches the registered check
        expected = [] if ON_POSTGRES else ["eventbus_app.W016"]
        assert ids(check_settings()) == expected


def test_a_bad_setting_fails_manage_py_check() -> None:
    from django.core.management.base import SystemCheckError

    with override_settings(EVENTBUS={"BATCH_SIZ": 5}), pytest.raises(SystemCheckError):
        call_command("check")


@pytest.mark.parametrize(
    ("q_cluster", "expected"),
    [
        ({"orm": "default", "timeout": 30, "retry": 60}, []),
        ({"orm": "default", "timeout": 60, "retry": 60}, ["eventbus_app.E011"]),
        ({"orm": "default", "retry": 60}, ["eventbus_app.W012"]),
        ({"orm": "default", "timeout": 30, "retry": 60, "sync": True}, ["eventbus_app.W011"]),
        ({"orm": "default", "timeout": 400, "retry": 900}, []),  # runs never outlive a lease
        ({"orm": "default", "timeout": 20, "retry": 60}, ["eventbus_app.W017"]),
        ({"orm": "default", "timeout": 5, "retry": 60}, ["eventbus_app.W014"]),
        ({"orm": "default", "timeout": 30, "retry": 60, "save_limit": 0}, ["eventbus_app.W015"]),
        ({"redis": {}, "timeout": 100, "retry": 60}, []),  # no ORM re-delivery with Redis
    ],
)
def test_dangerous_django_q_settings_are_flagged(q_cluster: Any, expected: list[str]) -> None:
    with override_settings(
        Q_CLUSTER=q_cluster, EVENTBUS={"LEASE_SECONDS": 300, "HANDLER_TIMEOUT": 10}
    ):
        assert ids(check_django_q()) == expected


def test_handler_timeouts_that_do_not_fit_are_flagged(register: Any) -> None:
    from eventbus_app.checks import check_handler_timeouts
    from tests.testapp.events import Work

    with override_settings(
        Q_CLUSTER={"orm": "default", "timeout": 60, "retry": 120},
        EVENTBUS={"LEASE_SECONDS": 300, "HANDLER_TIMEOUT": 10},
    ):
        assert check_handler_timeouts() == []
        assert ids(check_django_q()) == []

        @register(Work, name="t.long", timeout=55)
        def long_running(event: Work) -> None: ...

        # 60 s of django-q2 minus DISPATCH_SECONDS (10) minus 1 s: 55 s does not fit.
        [warning] = check_django_q()
        assert warning.id == "eventbus_app.W017" and "handler t.long" in warning.msg
    with override_settings(EVENTBUS={"LEASE_SECONDS": 20, "HANDLER_TIMEOUT": 30}):
        [warning] = check_handler_timeouts()
        assert warning.id == "eventbus_app.W013" and "handler t.long" in warning.msg


def test_missing_django_q_is_an_error(settings: Any) -> None:
    settings.INSTALLED_APPS = [a for a in settings.INSTALLED_APPS if a != "django_q"]
    assert ids(check_django_q()) == ["eventbus_app.E010"]


def test_sqlite_without_immediate_transactions_warns() -> None:
    db = {"ENGINE": "django.db.backends.sqlite3", "NAME": "x", "OPTIONS": {}}
    assert ids(sqlite_messages({"default": db}, ["default"])) == ["eventbus_app.W020"]
    db["OPTIONS"] = {"transaction_mode": "IMMEDIATE"}
    assert sqlite_messages({"default": db}, ["default"]) == []
    assert check_sqlite() == []  # the test settings follow the README


@pytest.mark.django_db
def test_migrations_are_up_to_date() -> None:
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


def test_readme_documents_every_setting_with_its_default() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for key, option in OPTIONS.items():
        assert f"| `{key}` |" in readme, f"README's settings table lacks {key}"
        row = readme.split(f"| `{key}` |")[1].split("\n")[0]
        default = option.default
        shown = (
            f"`{default!r}`".replace("'", '"') if not isinstance(default, bool) else f"`{default}`"
        )
        assert shown in row, f"README shows another default for {key}: {row}"


def test_a_database_the_outbox_can_be_written_to_but_the_sweep_skips_warns() -> None:
    # The test settings have "other", no router, and EVENTBUS['DATABASES'] = ("default",).
    [warning] = check_outbox_databases()
    assert warning.id == "eventbus_app.W021"
    assert "['other']" in warning.msg and "never dispatched" in warning.msg
    assert "EVENTBUS['DATABASES']" in warning.hint
    with override_settings(EVENTBUS={"DATABASES": ["default", "other"]}):
        assert check_outbox_databases() == []
    with override_settings(DATABASE_ROUTERS=["tests.testapp.routers.OutboxOnDefault"]):
        assert check_outbox_databases() == []


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [(26, []), (25, ["eventbus_app.W022"])],
)
def test_a_sweep_over_several_databases_must_fit_in_the_task_timeout(
    timeout: int, expected: list[str]
) -> None:
    # 2 databases x 10 s of DISPATCH_SECONDS + a 5 s handler timeout + 1 s = 26 s.
    with override_settings(
        Q_CLUSTER={"orm": "default", "timeout": timeout, "retry": 120},
        EVENTBUS={
            "DATABASES": ["default", "other"],
            "DISPATCH_SECONDS": 10,
            "HANDLER_TIMEOUT": 5,
        },
    ):
        messages = check_django_q()
    assert ids(messages) == expected
    if expected:
        assert "2 databases" in messages[0].msg and "26 s" in messages[0].msg
        assert "at least 26" in messages[0].hint
    with override_settings(
        Q_CLUSTER={"orm": "default", "timeout": 25, "retry": 120},
        EVENTBUS={"DISPATCH_SECONDS": 10, "HANDLER_TIMEOUT": 5},
    ):
        assert check_django_q() == []  # one database: W017's rule, which 25 s meets


def test_a_retention_that_is_not_an_age_fails_the_checks() -> None:
    with override_settings(EVENTBUS={"RETENTION": "thirty days"}):
        [error] = [m for m in check_settings() if m.id == "eventbus_app.E006"]
        assert "'thirty days' is not an age" in error.msg
    with override_settings(EVENTBUS={"RETENTION": "30d"}):
        assert check_settings() == []
