"""A manual retry starts afresh: max_attempts attempts counted from the retry, and a backoff that
starts again from its base instead of going on from the attempts used before."""

from __future__ import annotations

import json

import psycopg
import pytest
from django.tasks import default_task_backend
from django.tasks.exceptions import InvalidTask
from django.test import Client

from queueapp import apikeys, models, store
from tests import tasks
from tests.conftest import make_worker
from tests.helpers import end_task

pytestmark = pytest.mark.django_db(transaction=True)

ERROR = {"exception_class_path": "builtins.RuntimeError", "message": "boom", "traceback": ""}
BASE = 100.0  # seconds: large, so the first retry's wait (50-100 s) is far from the fifth's


@pytest.fixture
def client() -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {apikeys.create_api_key('tests')[1]}")


def failed_task(attempts: int) -> int:
    task_id = int(tasks.flaky.enqueue(1).id)
    end_task(task_id, "FAILED", attempts=attempts, max_attempts=attempts, errors=[ERROR] * attempts)
    return task_id


def retry(client: Client, task_id: int, body: object = None) -> Client:
    data = json.dumps(body) if body is not None else ""
    return client.post(f"/api/tasks/{task_id}/retry", data=data, content_type="application/json")


def wait_seconds(raw_conn: psycopg.Connection, task_id: int) -> float:
    row = raw_conn.execute(
        "SELECT extract(epoch FROM run_after - now()) FROM queueapp_task_live WHERE id = %s", [task_id]
    ).fetchone()
    assert row is not None
    return float(row[0])


def run_and_fail(task_id: int) -> tuple[str, int]:
    worker = make_worker()
    (claimed,) = store.claim_tasks(worker_id=worker.id, queues=["default"], limit=1)
    assert claimed.id == task_id
    outcome = store.fail_task(
        task_id=task_id,
        worker_id=worker.id,
        attempt=claimed.attempts,
        error=ERROR,
        backoff_base=BASE,
        backoff_max=100_000,
    )
    assert outcome is not None
    return outcome[0], claimed.attempts


def make_due(raw_conn: psycopg.Connection, task_id: int) -> None:
    raw_conn.execute("UPDATE queueapp_task_live SET run_after = now() WHERE id = %s", [task_id])
    store.stage_tasks(limit=10)


def test_the_api_retry_gives_max_attempts_counted_from_the_retry(
    client: Client, raw_conn: psycopg.Connection
) -> None:
    task_id = failed_task(attempts=5)
    retried = retry(client, task_id, {"max_attempts": 2})
    assert retried.status_code == 200, retried.content
    assert (retried.json()["status"], retried.json()["attempts"], retried.json()["max_attempts"]) == (
        "READY",
        5,
        7,
    )
    assert run_and_fail(task_id) == ("SCHEDULED", 6)
    make_due(raw_conn, task_id)
    assert run_and_fail(task_id) == ("FAILED", 7)  # two attempts since the retry, no more


def test_without_max_attempts_the_retry_gives_the_tasks_own_budget(client: Client) -> None:
    task_id = failed_task(attempts=5)
    retried = retry(client, task_id).json()  # no body at all
    assert (retried["attempts"], retried["max_attempts"]) == (5, 10)  # tasks.flaky: max_attempts=5


@pytest.mark.parametrize(
    "body", [{"max_attempts": 0}, {"max_attempts": "3"}, {"max_attempts": 1001}, {"x": 1}]
)
def test_a_bad_retry_body_gets_422_and_changes_nothing(client: Client, body: object) -> None:
    task_id = failed_task(attempts=3)
    response = retry(client, task_id, body)
    assert response.status_code == 422, response.content
    assert models.Task.objects.get(id=task_id).status == "FAILED"


def test_after_a_retry_the_backoff_starts_again_from_its_base(
    client: Client, raw_conn: psycopg.Connection
) -> None:
    task_id = failed_task(attempts=5)
    assert retry(client, task_id).status_code == 200
    assert run_and_fail(task_id) == ("SCHEDULED", 6)
    # The first retry after the manual one waits base·2⁰ with jitter (50-100 s), not base·2⁵ (1600-3200 s).
    assert 45 <= wait_seconds(raw_conn, task_id) <= 100
    make_due(raw_conn, task_id)
    assert run_and_fail(task_id) == ("SCHEDULED", 7)
    assert 95 <= wait_seconds(raw_conn, task_id) <= 200  # and then doubles as for any task


def test_a_retried_task_whose_worker_is_lost_also_backs_off_from_the_base(
    raw_conn: psycopg.Connection,
) -> None:
    task_id = failed_task(attempts=5)
    assert default_task_backend.retry(str(task_id))  # type: ignore[attr-defined]
    worker = make_worker()
    store.claim_tasks(worker_id=worker.id, queues=["default"], limit=1)
    outcome = store.reap_workers(
        stale_after=30, backoff_base=BASE, backoff_max=100_000, worker_ids=[worker.id]
    )
    assert outcome.tasks_requeued == 1
    assert 45 <= wait_seconds(raw_conn, task_id) <= 100


def test_the_python_api_refuses_a_budget_below_one() -> None:
    task_id = failed_task(attempts=3)
    with pytest.raises(InvalidTask, match="max_attempts must be a whole number of at least 1"):
        default_task_backend.retry(str(task_id), max_attempts=0)  # type: ignore[attr-defined]
