"""Unique tasks: one live task per key (a unique index decides races), held for a period after it
finished when the task says so; the holder is the answer, in Python and over HTTP."""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg
import pytest
from django.db import OperationalError, connection, connections, transaction
from django.tasks.exceptions import InvalidTask

from queueapp import models, store
from queueapp.sql import QUERIES
from tests import tasks
from tests.conftest import conninfo, make_worker
from tests.helpers import end_task, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def live_with_key(key: str) -> int:
    return models.LiveTask.objects.filter(unique_key=key).count()


def test_a_held_key_creates_nothing_and_returns_the_holder() -> None:
    first = tasks.add.using(unique_key="sum-1").enqueue(1, 2)
    second = tasks.add.using(unique_key="sum-1").enqueue(3, 4)
    assert second.id == first.id
    assert second.args == [1, 2]  # the holder's, read back
    assert live_with_key("sum-1") == 1
    other = tasks.add.using(unique_key="sum-2").enqueue(1, 2)
    assert other.id != first.id


def test_the_key_frees_when_the_task_finishes() -> None:
    first = tasks.add.using(unique_key="k").enqueue(1, 2)
    worker = make_worker()
    (row,) = store.claim_tasks(worker_id=worker.id, queues=["default"], limit=1)
    assert tasks.add.using(unique_key="k").enqueue(1, 2).id == first.id  # RUNNING holds it too
    store.finish_task(task_id=row.id, worker_id=worker.id, attempt=1, return_value_json="3")
    again = tasks.add.using(unique_key="k").enqueue(1, 2)
    assert again.id != first.id
    assert models.Task.objects.get(id=first.id).unique_key == "k"  # kept in history, searchable


def test_a_scheduled_or_retry_waiting_task_holds_its_key() -> None:
    first = tasks.flaky.using(unique_key="f").enqueue(1)
    worker = make_worker()
    (row,) = store.claim_tasks(worker_id=worker.id, queues=["default"], limit=1)
    outcome = store.fail_task(
        task_id=row.id,
        worker_id=worker.id,
        attempt=1,
        error={"exception_class_path": "RuntimeError", "traceback": ""},
        backoff_base=60,
        backoff_max=60,
    )
    assert outcome is not None
    assert outcome[0] == "SCHEDULED"
    assert tasks.flaky.using(unique_key="f").enqueue(1).id == first.id


def test_a_period_after_finishing_holds_the_key_until_it_is_over() -> None:
    first = tasks.build_report.enqueue("sales", requested_by="ann")
    end_task(int(first.id), "SUCCESSFUL")
    second = tasks.build_report.enqueue("sales", requested_by="bob")
    assert second.id == first.id
    assert second.status.name == "SUCCESSFUL"
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE queueapp_task_history SET finished_at = now() - interval '61 minutes' WHERE id = %s",
            [int(first.id)],
        )
    third = tasks.build_report.enqueue("sales", requested_by="bob")
    assert third.id != first.id


def test_unique_true_keys_by_task_and_arguments() -> None:
    a = tasks.refresh.enqueue(7)
    assert tasks.refresh.enqueue(7).id == a.id
    assert tasks.refresh.enqueue(account=7).id != a.id  # other arguments, other key
    assert tasks.refresh.enqueue(8).id != a.id
    assert models.LiveTask.objects.filter(task_path=tasks.refresh.module_path).count() == 3


@pytest.mark.parametrize("size", [3, 40])  # one statement each below and above the COPY threshold
def test_enqueue_many_with_duplicates_inside_one_bulk(size: int) -> None:
    keys = ["a", "b", "a", *[f"k{n}" for n in range(size - 3)]]
    calls = [(tasks.add.using(unique_key=key), (n, n), {}) for n, key in enumerate(keys)]
    backend = tasks.add.get_backend()
    made = backend.enqueue_calls(calls)  # type: ignore[attr-defined]
    ids = [int(result.id) for result, _ in made]
    assert ids[0] == ids[2]
    assert ids[0] != ids[1]
    assert [created for _, created in made][:3] == [True, True, False]
    assert models.LiveTask.objects.filter(unique_key__isnull=False).count() == size - 1
    assert models.LiveTask.objects.get(id=ids[0]).args == [0, 0]  # the first of the bulk


def test_enqueue_many_keeps_non_unique_tasks_beside_unique_ones() -> None:
    results = tasks.add.get_backend().enqueue_many(
        [
            (tasks.add, (1, 1), {}),
            (tasks.refresh, (5,), {}),
            (tasks.refresh, (5,), {}),
            (tasks.add, (1, 1), {}),
        ]
    )
    ids = [int(result.id) for result in results]
    assert ids[1] == ids[2]
    assert len(set(ids)) == 3


def run_concurrently(count: int, call: Callable[[], str]) -> list[str]:
    start = threading.Barrier(count)
    answers: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            start.wait()
            answer = call()
            with lock:
                answers.append(answer)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return answers


def test_100_concurrent_python_enqueues_of_one_key_make_one_row() -> None:
    answers = run_concurrently(100, lambda: tasks.add.using(unique_key="race").enqueue(1, 1).id)
    assert len(answers) == 100
    assert len(set(answers)) == 1
    assert models.Task.objects.filter(unique_key="race").count() == 1


def test_a_key_held_for_a_period_stays_held_when_its_task_finishes_during_the_insert() -> None:
    # The insert's snapshot predates the commit that moves the holder to history: the insert waits
    # on the unique index for that commit, then goes ahead. It must see the holder after all.
    first = tasks.build_report.enqueue("q3")
    other = psycopg.connect(conninfo())
    try:
        other.execute(QUERIES["cancel_task"], {"id": int(first.id)})  # moves it to history, uncommitted
        answer: list[str] = []
        thread = threading.Thread(
            target=lambda: (answer.append(tasks.build_report.enqueue("q3").id), connections.close_all())
        )
        thread.start()
        with psycopg.connect(conninfo(), autocommit=True) as watcher:
            wait_for(
                lambda: watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                ).fetchone()[0],
                timeout=10,
                message="the enqueue to wait on the unique index",
            )
        other.commit()
        thread.join(10)
    finally:
        other.close()
    assert answer == [first.id]
    assert live_with_key("report:q3") == 0


def test_retry_of_a_unique_task_whose_key_is_taken_again_is_refused_and_loses_nothing() -> None:
    first = tasks.add.using(unique_key="r").enqueue(1, 1)
    end_task(int(first.id), "FAILED")
    second = tasks.add.using(unique_key="r").enqueue(2, 2)
    backend = tasks.add.get_backend()
    assert backend.retry(first.id) is False  # type: ignore[attr-defined]
    assert models.Task.objects.get(id=first.id).status == "FAILED"
    end_task(int(second.id), "SUCCESSFUL")
    assert backend.retry(first.id) is True  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"unique_key": ""}, "unique_key must be a string of 1 to 255"),
        ({"unique_key": "x" * 256}, "unique_key must be a string of 1 to 255"),
        ({"unique_for": -1}, "unique_for must be 0 or more seconds"),
    ],
)
def test_bad_unique_options_are_refused_with_their_reason(options: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidTask, match=message):
        tasks.add.using(**options).enqueue(1, 1)  # type: ignore[arg-type]
    assert models.LiveTask.objects.count() == 0


def test_a_unique_batch_that_fails_part_way_stores_nothing_and_leaves_the_callers_transaction_usable() -> (
    None
):
    """enqueue_many's promise: all or nothing, and inside the caller's transaction a savepoint keeps
    that transaction usable. A unique batch once ran without one: its second key, held by another
    transaction past the caller's lock_timeout, aborted the caller's whole transaction."""
    held = tasks.add.using(unique_key="held").enqueue(1, 1)
    other = psycopg.connect(conninfo())
    try:
        other.execute(QUERIES["cancel_task"], {"id": int(held.id)})  # the key's row, locked, uncommitted
        backend = tasks.add.get_backend()
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '200ms'")
            keep = tasks.echo.enqueue("the caller's own work")
            with pytest.raises(OperationalError):
                backend.enqueue_many(
                    [
                        (tasks.add.using(unique_key="first"), (1, 2), {}),
                        (tasks.add.using(unique_key="held"), (3, 4), {}),
                    ]
                )
            assert models.Task.objects.filter(id=int(keep.id)).exists()  # the transaction goes on
    finally:
        other.rollback()
        other.close()
    assert models.Task.objects.filter(id=int(keep.id)).exists()
    assert live_with_key("first") == 0  # nothing of the batch
