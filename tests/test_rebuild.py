"""``manage.py eventbus_rebuild``: in place, dry runs, and shadow rebuilds swapped in one
transaction (seen from a concurrent reader), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connections, transaction

from eventbus_app import emit
from eventbus_app.dispatch import fan_out
from eventbus_app.models import Delivery, HandlerState
from eventbus_app.testing import drain
from tests.testapp.events import Credited
from tests.testapp.models import Balance

pytestmark = pytest.mark.django_db(transaction=True)
HANDLER = "testapp.balances"
EXPECTED = {"acct-1": 6, "acct-2": 60, "acct-3": 600}


def credit_all() -> None:
    with transaction.atomic():
        for amount in (1, 2, 3):
            for stream, scale in (("acct-1", 1), ("acct-2", 10), ("acct-3", 100)):
                emit(Credited(amount=amount * scale), stream=stream)


def balances() -> dict[str, int]:
    return dict(Balance.objects.values_list("stream", "total"))


def rebuild(*args: str) -> str:
    out = StringIO()
    call_command("eventbus_rebuild", HANDLER, *args, "--progress", "never", stdout=out)
    return out.getvalue()


def test_a_dry_run_says_what_would_be_replayed() -> None:
    credit_all()
    assert "Would replay 9 events through testapp.balances" in rebuild("--dry-run")
    assert "Would replay 3 events" in rebuild("--dry-run", "--stream", "acct-2")
    assert "Would replay 0 events" in rebuild("--dry-run", "--since", "2999-01-01")
    with pytest.raises(CommandError, match="No handler named 'nope'"):
        call_command("eventbus_rebuild", "nope")


def test_an_in_place_rebuild_replays_in_order_into_the_live_tables() -> None:
    credit_all()
    drain()
    assert balances() == EXPECTED
    Balance.objects.all().delete()  # start the projection from empty
    out = rebuild()
    assert "Replayed 9 events" in out
    assert balances() == EXPECTED
    Balance.objects.filter(stream="acct-2").delete()
    rebuild("--stream", "acct-2")
    assert balances() == EXPECTED


def test_a_shadow_rebuild_reports_the_difference_and_swaps_it_in() -> None:
    credit_all()
    drain()
    Balance.objects.filter(stream="acct-1").update(total=999)  # changed
    Balance.objects.filter(stream="acct-3").delete()  # removed by accident
    Balance.objects.create(stream="ghost", total=5)  # a row no event explains
    out = rebuild("--shadow", "--dry-run")
    assert "1 added, 1 changed, 1 removed (compared by primary key)" in out
    assert "Dry run: nothing swapped" in out
    assert balances()["acct-1"] == 999  # untouched
    out = rebuild("--shadow")
    assert "Swapped the rebuilt tables in" in out
    assert balances() == EXPECTED
    assert not HandlerState.objects.filter(handler=HANDLER, paused=True).exists()
    # No shadow table is left behind.
    tables = connections["default"].introspection.table_names()
    assert [t for t in tables if "__rb" in t] == []


def test_a_shadow_rebuild_catches_up_with_the_live_handler_without_applying_twice() -> None:
    credit_all()
    fan_out()  # deliveries exist, not run yet: the rebuild applies these events
    rebuild("--shadow")
    assert balances() == EXPECTED
    assert set(Delivery.objects.filter(handler=HANDLER).values_list("status", flat=True)) == {
        Delivery.Status.SUCCEEDED
    }
    emit(Credited(amount=1000), stream="acct-1")  # after the rebuild: runs live
    drain()
    assert balances() == {**EXPECTED, "acct-1": 1006}


def test_readers_see_the_old_projection_or_the_new_one_never_half(settings: Any) -> None:
    credit_all()
    drain()
    Balance.objects.all().delete()
    # A bigger stream, so the rebuild takes a while (several chunks of commits).
    with transaction.atomic():
        for _ in range(1200):
            emit(Credited(amount=1), stream="acct-big")
    fan_out()
    Delivery.objects.filter(handler=HANDLER).update(status=Delivery.Status.SUCCEEDED)
    seen: set[tuple[int, int]] = set()
    stop = threading.Event()

    def read() -> None:
        reader = connections.create_connection("default")
        try:
            while not stop.is_set():
                with reader.cursor() as cursor:
                    cursor.execute("SELECT COUNT(*), COALESCE(SUM(total), 0) FROM testapp_balance")
                    seen.add(tuple(cursor.fetchone()))  # type: ignore[arg-type]
        finally:
            reader.close()

    thread = threading.Thread(target=read)
    thread.start()
    try:
        rebuild("--shadow")
    finally:
        stop.set()
        thread.join(timeout=30)
    final = (4, 6 + 60 + 600 + 1200)
    assert seen <= {(0, 0), final}, seen  # nothing in between
    assert (len(seen), balances()["acct-big"]) == (len(seen), 1200)


def test_shadow_needs_declared_models_and_the_whole_projection(register: Any) -> None:
    @register(Credited, name="t.undeclared")
    def undeclared(event: Credited) -> None: ...

    with pytest.raises(CommandError, match=r"declares no models: pass @handler\(\.\.\., writes="):
        call_command("eventbus_rebuild", "t.undeclared", "--shadow")
    with pytest.raises(CommandError, match="cannot be combined with --stream"):
        call_command("eventbus_rebuild", HANDLER, "--shadow", "--stream", "acct-1")
