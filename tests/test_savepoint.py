"""The handler savepoint that is only sent when the handler uses the database."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.transaction import TransactionManagementError
from django.test.utils import CaptureQueriesContext

from eventbus_app import Event, emit
from eventbus_app.dispatch import claim, deliver, fan_out
from eventbus_app.models import Delivery
from eventbus_app.savepoint import lazy_savepoint
from tests.testapp.models import Account, Effect

pytestmark = pytest.mark.django_db


def _savepoint_statements(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if "SAVEPOINT" in q["sql"].upper()]


def test_a_block_without_queries_sends_nothing() -> None:
    with (
        transaction.atomic(),
        CaptureQueriesContext(connection) as queries,
        lazy_savepoint("default"),
    ):
        pass
    assert queries.captured_queries == []


def test_the_savepoint_is_sent_before_the_first_query_and_released() -> None:
    with (
        transaction.atomic(),
        CaptureQueriesContext(connection) as queries,
        lazy_savepoint("default"),
    ):
        Account.objects.create(email="kept@example.com")
        Account.objects.create(email="kept2@example.com")
    sql = [q["sql"].upper() for q in queries.captured_queries]
    assert sql[0].startswith("SAVEPOINT")
    assert "INSERT" in sql[1] and "INSERT" in sql[2]
    assert sql[3].startswith("RELEASE SAVEPOINT")
    assert len(sql) == 4
    assert Account.objects.filter(email__startswith="kept").count() == 2


def test_an_error_rolls_back_only_the_block() -> None:
    with transaction.atomic():
        Account.objects.create(email="before@example.com")
        with pytest.raises(RuntimeError), lazy_savepoint("default"):
            Account.objects.create(email="inside@example.com")
            raise RuntimeError("handler failed")
        Account.objects.create(email="after@example.com")
    assert set(Account.objects.values_list("email", flat=True)) == {
        "before@example.com",
        "after@example.com",
    }


def test_an_error_drops_the_blocks_on_commit_callbacks_with_or_without_queries(
    django_capture_on_commit_callbacks: Any,
) -> None:
    ran: list[str] = []
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        transaction.on_commit(lambda: ran.append("outer"))
        with pytest.raises(RuntimeError), lazy_savepoint("default"):
            transaction.on_commit(lambda: ran.append("no queries, failed"))
            raise RuntimeError
        with pytest.raises(RuntimeError), lazy_savepoint("default"):
            Account.objects.create(email="x@example.com")
            transaction.on_commit(lambda: ran.append("queries, failed"))
            raise RuntimeError
        with lazy_savepoint("default"):
            transaction.on_commit(lambda: ran.append("no queries, ok"))
    assert ran == ["outer", "no queries, ok"]


def test_nested_atomic_inside_the_block_handles_its_own_error() -> None:
    Account.objects.create(id=1, email="taken@example.com")
    with transaction.atomic(), lazy_savepoint("default"):
        with contextlib.suppress(IntegrityError), transaction.atomic():
            Account.objects.create(id=1, email="duplicate@example.com")
        Account.objects.create(email="after-handled-error@example.com")
    assert Account.objects.filter(email="after-handled-error@example.com").exists()
    assert not Account.objects.filter(email="duplicate@example.com").exists()


def test_a_swallowed_database_error_is_not_a_success() -> None:
    Account.objects.create(id=1, email="taken@example.com")
    with transaction.atomic():
        with (
            pytest.raises(TransactionManagementError, match="without rolling it back"),
            lazy_savepoint("default"),
        ):
            Account.objects.create(email="lost@example.com")
            # A handler that swallows the error and carries on: Django marked the transaction.
            with contextlib.suppress(IntegrityError):
                Account.objects.create(id=1, email="duplicate@example.com")
        assert not connection.needs_rollback
        Account.objects.create(email="still-usable@example.com")  # the transaction goes on
    assert not Account.objects.filter(email="lost@example.com").exists()
    assert Account.objects.filter(email="still-usable@example.com").exists()


def test_an_error_django_raised_before_any_query_fails_only_the_block() -> None:
    """Found in review: Django marks the transaction for rollback without sending anything
    (a bad value); the handler swallows it and queries on. The batch must survive."""
    with transaction.atomic():
        Account.objects.create(email="before@example.com")
        with pytest.raises(TransactionManagementError), lazy_savepoint("default"):
            with contextlib.suppress(ValueError):
                Account.objects.create(id="abc", email="bad@example.com")  # type: ignore[misc]
            Account.objects.count()  # Django refuses: the transaction is marked
        assert not connection.needs_rollback
        Account.objects.create(email="after@example.com")
    assert set(Account.objects.values_list("email", flat=True)) == {
        "before@example.com",
        "after@example.com",
    }


@pytest.mark.postgres
def test_a_database_error_swallowed_behind_djangos_back_fails_only_the_block() -> None:
    """Found in review: PostgreSQL aborted the transaction but Django does not know, so
    RELEASE fails; as atomic() does, the block is rolled back and the error raised."""
    from django.db import DatabaseError

    with transaction.atomic():
        Account.objects.create(email="before@example.com")
        with pytest.raises(DatabaseError), lazy_savepoint("default"):
            Account.objects.create(email="inside@example.com")
            with contextlib.suppress(DatabaseError), connection.cursor() as cursor:
                cursor.execute("SELECT 1/0")
        assert not connection.needs_rollback
        Account.objects.create(email="after@example.com")
    assert set(Account.objects.values_list("email", flat=True)) == {
        "before@example.com",
        "after@example.com",
    }


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_it_refuses() -> None:
    with pytest.raises(RuntimeError, match="enclosing"), lazy_savepoint("default"):
        pass


class Noted(Event, event_type="test.savepoint_noted"):
    n: int


def test_a_batch_of_handlers_that_do_not_touch_the_database_sends_no_savepoint(
    register: Any,
) -> None:
    if connection.vendor == "sqlite":
        pytest.skip("SQLite commits each delivery on its own (no batch transaction)")
    seen: list[int] = []

    @register(Noted, name="test.savepoint_noop")
    def noop(event: Noted) -> None:
        seen.append(event.n)

    @register(Noted, name="test.savepoint_writer")
    def writer(event: Noted) -> None:
        Effect.objects.create(handler="writer", event_id=event.n)

    for n in range(3):
        emit(Noted(n=n))
    fan_out()
    token, claimed = claim()
    with CaptureQueriesContext(connection) as queries:
        counts = deliver("default", token, claimed)
    assert counts.delivered == 6
    assert sorted(seen) == [0, 1, 2]
    assert Effect.objects.filter(handler="writer").count() == 3
    # One SAVEPOINT + RELEASE per writing handler, none for the no-op one (plus the
    # chunk's own savepoint: this test runs inside the test case's transaction).
    statements = _savepoint_statements(queries)
    assert sum(s.upper().startswith("SAVEPOINT") for s in statements) == 3 + 1
    assert set(Delivery.objects.values_list("status", flat=True)) == {Delivery.Status.SUCCEEDED}
