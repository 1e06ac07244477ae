"""Executor: runs one claimed task through its django.tasks Task.

A linear pipeline: resolve the Task -> fire task_started -> call -> encode the result. A failure
is then written at once (fenced) and reported; a success waits for the worker's next round, which
records many in one statement, and is reported after it (complete()). Every write is fenced by
(worker id, attempt): if the task was taken away meanwhile (reaped, cancelled), the write changes
nothing and the result is dropped.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import traceback
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.db import DatabaseError
from django.dispatch import Signal
from django.tasks import Task, TaskContext, TaskResult, TaskResultStatus
from django.tasks.signals import log_task_finished, log_task_started, task_finished, task_started

from queueapp import registry, store
from queueapp.backend import PostgresBackend, is_heard
from queueapp.states import Outcome
from workers import db, metrics

logger = logging.getLogger(__name__)

# Outcome of an attempt -> what django.tasks' task_finished receivers see.
_FINAL_STATUS = {
    Outcome.SUCCESSFUL: TaskResultStatus.SUCCESSFUL,
    Outcome.RETRY: TaskResultStatus.READY,
    Outcome.FAILED: TaskResultStatus.FAILED,
    Outcome.CANCELLED: TaskResultStatus.FAILED,
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
    breaker: bool,
) -> tuple[str, Any] | None:
    """Record exc as the attempt's failure (fenced): READY for a retry, FAILED or CANCELLED; None if taken.
    breaker: count it for the queue's circuit breaker (store.fail_task)."""
    return store.fail_task(
        task_id=task_id,
        worker_id=worker_id,
        attempt=attempt,
        error=error_entry(exc, attempt=attempt, worker_id=worker_id),
        backoff_base=backoff_base,
        backoff_max=backoff_max,
        breaker=breaker,
    )


@dataclass(slots=True, eq=False)
class Attempt:
    """One claimed task on its way through the worker. Owned by the pool thread that runs it until
    handed to the ledger (Ledger.returned); from then on by the main thread (workers.completer)."""

    row: store.TaskRow
    started: float
    task: Task[Any, Any] | None = None
    """The task its path names, once resolved."""
    result: TaskResult[Any, Any] | None = None
    """Made only for whoever sees it: the task (takes_context) or a receiver of task_started or
    task_finished; a failure's is made when it fails, should nobody have heard a success."""
    success: store.Success | None = None
    """Set when the task returned: recorded with the next round, together with other successes."""
    outcome: Outcome | None = None
    """Set once the attempt is recorded."""


class Executor:
    def __init__(
        self,
        *,
        worker_id: UUID,
        backend: PostgresBackend,
        give_up: threading.Event,
        breakers: Callable[[], Collection[str]] = frozenset,
    ) -> None:
        self.worker_id = worker_id
        self.backend = backend
        self.give_up = give_up
        """Set on a hard stop: stop retrying writes that fail for lack of a database."""
        self.breakers = breakers
        """The worker's queues with a circuit breaker, as it last looked: their failures are counted."""
        self.heard: Callable[[Signal, int], bool] = self.look_up_heard
        """Whether a signal reaches anyone (look_up_heard): a memo of it for the round (listen())."""

    def listen(self) -> None:
        """At each round: who hears task_started and task_finished is looked up once for the tasks
        the round records and claims, not once a task (a receiver connected meanwhile hears the
        tasks of the next round on)."""
        self.heard = functools.cache(self.look_up_heard)

    def look_up_heard(self, signal: Signal, level: int) -> bool:
        """signal reaches a receiver, for a result whose line Django's own receiver logs at level."""
        own = log_task_started if signal is task_started else log_task_finished
        return is_heard(signal, type(self.backend), own, level)

    def run(self, row: store.TaskRow) -> Attempt:
        """Run one claimed task in this thread.

        A failure is recorded at once, here (rare, and each has its own error and backoff). A
        success is left in attempt.success for the worker's next round to record in one statement
        with the others; complete() then reports it.
        """
        db.ensure_usable_connection()  # the task's own queries use this thread's Django connection
        attempt = Attempt(row=row, started=time.monotonic())
        if row.cancel_requested:
            # Cancelled while claimed and not yet started (it waited in an inbox, then was handed
            # back): not run. Recorded like a success, the finish writes it CANCELLED.
            attempt.success = store.Success(row.id, row.attempts, store.encode_return_value(None))
            return attempt
        try:
            store.check_arguments(row)
            attempt.task = task = registry.get(row.task_path)
            started_heard = self.heard(task_started, logging.INFO)
            if task.takes_context or started_heard or self.heard(task_finished, logging.INFO):
                attempt.result = self.backend.to_result(task, row)  # a third of a no-op's time
            if started_heard:
                task_started.send(type(self.backend), task_result=attempt.result)
            value = self.call(task, attempt.result, row)
            attempt.success = store.Success(row.id, row.attempts, store.encode_return_value(value))
        except BaseException as exc:  # SystemExit from argparse or sys.exit() too: the task's failure
            self.fail(attempt, exc)
        return attempt

    def fail(self, attempt: Attempt, exc: BaseException) -> None:
        """Record exc as the attempt's failure and report it (called inside the except block, as
        Django's own backends do, so that task_finished receivers see exc_info)."""
        row = attempt.row
        logger.warning(
            "task_raised id=%s task=%s attempt=%s error=%r", row.id, row.task_path, row.attempts, exc
        )
        attempt.success = None
        if attempt.result is None and attempt.task is not None:
            attempt.result = self.late_result(attempt.task, row)
        written = self.write(
            lambda: fail_attempt(
                exc,
                task_id=row.id,
                worker_id=self.worker_id,
                attempt=row.attempts,
                backoff_base=self.backend.backoff_base,
                backoff_max=self.backend.backoff_max,
                breaker=row.queue_name in self.breakers(),
            )
        )
        self.complete(attempt, written[0] if written else None)

    def record_alone(self, attempt: Attempt) -> None:
        """Record one success by itself (its round was refused); a return value the database
        refuses fails the attempt with the database's error instead."""
        success = attempt.success
        assert success is not None
        try:
            status = self.write(
                lambda: store.finish_task(
                    task_id=success.task_id,
                    worker_id=self.worker_id,
                    attempt=success.attempt,
                    return_value_json=success.return_value_json,
                )
            )
        except DatabaseError as exc:
            self.fail(attempt, exc)
        else:
            self.complete(attempt, status)

    def complete(self, attempt: Attempt, status: str | None) -> None:
        """The attempt's recorded status (None: taken away meanwhile): fire task_finished, log, count."""
        row = attempt.row
        attempt.outcome = outcome = self.outcome(row, status)
        if attempt.result is not None and outcome != Outcome.DROPPED:
            status = _FINAL_STATUS[outcome]
            object.__setattr__(attempt.result, "status", status)
            # Robust: a receiver that raises is logged (by Django, with its traceback) and the
            # others still run; raised here, it ended the worker's loop (successes are reported
            # in the main thread), though the outcome was recorded already. Django's own receiver
            # logs a failure at ERROR, anything else at INFO.
            level = logging.ERROR if status == TaskResultStatus.FAILED else logging.INFO
            if self.heard(task_finished, level):
                task_finished.send_robust(type(self.backend), task_result=attempt.result)
        duration = time.monotonic() - attempt.started
        # Successes at DEBUG: at full speed a line per task cost a tenth of the worker's time, and
        # the console, /metrics and the task itself say the same. Every other outcome at INFO.
        level = logging.DEBUG if outcome == Outcome.SUCCESSFUL else logging.INFO
        if logger.isEnabledFor(level):
            logger.log(
                level,
                "task_finished id=%s task=%s attempt=%s duration_ms=%.1f outcome=%s",
                row.id,
                row.task_path,
                row.attempts,
                duration * 1000,
                outcome,
            )
        metrics.finished(row.task_path, outcome, duration)

    def late_result(self, task: Task[Any, Any], row: store.TaskRow) -> TaskResult[Any, Any] | None:
        """A failed attempt's result, made at its failure for task_finished (Django's own receiver logs a
        failure at ERROR) when nothing made one before; None if the row cannot make one (the failure
        is recorded all the same, unheard)."""
        try:
            return self.backend.to_result(task, row)
        except Exception:
            logger.exception("result_unmade id=%s task=%s: task_finished is not sent", row.id, row.task_path)
            return None

    @staticmethod
    def call(task: Task[Any, Any], result: TaskResult[Any, Any] | None, row: store.TaskRow) -> Any:
        if task.takes_context:
            assert result is not None  # made for it (run)
            return task.call(TaskContext(task_result=result), *row.args, **row.kwargs)
        return task.call(*row.args, **row.kwargs)

    def outcome(self, row: store.TaskRow, status: str | None) -> Outcome:
        if status is None:
            logger.warning(
                "result_dropped id=%s task=%s attempt=%s: the task was taken from this worker (reaped or "
                "cancelled); nothing was written",
                row.id,
                row.task_path,
                row.attempts,
            )
        return Outcome.of(status)

    def write[T](self, write: Callable[[], T]) -> T | None:
        """Run a fenced write, retrying while the database is unreachable (until a hard stop)."""
        return db.retry_while_unreachable(write, until=self.give_up, event="write_failed")
