"""Executor: runs one claimed task through its django.tasks Task and records the outcome.

A linear pipeline: resolve the Task -> fire task_started -> call -> encode the result -> fenced
write -> fire task_finished -> log. Every write is fenced by (worker id, attempt): if the task was
taken away meanwhile (reaped, cancelled), the write changes nothing and the result is dropped.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import Any
from uuid import UUID

from django.db import DatabaseError
from django.tasks import Task, TaskContext, TaskResult, TaskResultStatus
from django.tasks.signals import task_finished, task_started

from queueapp import registry, store
from queueapp.backend import PostgresBackend
from workers import db, metrics

logger = logging.getLogger(__name__)

# Outcome of an attempt -> what django.tasks' task_finished receivers see.
_FINAL_STATUS = {
    "SUCCESSFUL": TaskResultStatus.SUCCESSFUL,
    "retry": TaskResultStatus.READY,
    "FAILED": TaskResultStatus.FAILED,
    "CANCELLED": TaskResultStatus.FAILED,
}


def storable(text: str) -> str:
    """Text jsonb accepts: NUL and unpaired surrogates (which an exception message may well hold)
    are written as escapes, so recording a failure can never itself fail."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def error_entry(exc: BaseException, *, attempt: int, worker_id: UUID) -> dict[str, Any]:
    """The JSON kept for one failed attempt."""
    cls = type(exc)
    return {
        "exception_class_path": f"{cls.__module__}.{cls.__qualname__}",
        "message": storable(str(exc)),
        "traceback": storable("".join(traceback.format_exception(exc))),
        "attempt": attempt,
        "worker_id": str(worker_id),
    }


def fail_attempt(
    exc: BaseException,
    *,
    task_id: int,
    worker_id: UUID,
    attempt: int,
    backoff_base: float,
    backoff_max: float,
) -> tuple[str, Any] | None:
    """Record exc as the attempt's failure (fenced): READY for a retry, FAILED or CANCELLED; None if taken."""
    return store.fail_task(
        task_id=task_id,
        worker_id=worker_id,
        attempt=attempt,
        error=error_entry(exc, attempt=attempt, worker_id=worker_id),
        backoff_base=backoff_base,
        backoff_max=backoff_max,
    )


class Executor:
    def __init__(self, *, worker_id: UUID, backend: PostgresBackend, give_up: threading.Event) -> None:
        self.worker_id = worker_id
        self.backend = backend
        self.give_up = give_up
        """Set on a hard stop: stop retrying writes that fail for lack of a database."""

    def execute(self, row: store.TaskRow) -> str:
        """Run one claimed task; returns the recorded outcome (or 'dropped')."""
        db.ensure_usable_connection()
        started = time.monotonic()
        result: TaskResult[Any, Any] | None = None
        try:
            task = registry.get(row.task_path)
            result = self.backend.to_result(task, row)
            task_started.send(type(self.backend), task_result=result)
            value = self.call(task, result, row)
            return_json = store.encode_return_value(value)
        except Exception as exc:
            outcome = self.record_failure(row, exc)
            self.finished(result, outcome)  # inside the handler, as Django's backends do: exc_info is there
        else:
            try:
                outcome = self.record_success(row, return_json)
            except DatabaseError as exc:  # refused by the database, not unreachable: fail the attempt
                outcome = self.record_failure(row, exc)
            self.finished(result, outcome)
        duration = time.monotonic() - started
        logger.info(
            "task_finished id=%s task=%s attempt=%s duration_ms=%.1f outcome=%s",
            row.id,
            row.task_path,
            row.attempts,
            duration * 1000,
            outcome,
        )
        metrics.TASKS_FINISHED.labels(row.task_path, outcome).inc()
        metrics.TASK_DURATION.labels(row.task_path).observe(duration)
        if outcome == "retry":
            metrics.RETRIES.labels(row.task_path).inc()
        return outcome

    @staticmethod
    def call(task: Task[Any, Any], result: TaskResult[Any, Any], row: store.TaskRow) -> Any:
        if task.takes_context:
            return task.call(TaskContext(task_result=result), *row.args, **row.kwargs)
        return task.call(*row.args, **row.kwargs)

    def record_success(self, row: store.TaskRow, return_json: str) -> str:
        status = self.write(
            lambda: store.finish_task(
                task_id=row.id, worker_id=self.worker_id, attempt=row.attempts, return_value_json=return_json
            )
        )
        return self.outcome(row, status)

    def record_failure(self, row: store.TaskRow, exc: Exception) -> str:
        logger.warning(
            "task_raised id=%s task=%s attempt=%s error=%r", row.id, row.task_path, row.attempts, exc
        )
        written = self.write(
            lambda: fail_attempt(
                exc,
                task_id=row.id,
                worker_id=self.worker_id,
                attempt=row.attempts,
                backoff_base=self.backend.backoff_base,
                backoff_max=self.backend.backoff_max,
            )
        )
        return self.outcome(row, written[0] if written else None)

    def outcome(self, row: store.TaskRow, status: str | None) -> str:
        if status is None:
            logger.warning(
                "result_dropped id=%s task=%s attempt=%s: the task was taken from this worker (reaped or "
                "cancelled); nothing was written",
                row.id,
                row.task_path,
                row.attempts,
            )
            return "dropped"
        return "retry" if status == "READY" else status

    def write(self, write: Any) -> Any:
        """Run a fenced write, retrying while the database is unreachable (until a hard stop)."""
        delay = 0.1
        while True:
            try:
                return write()
            except db.CONNECTION_ERRORS as exc:
                db.reset_connection()
                if self.give_up.is_set():
                    logger.error("write_abandoned error=%s: the reaper will requeue the task", exc)
                    return None
                logger.warning("write_failed error=%s retry_in=%.1fs", exc, delay)
                self.give_up.wait(delay)
                delay = min(delay * 2, 2.0)

    def finished(self, result: TaskResult[Any, Any] | None, outcome: str) -> None:
        if result is None or outcome == "dropped":
            return
        object.__setattr__(result, "status", _FINAL_STATUS[outcome])
        task_finished.send(type(self.backend), task_result=result)
