"""Flow control in the claim: pause, fleet-wide concurrency limits, per-key limits, rate limits, and
the answer to "why isn't it running?" (docs/flow-control.md). Store level, on real connections."""

from __future__ import annotations

import datetime as dt
import threading

import psycopg
import pytest
from django.db import connection, transaction
from django.utils import timezone

from queueapp import models, store
from queueapp.sql import QUERIES
from tests import tasks
from tests.conftest import make_worker

pytestmark = pytest.mark.django_db(transaction=True)


def session_for(made: list[store.WorkerSession], queues: list[str]) -> store.WorkerSession:
    session = store.WorkerSession(worker_id=make_worker(queues).id, queues=queues)
    made.append(session)
    return session


def claim(
    session: store.WorkerSession, limit: int, *, view: store.FlowView | None = None
) -> list[store.TaskRow]:
    """A worker's round, with the flow view it holds: by default a fresh look, as its listener gives."""
    return session.round([], limit, view=session.flow_view() if view is None else view)[1]


def settle(name: str, **values: object) -> None:
    models.QueueControl.objects.update_or_create(name=name, defaults=values)


def running(queue: str) -> int:
    return models.LiveTask.objects.filter(queue_name=queue, status="RUNNING").count()


def test_a_concurrency_limit_holds_across_workers_and_the_plain_claim_leaves_the_queue(sessions) -> None:
    settle("reports", concurrency_limit=3)
    tasks.add.using(queue_name="reports").enqueue_many(((i, i), {}) for i in range(10))
    tasks.add.enqueue_many(((i, i), {}) for i in range(2))
    first = session_for(sessions, ["reports", "default"])
    second = session_for(sessions, ["reports"])

    view = first.flow_view()
    assert view.queues == {"reports"}  # the plain claim is given "default" only
    claimed = [row.queue_name for row in claim(first, 10, view=view)]
    assert sorted(claimed) == ["default"] * 2 + ["reports"] * 3
    assert claim(second, 10) == []
    assert running("reports") == 3


def test_limits_of_two_queues_claimed_together_hold_each(sessions) -> None:
    settle("reports", concurrency_limit=2)
    settle("emails", concurrency_limit=1)
    for queue in ("reports", "emails"):
        tasks.add.using(queue_name=queue).enqueue_many(((i, i), {}) for i in range(5))
    worker = session_for(sessions, ["reports", "emails"])  # claim_flow_tasks, not claim_flow_queue

    assert sorted(row.queue_name for row in claim(worker, 10)) == ["emails", "reports", "reports"]
    assert claim(worker, 10) == []


PLANS = """
SELECT generic_plans, custom_plans FROM pg_prepared_statements
WHERE statement LIKE %s AND NOT from_sql
"""


def test_the_flow_claim_keeps_its_generic_plan_and_the_plain_claim_after_it_does_not(sessions) -> None:
    """Planned afresh, claim_flow_tasks cost twice its cached plan (flow_plan forces the generic one);
    the plain claim after it in the same round goes back to the plan cache's choice (plain_plan)."""
    settle("reports", concurrency_limit=1)
    settle("emails", concurrency_limit=1)
    for queue in ("reports", "emails", "default"):
        tasks.add.using(queue_name=queue).enqueue_many(((i, i), {}) for i in range(30))
    worker = session_for(sessions, ["reports", "emails", "default"])
    view = worker.flow_view()
    for _ in range(8):  # the plan cache decides after five runs
        assert worker.round([], 3, view=view)[1]
    assert worker.conn is not None
    (flow,) = worker.conn.execute(PLANS, ["%The flow-controlled claim, step 2,%"]).fetchall()
    (plain,) = worker.conn.execute(PLANS, ["%The CTE is an optimisation fence%"]).fetchall()
    assert flow == (8, 0)
    assert plain[1] >= 5  # the plan cache's own choice: custom plans first, as in a round without


RUNNING_REPORTS = "SELECT count(*) FROM queueapp_task_live WHERE status = 'RUNNING' AND queue_name = %s"


def test_racing_claimers_never_exceed_the_limit(sessions) -> None:
    settle("reports", concurrency_limit=3)
    tasks.add.using(queue_name="reports").enqueue_many(((i, i), {}) for i in range(200))
    workers = [session_for(sessions, ["reports"]) for _ in range(8)]
    seen: list[int] = []
    start = threading.Barrier(len(workers))

    def churn(session: store.WorkerSession) -> None:
        start.wait()
        held: list[store.Success] = []
        with session.connect() as probe:
            for _ in range(25):
                rows = session.round(held, 3, view=session.flow_view())[1]
                held = [store.Success(row.id, row.attempts, "null") for row in rows]
                seen.append(probe.execute(RUNNING_REPORTS, ["reports"]).fetchone()[0])

    threads = [threading.Thread(target=churn, args=(session,)) for session in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert max(seen) == 3  # reached, never passed
    assert models.Task.objects.filter(queue_name="reports", status="SUCCESSFUL").count() > 30


def test_a_key_at_its_limit_does_not_block_other_keys_behind_it(sessions) -> None:
    worker = session_for(sessions, ["reports"])
    before = worker.flow_view()  # "reports" is a plain queue yet
    for key in ["a", "a", "a", "b", "b", "c"]:
        tasks.add.using(queue_name="reports", concurrency_key=key).enqueue(1, 2)

    assert models.QueueControl.objects.get(name="reports").has_keys  # the enqueue marked the queue
    assert claim(worker, 10, view=before) == []  # a view from before: the plain claim is fenced off
    first = claim(worker, 10)
    assert sorted(
        models.LiveTask.objects.filter(id__in=[r.id for r in first]).values_list("concurrency_key", flat=True)
    ) == ["a", "b", "c"]
    assert claim(worker, 10) == []
    settle("reports", key_concurrency=2)
    assert len(claim(worker, 10)) == 2  # one more a and one more b


def test_a_keyed_bulk_enqueue_marks_its_queue() -> None:
    tasks.add.using(queue_name="emails", concurrency_key="customer-7").enqueue_many(
        ((i, i), {}) for i in range(20)
    )
    assert models.QueueControl.objects.get(name="emails").has_keys
    assert set(models.LiveTask.objects.values_list("concurrency_key", flat=True)) == {"customer-7"}


def test_a_paused_queue_is_not_claimed_and_resumes(sessions) -> None:
    tasks.add.using(queue_name="reports").enqueue_many(((i, i), {}) for i in range(3))
    worker = session_for(sessions, ["reports"])
    before = worker.flow_view()
    store.set_paused("reports", True)

    assert claim(worker, 10, view=before) == []  # a view from before the pause: fenced off
    assert claim(worker, 10) == []
    assert worker.flow_queues == [store.FlowQueue("reports", True, None)]
    tasks.add.using(queue_name="reports").enqueue(1, 1)  # enqueueing still works
    store.set_paused("reports", False)
    assert worker.flow_view().queues == set()
    assert len(claim(worker, 10)) == 4  # no limit left: the plain claim takes it again


@pytest.mark.parametrize("change", ["pause", "first keyed task"])
def test_a_change_of_flow_control_left_open_holds_up_no_heartbeat(
    sessions, raw_conn: psycopg.Connection, change: str
) -> None:
    """A transaction that changes a queue's flow control and stays open (an admin's, an enqueuer's)
    locks no worker row: the heartbeats of the queue's workers go on at once. The fence holds all the
    same: from its commit on, a plain claim with a view from before claims nothing."""
    tasks.add.using(queue_name="reports").enqueue_many(((i, i), {}) for i in range(3))
    worker = session_for(sessions, ["reports"])
    before = worker.flow_view()
    raw_conn.execute("SET lock_timeout = '2s'")  # before the fix: LockNotAvailable after 2 s
    with transaction.atomic():
        if change == "pause":
            store.set_paused("reports", True)
        else:
            put("reports", key="customer-7")
        beat = raw_conn.execute(QUERIES["beat_worker"], {"id": worker.worker_id}).fetchone()
        assert beat == ("ALIVE",)
    assert claim(worker, 10, view=before) == []
    if change == "pause":
        assert claim(worker, 10) == []
    else:
        assert len(claim(worker, 10)) == 4  # through the flow-controlled claim, the key's one among them


def test_a_rate_limit_spends_tokens_and_refills_by_the_database_clock(sessions) -> None:
    settle("reports", rate_limit=1, rate_period=3600.0)
    tasks.add.using(queue_name="reports").enqueue_many(((i, i), {}) for i in range(5))
    worker = session_for(sessions, ["reports"])

    assert len(claim(worker, 5)) == 1  # a full bucket holds one token at this rate
    assert claim(worker, 5) == []
    assert worker.flow_queues == [store.FlowQueue("reports", False, 1 / 3600)]
    with connection.cursor() as cursor:  # an hour passes, as far as the bucket can tell
        cursor.execute("UPDATE queueapp_queuecontrol SET tokens_at = tokens_at - interval '1 hour'")
    assert len(claim(worker, 5)) == 1
    assert claim(worker, 5) == []


def keys_of(rows: list[store.TaskRow]) -> list[str | None]:
    return list(
        models.LiveTask.objects.filter(id__in=[row.id for row in rows]).values_list(
            "concurrency_key", flat=True
        )
    )


def test_a_rate_limit_per_key_holds_each_key_to_its_own_bucket(sessions) -> None:
    settle("reports", key_concurrency=10, key_rate_limit=2, key_rate_period=3600.0)
    for key in ["a", "a", "a", "b", "b", "b"]:
        tasks.add.using(queue_name="reports", concurrency_key=key).enqueue(1, 2)
    tasks.add.using(queue_name="reports").enqueue(3, 4)  # no key: no key's rate holds it
    worker = session_for(sessions, ["reports"])

    first = claim(worker, 10)
    keys = models.LiveTask.objects.filter(id__in=[row.id for row in first]).values_list(
        "concurrency_key", flat=True
    )
    assert sorted(keys, key=str) == [None, "a", "b"]  # a full bucket holds one token at this rate
    assert claim(worker, 10) == []
    tasks.add.using(queue_name="reports", concurrency_key="c").enqueue(5, 6)
    assert len(claim(worker, 10)) == 1  # a third key has a bucket of its own
    assert worker.flow_queues == [store.FlowQueue("reports", False, 2 / 3600)]
    with connection.cursor() as cursor:  # half an hour passes for the buckets: one token each
        cursor.execute("UPDATE queueapp_keybucket SET tokens_at = tokens_at - interval '30 minutes'")
    second = claim(worker, 10)
    keys = models.LiveTask.objects.filter(id__in=[row.id for row in second]).values_list(
        "concurrency_key", flat=True
    )
    assert sorted(keys) == ["a", "b"]
    assert claim(worker, 10) == []


def put(queue: str, *, key: str | None = None, later: bool = False) -> int:
    """One task straight through store (any queue name, none of the backend's checks)."""
    run_after = timezone.now() + dt.timedelta(hours=1) if later else None
    new = store.NewTask(
        task_path=tasks.add.module_path,
        queue_name=queue,
        priority=0,
        args=[1, 1],
        kwargs={},
        args_json="[1,1]",
        kwargs_json="{}",
        run_after=run_after,
        max_attempts=3,
        concurrency_key=key,
    )
    return store.enqueue_task(new).id


def held_tasks(made: list[store.WorkerSession]) -> dict[str, int]:
    """A waiting task for each reason, held by that reason only: {reason code: task id}."""
    settle("conc", concurrency_limit=1)
    settle("rated", rate_limit=1, rate_period=3600.0)
    settle("keyrated", key_concurrency=10, key_rate_limit=1, key_rate_period=3600.0)
    held = {"run_after": put("later", later=True), "queue_paused": put("paused")}
    store.set_paused("paused", True)
    for code, queue, key in [
        ("queue_concurrency", "conc", None),
        ("key_concurrency", "keyed", "k"),
        ("rate_limit", "rated", None),
        ("key_rate_limit", "keyrated", "k"),
    ]:
        put(queue, key=key)
        held[code] = put(queue, key=key)
        assert len(claim(session_for(made, [queue]), 5)) == 1
    put("busy")
    held["tasks_ahead"] = put("busy")
    held["no_worker"] = put("nobody")
    make_worker(["later", "paused", "busy"])
    return held


def reasons(task_id: int) -> set[str]:
    holds = store.why_waiting(task_id, stale_after=30)
    assert holds is not None
    return {hold.code for hold in holds}


def test_why_names_the_one_thing_that_holds_each_task(sessions) -> None:
    for code, task_id in held_tasks(sessions).items():
        assert reasons(task_id) == {code}, code


def test_why_has_nothing_to_say_about_a_task_that_is_not_waiting(sessions) -> None:
    task_id = put("busy")
    make_worker(["busy"])
    assert store.why_waiting(task_id, stale_after=30) == []
    claim(session_for(sessions, ["busy"]), 1)
    assert store.why_waiting(task_id, stale_after=30) is None
    assert store.why_waiting(task_id + 10_000, stale_after=30) is None


def fail(session: store.WorkerSession, row: store.TaskRow) -> None:
    error = {"exception_class_path": "builtins.RuntimeError", "message": "down", "traceback": ""}
    store.fail_task(
        task_id=row.id,
        worker_id=session.worker_id,
        attempt=row.attempts,
        error=error,
        backoff_base=600,
        backoff_max=600,
        breaker=row.queue_name in session.flow_view().breakers,  # as a worker's executor asks
    )


def cool_off_ends(queue: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE queueapp_queuecontrol SET breaker_until = now() - interval '1 second' WHERE name = %s",
            [queue],
        )


def test_the_breaker_opens_on_failures_stays_open_for_its_cool_off_and_closes_after_a_success(
    sessions,
) -> None:
    settle("reports", breaker_threshold=0.5, breaker_min_attempts=4, breaker_window=60, breaker_cooloff=30)
    tasks.add.using(queue_name="reports").enqueue_many(((i, i), {}) for i in range(10))
    worker = session_for(sessions, ["reports"])

    for row in claim(worker, 4):  # closed: claimed as usual; then the downstream fails them all
        fail(worker, row)
    assert claim(worker, 4) == []
    assert worker.breaker_changes == [store.BreakerChange("reports", "open", 4, 4)]
    waiting = models.LiveTask.objects.filter(status="READY").first()
    assert waiting is not None
    assert "breaker_open" in reasons(waiting.id)
    assert claim(worker, 4) == []  # open for the whole cool-off
    assert worker.breaker_changes == []

    cool_off_ends("reports")
    (trial,) = claim(worker, 4)  # half-open: one task goes through
    assert worker.breaker_changes == [store.BreakerChange("reports", "half_open", 4, 4)]
    assert claim(worker, 4) == []  # one trial at a time
    view = worker.flow_view()
    assert view.breakers == {"reports"}  # so the worker's round counts its successes for the breaker
    worker.round([store.Success(trial.id, trial.attempts, "0")], 0, view=view)
    assert len(claim(worker, 4)) == 4
    assert worker.breaker_changes == [store.BreakerChange("reports", "closed", 4, 5)]
    assert models.QueueControl.objects.get(name="reports").breaker_state == "closed"


def test_a_failed_trial_opens_the_breaker_again(sessions) -> None:
    settle("reports", breaker_threshold=0.5, breaker_min_attempts=2, breaker_cooloff=30)
    tasks.add.using(queue_name="reports").enqueue_many(((i, i), {}) for i in range(10))
    worker = session_for(sessions, ["reports"])
    for row in claim(worker, 2):
        fail(worker, row)
    claim(worker, 2)
    cool_off_ends("reports")
    (trial,) = claim(worker, 2)
    fail(worker, trial)
    assert claim(worker, 2) == []
    assert worker.breaker_changes == [store.BreakerChange("reports", "open", 3, 3)]
    assert not models.QueueControl.objects.filter(breaker_state="closed").exists()


def test_switching_a_tripped_breaker_off_frees_its_queue(sessions) -> None:
    """The operator clears the threshold of a breaker that is open: the queue must run again, not
    stay held by a breaker that nothing steps any more (step_breakers skips queues without one)."""
    settle(
        "reports", concurrency_limit=5, breaker_threshold=0.5, breaker_min_attempts=2, breaker_cooloff=3600
    )
    tasks.add.using(queue_name="reports").enqueue_many(((i, i), {}) for i in range(6))
    worker = session_for(sessions, ["reports"])
    for row in claim(worker, 2):
        fail(worker, row)
    assert claim(worker, 2) == []
    control = models.QueueControl.objects.get(name="reports")
    assert control.breaker_state == "open"

    control.breaker_threshold = None  # as the admin's form saves it
    control.save()
    store.notify_settings("reports")
    assert models.QueueControl.objects.get(name="reports").breaker_state == "closed"
    assert len(claim(worker, 4)) == 4
