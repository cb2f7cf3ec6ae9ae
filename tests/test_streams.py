"""Streams and event sourcing: positions, optimistic concurrency, reading, upcasting,
aggregates with snapshots and time travel, ordered handlers (SQLite and PostgreSQL)."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from eventbus_app import (
    Event,
    EventBusError,
    WrongExpectedVersion,
    current_delivery,
    emit,
    upcaster,
)
from eventbus_app.exceptions import AggregateError, EventDefinitionError
from eventbus_app.models import Delivery, OutboxEvent, Snapshot
from eventbus_app.streams import Aggregate, applies, read
from eventbus_app.testing import drain
from eventbus_app.testing.factories import OutboxEventFactory
from tests.conftest import ROOT
from tests.testapp.models import Effect

pytestmark = pytest.mark.django_db
Status = Delivery.Status


class Opened(Event, event_type="t.Opened"):
    owner: str


class Deposited(Event, event_type="t.Deposited"):
    amount: Decimal


class Noted(Event, event_type="t.Noted"):
    text: str


class Account(Aggregate, stream_prefix="account", snapshot_every=5):
    owner: str = ""
    balance: Decimal = Decimal("0")
    deposits: int = 0

    @applies(Opened)
    def _opened(self, event: Opened) -> None:
        self.owner = event.owner

    @applies(Deposited)
    def _deposited(self, event: Deposited) -> None:
        self.balance += event.amount
        self.deposits += 1


def positions(stream: str) -> list[int]:
    return list(
        OutboxEvent.objects.filter(stream=stream)
        .order_by("position")
        .values_list("position", flat=True)
    )


# --- appending ---------------------------------------------------------------------------


def test_emit_appends_gap_free_positions_and_checks_the_expected_version() -> None:
    first = emit(Opened(owner="ann"), stream="account-1", expected_version=0)
    assert (first.stream, first.position) == ("account-1", 1)
    emit(Deposited(amount=Decimal("5")), stream="account-1")
    emit(Deposited(amount=Decimal("7")), stream="account-1", expected_version=2)
    with pytest.raises(WrongExpectedVersion) as caught:
        emit(Deposited(amount=Decimal("1")), stream="account-1", expected_version=2)
    assert (caught.value.stream, caught.value.expected, caught.value.actual) == ("account-1", 2, 3)
    assert "'account-1' is at version 3, not the expected 2" in str(caught.value)
    with pytest.raises(WrongExpectedVersion):
        emit(Opened(owner="bob"), stream="account-1", expected_version=0)  # not new
    assert positions("account-1") == [1, 2, 3]
    assert emit(Noted(text="no stream")).position is None


def test_a_rolled_back_append_leaves_no_gap() -> None:
    emit(Opened(owner="ann"), stream="account-2")
    with pytest.raises(RuntimeError), transaction.atomic():
        emit(Deposited(amount=Decimal("1")), stream="account-2")
        raise RuntimeError("the domain write failed")
    emit(Deposited(amount=Decimal("2")), stream="account-2")
    assert positions("account-2") == [1, 2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stream": 42}, "stream must be a str"),
        ({"stream": "x" * 201}, "at most 200"),
        ({"expected_version": 3}, "needs a stream"),
        ({"stream": "s", "expected_version": -1}, "int >= 0"),
        ({"stream": "s", "expected_version": True}, "int >= 0"),
    ],
)
def test_bad_stream_arguments_are_refused_before_anything_is_written(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(EventBusError, match=message):
        emit(Noted(text="x"), **kwargs)
    assert not OutboxEvent.objects.exists()


# --- reading and upcasting -----------------------------------------------------------------


def test_read_gives_events_oldest_first_up_to_a_position_or_a_moment() -> None:
    emit(Opened(owner="ann"), stream="account-3")
    emit(Deposited(amount=Decimal("1")), stream="account-3")
    OutboxEvent.objects.filter(stream="account-3").update(
        created_at=timezone.now() - timedelta(hours=1)
    )
    emit(Deposited(amount=Decimal("2")), stream="account-3")
    assert read("account-3") == [
        Opened(owner="ann"),
        Deposited(amount=Decimal("1")),
        Deposited(amount=Decimal("2")),
    ]
    assert read("account-3", to_position=1) == [Opened(owner="ann")]
    assert len(read("account-3", as_of=timezone.now() - timedelta(minutes=30))) == 2
    assert read("nobody-here") == []


def test_upcasters_run_as_a_chain_from_each_stored_version() -> None:
    class Renamed(Event, event_type="t.Renamed", version=3):
        full_name: str
        source: str

    @upcaster(Renamed, from_version=1)
    def _v1(payload: dict[str, Any]) -> dict[str, Any]:
        return {"full_name": payload.pop("name")}

    @upcaster(Renamed, from_version=2)
    def _v2(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "source": "upcast"}

    for version, payload in ((1, {"name": "Ann"}), (2, {"full_name": "Bob"})):
        OutboxEventFactory(
            event_type="t.Renamed",
            version=version,
            payload=payload,
            stream="person-1",
            position=version,
        )
    emit(Renamed(full_name="Cy", source="new"), stream="person-1")
    assert read("person-1") == [
        Renamed(full_name="Ann", source="upcast"),
        Renamed(full_name="Bob", source="upcast"),
        Renamed(full_name="Cy", source="new"),
    ]
    with pytest.raises(EventDefinitionError, match="from_version must be an int from 1 to 2"):
        upcaster(Renamed, from_version=3)


def test_handlers_see_upcast_events(register: Any) -> None:
    class Priced(Event, event_type="t.Priced", version=2):
        cents: int

    @upcaster(Priced, from_version=1)
    def _euros(payload: dict[str, Any]) -> dict[str, Any]:
        return {"cents": payload["euros"] * 100}

    seen: list[Priced] = []

    @register(Priced, name="t.priced")
    def priced(event: Priced) -> None:
        seen.append(event)

    OutboxEventFactory(event_type="t.Priced", version=1, payload={"euros": 3})
    drain()
    assert seen == [Priced(cents=300)]


# --- aggregates ----------------------------------------------------------------------------


def test_an_aggregate_records_saves_and_loads_again() -> None:
    account = Account.load(7)
    assert (account.version, account.owner, account.stream) == (0, "", "account-7")
    account.record(Opened(owner="ann"))
    account.record(Deposited(amount=Decimal("10")))
    assert (account.version, account.balance) == (2, Decimal("10"))  # applied at once
    stored = account.save()
    assert [e.position for e in stored] == [1, 2]
    assert account.pending == [] and account.save() == []
    again = Account.load("7")
    assert (again.version, again.owner, again.balance) == (2, "ann", Decimal("10"))


def test_two_writers_of_one_aggregate_one_wins() -> None:
    first = Account.load(8)
    first.record(Opened(owner="ann"))
    first.save()
    a, b = Account.load(8), Account.load(8)
    a.record(Deposited(amount=Decimal("1")))
    b.record(Deposited(amount=Decimal("2")))
    a.save()
    with pytest.raises(WrongExpectedVersion):
        b.save()
    assert Account.load(8).balance == Decimal("1")
    assert positions("account-8") == [1, 2]


def test_time_travel_by_version_and_by_moment() -> None:
    account = Account.load(9)
    account.record(Opened(owner="ann"))
    account.record(Deposited(amount=Decimal("1")))
    account.save()
    OutboxEvent.objects.filter(stream="account-9").update(
        created_at=timezone.now() - timedelta(days=1)
    )
    account.record(Deposited(amount=Decimal("2")))
    account.save()
    assert Account.load(9, version=1).balance == Decimal("0")
    assert Account.load(9, version=2).balance == Decimal("1")
    yesterday = Account.load(9, as_of=timezone.now() - timedelta(hours=1))
    assert (yesterday.version, yesterday.balance) == (2, Decimal("1"))
    assert Account.load(9).balance == Decimal("3")


def test_snapshots_bound_the_events_load_reads_and_time_travel_ignores_newer_ones(
    django_assert_max_num_queries: Any,
) -> None:
    account = Account.load(10)
    account.record(Opened(owner="ann"))
    for _ in range(11):
        account.record(Deposited(amount=Decimal("1")))
    account.save()  # 12 events: snapshots at 5 and 10 were passed; one is stored at 12
    assert list(Snapshot.objects.values_list("version", flat=True)) == [12]
    # Edit a folded-in event behind the snapshot's back: load must not read it again.
    OutboxEvent.objects.filter(stream="account-10", position=3).update(payload={"amount": "900"})
    assert Account.load(10).balance == Decimal("11")
    # Time travel before the snapshot folds from the start (and sees the edit).
    assert Account.load(10, version=4).balance == Decimal("902")


def test_a_changed_aggregate_class_ignores_old_snapshots() -> None:
    account = Account.load(11)
    account.record(Opened(owner="ann"))
    for _ in range(5):
        account.record(Deposited(amount=Decimal("2")))
    account.save()
    assert Snapshot.objects.filter(stream="account-11").count() == 1

    class Account2(Aggregate, stream_prefix="account"):  # same stream, another shape
        owner: str = ""
        total: Decimal = Decimal("0")

        @applies(Opened)
        def _opened(self, event: Opened) -> None:
            self.owner = event.owner

        @applies(Deposited)
        def _deposited(self, event: Deposited) -> None:
            self.total += event.amount * 10

    assert Account2._shape != Account._shape
    assert Account2.load(11).total == Decimal("100")


def test_an_event_without_an_applier_is_a_clear_error_unless_ignored() -> None:
    emit(Opened(owner="ann"), stream="account-12")
    emit(Noted(text="hello"), stream="account-12")
    with pytest.raises(AggregateError, match=r"Account has no @applies method for t\.Noted"):
        Account.load(12)

    class Tolerant(Account, stream_prefix="account"):
        ignores = (Noted,)

    assert Tolerant.load(12).owner == "ann"


def test_aggregate_declaration_errors_name_the_fix() -> None:
    with pytest.raises(EventDefinitionError, match="needs a default"):

        class NoDefault(Aggregate):
            owner: str

    with pytest.raises(EventDefinitionError, match="snapshot_every"):

        class Bad(Aggregate, snapshot_every=0):
            owner: str = ""

    with pytest.raises(AggregateError, match=r"use Account\.load\(id\)"):
        Account().record(Opened(owner="x"))


# --- ordered handlers ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_ordered_handler_runs_each_stream_in_order_and_a_failure_holds_only_its_stream(
    register: Any, settings: Any
) -> None:
    from eventbus_app import operations

    settings.EVENTBUS = {**settings.EVENTBUS, "MAX_ATTEMPTS": 1}
    broken = {"a": 2}

    @register(Deposited, name="t.projection", ordered=True)
    def projection(event: Deposited) -> None:
        ctx = current_delivery()
        assert ctx is not None
        row = OutboxEvent.objects.get(pk=ctx.event_id)
        if broken.get(row.stream.split("-")[1]) == row.position:
            raise RuntimeError(f"cannot project {row.stream}@{row.position}")
        Effect.objects.create(handler="t.projection", event_id=ctx.event_id, note=row.stream)

    for stream in ("acct-a", "acct-b"):
        with transaction.atomic():
            for _ in range(4):
                emit(Deposited(amount=Decimal("1")), stream=stream)
    drain()
    rows = Delivery.objects.filter(handler="t.projection")
    assert list(rows.filter(stream="acct-b").values_list("status", flat=True).distinct()) == [
        Status.SUCCEEDED
    ]
    a = dict(rows.filter(stream="acct-a").values_list("position", "status"))
    assert a == {1: Status.SUCCEEDED, 2: Status.DEAD, 3: Status.PENDING, 4: Status.PENDING}
    # Each stream's effects were written in position order.
    order = list(Effect.objects.order_by("id").values_list("note", "event_id"))
    b_events = [event for note, event in order if note == "acct-b"]
    assert b_events == sorted(b_events)

    broken.clear()
    dead = rows.get(stream="acct-a", position=2)
    operations.retry_deliveries(Delivery.objects.filter(pk=dead.pk), actor="t")
    drain()
    assert set(rows.values_list("status", flat=True)) == {Status.SUCCEEDED}
    a_events = [
        event
        for note, event in Effect.objects.order_by("id").values_list("note", "event_id")
        if note == "acct-a"
    ]
    assert a_events == sorted(a_events) and len(a_events) == 4


@pytest.mark.postgres
@pytest.mark.subprocess
@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_to_one_stream_from_separate_processes(
    worker_env: dict[str, str],
) -> None:
    """N processes: with the same expected version exactly one commits; without one, all
    commit, with no duplicate position and no gap."""
    emit(Opened(owner="ann"), stream="account-race")
    script = (
        "import django, sys, time; django.setup()\n"
        "from decimal import Decimal\n"
        "from django.db import transaction\n"
        "from eventbus_app import emit, WrongExpectedVersion\n"
        "from tests.test_streams import Deposited\n"
        "expected = None if sys.argv[1] == 'none' else int(sys.argv[1])\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "try:\n"
        "    with transaction.atomic():\n"
        "        emit(Deposited(amount=Decimal('1')), stream='account-race',"
        " expected_version=expected)\n"
        "        time.sleep(0.2)\n"
        "    print('committed')\n"
        "except WrongExpectedVersion as exc:\n"
        "    print('refused', exc.actual)\n"
    )

    def race(expected: str, n: int) -> list[str]:
        start = str(time.time() + 3)
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", script, expected, start],
                env=worker_env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(n)
        ]
        outs = [p.communicate(timeout=60) for p in procs]
        assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
        return [out.strip() for out, _ in outs]

    same = race("1", 6)
    assert sorted(same) == ["committed"] + ["refused 2"] * 5
    free = race("none", 6)
    assert free == ["committed"] * 6
    assert positions("account-race") == list(range(1, 9))
    assert connection.vendor == "postgresql"


def test_an_aggregate_class_is_found_by_its_stream_and_its_history_has_each_state() -> None:
    from eventbus_app.streams.aggregate import aggregate_for_stream

    account = Account.load(13)
    account.record(Opened(owner="ann"))
    account.record(Deposited(amount=Decimal("4")))
    account.save()
    found = aggregate_for_stream("account-13")
    assert found is not None and found[1] == "13" and found[0].stream_prefix == "account"
    assert aggregate_for_stream("nothing-here") is None
    steps = Account.history(13)
    assert [(record.position, state["balance"]) for record, state in steps] == [
        (1, "0"),
        (2, "4"),
    ]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_an_ordered_handler_waits_for_an_earlier_event_whose_fan_out_is_in_flight(
    register: Any,
) -> None:
    """Another worker's fan-out holds the stream's first event (its row locked, not yet
    committed); SKIP LOCKED passes it by and fans the second out here. The second must
    still wait for the first: it runs only after the first is dispatched and has run."""
    import threading

    from django.db import connections

    from tests.testapp.events import Credited

    ran: list[int] = []

    @register(Credited, name="test.ordered_race", ordered=True)
    def ordered(event: Credited) -> None:
        ran.append(event.amount)

    first = emit(Credited(amount=1), stream="race")
    emit(Credited(amount=2), stream="race")
    locked, release = threading.Event(), threading.Event()

    def other_worker() -> None:  # a fan-out of the first event, in progress elsewhere
        with transaction.atomic():
            list(OutboxEvent.objects.select_for_update().filter(pk=first.pk))
            locked.set()
            release.wait(30)
        connections.close_all()

    worker = threading.Thread(target=other_worker)
    worker.start()
    try:
        assert locked.wait(10)
        drain()  # fans out the second event only; its ordered delivery must wait
        assert ran == []
        assert Delivery.objects.get(handler="test.ordered_race").status == "pending"
    finally:
        release.set()
        worker.join()
    drain()
    assert ran == [1, 2]
