"""The demo project: its pages, its handlers, the event-sourced history, ``manage.py demo``."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from demo_project.accounts.models import PaymentCustomer, SignupStat
from demo_project.accounts.services import (
    UserProfile,
    change_email,
    rebuild_user,
    register_user,
    rename_user,
    user_history,
)
from demo_project.demo import fakes
from demo_project.demo.models import FakeService
from demo_project.orders.models import Invoice, Order
from eventbus_app import operations
from eventbus_app.dispatch import run
from eventbus_app.models import DeadLetter, Delivery, OutboxEvent

ROOT = Path(__file__).resolve().parent.parent
SIGNUP_HANDLERS = {
    "accounts.send_welcome_email",
    "accounts.create_payment_customer",
    "accounts.record_signup",
    "accounts.notify_team_chat",
}

pytestmark = pytest.mark.django_db


def _signup(client: Client, username: str = "zoe", **extra: str) -> User:
    data = {"username": username, "name": "Zoe Adams", "email": f"{username}@example.com"}
    data.update(extra, password="secret-pw")
    response = client.post(reverse("accounts:signup"), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    return User.objects.get(username=username)


def test_pages_render(client: Client) -> None:
    for name in ("demo:home", "accounts:signup", "demo:mailbox", "login"):
        assert client.get(reverse(name)).status_code == 200, name
    assert client.get(reverse("orders:order_create")).status_code == 302  # login first


def test_signup_commits_user_and_events_then_four_side_effects(client: Client) -> None:
    user = _signup(client)
    registered = OutboxEvent.objects.get(event_type="accounts.UserRegistered")
    created = OutboxEvent.objects.get(event_type="accounts.UserCreated")
    assert registered.payload["user_id"] == created.payload["user_id"] == user.pk
    assert not Delivery.objects.exists()  # nothing ran in the request

    run()

    deliveries = {d.handler: d.status for d in registered.deliveries.all()}
    assert deliveries == dict.fromkeys(SIGNUP_HANDLERS, Delivery.Status.SUCCEEDED)
    assert [m.to for m in mail.outbox] == [["zoe@example.com"]]
    assert mail.outbox[0].subject == "Welcome, Zoe Adams!"
    assert PaymentCustomer.objects.get(user=user).provider_id.startswith("cus_")
    assert SignupStat.objects.filter(user=user, event_id=registered.pk).count() == 1

    page = client.get(reverse("accounts:profile", args=[user.pk])).content.decode()
    assert "Matches the user row" in page
    for handler in SIGNUP_HANDLERS:
        assert handler in page


def test_signup_form_rejects_a_taken_username(client: Client) -> None:
    _signup(client, "zoe")
    response = client.post(
        reverse("accounts:signup"),
        {"username": "zoe", "name": "Z", "email": "z@example.com", "password": "secret-pw"},
    )
    assert response.status_code == 200
    assert "That username is taken." in response.content.decode()
    assert OutboxEvent.objects.filter(event_type="accounts.UserRegistered").count() == 1


def test_chat_down_makes_a_dead_letter_that_a_retry_delivers() -> None:
    fakes.set_mode(fakes.CHAT, FakeService.Mode.DOWN)
    register_user(username="yan", name="Yan", email="yan@example.com", password="pw")
    run()
    dead = DeadLetter.objects.get()
    assert dead.handler == "accounts.notify_team_chat"
    assert dead.attempts == 3  # the handler's own max_attempts
    assert "503 Service Unavailable" in dead.last_error
    others = Delivery.objects.exclude(pk=dead.pk)
    assert set(others.values_list("status", flat=True)) == {Delivery.Status.SUCCEEDED}

    fakes.set_mode(fakes.CHAT, FakeService.Mode.UP)
    assert operations.retry_deliveries([dead.pk], actor="test") == 1
    run()
    dead.refresh_from_db()
    assert dead.status == Delivery.Status.SUCCEEDED
    assert not DeadLetter.objects.exists()


def test_flaky_payment_provider_succeeds_on_the_second_attempt() -> None:
    fakes.set_mode(fakes.PAYMENTS, FakeService.Mode.FLAKY)
    user = register_user(username="xia", name="Xia", email="xia@example.com", password="pw")
    run()  # tests run with RETRY_BACKOFF = 0: the retry is due at once
    payment = Delivery.objects.get(handler="accounts.create_payment_customer")
    assert (payment.status, payment.attempts) == (Delivery.Status.SUCCEEDED, 2)
    failed = list(payment.history.values_list("error_class", flat=True))
    assert any("ServiceTimeout" in (e or "") for e in failed), failed
    assert PaymentCustomer.objects.filter(user=user).exists()


def test_order_creates_an_invoice_through_a_causal_chain(client: Client) -> None:
    user = _signup(client)
    response = client.post(
        reverse("orders:order_create"), {"product": "Milk frother", "quantity": "2"}
    )
    order = Order.objects.get(customer=user)
    assert response.status_code == 302
    assert response["Location"] == reverse("orders:order", args=[order.pk])
    assert order.total == Decimal("79.80")

    run()

    invoice = Invoice.objects.get(order=order)
    assert invoice.total == Decimal("79.80")
    assert "INVOICE " + invoice.number in invoice.document
    assert "79.80 EUR" in invoice.document
    placed = OutboxEvent.objects.get(event_type="orders.OrderPlaced")
    created = OutboxEvent.objects.get(event_type="orders.InvoiceCreated")
    assert created.causation_id == placed.pk
    assert created.correlation_id == placed.correlation_id
    assert set(
        Delivery.objects.filter(event__in=[placed, created]).values_list("status", flat=True)
    ) == {Delivery.Status.SUCCEEDED}
    page = client.get(reverse("orders:order", args=[order.pk])).content.decode()
    assert "orders.InvoiceCreated" in page and f"caused by #{placed.pk}" in page
    assert invoice.number in page


def test_profile_history_is_rebuilt_by_replaying_the_stream() -> None:
    user = register_user(username="wes", name="Wes", email="wes@example.com", password="pw")
    other = register_user(username="ola", name="Ola", email="ola@example.com", password="pw")
    rename_user(user, "Wesley")
    change_email(user, "wesley@example.com")
    rename_user(other, "Olamide")
    rename_user(user, "Wes Brown")

    state = rebuild_user(user.pk)
    assert isinstance(state, UserProfile)  # the library's Aggregate, no hand-written fold
    assert (state.username, state.name, state.email) == ("wes", "Wes Brown", "wesley@example.com")
    assert (state.version, state.stream) == (4, f"user-{user.pk}")
    history = user_history(user.pk)
    assert [h["type"] for h in history] == [
        "UserCreated",
        "UserRenamed",
        "UserEmailChanged",
        "UserRenamed",
    ]
    assert history[1]["changes"] == {"name": ("Wes", "Wesley")}
    assert history[3]["changes"] == {"name": ("Wesley", "Wes Brown")}
    # Time travel: the profile as it was at version 2.
    then = rebuild_user(user.pk, version=2)
    assert (then.name, then.email) == ("Wesley", "wes@example.com")
    # The state comes from the events, not from the row: change the row behind its back.
    User.objects.filter(pk=user.pk).update(first_name="tampered")
    assert rebuild_user(user.pk).name == "Wes Brown"
    assert rebuild_user(other.pk).name == "Olamide"


def test_the_profile_page_shows_the_state_as_of_a_version(client: Client) -> None:
    user = _signup(client, "tia")
    url = reverse("accounts:profile", args=[user.pk])
    client.post(url, {"name": "Tia Two", "email": "tia@example.com"})
    page = client.get(url + "?version=1").content.decode()
    assert 'id="as-of"' in page and "As of version 1" in page
    assert "?version=2" in page  # each history row links its moment


def test_profile_form_appends_events(client: Client) -> None:
    user = _signup(client, "vic")
    url = reverse("accounts:profile", args=[user.pk])
    response = client.post(url, {"name": "Victoria", "email": "victoria@example.com"})
    assert response.status_code == 302
    page = client.get(url).content.decode()
    assert "UserRenamed" in page and "UserEmailChanged" in page
    assert "Matches the user row" in page
    assert rebuild_user(user.pk).version == 3
    # Someone else cannot edit it.
    client.logout()
    assert client.post(url, {"name": "Mallory", "email": "m@example.com"}).status_code == 403
    assert rebuild_user(user.pk).name == "Victoria"


def test_service_switches_on_the_home_page(client: Client) -> None:
    response = client.post(reverse("demo:set_service"), {"name": "chat", "mode": "down"})
    assert response.status_code == 302
    assert fakes.mode(fakes.CHAT) == FakeService.Mode.DOWN
    client.post(reverse("demo:set_service"), {"name": "chat", "mode": "bogus"})
    assert fakes.mode(fakes.CHAT) == FakeService.Mode.DOWN


def test_demo_command_sets_up_and_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    call_command("demo", no_serve=True, admin_password="pw-for-test")
    out = capsys.readouterr().out
    assert "username 'admin', password 'pw-for-test'" in out
    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff and admin.check_password("pw-for-test")
    assert User.objects.filter(is_staff=False).count() == 4

    # A dead letter: every chat notification (the webhook is down).
    assert DeadLetter.objects.filter(handler="accounts.notify_team_chat").count() >= 3
    # A flaky retry: payment customers failed once, then succeeded.
    flaky = Delivery.objects.filter(
        handler="accounts.create_payment_customer", status=Delivery.Status.SUCCEEDED, attempts=2
    )
    assert flaky.count() >= 3
    # Orders were placed and their invoices rendered through the chain.
    assert Invoice.objects.exclude(document="").count() == 2
    assert rebuild_user(User.objects.get(username="alice").pk).email == "alice.md@example.com"

    call_command("demo", no_serve=True)  # a second run keeps the data
    assert "already there" in capsys.readouterr().out
    assert User.objects.filter(is_staff=False).count() == 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _descendants(pid: int) -> set[int]:
    """Every live process whose parent chain or process group leads to ``pid``."""
    parents: dict[int, int] = {}
    groups: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        parents[int(entry)], groups[int(entry)] = int(fields[1]), int(fields[2])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        children = {p for p, parent in parents.items() if parent in frontier} - found
        found |= children
        frontier = children
    found |= {p for p, group in groups.items() if group in found}
    return found


@pytest.mark.subprocess
def test_demo_command_serves_until_ctrl_c(tmp_path: Path) -> None:
    port = _free_port()
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="demo_project.settings",
        DEMO_DB=str(tmp_path / "demo.sqlite3"),
        DEMO_BILLING_DB=str(tmp_path / "billing.sqlite3"),
        DEMO_MAIL_DIR=str(tmp_path / "mail"),
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        PYTHONUNBUFFERED="1",
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "demo",
            "--port",
            str(port),
            "--billing-port",
            str(_free_port()),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp,
            ):
                status = resp.status
                break
            time.sleep(0.5)
        assert status == 200, "the demo's web server never answered"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/login/", timeout=5) as resp:
            assert resp.status == 200
        # Both children run: the web server and the cluster (with its workers).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            children = _descendants(proc.pid)
            cmdlines = [Path(f"/proc/{p}/cmdline").read_bytes() for p in children]
            if any(b"qcluster" in c for c in cmdlines) and any(b"runserver" in c for c in cmdlines):
                break
            time.sleep(0.3)
        assert len(children) >= 3, children

        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the command
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "Demo superuser: username 'admin'" in out
        assert "Demo stopped." in out
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in children):
            time.sleep(0.2)
        alive = [p for p in children if Path(f"/proc/{p}").exists() and _is_running(p)]
        assert not alive, f"orphans left behind: {alive}"
        children = set()  # all gone: nothing for the clean-up below to touch
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
        for pid in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.subprocess
def test_demo_command_refuses_a_busy_port(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="demo_project.settings",
        DEMO_DB=str(tmp_path / "demo.sqlite3"),
        DEMO_BILLING_DB=str(tmp_path / "billing.sqlite3"),
        DEMO_MAIL_DIR=str(tmp_path / "mail"),
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "manage.py", "demo", "--port", str(port)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert f"Port {port} on 127.0.0.1 is not free" in result.stderr
    assert "--port" in result.stderr


def _is_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _order(username: str = "sam") -> Order:
    from demo_project.orders.services import place_order

    user = register_user(
        username=username, name="Sam", email=f"{username}@example.com", password="pw"
    )
    return place_order(user, product="Milk frother", quantity=1, unit_price=Decimal("39.90"))


def test_a_model_method_changes_state_and_emits_in_one_transaction() -> None:
    from django.db import transaction

    from demo_project.orders.events import OrderShipped

    order = _order()
    with pytest.raises(RuntimeError), transaction.atomic():  # the caller's rollback: neither
        assert order.ship()
        raise RuntimeError("the caller's transaction fails later")
    assert Order.objects.get(pk=order.pk).shipped_at is None
    assert not OutboxEvent.objects.filter(event_type="orders.OrderShipped").exists()

    order = Order.objects.get(pk=order.pk)
    assert order.ship()  # its own transaction when the caller has none
    assert not order.ship()  # shipped once, emitted once
    shipped = OutboxEvent.objects.get(event_type="orders.OrderShipped")
    event = OrderShipped.from_json(shipped.payload, shipped.version)
    assert event.order_id == order.pk
    assert event.shipped_at == Order.objects.get(pk=order.pk).shipped_at
    mail.outbox.clear()
    run()
    [notice] = [m for m in mail.outbox if m.subject == "Your order is on its way"]
    assert notice.to == ["sam@example.com"]


def test_a_post_save_receiver_emits_with_the_row_inside_atomic() -> None:
    from django.db import transaction

    from demo_project.orders.models import Refund

    order = _order()
    with pytest.raises(RuntimeError), transaction.atomic():
        Refund.objects.create(order=order, amount=Decimal("1.00"))
        raise RuntimeError("rolled back")
    assert not Refund.objects.exists()
    assert not OutboxEvent.objects.filter(event_type="orders.RefundIssued").exists()

    with transaction.atomic():
        refund = Refund.objects.create(order=order, amount=Decimal("2.50"))
    refund.reason = "edited"
    refund.save()  # not created: no second event
    issued = OutboxEvent.objects.get(event_type="orders.RefundIssued")
    assert issued.payload["refund_id"] == refund.pk and issued.payload["amount"] == "2.50"
    mail.outbox.clear()
    run()
    assert [m.subject for m in mail.outbox if m.subject.startswith("Refund")] == [
        "Refund of 2.50 EUR"
    ]


def test_what_goes_around_save_and_ship_emits_nothing() -> None:
    """README: QuerySet.update() and bulk_create() call neither save() nor ship()."""
    from django.utils import timezone

    from demo_project.orders.models import Refund

    order = _order()
    Refund.objects.bulk_create([Refund(order=order, amount=Decimal("1.00"))])
    Order.objects.filter(pk=order.pk).update(shipped_at=timezone.now())
    assert Refund.objects.count() == 1 and Order.objects.get(pk=order.pk).shipped_at
    assert not OutboxEvent.objects.filter(
        event_type__in=["orders.OrderShipped", "orders.RefundIssued"]
    ).exists()


def test_order_page_ships_and_refunds(client: Client) -> None:
    user = _signup(client)
    client.post(reverse("orders:order_create"), {"product": "Milk frother", "quantity": "1"})
    order = Order.objects.get(customer=user)
    page = client.get(reverse("orders:order", args=[order.pk])).content.decode()
    assert 'id="ship"' in page and 'id="refund"' in page
    response = client.post(reverse("orders:order_ship", args=[order.pk]), follow=True)
    assert "order.ship() emitted OrderShipped" in response.content.decode()
    assert 'id="shipped"' in response.content.decode()
    response = client.post(reverse("orders:order_refund", args=[order.pk]), follow=True)
    assert "post_save receiver emitted RefundIssued" in response.content.decode()
    assert OutboxEvent.objects.filter(event_type="orders.OrderShipped").count() == 1
    assert OutboxEvent.objects.filter(event_type="orders.RefundIssued").count() == 1
    assert client.get(reverse("orders:order_ship", args=[order.pk])).status_code == 405
    other = Client()
    _signup(other, username="eve")
    assert other.post(reverse("orders:order_refund", args=[order.pk])).status_code == 403


def test_home_links_to_the_second_service(client: Client, settings: Any) -> None:
    settings.DEMO_BILLING_URL = "http://127.0.0.1:8001/"
    page = client.get(reverse("demo:home")).content.decode()
    assert 'id="billing"' in page and 'href="http://127.0.0.1:8001/"' in page
    settings.DEMO_BILLING_URL = ""  # a project that relays to no billing: no card
    assert 'id="billing"' not in client.get(reverse("demo:home")).content.decode()
