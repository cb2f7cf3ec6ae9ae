"""The event-sourcing workload's aggregate, with and without snapshots."""

from __future__ import annotations

from eventbus_app.streams import Aggregate, applies

from .events import Credit


class Wallet(Aggregate, stream_prefix="wallet"):
    balance: int = 0

    @applies(Credit)
    def _credit(self, event: Credit) -> None:
        self.balance += event.amount


class SnappedWallet(Aggregate, stream_prefix="snapped", snapshot_every=100):
    balance: int = 0

    @applies(Credit)
    def _credit(self, event: Credit) -> None:
        self.balance += event.amount
