"""``python manage.py demo``: set up the demo's two services and run them until Ctrl-C.

The shop (these settings) and billing (``demo_project.billing_settings``, its own database)
each get a web server and a django-q2 cluster; with ``--broker`` billing also runs
``eventbus_consume shop``. Billing's processes run with its own settings module, so they are
started as ``python -m django ...`` with ``DJANGO_SETTINGS_MODULE`` set, like the shop's.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from demo_project import bus
from eventbus_app.conf import eventbus_settings
from eventbus_app.models import HandlerState
from eventbus_app.operations import pause_handler, resume_handler

from ...seed import USER_PASSWORD, is_seeded, seed

ADMIN_USERNAME = "admin"
ROOT = Path(__file__).resolve().parents[4]  # the directory that holds demo_project/
STOP_SECONDS = 20
BILLING_SETTINGS = "demo_project.billing_settings"
RELAY = "relay:billing"
# Who paused the relay while billing was not running (the console shows it); the demo
# resumes only its own pause, never an operator's.
DEMO_ACTOR = "manage.py demo (billing not running yet)"
BILLING_START_SECONDS = 60
CLIENTS = {"rabbitmq": "pika", "nats": "nats", "redis": "redis"}
DEFAULT_PORTS = {"amqp": 5672, "nats": 4222, "redis": 6379}


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the demo command dies (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _check_port(port: int, option: str = "--port") -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise CommandError(
                f"Port {port} on 127.0.0.1 is not free ({exc.strerror}); "
                f"choose another with {option}, e.g. {option} {port + 2}."
            ) from exc


def _check_broker(kind: str) -> None:
    """Before anything is set up: the broker's client is installed and its port answers."""
    url = bus.broker_url(kind)
    try:
        importlib.import_module(CLIENTS[kind])
    except ImportError as exc:
        raise CommandError(
            f"--broker {kind} needs its client: pip install 'eventbus_app[{kind}]' ({exc})"
        ) from exc
    parts = urllib.parse.urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORTS.get(parts.scheme, 0))
    try:
        socket.create_connection(address, timeout=3).close()
    except OSError as exc:
        raise CommandError(
            f"No {kind} broker answers at {url} ({exc.strerror or exc}). Start one, point "
            "DEMO_BROKER_URL at it, or run the demo without --broker (over http: nothing "
            "to install)."
        ) from exc


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Command(BaseCommand):
    help = (
        "Migrate the demo database, create the demo superuser, seed sign-ups and orders "
        "(with a dead letter and a flaky retry), set up the second service, billing (its own "
        "database), then run both services' web servers and django-q2 clusters until Ctrl-C."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=8000, help="Shop's web port (8000).")
        parser.add_argument(
            "--billing-port", type=int, help="Billing's web port (default: --port + 1)."
        )
        parser.add_argument(
            "--broker",
            choices=["http", *bus.BROKERS],
            default="http",
            help="How billing receives the shop's events: http (default, nothing to install) "
            "or a broker on 127.0.0.1 (DEMO_BROKER_URL overrides its URL).",
        )
        parser.add_argument(
            "--no-serve", action="store_true", help="Only set up and seed; start nothing."
        )
        parser.add_argument(
            "--admin-password",
            default=os.environ.get("DEMO_ADMIN_PASSWORD", "eventbus-demo"),
            help="Password of the demo superuser 'admin'.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        port, broker = options["port"], options["broker"]
        billing_port = options["billing_port"] or port + 1
        # The second service runs where this project relays to it (demo_project.settings
        # does; a project without the relay, the test settings say, runs the shop alone).
        billing = "billing" in eventbus_settings.RELAYS
        if broker != "http":
            if not billing:
                raise CommandError("--broker needs EVENTBUS['RELAYS']['billing'] in the settings.")
            _check_broker(broker)
        if not options["no_serve"]:
            _check_port(port)
            if billing:
                if billing_port == port:
                    raise CommandError("--billing-port must differ from --port.")
                _check_port(billing_port, "--billing-port")
        self.env = self._environment(port, billing_port, broker)

        self.stdout.write("Migrating the shop's database…")
        call_command("migrate", interactive=False, verbosity=0)
        admin = User.objects.filter(username=ADMIN_USERNAME).first() or User(
            username=ADMIN_USERNAME, email="admin@example.com"
        )
        admin.is_staff = admin.is_superuser = admin.is_active = True
        admin.set_password(options["admin_password"])
        admin.save()
        if billing:
            self._setup_billing(options["admin_password"])
        if is_seeded():
            self.stdout.write("Demo data already there (delete the database files to start over).")
        else:
            if billing:
                # Billing is not running yet: the seeded events wait in the shop's outbox
                # (their relay deliveries pending) until the demo starts it.
                pause_handler(RELAY, actor=DEMO_ACTOR)
            self.stdout.write("Seeding sign-ups and orders…")
            counts = seed()
            self.stdout.write(
                f"  {counts['users']} users, {counts['orders']} orders; deliveries: "
                f"{counts['delivered']} succeeded, {counts['failed']} failed attempts, "
                f"{counts['dead']} dead letters"
            )
        url = f"http://127.0.0.1:{port}/"
        self.stdout.write(
            self.style.SUCCESS(
                f"\nDemo superuser: username {ADMIN_USERNAME!r}, password "
                f"{options['admin_password']!r}" + (" (the same in billing)" if billing else "")
            )
            + f"\nDemo users: alice, bob, carol, dave (password {USER_PASSWORD!r})"
        )
        if options["no_serve"]:
            if billing and self._paused_by_demo():
                self.stdout.write(
                    f"The shop's {RELAY} waits (paused) until `manage.py demo` runs billing."
                )
            return
        self.stdout.write(
            f"\nShop:          {url}\nAdmin console: {url}admin/eventbus_app/outboxevent/overview/"
            f"\nDead letters:  {url}admin/eventbus_app/deadletter/"
        )
        if billing:
            billing_url = f"http://127.0.0.1:{billing_port}/"
            via = "http" if broker == "http" else f"{broker} at {bus.broker_url(broker)}"
            self.stdout.write(
                f"\nBilling:       {billing_url}  (a second service, its own database; "
                f"receives the shop's events over {via})"
                f"\nIts console:   {billing_url}admin/eventbus_app/outboxevent/overview/"
            )
        self.stdout.write("Stop with Ctrl-C.\n")
        self.stdout.flush()
        self.serve(port, billing_port if billing else None, broker)

    def _environment(self, port: int, billing_port: int, broker: str) -> dict[str, str]:
        """What both services' processes read: where the other one is, and how to reach it."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(DEMO_SHOP_PORT=str(port), DEMO_BILLING_PORT=str(billing_port))
        env["DEMO_BROKER"] = broker
        return env

    def _settings_env(self, module: str) -> dict[str, str]:
        return {**self.env, "DJANGO_SETTINGS_MODULE": module}

    def _setup_billing(self, admin_password: str) -> None:
        self.stdout.write("Setting up billing (its own database)…")
        result = subprocess.run(
            [sys.executable, "-m", "django", "setup_billing", "--admin-password", admin_password],
            env=self._settings_env(BILLING_SETTINGS),
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise CommandError(f"Setting up billing failed:\n{result.stderr.strip()}")

    def _paused_by_demo(self) -> bool:
        return HandlerState.objects.filter(
            handler=RELAY, paused=True, changed_by=DEMO_ACTOR
        ).exists()

    def serve(self, port: int, billing_port: int | None, broker: str) -> None:
        shop = self._settings_env(settings.SETTINGS_MODULE)
        commands: dict[str, tuple[dict[str, str], list[str]]] = {}
        if billing_port is not None:
            billing = self._settings_env(BILLING_SETTINGS)
            commands["billing web server"] = (
                billing,
                ["runserver", f"127.0.0.1:{billing_port}", "--noreload"],
            )
            commands["billing worker cluster"] = (billing, ["qcluster"])
            if broker != "http":
                commands["billing consumer"] = (billing, ["eventbus_consume", "shop"])
        commands["shop web server"] = (shop, ["runserver", f"127.0.0.1:{port}", "--noreload"])
        commands["shop worker cluster"] = (shop, ["qcluster"])
        children: dict[str, subprocess.Popen[bytes]] = {}
        stop = {"signal": 0}

        def on_signal(signum: int, frame: Any) -> None:
            stop["signal"] = signum

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for label, (env, argv) in commands.items():
                children[label] = subprocess.Popen(
                    [sys.executable, "-m", "django", *argv],
                    env=env,
                    cwd=ROOT,
                    # Own process group: Ctrl-C reaches only us, and we stop the children
                    # (and the clusters' workers) in order.
                    start_new_session=True,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            waiting_for_billing, warned = billing_port is not None, False
            started = time.monotonic()
            exited: list[str] = []
            while not stop["signal"] and not exited:
                exited = [label for label, proc in children.items() if proc.poll() is not None]
                if waiting_for_billing and billing_port is not None and _answers(billing_port):
                    waiting_for_billing = False
                    if self._paused_by_demo():
                        resume_handler(RELAY, actor="manage.py demo (billing is up)")
                        self.stdout.write(
                            f"Billing is up: {RELAY} resumed, the shop's waiting events go out."
                        )
                        self.stdout.flush()
                elif (
                    waiting_for_billing
                    and not warned
                    and (time.monotonic() - started > BILLING_START_SECONDS)
                ):
                    warned = True  # keep waiting: a slow machine is no reason to give up
                    self.stderr.write(
                        f"Billing does not answer on port {billing_port} yet; the shop's "
                        f"{RELAY} stays paused until it does."
                    )
                time.sleep(0.2)
        finally:
            self._stop(children)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if exited:
            raise CommandError(f"The {exited[0]} exited unexpectedly; the demo stopped.")
        self.stdout.write("Demo stopped.")

    def _stop(self, children: dict[str, subprocess.Popen[bytes]]) -> None:
        for proc in children.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGINT)
        deadline = time.monotonic() + STOP_SECONDS
        for label, proc in children.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"The {label} did not stop in time; killing it.")
            # Whatever is left of the group (a stuck worker) goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
