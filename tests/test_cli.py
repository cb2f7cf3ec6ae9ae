"""The command-line twins of the admin actions: eventbus_retry and eventbus_replay."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from eventbus_app import emit
from eventbus_app.management.cli import Progress, cli_actor, parse_age, parse_moment
from eventbus_app.models import Delivery, OperatorAction, OutboxEvent
from eventbus_app.testing import drain
from tests.factories import DeadLetterFactory, DeliveryFactory, OutboxEventFactory
from tests.testapp.events import Work
from tests.testapp.models import Effect

pytestmark = pytest.mark.django_db
Status = Delivery.Status


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def dead_letters(n: int, key: str = "k") -> list[Delivery]:
    """Real dead letters of testapp.record (max attempts reached)."""
    for i in range(n):
        emit(Work(key=f"{key}{i}", fail_attempts=99))
    drain()
    return list(Delivery.objects.filter(status=Status.DEAD).order_by("pk"))


# --- helpers -------------------------------------------------------------------------------


def test_parse_age() -> None:
    assert parse_age("90s", "--x") == timedelta(seconds=90)
    assert parse_age("2h", "--x") == timedelta(hours=2)
    assert parse_age("3d", "--x") == timedelta(days=3)
    assert parse_age("1.5W", "--x") == timedelta(weeks=1.5)
    for bad in ("", "2", "h", "2 years", "-1d"):
        with pytest.raises(CommandError, match=r"--x .* is not an age"):
            parse_age(bad, "--x")


def test_parse_moment() -> None:
    assert parse_moment("2026-11-28", "--since").isoformat() == "2026-11-28T00:00:00+00:00"
    assert parse_moment("2026-11-28T10:30:00+01:00", "--since").hour == 10
    for bad in ("yesterday", "2026-13-01", "2026-02-30", "28/11/2026"):
        with pytest.raises(CommandError, match="--since"):
            parse_moment(bad, "--since")


def test_progress_bar_draws_on_the_stream() -> None:
    stream = io.StringIO()
    with Progress(4, label="retrying", enabled=True, stream=stream) as bar:
        bar.advance(2)
        bar.advance(2)
    text = stream.getvalue()
    assert "\rretrying [" + "." * 30 + "] 0/4" in text
    assert "] 2/4" in text
    assert text.endswith("[" + "#" * 30 + "] 4/4\n")
    quiet = io.StringIO()
    with Progress(4, label="x", enabled=False, stream=quiet) as bar:
        bar.advance(4)
    assert quiet.getvalue() == ""


def test_cli_actor_names_the_os_user() -> None:
    assert cli_actor().startswith("cli:") and len(cli_actor()) > 4


# --- eventbus_retry ------------------------------------------------------------------------


def test_retry_by_id_sends_a_dead_letter_back_and_records_the_actor() -> None:
    first, second = dead_letters(2)
    out, _ = run("eventbus_retry", "--id", str(first.pk))
    assert "Retried 1 delivery" in out
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, first.attempts) == (Status.PENDING, 0)
    assert second.status == Status.DEAD
    action = OperatorAction.objects.get()
    assert (action.kind, action.delivery_id) == ("retry", first.pk)
    assert action.actor == cli_actor()
    assert action.detail == {"command": "eventbus_retry"}


def test_retry_dry_run_lists_and_changes_nothing() -> None:
    dead = dead_letters(2)
    out, _ = run("eventbus_retry", "--handler", "testapp.record", "--dry-run")
    for d in dead:
        assert f"would retry #{d.pk} testapp.record for testapp.Work #{d.event_id}" in out
    assert "2 deliveries would be retried (dry run: nothing changed)" in out
    assert Delivery.objects.filter(status=Status.DEAD).count() == 2
    assert not OperatorAction.objects.exists()


def test_retry_filters_by_handler_event_type_and_exception() -> None:
    dead_letters(1)  # testapp.record, builtins.RuntimeError, testapp.Work
    key_error = DeadLetterFactory(
        handler="testapp.record_async",
        error_class="builtins.KeyError",
        event=OutboxEventFactory(event_type="shop.OrderPlaced"),
    )
    out, _ = run("eventbus_retry", "--exception", "KeyError", "--dry-run")
    assert "1 delivery would be retried" in out and f"#{key_error.pk} " in out
    out, _ = run("eventbus_retry", "--exception", "builtins.KeyError", "--dry-run")
    assert "1 delivery would be retried" in out
    out, _ = run("eventbus_retry", "--event-type", "testapp.Work", "--dry-run")
    assert "1 delivery would be retried" in out and f"#{key_error.pk} " not in out
    out, _ = run(
        "eventbus_retry", "--handler", "testapp.record", "--exception", "KeyError", "--dry-run"
    )
    assert "0 deliveries would be retried" in out
    out, _ = run("eventbus_retry", "--handler", "testapp.record_async")
    assert "Retried 1 delivery" in out
    key_error.refresh_from_db()
    assert key_error.status == Status.PENDING


def test_retry_by_age() -> None:
    now = timezone.now()
    old = DeadLetterFactory(finished_at=now - timedelta(days=3))
    recent = DeadLetterFactory(finished_at=now - timedelta(minutes=10))
    out, _ = run("eventbus_retry", "--older-than", "2d", "--dry-run")
    assert f"#{old.pk} " in out and f"#{recent.pk} " not in out
    out, _ = run("eventbus_retry", "--newer-than", "1h", "--dry-run")
    assert f"#{recent.pk} " in out and f"#{old.pk} " not in out
    out, _ = run("eventbus_retry", "--newer-than", "4d", "--older-than", "1d", "--dry-run")
    assert f"#{old.pk} " in out and f"#{recent.pk} " not in out


def test_retry_leaves_other_states_alone_unless_asked() -> None:
    failed = DeliveryFactory(status=Status.FAILED, attempts=2, error_class="builtins.OSError")
    done = DeliveryFactory(status=Status.SUCCEEDED, attempts=1)
    out, err = run("eventbus_retry", "--id", str(failed.pk), "--id", str(done.pk))
    assert "Retried 0 deliveries" in out
    assert f"Skipped delivery #{done.pk}: it is succeeded" in err
    assert f"Skipped delivery #{failed.pk}: it is failed" in err
    assert (
        "Skipped delivery #999999: no such delivery" in run("eventbus_retry", "--id", "999999")[1]
    )
    out, _ = run("eventbus_retry", "--id", str(failed.pk), "--include-failed")
    assert "Retried 1 delivery" in out
    failed.refresh_from_db()
    done.refresh_from_db()
    assert (failed.status, failed.attempts) == (Status.PENDING, 0)
    assert done.status == Status.SUCCEEDED


def test_retried_dead_letters_run_again_and_succeed(register: Any) -> None:
    from eventbus_app import Event

    class Ping(Event, event_type="t.Ping"):
        n: int

    up = {"on": False}

    @register(Ping, name="t.ping", max_attempts=2)
    def ping(event: Ping) -> None:
        if not up["on"]:
            raise TimeoutError("down")

    emit(Ping(n=1))
    drain()
    dead = Delivery.objects.get(handler="t.ping")
    assert (dead.status, dead.attempts) == (Status.DEAD, 2)
    up["on"] = True
    run("eventbus_retry", "--handler", "t.ping", "--exception", "TimeoutError")
    drain()
    dead.refresh_from_db()
    assert (dead.status, dead.attempts) == (Status.SUCCEEDED, 1)


def test_retry_progress_bar_on_long_runs() -> None:
    dead_letters(5)
    out, err = run("eventbus_retry", "--all", "--batch-size", "2")
    assert "Retried 5 deliveries" in out
    assert "] 2/5" in err and "] 4/5" in err and "] 5/5" in err
    assert OperatorAction.objects.filter(kind="retry").count() == 5
    _, quiet = run("eventbus_retry", "--all", "--batch-size", "2", "--progress", "never")
    assert quiet == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "Say what to retry"),
        (("--handler", "nope.missing"), "Unknown handler 'nope.missing'"),
        (("--older-than", "yesterday"), "--older-than 'yesterday' is not an age"),
        (("--newer-than", "5"), "--newer-than '5' is not an age"),
        (("--all", "--batch-size", "0"), "--batch-size must be at least 1"),
    ],
)
def test_retry_rejects_bad_input(args: tuple[str, ...], message: str) -> None:
    dead_letters(1)
    with pytest.raises(CommandError, match=message):
        run("eventbus_retry", *args)
    assert Delivery.objects.get(handler="testapp.record").status == Status.DEAD
    assert not OperatorAction.objects.exists()


def test_unknown_handler_error_lists_registered_ones() -> None:
    with pytest.raises(CommandError) as info:
        run("eventbus_retry", "--handler", "testapp.recrod")
    assert "testapp.record" in str(info.value)


def test_a_removed_handler_that_still_has_deliveries_is_accepted() -> None:
    ghost = DeadLetterFactory(handler="old.removed_handler")
    out, _ = run("eventbus_retry", "--handler", "old.removed_handler", "--dry-run")
    assert f"#{ghost.pk} old.removed_handler" in out


# --- eventbus_replay -----------------------------------------------------------------------


def test_replay_by_event_id_to_one_handler_keeps_history() -> None:
    record = emit(Work(key="r"))
    drain()
    out, _ = run("eventbus_replay", "--event-id", str(record.pk), "--handler", "testapp.record")
    assert "Replay scheduled: 1 delivery of 1 event" in out
    replayed = record.deliveries.get(handler="testapp.record")
    untouched = record.deliveries.get(handler="testapp.record_async")
    assert (replayed.status, replayed.replays) == (Status.PENDING, 1)
    assert untouched.status == Status.SUCCEEDED and untouched.replays == 0
    assert list(replayed.history.values_list("outcome", "replays")) == [("succeeded", 0)]
    drain()
    keys = Effect.objects.filter(event_id=record.pk, handler="testapp.record").values_list(
        "idempotency_key", flat=True
    )
    assert len(set(keys)) == 2  # ran twice, with two idempotency keys
    action = OperatorAction.objects.get(kind="replay")
    assert (action.actor, action.event_id, action.handler) == (
        cli_actor(),
        record.pk,
        "testapp.record",
    )


def test_replay_dry_run_by_type_and_dates() -> None:
    now = timezone.now()
    old = OutboxEventFactory(created_at=now - timedelta(days=10))
    new = OutboxEventFactory(created_at=now - timedelta(hours=1))
    other = OutboxEventFactory(event_type="testapp.Chain", payload={"n": 0}, created_at=now)
    since = (now - timedelta(days=2)).date().isoformat()
    out, _ = run("eventbus_replay", "--event-type", "testapp.Work", "--since", since, "--dry-run")
    assert f"#{new.pk} " in out and f"#{old.pk} " not in out and f"#{other.pk} " not in out
    assert "to testapp.record, testapp.record_async" in out
    assert "2 deliveries of 1 event would be replayed (dry run: nothing changed)" in out
    until = (now - timedelta(days=2)).isoformat()
    out, _ = run("eventbus_replay", "--until", until, "--handler", "testapp.record", "--dry-run")
    assert f"#{old.pk} " in out and f"#{new.pk} " not in out
    assert "1 delivery of 1 event would be replayed" in out
    assert not Delivery.objects.exists() and not OperatorAction.objects.exists()


def test_replay_creates_deliveries_for_handlers_registered_later(register: Any) -> None:
    record = emit(Work(key="late"))
    drain()

    @register(Work, name="t.late_handler")
    def late(event: Work) -> None:
        pass

    out, _ = run("eventbus_replay", "--event-id", str(record.pk), "--handler", "t.late_handler")
    assert "Replay scheduled: 1 delivery" in out
    drain()
    assert record.deliveries.get(handler="t.late_handler").status == Status.SUCCEEDED


def test_replay_progress_bar_on_long_runs() -> None:
    for i in range(5):
        emit(Work(key=f"p{i}"))
    drain()
    out, err = run("eventbus_replay", "--all", "--batch-size", "2", "--handler", "testapp.record")
    assert "Replay scheduled: 5 deliveries of 5 events" in out
    assert "replaying [" in err and "] 5/5" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "Say what to replay"),
        (("--event-id", "424242"), "No event with id 424242"),
        (("--event-type", "no.SuchType"), "Unknown event type 'no.SuchType'"),
        (("--since", "last tuesday"), "--since 'last tuesday' is not a date"),
        (("--until", "2026-02-30"), "--until '2026-02-30' is not a valid date"),
        (("--since", "2026-11-02", "--until", "2026-11-01"), "must be before --until"),
        (("--all", "--handler", "nope.missing"), "Unknown handler 'nope.missing'"),
    ],
)
def test_replay_rejects_bad_input(args: tuple[str, ...], message: str) -> None:
    emit(Work(key="x"))
    drain()
    with pytest.raises(CommandError, match=message):
        run("eventbus_replay", *args)
    assert not OperatorAction.objects.exists()
    assert set(Delivery.objects.values_list("replays", flat=True)) == {0}


def test_replay_leaves_pending_deliveries_alone() -> None:
    record = OutboxEventFactory()
    DeliveryFactory(event=record, handler="testapp.record", status=Status.PENDING)
    out, _ = run("eventbus_replay", "--event-id", str(record.pk), "--handler", "testapp.record")
    assert "Replay scheduled: 0 deliveries" in out
    assert OutboxEvent.objects.count() == 1


# --- as a real process ---------------------------------------------------------------------


@pytest.mark.subprocess
def test_commands_in_a_real_process_exit_codes_and_output(
    manage: Callable[..., Any],
) -> None:
    for i in range(3):
        emit(Work(key=f"s{i}", fail_attempts=99))
    drain()
    bad = manage("eventbus_retry", "--handler", "nope.missing")
    assert bad.returncode == 1
    assert "Unknown handler 'nope.missing'" in bad.stderr
    bad_date = manage("eventbus_replay", "--since", "someday")
    assert bad_date.returncode == 1 and "is not a date" in bad_date.stderr
    dry = manage("eventbus_retry", "--all", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "3 deliveries would be retried" in dry.stdout
    done = manage("eventbus_retry", "--exception", "RuntimeError", "--batch-size", "1")
    assert done.returncode == 0, done.stderr
    assert "Retried 3 deliveries" in done.stdout
    assert "retrying [" in done.stderr and "] 3/3" in done.stderr
    assert Delivery.objects.filter(status=Status.PENDING).count() == 3
    assert set(OperatorAction.objects.values_list("actor", flat=True)) == {cli_actor()}
    replay = manage(
        "eventbus_replay", "--event-type", "testapp.Work", "--handler", "testapp.record_async"
    )
    assert replay.returncode == 0, replay.stderr
    assert "Replay scheduled: 3 deliveries of 3 events" in replay.stdout
