"""The same workload on django-domain-events (PyPI), the closest peer: four no-op durable
receivers, delivered by its own relay (``manage.py deliver_events``)."""

from __future__ import annotations

from dataclasses import dataclass

from django_domain_events import DURABLE, event, receiver


@event
@dataclass(frozen=True, slots=True)
class PeerOrderPlaced:
    order_id: int
    customer: str
    total_cents: int


@receiver(PeerOrderPlaced, mode=DURABLE)
def peer_noop1(evt: PeerOrderPlaced) -> None:
    pass


@receiver(PeerOrderPlaced, mode=DURABLE)
def peer_noop2(evt: PeerOrderPlaced) -> None:
    pass


@receiver(PeerOrderPlaced, mode=DURABLE)
def peer_noop3(evt: PeerOrderPlaced) -> None:
    pass


@receiver(PeerOrderPlaced, mode=DURABLE)
def peer_noop4(evt: PeerOrderPlaced) -> None:
    pass
