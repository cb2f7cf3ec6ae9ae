"""The pytest plugin, installed with the package (the ``pytest11`` entry point ``eventbus``).

It gives the fixture ``eventbus``::

    def test_sign_up(eventbus):
        register_user(...)
        eventbus.assert_emitted(UserRegistered, email="ada@example.com")
        eventbus.drain()

Loaded before Django is set up, so nothing here imports Django at module level.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .recorder import EventBusRecorder


@pytest.fixture
def eventbus(request: pytest.FixtureRequest) -> Iterator[EventBusRecorder]:
    """Events emitted during the test (``emitted``, ``assert_emitted``,
    ``assert_not_emitted``) and ``drain()``. It uses the test's database as the test asked
    for it (``db``, ``transactional_db``, ``django_db(transaction=True)``), and ``db`` if it
    asked for none."""
    request.getfixturevalue("db")  # a no-op when the test already has its database
    from .recorder import EventBusRecorder

    with EventBusRecorder() as recorder:
        yield recorder
