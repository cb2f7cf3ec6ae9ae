"""Sign-up and profile changes, and the event-sourced rebuild of a user's history."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from eventbus_app import emit
from eventbus_app.events import event_class
from eventbus_app.models import OutboxEvent

from .events import UserCreated, UserEmailChanged, UserRegistered, UserRenamed

HISTORY_TYPES = [UserCreated.event_type, UserRenamed.event_type, UserEmailChanged.event_type]


def register_user(*, username: str, name: str, email: str, password: str) -> User:
    """The five-side-effect sign-up, now one transaction: the user and its events."""
    with transaction.atomic():
        user = User.objects.create_user(
            username=username, email=email, password=password, first_name=name
        )
        emit(UserCreated(user_id=user.pk, username=username, name=name, email=email))
        emit(UserRegistered(user_id=user.pk, email=email, name=name, registered_at=timezone.now()))
    return user


def rename_user(user: User, name: str) -> None:
    with transaction.atomic():
        user.first_name = name
        user.save(update_fields=["first_name"])
        emit(UserRenamed(user_id=user.pk, name=name))


def change_email(user: User, email: str) -> None:
    with transaction.atomic():
        user.email = email
        user.save(update_fields=["email"])
        emit(UserEmailChanged(user_id=user.pk, email=email))


@dataclass
class UserState:
    """A user as its events say it is."""

    user_id: int
    username: str = ""
    name: str = ""
    email: str = ""
    version: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def apply(self, record: OutboxEvent) -> None:
        cls = event_class(record.event_type)
        if cls is None:
            return
        event = cls.from_json(record.payload, record.version)
        before = {"name": self.name, "email": self.email}
        if isinstance(event, UserCreated):
            self.username, self.name, self.email = event.username, event.name, event.email
        elif isinstance(event, UserRenamed):
            self.name = event.name
        elif isinstance(event, UserEmailChanged):
            self.email = event.email
        self.version += 1
        changes = {
            key: (before[key], value)
            for key, value in {"name": self.name, "email": self.email}.items()
            if before[key] != value
        }
        self.history.append(
            {"record": record, "type": cls.__name__, "changes": changes, "version": self.version}
        )


def user_stream(user_id: int) -> list[OutboxEvent]:
    return list(
        OutboxEvent.objects.filter(event_type__in=HISTORY_TYPES, payload__user_id=user_id).order_by(
            "created_at", "id"
        )
    )


def rebuild_user(user_id: int) -> UserState:
    """Fold the user's stream, oldest first, into its current state."""
    state = UserState(user_id=user_id)
    for record in user_stream(user_id):
        state.apply(record)
    return state
