"""Misconfigured relays and sources fail with messages that say what to fix."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.checks import CheckMessage
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from eventbus_app.registry import get_handler
from eventbus_app.relay.backends import load_backend
from eventbus_app.relay.checks import check_relays_and_sources, entry_messages


def test_a_relay_is_an_ordered_handler_with_its_patterns(relays: Any) -> None:
    relays(
        relays={
            "r": {
                "BACKEND": "http",
                "URL": "http://x/",
                "EVENT_TYPES": ["shop.*"],
                "MAX_ATTEMPTS": 7,
                "HANDLER_TIMEOUT": 4,
            }
        }
    )
    spec = get_handler("relay:r")
    assert spec is not None
    assert (spec.ordered, spec.event_types, spec.max_attempts, spec.timeout) == (
        True,
        ("shop.*",),
        7,
        4,
    )


def _check_ids(messages: list[CheckMessage]) -> list[str]:
    return [m.id for m in messages]


@pytest.mark.parametrize(
    ("relay", "check_id", "message"),
    [
        ({"URL": "x"}, "E021", 'must be a dict with a "BACKEND"'),
        ({"BACKEND": "nosuch.backend"}, "E022", "cannot be imported"),
        ({"BACKEND": "eventbus_app.events"}, "E023", "has no Publisher class"),
        ({"BACKEND": "http", "URL": "http://x/", "EVENT_TYPES": "shop.*"}, "E024", "fnmatch"),
        ({"BACKEND": "http", "URL": "http://x/", "MAX_ATTEMPTS": 0}, "E025", "int >= 1"),
        ({"BACKEND": "http", "URL": "http://x/", "TIMEOUT": "10"}, "E025", "number of seconds"),
        ({"BACKEND": "http"}, "E026", "has no URL"),
        ({"BACKEND": ""}, "E022", "cannot be imported"),
        ({"BACKEND": ".x"}, "E022", "cannot be imported"),
        ({"BACKEND": "http", "URL": "http://x/", "BATCH_BYTES": "1k"}, "E025", "BATCH_BYTES"),
        ({"BACKEND": "http", "URL": "http://x/", "BATCHED": "yes"}, "E025", "True or False"),
    ],
)
def test_bad_relays_are_system_check_errors_and_not_installed(
    relays: Any, relay: dict[str, Any], check_id: str, message: str, caplog: Any
) -> None:
    relays(relays={"bad": relay})  # logs, does not raise: `manage.py check` says what to fix
    assert get_handler("relay:bad") is None
    assert "has errors and is not installed" in caplog.text
    errors = [m for m in check_relays_and_sources() if m.is_serious()]
    assert f"eventbus_app.{check_id}" in _check_ids(errors)
    found = next(m for m in errors if m.id == f"eventbus_app.{check_id}")
    assert message in found.msg
    assert "EVENTBUS[\"RELAYS\"]['bad']" in found.msg  # names the entry


def test_manage_py_check_fails_on_a_bad_relay(relays: Any) -> None:
    relays(relays={"bad": {"BACKEND": "http", "EVENT_TYPES": "shop.*"}})
    with pytest.raises(SystemCheckError, match=r"eventbus_app\.E024"):
        call_command("check")


@pytest.mark.parametrize(
    ("kind", "entry", "check_id", "message"),
    [
        ("RELAYS", {"BACKEND": "http", "URL": "http://x/", "SECRT": "s"}, "W031", "'SECRT'"),
        ("RELAYS", {"BACKEND": "http", "URL": "http://x/"}, "W030", "no SECRET"),
        (
            "RELAYS",
            {"BACKEND": "http", "URL": "http://x/", "SECRET": "s", "EVENT_TYPES": ["shp.*"]},
            "W032",
            "'shp.*' matches no event type",
        ),
        ("RELAYS", {"BACKEND": "redis", "EVENT_TYPES": []}, "W032", "publishes nothing"),
        ("RELAYS", {"BACKEND": "redis", "TIMEOUT": 10, "HANDLER_TIMEOUT": 10}, "W033", "no room"),
        ("SOURCES", {"BACKEND": "http"}, "E027", "no SECRET"),
        ("SOURCES", {"BACKEND": "http", "SECRET": "s", "DATABASE": "nope"}, "E028", "'nope'"),
        ("SOURCES", {"BACKEND": "redis", "GROPU": "g"}, "W031", "'GROPU'"),
    ],
)
def test_suspicious_entries_are_named(
    kind: str, entry: dict[str, Any], check_id: str, message: str
) -> None:
    found = [m for m in entry_messages(kind, "x", entry) if m.id == f"eventbus_app.{check_id}"]
    assert found, entry_messages(kind, "x", entry)
    assert message in found[0].msg


def test_good_relays_and_sources_pass_the_checks(relays: Any) -> None:
    relays(
        relays={
            "billing": {
                "BACKEND": "http",
                "URL": "http://127.0.0.1:1/eventbus/shop/",
                "SECRET": "s",
                "EVENT_TYPES": ["testapp.*"],
                "MAX_ATTEMPTS": 3,
                "TIMEOUT": 2,
            },
            "bus": {
                "BACKEND": "redis",
                "URL": "redis://127.0.0.1:1/0",
                "STREAM": "s",
                "TIMEOUT": 2,
            },
        },
        sources={"shop": {"BACKEND": "http", "SECRET": "s", "REPLAY_WINDOW": 60}},
    )
    assert check_relays_and_sources() == []
    assert get_handler("relay:billing") is not None


def test_a_relay_removed_from_the_setting_is_uninstalled(relays: Any) -> None:
    relays(relays={"gone": {"BACKEND": "http", "URL": "http://x/", "SECRET": "s"}})
    assert get_handler("relay:gone") is not None
    relays(relays={})
    assert get_handler("relay:gone") is None


def test_an_unknown_backend_names_the_choices() -> None:
    with pytest.raises(ImproperlyConfigured, match="rabbitmq, nats, redis, http"):
        load_backend("nosuch.module.anywhere")
