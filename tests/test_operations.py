"""operations.py: retry, replay, pause/resume, failure groups and canary retries, without
the admin (the admin and the management commands are thin layers over these)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from eventbus_app import Event, emit, operations
from eventbus_app.models import (
    Delivery,
    DeliveryAttempt,
    HandlerState,
    OperatorAction,
    OutboxEvent,
    RetryCampaign,
)
from eventbus_app.testing import drain
from tests.factories import DeadLetterFactory, DeliveryFactory, OutboxEventFactory
from tests.testapp.events import Work
from tests.testapp.models import Effect

Status = Delivery.Status
Camp = RetryCampaign.State


class Call(Event, event_type="ops.Call"):
    n: int


@dataclass
class Api:
    """A fake downstream API: ``down`` fails every call, ``bad`` fails calls for those n."""

    down: bool = True
    bad: set[int] = field(default_factory=set)
    calls: list[int] = field(default_factory=list)


@pytest.fixture
def api(register: Any) -> Iterator[Api]:
    state = Api()

    @register(Call, name="ops.api", max_attempts=2)
    def call_api(event: Call) -> None:
        state.calls.append(event.n)
        if state.down or event.n in state.bad:
            raise ConnectionError(f"api refused {event.n}")

    yield state


def dead_calls(n: int) -> list[Delivery]:
    for i in range(n):
        emit(Call(n=i))
    drain()
    dead = list(Delivery.objects.filter(handler="ops.api", status=Status.DEAD).order_by("pk"))
    assert len(dead) == n
    return dead


# --- retry ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_retry_only_touches_dead_and_failed_deliveries() -> None:
    dead = DeadLetterFactory()
    failed = DeliveryFactory(status=Status.FAILED, attempts=2)
    done = DeliveryFactory(status=Status.SUCCEEDED, attempts=1)
    pending = DeliveryFactory(status=Status.PENDING)
    count = operations.retry_deliveries(Delivery.objects.all(), actor="alice")
    assert count == 2
    for d in (dead, failed, done, pending):
        d.refresh_from_db()
    assert (dead.status, dead.attempts, dead.finished_at) == (Status.PENDING, 0, None)
    assert (failed.status, failed.attempts) == (Status.PENDING, 0)
    assert (done.status, done.attempts) == (Status.SUCCEEDED, 1)
    assert pending.status == Status.PENDING
    assert dead.next_attempt_at is not None and dead.next_attempt_at <= timezone.now()
    actions = OperatorAction.objects.order_by("delivery_id")
    assert [(a.kind, a.actor, a.delivery_id) for a in actions] == [
        ("retry", "alice", dead.pk),
        ("retry", "alice", failed.pk),
    ]
    assert operations.retry_deliveries([done.pk, pending.pk], actor="alice") == 0


@pytest.mark.django_db
def test_a_retried_dead_letter_gets_a_full_set_of_attempts_and_keeps_its_history(
    api: Api,
) -> None:
    (dead,) = dead_calls(1)
    assert dead.attempts == 2 and dead.history.count() == 2
    operations.retry_deliveries([dead.pk], actor="bob")
    drain()  # still down: both fresh attempts are used up again
    dead.refresh_from_db()
    assert (dead.status, dead.attempts) == (Status.DEAD, 2)
    assert api.calls == [0, 0, 0, 0]
    outcomes = list(dead.history.values_list("attempt", "outcome"))
    assert outcomes == [(1, "failed"), (2, "dead"), (1, "failed"), (2, "dead")]
    api.down = False
    operations.retry_deliveries([dead], actor="bob")  # model instances work as well as ids
    drain()
    dead.refresh_from_db()
    assert (dead.status, dead.attempts, dead.last_error) == (Status.SUCCEEDED, 1, "")


@pytest.mark.django_db
def test_retry_nudges_the_dispatcher_after_commit(
    django_capture_on_commit_callbacks: Any,
) -> None:
    from django_q.models import OrmQ

    dead = DeadLetterFactory()
    before = OrmQ.objects.count()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        operations.retry_deliveries([dead.pk], actor="alice")
    assert len(callbacks) == 1
    assert OrmQ.objects.count() == before + 1  # a dispatch task is queued for the workers
    with django_capture_on_commit_callbacks() as none:
        operations.retry_deliveries([dead.pk], actor="alice")  # now pending: nothing to do
    assert none == []


@pytest.mark.django_db
def test_retry_rolls_back_with_the_callers_transaction() -> None:
    dead = DeadLetterFactory()
    with pytest.raises(RuntimeError), transaction.atomic():
        operations.retry_deliveries([dead.pk], actor="alice")
        raise RuntimeError("caller fails")
    dead.refresh_from_db()
    assert dead.status == Status.DEAD
    assert not OperatorAction.objects.exists()


@pytest.mark.django_db(databases=["default", "other"])
def test_retry_on_another_database_alias() -> None:
    event = OutboxEventFactory.build()
    event.save(using="other")
    dead = DeadLetterFactory.build(event=event)
    dead.save(using="other")
    assert operations.retry_deliveries([dead.pk], actor="x", using="other") == 1
    assert Delivery.objects.using("other").get(pk=dead.pk).status == Status.PENDING
    assert OperatorAction.objects.using("other").count() == 1
    assert not OperatorAction.objects.using("default").exists()


# --- replay --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_replay_reruns_succeeded_handlers_and_keeps_the_earlier_outcome() -> None:
    record = emit(Work(key="again"))
    drain()
    assert operations.replay_events([record], handlers=None, actor="carol") == 2
    for d in record.deliveries.all():
        assert (d.status, d.replays, d.attempts) == (Status.PENDING, 1, 0)
        assert list(d.history.values_list("outcome", "replays", "attempt")) == [("succeeded", 0, 1)]
    drain()
    operations.replay_events(OutboxEvent.objects.filter(pk=record.pk), actor="carol")
    drain()
    d = record.deliveries.get(handler="testapp.record")
    assert (d.status, d.replays) == (Status.SUCCEEDED, 2)
    assert list(d.history.values_list("outcome", "replays")) == [
        ("succeeded", 0),
        ("succeeded", 1),
    ]
    keys = Effect.objects.filter(event_id=record.pk, handler="testapp.record").values_list(
        "idempotency_key", flat=True
    )
    assert len(keys) == 3 and len(set(keys)) == 3  # each run had its own idempotency key
    actions = OperatorAction.objects.filter(kind="replay", event=record)
    assert actions.count() == 2
    assert actions.first().detail == {"handlers": ["testapp.record", "testapp.record_async"]}  # type: ignore[union-attr]


@pytest.mark.django_db
def test_replay_to_chosen_handlers_only() -> None:
    record = emit(Work(key="some"))
    drain()
    assert operations.replay_events([record.pk], handlers=["testapp.record_async"], actor="x") == 1
    assert record.deliveries.get(handler="testapp.record").replays == 0
    assert record.deliveries.get(handler="testapp.record_async").status == Status.PENDING
    assert operations.replay_events([record.pk], handlers=["no.such"], actor="x") == 0
    assert OperatorAction.objects.count() == 1


@pytest.mark.django_db
def test_replaying_a_dead_letter_archives_its_failure_once(api: Api) -> None:
    (dead,) = dead_calls(1)
    assert dead.history.count() == 2  # attempt 1 failed, attempt 2 dead: already recorded
    api.down = False
    operations.replay_events([dead.event_id], actor="x")
    dead.refresh_from_db()
    assert (dead.status, dead.replays, dead.last_error, dead.error_class) == (
        Status.PENDING,
        1,
        "",
        "",
    )
    assert dead.history.count() == 2  # not archived a second time
    drain()
    dead.refresh_from_db()
    assert dead.status == Status.SUCCEEDED


@pytest.mark.django_db
def test_replay_creates_deliveries_for_handlers_registered_after_the_event(
    register: Any,
) -> None:
    record = emit(Work(key="old"))
    drain()
    seen: list[str] = []

    @register(Work, name="ops.newcomer")
    def newcomer(event: Work) -> None:
        seen.append(event.key)

    assert "ops.newcomer" in operations.replay_handlers(record)
    assert operations.replay_events([record], handlers=["ops.newcomer"], actor="x") == 1
    drain()
    assert seen == ["old"]
    assert record.deliveries.get(handler="ops.newcomer").status == Status.SUCCEEDED


@pytest.mark.django_db
def test_replay_leaves_pending_and_running_deliveries_alone() -> None:
    event = OutboxEventFactory()
    DeliveryFactory(event=event, handler="testapp.record", status=Status.RUNNING)
    DeliveryFactory(event=event, handler="testapp.record_async", status=Status.PENDING)
    assert operations.replay_events([event], actor="x") == 0
    assert not OperatorAction.objects.exists()
    assert not DeliveryAttempt.objects.exists()


# --- pause and resume ----------------------------------------------------------------------


@pytest.mark.django_db
def test_a_paused_handler_waits_and_runs_after_resume() -> None:
    operations.pause_handler("testapp.record", actor="dave")
    state = HandlerState.objects.get()
    assert (state.handler, state.paused, state.changed_by) == ("testapp.record", True, "dave")
    record = emit(Work(key="waits"))
    drain()
    drain()
    waiting = record.deliveries.get(handler="testapp.record")
    assert (waiting.status, waiting.attempts) == (Status.PENDING, 0)  # waits, never fails
    assert record.deliveries.get(handler="testapp.record_async").status == Status.SUCCEEDED
    operations.resume_handler("testapp.record", actor="dave")
    drain()
    waiting.refresh_from_db()
    assert (waiting.status, waiting.attempts) == (Status.SUCCEEDED, 1)
    assert list(OperatorAction.objects.order_by("id").values_list("kind", "actor", "handler")) == [
        ("pause", "dave", "testapp.record"),
        ("resume", "dave", "testapp.record"),
    ]


@pytest.mark.django_db
def test_pausing_holds_retries_of_failed_deliveries_too() -> None:
    record = emit(Work(key="flaky", fail_attempts=1))
    from eventbus_app.dispatch import deliver, fan_out_leased

    _, token, leased = fan_out_leased()
    deliver("default", token, leased)  # the first attempts: testapp.record fails once
    assert record.deliveries.get(handler="testapp.record").status == Status.FAILED
    operations.pause_handler("testapp.record", actor="x")
    drain()
    d = record.deliveries.get(handler="testapp.record")
    assert (d.status, d.attempts) == (Status.FAILED, 1)  # due, but it waits
    operations.resume_handler("testapp.record", actor="x")
    drain()
    d.refresh_from_db()
    assert d.status == Status.SUCCEEDED


# --- failure groups ------------------------------------------------------------------------


@pytest.mark.django_db
def test_failure_groups_count_dead_letters_by_handler_and_exception() -> None:
    now = timezone.now()
    for age in (1, 5, 3):
        DeadLetterFactory(finished_at=now - timedelta(hours=age))
    DeadLetterFactory(error_class="builtins.KeyError", finished_at=now)
    DeadLetterFactory(handler="testapp.record_async", finished_at=now)
    DeliveryFactory(status=Status.FAILED, error_class="builtins.RuntimeError")  # not dead
    groups = operations.failure_groups()
    assert [(g["handler"], g["error_class"], g["count"]) for g in groups] == [
        ("testapp.record", "builtins.RuntimeError", 3),
        ("testapp.record", "builtins.KeyError", 1),
        ("testapp.record_async", "builtins.RuntimeError", 1),
    ]
    biggest = groups[0]
    assert biggest["oldest"] == now - timedelta(hours=5)
    assert biggest["newest"] == now - timedelta(hours=1)
    assert operations.retry_group("testapp.record", "builtins.RuntimeError", actor="x") == 3
    assert [g["count"] for g in operations.failure_groups()] == [1, 1]


# --- canary retries ------------------------------------------------------------------------


@pytest.mark.django_db
def test_canary_waits_for_the_canary_then_releases_at_the_rate(api: Api) -> None:
    dead = dead_calls(5)
    api.down = False
    campaign = operations.start_canary("ops.api", "builtins.ConnectionError", rate=1, actor="eve")
    assert (campaign.state, campaign.total, campaign.released) == (Camp.CANARY, 5, 1)
    assert campaign.canary_id == dead[0].pk  # the oldest dead letter goes first
    assert operations.advance_campaign(campaign.pk).released == 1  # canary not run yet
    drain()
    campaign = operations.advance_campaign(campaign.pk)
    # The canary succeeded: releasing, but at 1/s nothing more is due yet.
    assert (campaign.state, campaign.released) == (Camp.RELEASING, 1)
    RetryCampaign.objects.filter(pk=campaign.pk).update(
        last_release_at=timezone.now() - timedelta(seconds=2.5)
    )
    campaign = operations.advance_campaign(campaign.pk)
    assert campaign.released == 3  # 2.5 s at 1/s: two more
    assert Delivery.objects.filter(handler="ops.api", status=Status.PENDING).count() == 2
    drain()
    RetryCampaign.objects.filter(pk=campaign.pk).update(
        last_release_at=timezone.now() - timedelta(seconds=60)
    )
    campaign = operations.advance_campaign(campaign.pk)
    assert campaign.released == 5 and campaign.state == Camp.RELEASING
    drain()
    campaign = operations.advance_campaign(campaign.pk)
    assert campaign.state == Camp.DONE
    assert Delivery.objects.filter(handler="ops.api", status=Status.SUCCEEDED).count() == 5
    retries = OperatorAction.objects.filter(kind="retry", actor="eve")
    assert retries.count() == 5
    assert {a.detail["campaign"] for a in retries} == {campaign.pk}


@pytest.mark.django_db
def test_canary_stops_at_the_first_new_failure_after_the_canary(api: Api) -> None:
    dead = dead_calls(6)
    api.down = False
    api.bad = {2}  # the third oldest still fails
    campaign = operations.start_canary("ops.api", "builtins.ConnectionError", rate=1, actor="eve")
    drain()
    campaign = operations.advance_campaign(campaign.pk)
    assert campaign.state == Camp.RELEASING
    RetryCampaign.objects.filter(pk=campaign.pk).update(
        last_release_at=timezone.now() - timedelta(seconds=2.5)
    )
    campaign = operations.advance_campaign(campaign.pk)
    assert campaign.released == 3  # n=0 (canary), 1, 2
    drain()  # n=2 fails again
    RetryCampaign.objects.filter(pk=campaign.pk).update(
        last_release_at=timezone.now() - timedelta(seconds=60)
    )
    campaign = operations.advance_campaign(campaign.pk)
    assert campaign.state == Camp.STOPPED
    assert f"Delivery #{dead[2].pk} failed again" in campaign.stopped_reason
    assert "api refused 2" in campaign.stopped_reason
    assert campaign.released == 3
    # Nothing after the failure was released; later steps change nothing.
    for d in dead[3:]:
        d.refresh_from_db()
        assert d.status == Status.DEAD
    assert operations.advance_campaign(campaign.pk).state == Camp.STOPPED
    assert not operations.active_campaigns().exists()
    assert sorted(set(api.calls[6 * 2 :])) == [0, 1, 2]


@pytest.mark.django_db
def test_canary_that_fails_stops_the_campaign_with_nothing_else_released(api: Api) -> None:
    dead_calls(3)
    campaign = operations.start_canary("ops.api", "builtins.ConnectionError", rate=100, actor="x")
    drain()
    campaign = operations.advance_campaign(campaign.pk)
    assert (campaign.state, campaign.released) == (Camp.STOPPED, 1)
    assert Delivery.objects.filter(handler="ops.api", status=Status.DEAD).count() == 3


@pytest.mark.django_db
@pytest.mark.parametrize("rate", [0, -1, float("inf"), float("nan")])
def test_canary_rejects_a_rate_that_is_not_a_positive_number(rate: float) -> None:
    DeadLetterFactory()
    with pytest.raises(ValueError, match="rate"):
        operations.start_canary("testapp.record", "builtins.RuntimeError", rate=rate, actor="x")
    assert not RetryCampaign.objects.exists()
    assert Delivery.objects.get().status == Status.DEAD


@pytest.mark.django_db
def test_canary_of_an_empty_group_is_refused() -> None:
    with pytest.raises(ValueError, match="No dead letters"):
        operations.start_canary("testapp.record", "builtins.RuntimeError", rate=1, actor="x")


@pytest.mark.django_db
def test_the_campaign_task_drives_a_canary_in_process(api: Api, settings: Any) -> None:
    """tasks.campaign (what django-q2 runs) advances the campaign until it is done."""
    from eventbus_app import tasks

    settings.EVENTBUS = {**settings.EVENTBUS, "DISPATCH_SECONDS": 0.3}
    dead_calls(3)
    api.down = False
    campaign = operations.start_canary("ops.api", "builtins.ConnectionError", rate=50, actor="x")
    drain()
    assert tasks.campaign(campaign.pk) is True  # released the rest; waits for them to run
    campaign.refresh_from_db()
    assert (campaign.state, campaign.released) == (Camp.RELEASING, 3)
    drain()
    assert tasks.campaign(campaign.pk) is False
    campaign.refresh_from_db()
    assert campaign.state == Camp.DONE


@pytest.mark.subprocess
def test_canary_in_a_real_qcluster_stops_at_the_first_new_failure(
    spawn: Callable[..., Any],
) -> None:
    """start_canary enqueues the campaign task; a real cluster runs deliveries and campaign."""
    with transaction.atomic():
        for i in range(6):
            emit(Work(key=f"c{i}", fail_attempts=99))
    from eventbus_app.dispatch import run

    run()
    dead = list(Delivery.objects.filter(status=Status.DEAD).order_by("finished_at", "pk"))
    assert len(dead) == 6
    # The operator fixed the data of all but the third oldest event.
    for d in dead:
        if d is not dead[2]:
            OutboxEvent.objects.filter(pk=d.event_id).update(
                payload={**d.event.payload, "fail_attempts": 0}
            )
    cluster = spawn("qcluster")
    campaign = operations.start_canary(
        "testapp.record", "builtins.RuntimeError", rate=0.5, actor="ops"
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        campaign.refresh_from_db()
        if not campaign.active:
            break
        time.sleep(0.2)
    else:
        cluster.kill()
        print(cluster.communicate()[0][-4000:])
        raise AssertionError(f"campaign still {campaign.state} after 90 s")
    assert campaign.state == Camp.STOPPED, campaign.stopped_reason
    assert f"Delivery #{dead[2].pk} failed again" in campaign.stopped_reason
    assert campaign.released == 3
    assert {d.status for d in Delivery.objects.filter(pk__in=[x.pk for x in dead[3:]])} == {
        Status.DEAD
    }
    assert Delivery.objects.get(pk=dead[0].pk).status == Status.SUCCEEDED


@pytest.mark.django_db
def test_one_canary_per_group_at_a_time() -> None:
    for _ in range(3):
        DeadLetterFactory()
    first = operations.start_canary("testapp.record", "builtins.RuntimeError", rate=1, actor="a")
    with pytest.raises(ValueError, match=f"already running \\(#{first.pk}\\)"):
        operations.start_canary("testapp.record", "builtins.RuntimeError", rate=1, actor="b")
    assert RetryCampaign.objects.count() == 1
    assert operations.cancel_campaign(first.pk, actor="a")
    assert not operations.cancel_campaign(first.pk, actor="a")  # already cancelled
    second = operations.start_canary("testapp.record", "builtins.RuntimeError", rate=1, actor="b")
    assert second.state == Camp.CANARY and second.total == 2


# --- who drives a canary retry (issue 10, defect 4) ------------------------------------------


def _queued_campaign_tasks() -> list[tuple[Any, ...]]:
    """The campaign tasks waiting in django-q2's ORM queue (the test settings' broker)."""
    from django_q.models import OrmQ

    from eventbus_app import tasks

    return [q.task["args"] for q in OrmQ.objects.all() if q.task["func"] == tasks.CAMPAIGN]


@pytest.mark.django_db
def test_sweeps_start_no_further_canary_chains(
    api: Api, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    """Found in review: every sweep called the campaign task, which enqueued a successor:
    1, 2, 3, 4 chains after three sweeps, each holding a worker."""
    from eventbus_app import tasks

    settings.EVENTBUS = {**settings.EVENTBUS, "DISPATCH_SECONDS": 0.2}
    dead_calls(3)
    with django_capture_on_commit_callbacks(execute=True):
        campaign = operations.start_canary("ops.api", "builtins.ConnectionError", rate=1, actor="x")
    assert len(_queued_campaign_tasks()) == 1  # the chain start_canary starts
    for _ in range(3):
        tasks.sweep()
    assert len(_queued_campaign_tasks()) == 1
    campaign.refresh_from_db()
    assert campaign.active


@pytest.mark.django_db
def test_the_sweep_restarts_a_campaign_whose_task_was_lost_and_ends_the_old_chain(
    api: Api, settings: Any
) -> None:
    from django_q.models import OrmQ

    from eventbus_app import campaigns, tasks

    settings.EVENTBUS = {**settings.EVENTBUS, "DISPATCH_SECONDS": 0.2}
    dead_calls(3)
    api.down = False
    campaign = operations.start_canary("ops.api", "builtins.ConnectionError", rate=1, actor="x")
    old_token = campaigns.token_of(campaign)
    OrmQ.objects.all().delete()  # the broker lost the campaign's task
    tasks.sweep()
    assert _queued_campaign_tasks() == []  # not stale yet: its task may just be queued
    RetryCampaign.objects.filter(pk=campaign.pk).update(
        updated_at=timezone.now() - timedelta(minutes=5)
    )
    tasks.sweep()
    queued = _queued_campaign_tasks()
    assert len(queued) == 1
    campaign_id, using, token = queued[0]
    assert (campaign_id, using) == (campaign.pk, "default") and token != old_token
    tasks.sweep()
    assert len(_queued_campaign_tasks()) == 1  # restarted once, not once per sweep
    OrmQ.objects.all().delete()
    # The lost task, had it turned up after all, ends without a successor ...
    assert tasks.campaign(campaign.pk, "default", old_token) is False
    assert _queued_campaign_tasks() == []
    # ... and the new one drives the campaign and hands over to one successor.
    assert tasks.campaign(campaign.pk, "default", token) is True
    assert len(_queued_campaign_tasks()) == 1


def test_tasks_and_operations_do_not_import_each_other() -> None:
    """STYLE.md: a lower layer (campaigns.py) serves both; neither imports the other."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "eventbus_app"

    def imported(module: str) -> set[str]:
        names: set[str] = set()
        for node in ast.walk(ast.parse((root / f"{module}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names.add(node.module or "")
                names.update(alias.name for alias in node.names if not node.module)
        return names

    assert "operations" not in imported("tasks")
    assert "tasks" not in imported("campaigns") and "operations" not in imported("campaigns")
