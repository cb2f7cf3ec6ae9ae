"""``python manage.py demo``: set up the demo and run the web server and a worker cluster."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...seed import USER_PASSWORD, is_seeded, seed

ADMIN_USERNAME = "admin"
ROOT = Path(__file__).resolve().parents[4]  # the directory that holds demo_project/
STOP_SECONDS = 20


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the demo command dies (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _check_port(port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise CommandError(
                f"Port {port} on 127.0.0.1 is not free ({exc.strerror}); "
                f"choose another with --port, e.g. --port {port + 1}."
            ) from exc


class Command(BaseCommand):
    help = (
        "Migrate the demo database, create the demo superuser, seed sign-ups and orders "
        "(with a dead letter and a flaky retry), then run the web server and a django-q2 "
        "cluster together until Ctrl-C."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=8000, help="Web server port (8000).")
        parser.add_argument(
            "--no-serve", action="store_true", help="Only set up and seed; start nothing."
        )
        parser.add_argument(
            "--admin-password",
            default=os.environ.get("DEMO_ADMIN_PASSWORD", "eventbus-demo"),
            help="Password of the demo superuser 'admin'.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write("Migrating the demo database…")
        call_command("migrate", interactive=False, verbosity=0)
        admin = User.objects.filter(username=ADMIN_USERNAME).first() or User(
            username=ADMIN_USERNAME, email="admin@example.com"
        )
        admin.is_staff = admin.is_superuser = admin.is_active = True
        admin.set_password(options["admin_password"])
        admin.save()
        if is_seeded():
            self.stdout.write("Demo data already there (delete the database file to start over).")
        else:
            self.stdout.write("Seeding sign-ups and orders…")
            counts = seed()
            self.stdout.write(
                f"  {counts['users']} users, {counts['orders']} orders; deliveries: "
                f"{counts['delivered']} succeeded, {counts['failed']} failed attempts, "
                f"{counts['dead']} dead letters"
            )
        url = f"http://127.0.0.1:{options['port']}/"
        self.stdout.write(
            self.style.SUCCESS(
                f"\nDemo superuser: username {ADMIN_USERNAME!r}, password "
                f"{options['admin_password']!r}"
            )
            + f"\nDemo users: alice, bob, carol, dave (password {USER_PASSWORD!r})"
        )
        if options["no_serve"]:
            return
        _check_port(options["port"])
        self.stdout.write(
            f"\nShop:          {url}\nAdmin console: {url}admin/eventbus_app/outboxevent/overview/"
            f"\nDead letters:  {url}admin/eventbus_app/deadletter/\n"
            "Stop with Ctrl-C.\n"
        )
        self.stdout.flush()
        self.serve(options["port"])

    def serve(self, port: int) -> None:
        env = dict(os.environ)
        env["DJANGO_SETTINGS_MODULE"] = settings.SETTINGS_MODULE
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        commands = {
            "web server": ["runserver", f"127.0.0.1:{port}", "--noreload"],
            "worker cluster": ["qcluster"],
        }
        children: dict[str, subprocess.Popen[bytes]] = {}
        stop = {"signal": 0}

        def on_signal(signum: int, frame: Any) -> None:
            stop["signal"] = signum

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for label, argv in commands.items():
                children[label] = subprocess.Popen(
                    [sys.executable, "-m", "django", *argv],
                    env=env,
                    cwd=ROOT,
                    # Own process group: Ctrl-C reaches only us, and we stop the children
                    # (and the cluster's workers) in order.
                    start_new_session=True,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            exited: list[str] = []
            while not stop["signal"] and not exited:
                exited = [label for label, proc in children.items() if proc.poll() is not None]
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
