"""The demo's two services, run for real by ``manage.py demo``: the shop and billing (its
own SQLite database, web server and cluster) as separate processes. A sign-up and an order
placed through the shop's pages reach billing's database exactly once, with the shop's uuid
and ``source="shop"``, and billing's handlers write its accounts and ledger; over http (no
broker) and over Redis. Ctrl-C stops every process.

The demo runs on its own SQLite files (in a temporary folder) whatever the suite's database:
these tests touch no test database, and run the same under ``EVENTBUS_TEST_DB=postgres``.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from demo_project.bus import EVENT_TYPES

from .conftest import ON_POSTGRES
from .relay.conftest import need_broker, unique_options
from .test_demo import _descendants, _free_port, _is_running

ROOT = Path(__file__).resolve().parent.parent
BILLING_HANDLERS = {
    "accounts.UserRegistered": "billing.open_account",
    "orders.OrderPlaced": "billing.charge_order",
    "orders.RefundIssued": "billing.record_refund",
}
SEEDED_RELAYED = 6  # 4 sign-ups and 2 orders (demo_project/demo/seed.py)

pytestmark = pytest.mark.subprocess
# The demo's processes use SQLite files of their own whatever EVENTBUS_TEST_DB says: a
# PostgreSQL run would repeat the SQLite run's tests exactly, at a minute and a half.
own_sqlite = pytest.mark.skipif(
    ON_POSTGRES, reason="the demo runs on its own SQLite files: the SQLite run covers it"
)


class Demo:
    """One ``manage.py demo`` process with its two databases, in a temporary folder."""

    def __init__(self, tmp_path: Path, *args: str, **env: str) -> None:
        self.shop_port, self.billing_port = _free_port(), _free_port()
        self.shop_db, self.billing_db = tmp_path / "shop.sqlite3", tmp_path / "billing.sqlite3"
        self.log = tmp_path / "demo.log"
        self.env = dict(os.environ)
        self.env.update(
            DJANGO_SETTINGS_MODULE="demo_project.settings",
            DEMO_DB=str(self.shop_db),
            DEMO_BILLING_DB=str(self.billing_db),
            DEMO_MAIL_DIR=str(tmp_path / "mail"),
            PYTHONPATH=str(ROOT) + os.pathsep + self.env.get("PYTHONPATH", ""),
            PYTHONUNBUFFERED="1",
            **env,
        )
        self.argv = [
            sys.executable,
            "manage.py",
            "demo",
            "--port",
            str(self.shop_port),
            "--billing-port",
            str(self.billing_port),
            *args,
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.children: set[int] = set()
        self.cookies = http.cookiejar.CookieJar()
        self.browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 120) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the demo exited:\n{self.output()}"
            with contextlib.suppress(OSError, sqlite3.Error):
                if check():
                    return
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}:\n{self.output()[-4000:]}")

    def query(self, db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        # Read-only, beside the demo's writers (WAL).
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            return conn.execute(sql, params).fetchall()

    def get(self, port: int, path: str) -> str:
        with self.browser.open(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return str(response.read().decode())

    def post_form(
        self, path: str, data: dict[str, str], port: int | None = None, page: str = ""
    ) -> str:
        """Submit the form at ``path`` (the shop's, or ``port``'s) as a browser would, from
        the page it is on (``page``, by default ``path`` itself)."""
        url = f"http://127.0.0.1:{port or self.shop_port}{path}"
        page = self.get(port or self.shop_port, page or path)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert token, page[:2000]
        body = urllib.parse.urlencode({**data, "csrfmiddlewaretoken": token[1]}).encode()
        request = urllib.request.Request(url, data=body, headers={"Referer": url})
        with self.browser.open(request, timeout=10) as response:  # follows the redirect
            return str(response.geturl())

    def stop(self) -> None:
        """Ctrl-C: the command stops every process it started, and exits 0."""
        assert self.proc is not None
        self.children = _descendants(self.proc.pid)
        assert len(self.children) >= 4, self.children  # both services' servers and clusters
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=90)
        assert self.proc.returncode == 0, self.output()
        assert "Demo stopped." in self.output()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_is_running(p) for p in self.children):
            time.sleep(0.2)
        alive = [p for p in self.children if _is_running(p)]
        assert not alive, f"orphans left behind: {alive}"
        self.children = set()  # all gone: kill() must not touch their (reusable) pids

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.children |= _descendants(self.proc.pid)
            self.proc.kill()
            self.proc.wait(timeout=30)
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Callable[..., Demo]]:
    started: list[Demo] = []

    def start(*args: str, **env: str) -> Demo:
        run = Demo(tmp_path, *args, **env)
        started.append(run)
        run.start()
        return run

    yield start
    for run in started:
        run.kill()


def _relayed(run: Demo) -> dict[str, tuple[str, str]]:
    """The shop's events that go to billing: uuid (hex) → (event type, payload)."""
    marks = ",".join("?" * len(EVENT_TYPES))
    rows = run.query(
        run.shop_db,
        f"SELECT uuid, event_type, payload FROM eventbus_app_outboxevent "
        f"WHERE event_type IN ({marks})",
        *EVENT_TYPES,
    )
    return {u: (t, p) for u, t, p in rows}


def _billing_done(run: Demo, count: int) -> bool:
    """Billing stored ``count`` events from the shop and its handlers all succeeded."""
    received = run.query(
        run.billing_db, "SELECT count(*) FROM eventbus_app_outboxevent WHERE source = 'shop'"
    )[0][0]
    unsettled = run.query(
        run.billing_db,
        "SELECT count(*) FROM eventbus_app_delivery WHERE status <> 'succeeded'",
    )[0][0]
    delivered = run.query(run.billing_db, "SELECT count(*) FROM eventbus_app_delivery")[0][0]
    return received >= count and delivered >= count and unsettled == 0


def _exercise(run: Demo) -> None:
    """Wait for the seeded events in billing, then sign up and order through the shop's
    pages and check what billing's own database holds."""
    run.wait_for("the shop's page", lambda: "relay:billing" in run.get(run.shop_port, "/"))
    run.wait_for("billing's page", lambda: "billing" in run.get(run.billing_port, "/"))
    run.wait_for("the seeded events in billing", lambda: _billing_done(run, SEEDED_RELAYED))

    profile = run.post_form(
        "/accounts/signup/",
        {"username": "zoe", "name": "Zoe Adams", "email": "zoe@example.com", "password": "pw-1"},
    )
    assert "/accounts/users/" in profile
    order_page = run.post_form("/orders/", {"product": "Milk frother", "quantity": "2"})
    order_path = urllib.parse.urlsplit(order_page).path
    order_id = uuid.UUID(order_path.rstrip("/").rsplit("/", 1)[1])
    run.post_form(f"{order_path}refund/", {}, page=order_path)  # RefundIssued, 5.00 EUR
    run.wait_for("zoe's events in billing", lambda: _billing_done(run, SEEDED_RELAYED + 3))

    sent = _relayed(run)
    assert len(sent) == SEEDED_RELAYED + 3
    received = run.query(
        run.billing_db,
        "SELECT e.uuid, e.event_type, e.source, d.handler, d.status "
        "FROM eventbus_app_outboxevent e JOIN eventbus_app_delivery d ON d.event_id = e.id",
    )
    # Exactly once: one row per shop event (same uuid, type), one delivery of its handler.
    assert sorted(r[0] for r in received) == sorted(sent)
    for event_uuid, event_type, source, handler, status in received:
        assert (event_type, source) == (sent[event_uuid][0], "shop")
        assert (handler, status) == (BILLING_HANDLERS[event_type], "succeeded")
    relay = run.query(
        run.shop_db,
        "SELECT status, count(*) FROM eventbus_app_delivery WHERE handler = 'relay:billing' "
        "GROUP BY status",
    )
    assert relay == [("succeeded", len(sent))]

    # Billing's handlers wrote its own tables, keyed by the shop's uuids.
    [registered] = [
        u for u, (t, p) in sent.items() if t == "accounts.UserRegistered" and "zoe@" in p
    ]
    [placed] = [u for u, (t, p) in sent.items() if t == "orders.OrderPlaced" and str(order_id) in p]
    account = run.query(
        run.billing_db,
        "SELECT name, event_uuid FROM billing_account WHERE email = ?",
        "zoe@example.com",
    )
    assert account == [("Zoe Adams", registered)]
    [refunded] = [u for u, (t, p) in sent.items() if t == "orders.RefundIssued"]
    ledger = run.query(
        run.billing_db,
        # By kind, not arrival: events without a stream are not ordered across the relay
        # (a refund may arrive first); billing's handlers do not depend on it.
        "SELECT kind, amount, event_uuid FROM billing_ledgerline WHERE order_id = ? ORDER BY kind",
        order_id.hex,
    )
    assert [(k, Decimal(str(a)), u) for k, a, u in ledger] == [
        ("charge", Decimal("79.80"), placed),
        ("refund", Decimal("-5.00"), refunded),
    ]
    assert run.query(run.billing_db, "SELECT count(*) FROM billing_account")[0][0] == 5

    # Billing's page shows what it received: the shop's uuid, type, source, outcome.
    page = run.get(run.billing_port, "/")
    assert f'data-uuid="{uuid.UUID(registered)}"' in page
    assert f'data-uuid="{uuid.UUID(placed)}"' in page
    assert "billing.charge_order" in page and 'class="pill succeeded"' in page
    # Its own admin (same login, its own session cookie), with the eventbus console: the
    # received event's page shows the shop's uuid and the source.
    landed = run.post_form(
        "/admin/login/?next=/admin/",
        {"username": "admin", "password": "eventbus-demo"},
        port=run.billing_port,
    )
    assert landed.endswith("/admin/"), landed
    [(pk,)] = run.query(
        run.billing_db, "SELECT id FROM eventbus_app_outboxevent WHERE uuid = ?", placed
    )
    event_page = run.get(run.billing_port, f"/admin/eventbus_app/outboxevent/{pk}/change/")
    assert str(uuid.UUID(placed)) in event_page and "shop" in event_page
    assert "billing.charge_order" in event_page
    for console in ("outboxevent/overview/", "deadletter/", "delivery/"):
        assert "Log in" not in run.get(run.billing_port, f"/admin/eventbus_app/{console}")


@own_sqlite
def test_demo_runs_billing_over_http(demo: Callable[..., Demo]) -> None:
    run = demo()
    _exercise(run)
    out = run.output()
    assert "Billing is up: relay:billing resumed" in out
    assert f"Billing:       http://127.0.0.1:{run.billing_port}/" in out
    assert "POST /eventbus/shop/" in out  # the http source view received them
    run.stop()  # (on a failure above, the fixture kills what is left)


def _drop_broker_names(kind: str, name: str) -> None:
    """Delete what the demo declared under this test's names on the shared broker."""
    url = unique_options(kind)["URL"]
    if kind == "redis":
        import redis

        redis.Redis.from_url(url).delete(name)
    elif kind == "rabbitmq":
        import pika

        with contextlib.closing(pika.BlockingConnection(pika.URLParameters(url))) as conn:
            channel = conn.channel()
            channel.queue_delete(f"{name}.billing")
            channel.exchange_delete(name)
    else:
        import asyncio

        import nats

        async def drop() -> None:
            client = await nats.connect(url)
            try:
                await client.jetstream().delete_stream(name.upper())
            finally:
                await client.close()

        asyncio.run(drop())


@own_sqlite
@pytest.mark.parametrize("kind", ["redis", "rabbitmq", "nats"])
def test_demo_runs_billing_over_a_broker(kind: str, demo: Callable[..., Demo]) -> None:
    need_broker(kind)
    name = f"eventbus_demo_{os.environ.get('EVENTBUS_TEST_SUFFIX', 'main')}_{uuid.uuid4().hex[:8]}"
    run = demo("--broker", kind, DEMO_BROKER_NAME=name)
    try:
        _exercise(run)
        out = run.output()
        assert f"over {kind} at {unique_options(kind)['URL']}" in out
        assert "POST /eventbus/shop/" not in out  # the consumer received them, not the view
        assert run.proc is not None
        commands = [Path(f"/proc/{p}/cmdline").read_bytes() for p in _descendants(run.proc.pid)]
        assert any(b"eventbus_consume" in c for c in commands)  # billing's broker consumer
        run.stop()
    finally:
        run.kill()
        _drop_broker_names(kind, name)


@own_sqlite
def test_demo_fails_fast_naming_an_unreachable_broker(tmp_path: Path) -> None:
    need_broker("redis")  # its client: the check is of the broker, not of the import
    run = Demo(tmp_path, "--broker", "redis", DEMO_BROKER_URL="redis://127.0.0.1:1/0")
    result = subprocess.run(
        run.argv, cwd=ROOT, env=run.env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "No redis broker answers at redis://127.0.0.1:1/0" in result.stderr
    assert not run.shop_db.exists() and not run.billing_db.exists()  # nothing was set up


@own_sqlite
def test_demo_no_serve_sets_up_billing_and_holds_the_relay(tmp_path: Path) -> None:
    run = Demo(tmp_path, "--no-serve")
    result = subprocess.run(
        run.argv, cwd=ROOT, env=run.env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "relay:billing waits (paused)" in result.stdout
    # Billing's database is migrated with its admin; the seeded events wait in the shop.
    assert run.query(run.billing_db, "SELECT username FROM auth_user") == [("admin",)]
    assert run.query(run.billing_db, "SELECT count(*) FROM billing_account") == [(0,)]
    pending = run.query(
        run.shop_db,
        "SELECT status, count(*) FROM eventbus_app_delivery WHERE handler = 'relay:billing' "
        "GROUP BY status",
    )
    assert pending == [("pending", SEEDED_RELAYED)]


def _billing_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="demo_project.billing_settings",
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    env.update(extra)
    return env


def _django(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("kind", ["http", "rabbitmq", "nats", "redis"])
def test_both_services_settings_pass_the_checks(kind: str) -> None:
    """The relay and the source bus.py makes for each transport: no warning on either side."""
    for module in ("demo_project.settings", "demo_project.billing_settings"):
        env = _billing_env(DJANGO_SETTINGS_MODULE=module, DEMO_BROKER=kind)
        result = _django(env, "check", "--fail-level", "WARNING")
        assert result.returncode == 0, f"{module}: {result.stdout}{result.stderr}"


def test_billing_migrations_are_complete() -> None:
    """Billing is a project of its own (its app cannot share a process with the shop's
    classes of the same event types): its models are checked under its own settings."""
    result = _django(_billing_env(), "makemigrations", "--check", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No changes detected" in result.stdout
