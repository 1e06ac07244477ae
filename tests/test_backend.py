"""PostgresBackend through the django.tasks API."""

from __future__ import annotations

import asyncio
import dataclasses
import sys

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.tasks import TaskResult, TaskResultStatus, default_task_backend
from django.tasks.exceptions import TaskResultDoesNotExist, TaskResultMismatch

from queueapp import exceptions, models, store
from tests import tasks
from tests.conftest import make_worker

pytestmark = pytest.mark.django_db(transaction=True)


def test_get_result_round_trips_a_successful_task() -> None:
    result = tasks.echo.enqueue(1, "two", [3], key={"nested": [True, None, 1.5]})
    assert result.status == TaskResultStatus.READY
    worker = make_worker()
    (row,) = store.claim_tasks(worker_id=worker.id, queues=["default"], limit=1)
    value = {"args": [1, "two", [3]], "kwargs": {"key": {"nested": [True, None, 1.5]}}}
    store.finish_task(
        task_id=row.id, worker_id=worker.id, attempt=1, return_value_json=store.encode_return_value(value)
    )

    fetched = tasks.echo.get_result(result.id)
    assert fetched.task is tasks.echo
    assert fetched.status == TaskResultStatus.SUCCESSFUL
    assert (fetched.args, fetched.kwargs) == ([1, "two", [3]], {"key": {"nested": [True, None, 1.5]}})
    assert fetched.return_value == value
    assert fetched.worker_ids == [str(worker.id)]
    assert fetched.attempts == 1
    assert None not in (fetched.enqueued_at, fetched.started_at, fetched.finished_at)
    assert fetched.last_attempted_at == fetched.started_at

    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == value


def test_results_have_every_field_of_a_django_task_result() -> None:
    # The backend sets TaskResult's fields itself (without its __post_init__): a field that Django
    # adds must be set too, and the result must equal the one TaskResult's constructor makes.
    names = [field.name for field in dataclasses.fields(TaskResult)]
    one = tasks.echo.enqueue(1, key="x")
    many = default_task_backend.enqueue_many([(tasks.echo, (i,), {"n": [i]}) for i in range(12)])
    for result in [one, *many, tasks.echo.get_result(one.id)]:
        values = {name: getattr(result, name) for name in names}  # AttributeError for one not set
        made = TaskResult(**{name: value for name, value in values.items() if name != "_return_value"})
        object.__setattr__(made, "_return_value", values["_return_value"])
        assert made == result
    assert (many[3].args, many[3].kwargs) == ([3], {"n": [3]})


def test_get_result_round_trips_errors_and_failed_status() -> None:
    result = tasks.add.using(max_attempts=1).enqueue(1, 2)
    worker = make_worker()
    (row,) = store.claim_tasks(worker_id=worker.id, queues=["default"], limit=1)
    error = {
        "exception_class_path": "builtins.ValueError",
        "message": "bad",
        "traceback": "Traceback (most...)",
    }
    store.fail_task(
        task_id=row.id, worker_id=worker.id, attempt=1, error=error, backoff_base=1, backoff_max=1
    )

    fetched = default_task_backend.get_result(result.id)
    assert fetched.status == TaskResultStatus.FAILED
    assert [(e.exception_class_path, e.traceback) for e in fetched.errors] == [
        ("builtins.ValueError", "Traceback (most...)")
    ]
    assert fetched.errors[0].exception_class is ValueError
    with pytest.raises(ValueError, match="Task failed"):
        _ = fetched.return_value


def test_cancelled_is_failed_to_django_tasks() -> None:
    result = tasks.add.enqueue(1, 2)
    assert default_task_backend.cancel(result.id) is True
    assert tasks.add.get_result(result.id).status == TaskResultStatus.FAILED
    assert models.Task.objects.get(id=int(result.id)).status == "CANCELLED"
    assert default_task_backend.cancel(result.id) is False  # already finished
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.cancel("999999999")


@pytest.mark.parametrize(
    "bad_id", ["999999999", "abc", "", "-1", "0", "1.5", " 1", "\uff11", "9" * 30, "1; DROP TABLE x"]
)
def test_unknown_and_malformed_ids_do_not_exist(bad_id: str) -> None:
    tasks.add.enqueue(1, 2)
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result(bad_id)


def test_result_of_another_task_is_a_mismatch() -> None:
    result = tasks.add.enqueue(1, 2)
    with pytest.raises(TaskResultMismatch):
        tasks.echo.get_result(result.id)


def test_unregistered_task_path_is_a_clear_error_and_nothing_is_imported() -> None:
    result = tasks.add.enqueue(1, 2)
    # A module nothing else loads, so an import by get_result would show in sys.modules.
    models.LiveTask.objects.filter(id=int(result.id)).update(task_path="antigravity.fly")
    assert "antigravity" not in sys.modules
    with pytest.raises(exceptions.UnknownTaskPath, match=r"'antigravity\.fly' is not registered"):
        default_task_backend.get_result(result.id)
    assert "antigravity" not in sys.modules


def test_async_enqueue_and_get_result() -> None:
    async def run() -> tuple[str, str]:
        result = await tasks.async_add.aenqueue(2, 3)
        fetched = await tasks.async_add.aget_result(result.id)
        # The backend ran on asgiref's thread; close that thread's connection.
        await sync_to_async(connections.close_all, thread_sensitive=True)()
        return result.id, fetched.status

    result_id, status = asyncio.run(run())
    assert status == TaskResultStatus.READY
    assert models.Task.objects.get(id=int(result_id)).task_path == "tests.tasks.async_add"


def test_context_task_and_using_keep_the_registry_pointing_at_the_decorated_task() -> None:
    result = tasks.with_context.using(priority=3).enqueue(value=7)
    fetched = tasks.with_context.get_result(result.id)
    assert fetched.task is tasks.with_context
    assert models.Task.objects.get(id=int(result.id)).priority == 3
