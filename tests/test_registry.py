"""Mistakes in registering handlers fail at decoration, naming the fix."""

from __future__ import annotations

from typing import Any

import pytest

from eventbus_app import HandlerRegistrationError, handler
from eventbus_app.registry import get_handler, unregister
from tests.testapp.events import Work


def test_bare_handler_decorator_names_the_fix() -> None:
    with pytest.raises(HandlerRegistrationError) as err:

        @handler  # type: ignore[arg-type]
        def forgot_the_event(event: Work) -> None: ...

    message = str(err.value)
    assert "forgot_the_event" in message
    assert "use @handler(EventClass)" in message


def test_a_handler_that_cannot_take_the_event_is_refused_at_decoration() -> None:
    with pytest.raises(HandlerRegistrationError) as err:

        @handler(Work, name="test.no_argument")
        def no_argument() -> None: ...

    message = str(err.value)
    assert "no_argument()" in message
    assert "def no_argument(event: Work) -> None" in message
    assert get_handler("test.no_argument") is None

    with pytest.raises(HandlerRegistrationError, match="one argument"):

        @handler(Work, name="test.two_arguments")
        async def two_arguments(event: Work, extra: int) -> None: ...

    with pytest.raises(HandlerRegistrationError, match="one argument"):

        @handler(Work, name="test.keyword_only")
        def keyword_only(*, event: Work) -> None: ...


@pytest.mark.parametrize(
    "signature",
    [
        "def h(event): ...",
        "def h(event, extra=1): ...",
        "def h(*args): ...",
        "def h(event, **kwargs): ...",
        "async def h(event): ...",
    ],
)
def test_functions_that_take_one_argument_register(signature: str) -> None:
    namespace: dict[str, Any] = {}
    exec(signature, namespace)
    try:
        handler(Work, name="test.takes_one")(namespace["h"])
        assert get_handler("test.takes_one") is not None
    finally:
        unregister("test.takes_one")
