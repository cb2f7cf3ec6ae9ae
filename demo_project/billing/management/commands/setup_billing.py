"""``setup_billing`` (run with billing's settings): migrate billing's database, create its
superuser and, for a broker source, declare its queue / group / durable consumer so that
what the shop publishes before the consumer starts waits for it. ``manage.py demo`` runs it.
"""

from __future__ import annotations

import os
from typing import Any

from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from eventbus_app.relay.backends import load_backend
from eventbus_app.relay.config import source_options

SOURCE = "shop"


class Command(BaseCommand):
    help = "Set up the demo's billing service: migrate, superuser, declare the broker source."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--admin-password",
            default=os.environ.get("DEMO_ADMIN_PASSWORD", "eventbus-demo"),
            help="Password of billing's superuser 'admin'.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        admin = User.objects.filter(username="admin").first() or User(
            username="admin", email="admin@example.com"
        )
        admin.is_staff = admin.is_superuser = admin.is_active = True
        admin.set_password(options["admin_password"])
        admin.save()
        source = source_options(SOURCE)
        if source["BACKEND"] == "http":
            return
        try:
            # Constructing the consumer declares what it reads (and proves the broker is
            # there); eventbus_consume opens its own.
            load_backend(source["BACKEND"]).Consumer(SOURCE, source).close()
        except Exception as exc:
            raise CommandError(
                f"billing could not reach {source['BACKEND']} at {source['URL']}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
