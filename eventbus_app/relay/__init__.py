"""Several services: relays publish stored events to a broker, sources receive them.

The modules read as the flow, sender to receiver:

* ``config.py``: ``EVENTBUS["RELAYS"]`` / ``EVENTBUS["SOURCES"]`` read and checked;
  ``install_relays()`` registers one handler ``relay:<name>`` per relay (``AppConfig.ready``).
* ``publish.py``: that handler: it turns the delivery's ``OutboxEvent`` into a CloudEvent and
  returns only once the broker confirmed it.
* ``cloudevents.py``: CloudEvents 1.0, structured JSON, both ways.
* ``backends/``: one module per broker (``rabbitmq``, ``nats``, ``redis``, ``http``), each a
  ``Publisher`` and (except http) a ``Consumer``; ``base.py`` documents the two classes.
* ``inbox.py``: stores a received message as an ``OutboxEvent`` (``source=`` the source's
  name) in one transaction; duplicates dropped, unreadable messages kept as dead letters.
* ``consume.py``: the loop behind ``manage.py eventbus_consume NAME``.
* ``views.py`` / ``urls.py``: the http source, a Django view.
"""

from __future__ import annotations

from .config import install_relays

__all__ = ["install_relays"]
