"""Sign-up and profile changes, and the event-sourced user profile (``UserProfile``: an
``eventbus_app.streams.Aggregate`` over the stream ``user-<id>``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from eventbus_app import emit
from eventbus_app.dispatch import load_event
from eventbus_app.streams import Aggregate, applies
from eventbus_app.streams.store import records

from .events import UserCreated, UserEmailChanged, UserRegistered, UserRenamed


def register_user(*, username: str, name: str, email: str, password: str) -> User:
    """The five-side-effect sign-up, now one transaction: the user and its events."""
    with transaction.atomic():
        user = User.objects.create_user(
            username=username, email=email, password=password, first_name=name
        )
        profile = UserProfile.load(user.pk)
        profile.record(UserCreated(user_id=user.pk, username=username, name=name, email=email))
        profile.save()
        emit(UserRegistered(user_id=user.pk, email=email, name=name, registered_at=timezone.now()))
    return user


def rename_user(user: User, name: str) -> None:
    with transaction.atomic():
        user.first_name = name
        user.save(update_fields=["first_name"])
        profile = UserProfile.load(user.pk)
        profile.record(UserRenamed(user_id=user.pk, name=name))
        profile.save()


def change_email(user: User, email: str) -> None:
    with transaction.atomic():
        user.email = email
        user.save(update_fields=["email"])
        profile = UserProfile.load(user.pk)
        profile.record(UserEmailChanged(user_id=user.pk, email=email))
        profile.save()


class UserProfile(Aggregate, stream_prefix="user", snapshot_every=50):
    """A user as its events say it is: the stream ``user-<id>`` folded by the library."""

    username: str = ""
    name: str = ""
    email: str = ""

    @applies(UserCreated)
    def _created(self, event: UserCreated) -> None:
        self.username, self.name, self.email = event.username, event.name, event.email

    @applies(UserRenamed)
    def _renamed(self, event: UserRenamed) -> None:
        self.name = event.name

    @applies(UserEmailChanged)
    def _email_changed(self, event: UserEmailChanged) -> None:
        self.email = event.email


def rebuild_user(
    user_id: int, *, version: int | None = None, as_of: datetime | None = None
) -> UserProfile:
    """The user's current state (or its state at ``version`` / ``as_of``: time travel)."""
    return UserProfile.load(user_id, version=version, as_of=as_of)


def user_history(user_id: int) -> list[dict[str, Any]]:
    """Every event of the user's stream with the state after it, oldest first."""
    profile = UserProfile.load(user_id, version=0)
    history = []
    for record in records(profile.stream):
        event = load_event(record)
        before = {"name": profile.name, "email": profile.email}
        profile.apply(event)
        after = {"name": profile.name, "email": profile.email}
        history.append(
            {
                "record": record,
                "version": record.position,
                "type": type(event).__name__,
                "changes": {k: (before[k], v) for k, v in after.items() if before[k] != v},
                "state": after,
            }
        )
    return history
