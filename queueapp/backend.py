"""PostgresBackend: the django.tasks backend that stores tasks in PostgreSQL through store."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
from collections import UserList
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.dispatch import Signal
from django.tasks import Task, TaskResult, TaskResultStatus
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import TaskError
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import log_task_enqueued, task_enqueued

from queueapp import registry, signatures, store
from queueapp.states import TaskStatus

_MAX_BIGINT = 2**63 - 1

if TYPE_CHECKING:  # django.tasks' classes are generic only in django-stubs
    AnyTask = Task[Any, Any]
    AnyResult = TaskResult[Any, Any]
else:
    AnyTask = Task
    AnyResult = TaskResult

# SCHEDULED is a READY task that is not due yet; CANCELLED has no django.tasks word: it is a task
# that did not succeed.
_STATUS_FOR_DJANGO: dict[str, TaskResultStatus] = {
    TaskStatus.SCHEDULED: TaskResultStatus.READY,
    TaskStatus.READY: TaskResultStatus.READY,
    TaskStatus.RUNNING: TaskResultStatus.RUNNING,
    TaskStatus.SUCCESSFUL: TaskResultStatus.SUCCESSFUL,
    TaskStatus.FAILED: TaskResultStatus.FAILED,
    TaskStatus.CANCELLED: TaskResultStatus.FAILED,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueTask(AnyTask):
    """A django.tasks Task with the queue's extras: ``@task(max_attempts=5)``."""

    max_attempts: int | None = None
    """Attempts before the task is FAILED; the backend's OPTIONS["max_attempts"] when None."""
    timeout: float | None = None
    """Seconds an attempt may run before its process is killed (`runworker --processes` only)."""
    concurrency_key: str | None = None
    """Runs with the same key in a queue run at most its key_concurrency at a time (default 1)."""
    unique: bool | Callable[..., str] = False
    """One live run at a time: True keys a run by the task and its arguments, a function of the
    arguments returns the key itself. Enqueueing a held key returns the holder's result."""
    unique_key: str | None = None
    """A key for one call (``.using(unique_key=...)``), over what ``unique`` would make."""
    unique_for: float | timedelta = 0.0
    """Seconds (or a timedelta) the key stays held after the run finished."""

    def using(  # type: ignore[override,unused-ignore]
        self,
        *,
        priority: int | None = None,
        queue_name: str | None = None,
        run_after: datetime | None = None,
        backend: str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        concurrency_key: str | None = None,
        unique_key: str | None = None,
        unique_for: float | timedelta | None = None,
    ) -> QueueTask:
        task: AnyTask = Task.using(
            self, priority=priority, queue_name=queue_name, run_after=run_after, backend=backend
        )
        assert isinstance(task, QueueTask)
        extras: dict[str, Any] = {
            "max_attempts": max_attempts,
            "timeout": timeout,
            "unique_key": unique_key,
            "unique_for": unique_for,
            "concurrency_key": concurrency_key,
        }
        changes = {name: value for name, value in extras.items() if value is not None}
        return replace(task, **changes) if changes else task

    def key_for(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
        """This run's unique key, or None when the task is not unique."""
        if self.unique_key is not None:
            return self.unique_key
        if callable(self.unique):
            return str(self.unique(*args, **kwargs))
        if self.unique:
            call = json.dumps([list(args), dict(kwargs)], sort_keys=True, separators=(",", ":"), default=str)
            return f"{self.module_path}:{hashlib.sha256(call.encode()).hexdigest()}"
        return None

    def unique_seconds(self) -> float:
        period = self.unique_for
        return period.total_seconds() if isinstance(period, timedelta) else float(period)

    def enqueue_many(self, calls: Iterable[tuple[Sequence[Any], Mapping[str, Any]]]) -> EnqueuedResults:
        """Enqueue one run of this task per (args, kwargs) pair in one statement."""
        backend = self.get_backend()
        assert isinstance(backend, PostgresBackend)
        return backend.enqueue_many((self, args, kwargs) for args, kwargs in calls)


MAX_ATTEMPTS_LIMIT = 1_000_000
"""A task's max_attempts at most ("retry for ever" included: a million attempts at backoff_max)."""


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
            isinstance(max_attempts, bool)
            or not isinstance(max_attempts, int)
            or not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT
        ):
            raise InvalidTask(
                f"max_attempts must be a whole number of at least 1 and at most {MAX_ATTEMPTS_LIMIT:,}, "
                f"not {max_attempts!r}."
            )
        timeout = getattr(task, "timeout", None)
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout < float("inf")
        ):
            raise InvalidTask(f"timeout must be a positive number of seconds, not {timeout!r}.")
        key = getattr(task, "concurrency_key", None)
        if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 200 or "\x00" in key):
            raise InvalidTask(f"concurrency_key must be a string of 1 to 200 characters, not {key!r}.")
        if isinstance(task, QueueTask):
            _validate_unique(task)
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
            "concurrency_key": getattr(task, "concurrency_key", None),
        }

    @staticmethod
    def _new_task(
        fields: dict[str, Any], task: AnyTask, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> store.NewTask:
        kwargs = dict(kwargs)
        signatures.check_arguments(task, args, kwargs)
        args_json, kwargs_json = store.encode_arguments(args, kwargs)
        new = store.NewTask(**fields, args=args, kwargs=kwargs, args_json=args_json, kwargs_json=kwargs_json)
        if _is_unique(task):
            assert isinstance(task, QueueTask)
            new.unique_key = _checked_key(task.key_for(args, kwargs))
            new.unique_for = task.unique_seconds()
        return new

    def enqueue(self, task: AnyTask, args: Sequence[Any], kwargs: Mapping[str, Any]) -> AnyResult:
        """Enqueue one run; for a unique task whose key is held, the holder's result instead."""
        if _is_unique(task):
            return self.enqueue_calls([(task, args, kwargs)])[0][0]
        new = self._new_task(self._task_fields(task), task, args, kwargs)
        result = self.enqueued_result(task, new, store.enqueue_task(new, using=self.database))
        if enqueued_is_heard(type(self)):
            task_enqueued.send(type(self), task_result=result)
        return result

    def enqueue_many(
        self, calls: Iterable[tuple[AnyTask, Sequence[Any], Mapping[str, Any]]]
    ) -> EnqueuedResults:
        """Enqueue many runs (of one or several tasks) by one COPY and one NOTIFY per queue.

        All or nothing: an invalid call raises and nothing of the batch is stored (inside the
        caller's transaction, a savepoint keeps that transaction usable). The results, in the
        order of calls, are a list whose TaskResults are built when it is first used.
        """
        return self._enqueue(list(calls))[0]

    def enqueue_calls(
        self, calls: Iterable[tuple[AnyTask, Sequence[Any], Mapping[str, Any]]]
    ) -> list[tuple[AnyResult, bool]]:
        """enqueue_many, saying for each run whether it was created (False: a unique task's key
        was held, and the result is the holder's)."""
        results, created = self._enqueue(list(calls))
        return list(zip(results, created, strict=True))

    def _enqueue(
        self, calls: list[tuple[AnyTask, Sequence[Any], Mapping[str, Any]]]
    ) -> tuple[EnqueuedResults, list[bool]]:
        fields: dict[int, dict[str, Any]] = {}  # a batch mostly repeats one task: check each once

        def batch() -> Iterator[store.NewTask]:  # encoded while the COPY streams the rows before
            for task, args, kwargs in calls:
                if id(task) not in fields:
                    fields[id(task)] = self._task_fields(task)
                yield self._new_task(fields[id(task)], task, args, kwargs)

        if any(_is_unique(task) for task, _, _ in calls):

            def each(index: int, new: store.NewTask, inserted: store.Inserted) -> tuple[AnyResult, bool]:
                task = calls[index][0]
                if inserted.created:
                    return self.enqueued_result(task, new, inserted), True
                holder = store.get_task(inserted.id, using=self.database)
                assert holder is not None  # read in the transaction that found it
                return self.to_result(task, holder), False

            made = store.enqueue_unique_tasks(list(batch()), each=each, using=self.database)
            results = EnqueuedResults([result for result, _ in made])
            created = [was_created for _, was_created in made]
        else:
            stored = store.enqueue_tasks(len(calls), batch(), using=self.database)
            results = EnqueuedResults(
                count=len(calls),
                build=lambda: [
                    self.enqueued_result(task, new, stored.inserted(index), stored=True)
                    for index, ((task, _, _), new) in enumerate(zip(calls, stored.tasks, strict=True))
                ],
            )
            created = [True] * len(calls)
        if enqueued_is_heard(type(self)):
            for result, was_created in zip(results, created, strict=True):
                if was_created:
                    task_enqueued.send(type(self), task_result=result)
        return results, created

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

    def enqueued_result(
        self, task: AnyTask, new: store.NewTask, inserted: store.Inserted, *, stored: bool = False
    ) -> AnyResult:
        """The django.tasks view of a task just inserted (no need to read it back): its arguments as
        stored, as get_result and the task itself see them. stored: read them from their JSON
        whatever they are (a result built after the call returned must not show what the caller
        did to its own values since)."""
        args: Any
        kwargs: Any
        if (
            not stored
            and _PLAIN.issuperset(map(type, new.args))
            and _PLAIN.issuperset(map(type, new.kwargs.values()))
        ):
            # Plain values (most arguments are ids and strings) are stored as they are: a copy of
            # their containers is what the JSON would give, without decoding it.
            args, kwargs = list(new.args), dict(new.kwargs)
        else:
            args, kwargs = store.decode_arguments(new.args_json, new.kwargs_json)
        return _task_result(
            task=task,
            id=str(inserted.id),
            status=TaskResultStatus.READY,
            enqueued_at=inserted.enqueued_at,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
            _return_value=None,
        )

    def to_result(self, task: AnyTask, row: store.TaskRow) -> AnyResult:
        """The django.tasks view of a stored task (a worker builds one per task it runs)."""
        return _task_result(
            task=task,
            id=str(row.id),
            status=_STATUS_FOR_DJANGO[row.status],
            enqueued_at=row.enqueued_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            last_attempted_at=row.started_at,
            args=row.args,  # decoded from JSON: what normalize_json would make of them
            kwargs=row.kwargs,
            backend=self.alias,
            errors=[
                TaskError(exception_class_path=error["exception_class_path"], traceback=error["traceback"])
                for error in row.errors
            ],
            worker_ids=[str(worker_id) for worker_id in row.worker_ids],
            _return_value=row.return_value,
        )


def _task_result(**values: Any) -> AnyResult:
    """A TaskResult of values that are already what its __post_init__ would make of them, set
    without it: it copies args and kwargs through normalize_json, a third of the cost of a result
    that enqueue_many builds per row and a worker per task. The callers give every field
    (tests/test_backend.py checks them against TaskResult's)."""
    result: AnyResult = object.__new__(TaskResult)
    for name, value in values.items():
        _SET_FIELD[name](result, value)
    return result


# Each field's slot setter, called directly: object.__setattr__ looks the name up in the class
# every time (2.2 against 1.6 us a result).
_SET_FIELD = {field.name: getattr(TaskResult, field.name).__set__ for field in dataclasses.fields(TaskResult)}


class EnqueuedResults(UserList[AnyResult]):
    """enqueue_many's results: a list-like UserList whose TaskResults are built the first time it is
    used (a bulk enqueue whose results nobody reads, an import or a fan-out, spends nothing on them:
    they were a third of its Python per row, docs/benchmarks.md). A result built then shows the
    arguments as stored, whatever the caller did to its own objects since. Until then it keeps the
    calls and the tasks made of them."""

    def __init__(
        self,
        initlist: Iterable[AnyResult] = (),
        *,
        build: Callable[[], list[AnyResult]] | None = None,
        count: int = 0,
    ) -> None:
        """initlist: results made already; or build, which makes count of them."""
        self._build = build
        self._building = threading.Lock()  # threads that read it first get the same results
        self._results: list[AnyResult] = [] if build else list(initlist)
        self._count = count

    def __len__(self) -> int:
        return self._count if self._build is not None else len(self._results)  # a count builds none

    @property
    def data(self) -> list[AnyResult]:
        if self._build is not None:
            with self._building:
                if self._build is not None:
                    self._results, self._build = self._build(), None
        return self._results

    @data.setter
    def data(self, results: list[AnyResult]) -> None:
        self._results, self._build = results, None

    def __iter__(self) -> Iterator[AnyResult]:
        return iter(self.data)  # UserList's would go through __getitem__ item by item

    def __copy__(self) -> EnqueuedResults:
        return EnqueuedResults(self.data)  # UserList's reads a "data" entry of __dict__

    def __reduce__(self) -> tuple[type[EnqueuedResults], tuple[list[AnyResult]]]:
        return EnqueuedResults, (self.data,)  # pickled as built (the builder is a closure)


_DJANGO_TASKS_LOG = logging.getLogger("django.tasks")


def is_heard(signal: Signal, sender: type, own: Callable[..., Any], level: int) -> bool:
    """Whether signal from sender reaches anyone: a receiver besides django.tasks' own (own, which
    only logs), or own's line at level enabled. A signal sent unheard costs more than what is made
    for it (its receivers are looked up at each send, and django.tasks' own then logs nothing)."""
    try:  # Django's own lookup, as send() makes it (not public: should it change, send as before)
        sync_receivers, async_receivers = signal._live_receivers(sender)
    except (AttributeError, TypeError, ValueError):
        return True
    if _DJANGO_TASKS_LOG.isEnabledFor(level):
        return bool(sync_receivers or async_receivers)
    return any(receiver is not own for receiver in (*sync_receivers, *async_receivers))


def enqueued_is_heard(sender: type) -> bool:
    return is_heard(task_enqueued, sender, log_task_enqueued, logging.DEBUG)


_PLAIN = frozenset({str, int, float, bool, type(None)})


def _is_unique(task: AnyTask) -> bool:
    return isinstance(task, QueueTask) and (task.unique_key is not None or bool(task.unique))


def _validate_unique(task: QueueTask) -> None:
    _checked_key(task.unique_key)
    if not (isinstance(task.unique, bool) or callable(task.unique)):
        raise InvalidTask(f"unique must be True, False or a function of the arguments, not {task.unique!r}.")
    period = task.unique_for
    seconds = period.total_seconds() if isinstance(period, timedelta) else period
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds < float("inf"):
        raise InvalidTask(f"unique_for must be 0 or more seconds (or a timedelta), not {period!r}.")


def _checked_key(key: str | None) -> str | None:
    if key is not None and not (isinstance(key, str) and 1 <= len(key) <= 255 and "\x00" not in key):
        raise InvalidTask(f"unique_key must be a string of 1 to 255 characters, not {key!r}.")
    return key


def parse_result_id(result_id: object) -> int | None:
    """The task id in a result id, or None when it cannot be one (so: does not exist)."""
    text = str(result_id)
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if 0 < value <= _MAX_BIGINT else None
