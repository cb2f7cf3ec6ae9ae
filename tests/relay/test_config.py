"""Misconfigured relays and sources fail with messages that say what to fix."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from eventbus_app.registry import get_handler
from eventbus_app.relay.backends import load_backend


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


@pytest.mark.parametrize(
    ("relay", "message"),
    [
        ({"URL": "x"}, 'must be a dict with a "BACKEND"'),
        ({"BACKEND": "http", "EVENT_TYPES": "shop.*"}, "list of fnmatch patterns"),
    ],
)
def test_bad_relays_are_refused(relays: Any, relay: dict[str, Any], message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        relays(relays={"bad": relay})


def test_an_unknown_backend_names_the_choices() -> None:
    with pytest.raises(ImproperlyConfigured, match="rabbitmq, nats, redis, http"):
        load_backend("nosuch.module.anywhere")
