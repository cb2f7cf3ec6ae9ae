from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
ON_POSTGRES = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_pg = pytest.mark.skip(
        reason="needs PostgreSQL: run with EVENTBUS_TEST_DB=postgres (server on 127.0.0.1:5432)"
    )
    for item in items:
        if "postgres" in item.keywords and not ON_POSTGRES:
            item.add_marker(skip_pg)


@pytest.fixture
def redis_server() -> None:
    """Skip (with the reason) where no Redis listens on 127.0.0.1:6379: the README's test
    command needs only Python."""
    import redis

    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping()
    except redis.ConnectionError:
        pytest.skip("needs Redis on 127.0.0.1:6379 (.ci/run starts one)")


@pytest.fixture
def worker_env(transactional_db: None) -> dict[str, str]:
    """Environment for a subprocess that must see this test's (committed) database."""
    from django.db import connection

    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        EVENTBUS_DB_NAME=str(connection.settings_dict["NAME"]),
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def manage(worker_env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``django-admin <args>`` against the test database in a new process."""

    def run(*args: str, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "django", *args],
            env=worker_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )

    return run


@pytest.fixture
def spawn(worker_env: dict[str, str]) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start long-running ``django-admin`` processes (qcluster, drain); killed at teardown."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "django", *args],
            env=kwargs.pop("env", worker_env),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # so a kill reaches the whole qcluster process group
            **kwargs,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
        proc.wait(timeout=30)
        if proc.stdout:
            proc.stdout.close()


@pytest.fixture
def register() -> Iterator[Callable[..., Callable[[Callable[..., Any]], Any]]]:
    """``@register(EventCls, name=...)``: a handler that exists for this test only."""
    from eventbus_app.registry import handler, unregister

    names: list[str] = []

    def decorator(event_cls: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
        def wrap(func: Callable[..., Any]) -> Any:
            kwargs.setdefault("name", f"test.{func.__name__}")
            names.append(kwargs["name"])
            return handler(event_cls, **kwargs)(func)

        return wrap

    yield decorator
    for name in names:
        unregister(name)


@pytest.fixture(autouse=True)
def _isolated_registries() -> Iterator[None]:
    """Event classes and handlers declared inside a test vanish after it."""
    from eventbus_app import events, registry
    from eventbus_app.dispatch import fleet

    types, handlers = dict(events._types), dict(registry._handlers)
    fleet.forget()
    yield
    fleet.forget()
    events._types.clear()
    events._types.update(types)
    registry._handlers.clear()
    registry._handlers.update(handlers)
