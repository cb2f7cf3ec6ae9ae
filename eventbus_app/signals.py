"""Django signals sent by eventbus_app.

``event_emitted`` is sent synchronously inside the emitting transaction, so plain
``@receiver`` code can react atomically. The delivery signals are sent by the worker after
the outcome has been committed.

=====================  ==============  ==================================================
signal                 sender          keyword arguments
=====================  ==============  ==================================================
``event_emitted``      the Event class ``event`` (the Event), ``outbox_event``, ``using``
``delivery_succeeded`` ``Delivery``    ``delivery``, ``handler`` (name)
``delivery_failed``    ``Delivery``    ``delivery``, ``handler``, ``error``, ``attempt``
``delivery_dead``      ``Delivery``    ``delivery``, ``handler``, ``error``, ``attempt``
=====================  ==============  ==================================================
"""

from __future__ import annotations

from django.dispatch import Signal

event_emitted = Signal()
delivery_succeeded = Signal()
delivery_failed = Signal()
delivery_dead = Signal()
