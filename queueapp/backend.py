"""PostgresBackend: the django.tasks backend that stores tasks in PostgreSQL through store."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.tasks import Task, TaskResult, TaskResultStatus
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import TaskError
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued

from queueapp import registry, signatures, store

_MAX_BIGINT = 2**63 - 1

if TYPE_CHECKING:  # django.tasks' classes are generic only in django-stubs
    AnyTask = Task[Any, Any]
    AnyResult = TaskResult[Any, Any]
else:
    AnyTask = Task
    AnyResult = TaskResult

# SCHEDULED is a READY task that is not due yet; CANCELLED has no django.tasks word: it is a task
# that did not succeed.
_STATUS_FOR_DJANGO = {
    "SCHEDULED": TaskResultStatus.READY,
    "READY": TaskResultStatus.READY,
    "RUNNING": TaskResultStatus.RUNNING,
    "SUCCESSFUL": TaskResultStatus.SUCCESSFUL,
    "FAILED": TaskResultStatus.FAILED,
    "CANCELLED": TaskResultStatus.FAILED,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueTask(AnyTask):
    """A django.tasks Task with the queue's extras: ``@task(max_attempts=5)``."""

    max_attempts: int | None = None
    """Attempts before the task is FAILED; the backend's OPTIONS["max_attempts"] when None."""
    timeout: float | None = None
    """Seconds an attempt may run before its process is killed (`runworker --processes` only)."""

    def using(  # type: ignore[override,unused-ignore]
        self,
        *,
        priority: int | None = None,
        queue_name: str | None = None,
        run_after: datetime | None = None,
        backend: str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
    ) -> QueueTask:
        task: AnyTask = Task.using(
            self, priority=priority, queue_name=queue_name, run_after=run_after, backend=backend
        )
        assert isinstance(task, QueueTask)
        if max_attempts is not None:
            task = replace(task, max_attempts=max_attempts)
        if timeout is not None:
            task = replace(task, timeout=timeout)
        return task

    def enqueue_many(self, calls: Iterable[tuple[Sequence[Any], Mapping[str, Any]]]) -> list[AnyResult]:
        """Enqueue one run of this task per (args, kwargs) pair in one statement."""
        backend = self.get_backend()
        assert isinstance(backend, PostgresBackend)
        return backend.enqueue_many((self, args, kwargs) for args, kwargs in calls)


class PostgresBackend(BaseTaskBackend):
    """Tasks are rows of queueapp_task_live, enqueued in the caller's transaction; finished ones
    move to queueapp_task_history, and get_result reads both."""

    task_class = QueueTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.database: str = self.options.get("database", "default")
        self.max_attempts: int = int(self.options.get("max_attempts", 3))
        self.backoff_base: float = float(self.options.get("backoff_base", 2.0))
        self.backoff_max: float = float(self.options.get("backoff_max", 3600.0))

    def validate_task(self, task: AnyTask) -> None:
        super().validate_task(task)
        max_attempts = getattr(task, "max_attempts", None)
        if max_attempts is not None and (
            isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
        ):
            raise InvalidTask(f"max_attempts must be a whole number of at least 1, not {max_attempts!r}.")
        timeout = getattr(task, "timeout", None)
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout < float("inf")
        ):
            raise InvalidTask(f"timeout must be a positive number of seconds, not {timeout!r}.")
        registry.register(task)

    def _task_fields(self, task: AnyTask) -> dict[str, Any]:
        """Validate task; what every run of it stores alike."""
        self.validate_task(task)
        return {
            "task_path": task.module_path,
            "queue_name": task.queue_name,
            "priority": task.priority,
            "run_after": task.run_after,
            "max_attempts": getattr(task, "max_attempts", None) or self.max_attempts,
            "timeout": getattr(task, "timeout", None),
        }

    @staticmethod
    def _new_task(
        task: AnyTask, fields: dict[str, Any], args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> store.NewTask:
        kwargs = dict(kwargs)
        signatures.check_arguments(task, args, kwargs)
        args_json, kwargs_json = store.encode_arguments(args, kwargs)
        return store.NewTask(**fields, args=args, kwargs=kwargs, args_json=args_json, kwargs_json=kwargs_json)

    def enqueue(self, task: AnyTask, args: Sequence[Any], kwargs: Mapping[str, Any]) -> AnyResult:
        new = self._new_task(task, self._task_fields(task), args, kwargs)
        result = self.enqueued_result(task, new, store.enqueue_task(new, using=self.database))
        task_enqueued.send(type(self), task_result=result)
        return result

    def enqueue_many(
        self, calls: Iterable[tuple[AnyTask, Sequence[Any], Mapping[str, Any]]]
    ) -> list[AnyResult]:
        """Enqueue many runs (of one or several tasks) by one COPY and one NOTIFY per queue.

        All or nothing: an invalid call raises and nothing of the batch is stored (inside the
        caller's transaction, a savepoint keeps that transaction usable).
        """
        calls = list(calls)
        fields: dict[int, dict[str, Any]] = {}  # a batch mostly repeats one task: check each once

        def batch() -> Iterator[store.NewTask]:  # encoded while the COPY streams the rows before
            for task, args, kwargs in calls:
                if id(task) not in fields:
                    fields[id(task)] = self._task_fields(task)
                yield self._new_task(task, fields[id(task)], args, kwargs)

        results = store.enqueue_tasks(
            len(calls),
            batch(),
            each=lambda index, new, inserted: self.enqueued_result(calls[index][0], new, inserted),
            using=self.database,
        )
        for result in results:
            task_enqueued.send(type(self), task_result=result)
        return results

    def get_result(self, result_id: str) -> AnyResult:
        task_id = parse_result_id(result_id)
        row = store.get_task(task_id, using=self.database) if task_id is not None else None
        if row is None:
            raise TaskResultDoesNotExist(result_id)
        return self.to_result(registry.get(row.task_path), row)

    def cancel(self, result_id: str) -> bool:
        """Cancel a waiting (SCHEDULED or READY) task at once, or ask a RUNNING one to stop.

        True when the task is now CANCELLED or has a cancel request; False when it had already
        finished. A running task learns of the request through ``queueapp.cancellation``.
        """
        task_id = parse_result_id(result_id)
        if task_id is None:
            raise TaskResultDoesNotExist(result_id)
        if store.cancel_task(task_id, using=self.database) is not None:
            return True
        if store.get_task(task_id, using=self.database) is None:
            raise TaskResultDoesNotExist(result_id)
        return False

    def retry(self, result_id: str, *, max_attempts: int | None = None) -> bool:
        """FAILED or CANCELLED back to READY with a fresh budget: max_attempts attempts counted from
        now (by default the task's own max_attempts, else the backend's), and a backoff that starts
        again from its base. False when the task is in another state."""
        if max_attempts is not None and (isinstance(max_attempts, bool) or max_attempts < 1):
            raise InvalidTask(f"max_attempts must be a whole number of at least 1, not {max_attempts!r}.")
        task_id = parse_result_id(result_id)
        row = store.get_task(task_id, using=self.database) if task_id is not None else None
        if row is None:
            raise TaskResultDoesNotExist(result_id)
        budget = max_attempts or self._default_budget(row.task_path)
        return store.retry_task(row.id, budget=budget, using=self.database)

    def _default_budget(self, task_path: str) -> int:
        try:
            return getattr(registry.get(task_path), "max_attempts", None) or self.max_attempts
        except InvalidTask:  # not registered here: the default budget
            return self.max_attempts

    def enqueued_result(self, task: AnyTask, new: store.NewTask, inserted: store.Inserted) -> AnyResult:
        """The django.tasks view of a task just inserted (no need to read it back)."""
        return TaskResult(
            task=task,
            id=str(inserted.id),
            status=TaskResultStatus.READY,
            enqueued_at=inserted.enqueued_at,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=list(new.args),
            kwargs=new.kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )

    def to_result(self, task: AnyTask, row: store.TaskRow) -> AnyResult:
        """The django.tasks view of a stored task."""
        result: AnyResult = TaskResult(
            task=task,
            id=str(row.id),
            status=_STATUS_FOR_DJANGO[row.status],
            enqueued_at=row.enqueued_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            last_attempted_at=row.started_at,
            args=row.args,
            kwargs=row.kwargs,
            backend=self.alias,
            errors=[
                TaskError(exception_class_path=error["exception_class_path"], traceback=error["traceback"])
                for error in row.errors
            ],
            worker_ids=[str(worker_id) for worker_id in row.worker_ids],
        )
        object.__setattr__(result, "_return_value", row.return_value)
        return result


def parse_result_id(result_id: object) -> int | None:
    """The task id in a result id, or None when it cannot be one (so: does not exist)."""
    text = str(result_id)
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if 0 < value <= _MAX_BIGINT else None
