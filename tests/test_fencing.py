"""Worker writes are fenced: a stale attempt or another worker changes nothing."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from queueapp import models, store
from tests import tasks
from tests.conftest import make_worker
from workers.stager import Stager

pytestmark = pytest.mark.django_db(transaction=True)

ERROR = {"exception_class_path": "builtins.RuntimeError", "message": "boom", "traceback": "Traceback..."}
BACKOFF = {"backoff_base": 2.0, "backoff_max": 3600.0}


def claim_one(worker: models.Worker) -> store.TaskRow:
    (row,) = store.claim_tasks(worker_id=worker.id, queues=["default"], limit=1)
    return row


def snapshot(task_id: int) -> dict[str, object]:
    return models.Task.objects.filter(id=task_id).values().get()


def test_finish_or_fail_with_a_stale_attempt_or_another_worker_changes_nothing() -> None:
    tasks.add.enqueue(1, 2)
    worker, other = make_worker(), make_worker()
    row = claim_one(worker)
    before = snapshot(row.id)

    for worker_id, attempt in [(worker.id, 2), (worker.id, 0), (other.id, 1)]:
        assert (
            store.finish_task(task_id=row.id, worker_id=worker_id, attempt=attempt, return_value_json="3")
            is None
        )
        assert (
            store.fail_task(task_id=row.id, worker_id=worker_id, attempt=attempt, error=ERROR, **BACKOFF)
            is None
        )
        assert snapshot(row.id) == before

    assert (
        store.finish_task(task_id=row.id, worker_id=worker.id, attempt=1, return_value_json="3")
        == "SUCCESSFUL"
    )
    done = snapshot(row.id)
    assert (done["status"], done["return_value"]) == ("SUCCESSFUL", 3)
    # A second finish, a late fail: the task is no longer RUNNING, nothing changes.
    assert store.finish_task(task_id=row.id, worker_id=worker.id, attempt=1, return_value_json="4") is None
    assert store.fail_task(task_id=row.id, worker_id=worker.id, attempt=1, error=ERROR, **BACKOFF) is None
    assert snapshot(row.id) == done


def test_a_zombie_cannot_overwrite_the_attempt_that_replaced_it(raw_conn: psycopg.Connection) -> None:
    tasks.add.enqueue(1, 2)
    zombie, rescuer = make_worker(), make_worker()
    first = claim_one(zombie)
    # What the reaper does to a lost worker's task: READY again, attempt counted.
    raw_conn.execute(
        "UPDATE queueapp_task_live SET status = 'READY', worker_id = NULL WHERE id = %s", [first.id]
    )
    second = claim_one(rescuer)
    assert (second.id, second.attempts, second.worker_ids) == (first.id, 2, [zombie.id, rescuer.id])

    assert (
        store.finish_task(task_id=first.id, worker_id=zombie.id, attempt=1, return_value_json='"zombie"')
        is None
    )
    assert store.fail_task(task_id=first.id, worker_id=zombie.id, attempt=1, error=ERROR, **BACKOFF) is None
    assert snapshot(first.id)["status"] == "RUNNING"
    assert (
        store.finish_task(task_id=first.id, worker_id=rescuer.id, attempt=2, return_value_json="3")
        == "SUCCESSFUL"
    )
    assert snapshot(first.id)["return_value"] == 3


def test_failure_retries_with_backoff_on_the_database_clock_then_fails(raw_conn: psycopg.Connection) -> None:
    result = tasks.add.using(max_attempts=2).enqueue(1, 2)
    task_id = int(result.id)
    worker = make_worker()

    row = claim_one(worker)
    before = raw_conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    status, run_after = store.fail_task(
        task_id=task_id, worker_id=worker.id, attempt=1, error=ERROR, backoff_base=10.0, backoff_max=3600.0
    ) or ("", None)
    assert status == "SCHEDULED"
    # Attempt 1 waits backoff_base * 2**0 = 10 s, jittered into [5 s, 10 s].
    assert before + dt.timedelta(seconds=4.9) <= run_after <= before + dt.timedelta(seconds=11)
    stored = snapshot(task_id)
    assert (stored["worker_id"], stored["finished_at"], stored["attempts"]) == (None, None, 1)
    assert store.claim_tasks(worker_id=worker.id, queues=["default"], limit=1) == []  # not due yet

    raw_conn.execute("UPDATE queueapp_task_live SET run_after = now() WHERE id = %s", [task_id])
    assert Stager().run_once() == 1  # due: READY again
    row = claim_one(worker)
    assert row.attempts == 2
    assert (
        store.fail_task(
            task_id=task_id, worker_id=worker.id, attempt=2, error={**ERROR, "message": "again"}, **BACKOFF
        )
        is not None
    )
    stored = snapshot(task_id)
    assert stored["status"] == "FAILED"
    assert stored["finished_at"] is not None
    assert [error["message"] for error in stored["errors"]] == ["boom", "again"]  # type: ignore[attr-defined]


def test_backoff_is_capped(raw_conn: psycopg.Connection) -> None:
    result = tasks.add.using(max_attempts=50).enqueue(1, 2)
    worker = make_worker()
    raw_conn.execute("UPDATE queueapp_task_live SET attempts = 40 WHERE id = %s", [int(result.id)])
    row = claim_one(worker)
    before = raw_conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    outcome = store.fail_task(
        task_id=row.id, worker_id=worker.id, attempt=41, error=ERROR, backoff_base=1.0, backoff_max=60.0
    )
    assert outcome is not None
    assert outcome[1] <= before + dt.timedelta(seconds=61)


def test_cancel_ready_is_immediate_and_running_is_a_request_never_successful() -> None:
    ready = tasks.add.enqueue(1, 1)
    running = tasks.add.enqueue(2, 2)
    worker = make_worker()
    assert store.cancel_task(int(ready.id)) == "CANCELLED"
    row = claim_one(worker)
    assert row.id == int(running.id)

    assert store.cancel_task(row.id) == "RUNNING"
    assert snapshot(row.id)["cancel_requested"] is True
    assert (
        store.finish_task(task_id=row.id, worker_id=worker.id, attempt=1, return_value_json="4")
        == "CANCELLED"
    )
    stored = snapshot(row.id)
    assert (stored["status"], stored["return_value"]) == ("CANCELLED", None)
    assert store.cancel_task(row.id) is None  # already terminal
    assert store.cancel_task(10**12) is None  # unknown


def test_a_cancelled_running_task_that_fails_is_cancelled_not_retried() -> None:
    tasks.add.enqueue(1, 1)
    worker = make_worker()
    row = claim_one(worker)
    store.cancel_task(row.id)
    outcome = store.fail_task(task_id=row.id, worker_id=worker.id, attempt=1, error=ERROR, **BACKOFF)
    assert outcome is not None
    assert outcome[0] == "CANCELLED"


def test_release_hands_back_unstarted_claims_without_counting_the_attempt() -> None:
    tasks.add.enqueue_many(((i, i), {}) for i in range(2))
    worker, other = make_worker(), make_worker()
    rows = store.claim_tasks(worker_id=worker.id, queues=["default"], limit=2)
    claimed = [(row.id, row.attempts) for row in rows]

    assert store.release_tasks(worker_id=other.id, claimed=claimed) == []  # not its tasks
    assert store.release_tasks(worker_id=worker.id, claimed=[(rows[0].id, 2)]) == []  # stale attempt
    assert sorted(store.release_tasks(worker_id=worker.id, claimed=claimed)) == sorted(r.id for r in rows)
    for row in rows:
        stored = snapshot(row.id)
        assert (stored["status"], stored["attempts"], stored["worker_ids"], stored["worker_id"]) == (
            "READY",
            0,
            [],
            None,
        )
