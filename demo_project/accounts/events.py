"""Account events.

``UserRegistered`` is the integration event with four side effects (see handlers.py).
``UserCreated``, ``UserRenamed`` and ``UserEmailChanged`` form each user's event-sourced
history: the profile page rebuilds the user's current state by replaying them.
"""

from __future__ import annotations

from datetime import datetime

from eventbus_app import Event


class UserRegistered(Event):
    user_id: int
    email: str
    name: str
    registered_at: datetime


class UserCreated(Event):
    user_id: int
    username: str
    name: str
    email: str


class UserRenamed(Event):
    user_id: int
    name: str


class UserEmailChanged(Event):
    user_id: int
    email: str
