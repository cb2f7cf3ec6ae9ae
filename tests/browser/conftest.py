"""Real Chromium (Debian's /usr/bin/chromium) driven by Playwright's sync API.

Playwright's sync API keeps an asyncio loop running in this thread while a browser is open,
and Django refuses ORM calls from a thread with a running loop. So the tests prepare their
data first, then open the browser with ``with browser() as page:``, and check results through
the pages (or after the browser is closed) -- no DJANGO_ALLOW_ASYNC_UNSAFE needed.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    skip = pytest.mark.skip(reason=f"needs Chromium at {CHROMIUM} (apt-get install chromium)")
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.browser)
            if not os.path.exists(CHROMIUM):
                item.add_marker(skip)


@pytest.fixture
def browser(live_server: Any) -> Iterator[Callable[..., contextlib.AbstractContextManager[Any]]]:
    """``with browser() as page:`` a fresh Chromium page whose base URL is the live server."""

    @contextlib.contextmanager
    def open_page(**context_options: Any) -> Iterator[Any]:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            chromium = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                context = chromium.new_context(
                    base_url=live_server.url,
                    viewport={"width": 1440, "height": 900},
                    **context_options,
                )
                context.set_default_timeout(20_000)
                # The admin's navigation sidebar closed: wider tables, tidier screenshots.
                context.add_init_script(
                    "window.localStorage.setItem('django.admin.navSidebarIsOpen', 'false')"
                )
                yield context.new_page()
                context.close()
            finally:
                chromium.close()

    yield open_page


def login(page: Any, username: str, password: str) -> None:
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_selector("#user-tools")


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot: into docs/screenshots/ when ``EVENTBUS_SCREENSHOTS=1``
    (to refresh the committed ones), else into a temporary folder (a test run leaves the
    work tree clean)."""
    if os.environ.get("EVENTBUS_SCREENSHOTS") == "1":
        folder = DOCS_SCREENSHOTS
    else:
        folder = Path(tempfile.gettempdir()) / f"eventbus-screenshots-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000, f"{path} looks empty"
    return path
