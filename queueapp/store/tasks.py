"""A task's life: enqueue (in the caller's transaction), claim, and the fenced writes after it."""

from __future__ import annotations

import contextlib
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db import connections, transaction
from django.db.backends.utils import CursorWrapper

from queueapp import conf
from queueapp.sql import QUERIES
from queueapp.states import TaskStatus
from queueapp.store.cursors import prepared_cursor
from queueapp.store.limits import flow_changed
from queueapp.store.rows import Inserted, NewTask, TaskRow, task_row
from queueapp.store.session import Success, claim_params, claimed_rows, finish_params
from queueapp.store.unique import insert_unique


def _params(new: NewTask) -> dict[str, Any]:
    return {
        "task_path": new.task_path,
        "queue_name": new.queue_name,
        "priority": new.priority,
        "args": new.args_json,
        "kwargs": new.kwargs_json,
        "run_after": new.run_after,
        "max_attempts": new.max_attempts,
        "timeout": new.timeout,
        "concurrency_key": new.concurrency_key,
        "notify": conf.get().notify,
    }


def enqueue_task(new: NewTask, *, using: str = "default") -> Inserted:
    """Insert one READY task and notify its queue, in the caller's transaction."""
    with prepared_cursor(using) as cursor:
        _mark_keyed_queues(cursor, [new])
        return _insert(cursor, new)


def _mark_keyed_queues(cursor: CursorWrapper, batch: Sequence[NewTask]) -> None:
    """Before tasks with a concurrency key are inserted, their queues go to the flow-controlled claim
    (first, so that not even an enqueue outside a transaction lets the plain claim see them)."""
    keyed = sorted({new.queue_name for new in batch if new.concurrency_key is not None})
    if keyed:
        cursor.execute(QUERIES["ensure_keyed_queues"], {"queues": keyed})
        marked = [name for (name,) in cursor.fetchall()]
        if marked:
            flow_changed(cursor, marked)


def _insert(cursor: CursorWrapper, new: NewTask) -> Inserted:
    if new.unique_key is not None:
        return insert_unique(cursor, _params(new), new)
    cursor.execute(QUERIES["enqueue_task"], _params(new))
    task_id, run_after, enqueued_at, _ = cursor.fetchone()
    return Inserted(task_id, run_after, enqueued_at)


def enqueue_tasks(count: int, batch: Iterable[NewTask], *, using: str = "default") -> Stored:
    """Insert count tasks by COPY, then one notification per queue; all or nothing.

    batch is consumed while the COPY streams, so the database inserts the rows already sent while
    Python prepares the next ones. An error part-way (the database's, or one raised by batch
    itself, say for arguments that are not JSON) stores nothing of the batch and, by a savepoint,
    leaves a caller's transaction usable.
    """
    if count == 0:
        return Stored([])
    if count < _COPY_FROM:
        tasks = list(batch)
        return Stored(tasks, rows=_insert_each(tasks, using))
    tasks = []
    queues: Counter[str] = Counter()  # READY tasks per queue: SCHEDULED ones wake nobody
    lines: list[str] = []
    keyed: list[NewTask] = []
    with transaction.atomic(using=using), prepared_cursor(using) as cursor:
        cursor.execute(QUERIES["reserve_task_ids"], {"n": count})
        now, ids = cursor.fetchone()
        now_text = now.isoformat()
        with cursor.cursor.copy(QUERIES["copy_tasks"]) as copy:
            for task_id, new in zip(ids, batch, strict=True):
                due = new.run_after is None or new.run_after <= now
                lines.append(_copy_line(task_id, new, now_text, due))
                if len(lines) == _LINES_PER_WRITE:
                    copy.write("".join(lines))
                    lines.clear()
                if due:
                    queues[new.queue_name] += 1
                if new.concurrency_key is not None:
                    keyed.append(new)
                tasks.append(new)
            copy.write("".join(lines))
        # The batch is streamed, so its keys are known only now; nothing is committed before this.
        _mark_keyed_queues(cursor, keyed)
        if queues and conf.get().notify:
            names = sorted(queues)
            cursor.execute(QUERIES["notify_queues"], {"queues": names, "counts": [queues[q] for q in names]})
    return Stored(tasks, ids=ids, now=now)


@dataclass(slots=True)
class Stored:
    """The tasks that enqueue_tasks stored, in input order, and what the database chose for each:
    rows (one INSERT each), or ids and the transaction's now() (COPY), which keep no object per row
    (a bulk's objects that outlive a young collection bring on full ones)."""

    tasks: list[NewTask]
    rows: list[Inserted] | None = None
    ids: list[int] | None = None
    now: datetime | None = None

    def inserted(self, index: int) -> Inserted:
        if self.rows is not None:
            return self.rows[index]
        assert self.ids is not None
        assert self.now is not None
        return Inserted(self.ids[index], self.tasks[index].run_after or self.now, self.now)


# What the server has still to insert when the COPY ends is waited for (6-9 ms of each 1,000-row
# batch with 500 lines a write): with 150, batches were 6-10% faster (bench.copy_writes).
_LINES_PER_WRITE = 150

# Below this many tasks, one prepared INSERT each costs fewer round trips than COPY's set-up (ids,
# COPY, NOTIFY and a savepoint): a REST submission of one task is one statement, as before.
_COPY_FROM = 10


def enqueue_unique_tasks[T](
    batch: list[NewTask], *, each: Callable[[int, NewTask, Inserted], T], using: str = "default"
) -> list[T]:
    """A batch with unique tasks: one statement each (COPY cannot skip a taken key), in one
    transaction. Keys are taken in sorted order, so two batches with keys in common wait for each
    other instead of deadlocking; a key twice in one batch gives the first task both times (the
    second finds it held). Results keep the input order."""
    order = sorted(range(len(batch)), key=lambda i: batch[i].unique_key or "")
    made: dict[int, T] = {}
    # A savepoint (inside a caller's transaction): a key that fails part-way (held past lock_timeout,
    # contended) takes back the batch's earlier rows and leaves the caller's transaction usable.
    with transaction.atomic(using=using), prepared_cursor(using) as cursor:
        _mark_keyed_queues(cursor, batch)
        for index in order:
            made[index] = each(index, batch[index], _insert(cursor, batch[index]))
    return [made[index] for index in range(len(batch))]


def _insert_each(batch: list[NewTask], using: str) -> list[Inserted]:
    # batch is a list already: a bad call raised before any statement, so no savepoint is needed
    # to keep a caller's transaction usable; a database error aborts a transaction as it would in
    # one multi-row statement.
    atomic = transaction.atomic(using=using, savepoint=False) if len(batch) > 1 else contextlib.nullcontext()
    with atomic, prepared_cursor(using) as cursor:
        _mark_keyed_queues(cursor, batch)
        return [_insert(cursor, new) for new in batch]


def _copy_text(text: str) -> str:
    """A value in COPY's text format: backslash, newline, carriage return and tab escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def _json_text(text: str) -> str:
    # The JSON encoder escapes every control character, so a backslash is all COPY needs doubled.
    return text.replace("\\", "\\\\")


def _copy_line(task_id: int, new: NewTask, now_text: str, due: bool) -> str:
    """One row of copy_tasks, formatted here: cheaper than a formatter's per-value adaptation.
    A task that has never run: READY if due, else SCHEDULED."""
    run_after = new.run_after.isoformat() if new.run_after else now_text
    timeout = "\\N" if new.timeout is None else repr(float(new.timeout))
    status = TaskStatus.READY if due else TaskStatus.SCHEDULED
    key = "\\N" if new.concurrency_key is None else _copy_text(new.concurrency_key)
    return (
        f"{task_id}\t{_copy_text(new.task_path)}\t{_copy_text(new.queue_name)}\t{int(new.priority)}\t{status}\t"
        f"{_json_text(new.args_json)}\t{_json_text(new.kwargs_json)}\t"
        f"{run_after}\t{now_text}\t0\t{int(new.max_attempts)}\t{timeout}\t{{}}\t[]\tf\t{key}\n"
    )


def claim_tasks(
    *, worker_id: UUID, queues: Sequence[str], limit: int, flow_epoch: int = 0, using: str = "default"
) -> list[TaskRow]:
    """Claim up to limit READY, due tasks by priority, then run_after, then id (the plain claim:
    nothing unless the worker's flow_epoch is still the one given, see FlowView)."""
    if limit <= 0:
        return []
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["claim_tasks"], claim_params(worker_id, queues, limit, flow_epoch))
        return claimed_rows(worker_id, cursor.fetchall())


def finish_task(
    *, task_id: int, worker_id: UUID, attempt: int, return_value_json: str, using: str = "default"
) -> str | None:
    """Record one success (or CANCELLED if cancel was requested); None when the task was taken away.
    Workers record theirs in batches through WorkerSession.round()."""
    params = finish_params(worker_id, [Success(task_id, attempt, return_value_json)])
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute(QUERIES["finish_tasks"], params)
        row = cursor.fetchone()
        cursor.execute(QUERIES["count_breaker_successes"], params)  # in its transaction: same now()
    return row[1] if row else None


def fail_task(
    *,
    task_id: int,
    worker_id: UUID,
    attempt: int,
    error: dict[str, Any],
    backoff_base: float,
    backoff_max: float,
    breaker: bool = False,
    using: str = "default",
) -> tuple[str, datetime] | None:
    """Record a failed attempt: READY for a retry, FAILED or CANCELLED; None when taken away.
    breaker: the task's queue has a circuit breaker (as the worker last looked): the failure is
    counted for it, in the same transaction; others pay nothing for breakers."""
    if not (math.isfinite(backoff_base) and math.isfinite(backoff_max)):
        raise ValueError("backoff_base and backoff_max must be finite numbers of seconds")
    params: dict[str, Any] = {
        "id": task_id,
        "worker_id": worker_id,
        "attempt": attempt,
        "error": json.dumps(error),
        "backoff_base": backoff_base,
        "backoff_max": backoff_max,
    }
    with (
        transaction.atomic(using=using) if breaker else contextlib.nullcontext(),
        connections[using].cursor() as cursor,
    ):
        cursor.execute(QUERIES["fail_task"], params)
        row = cursor.fetchone()
        if row and breaker:
            cursor.execute(QUERIES["count_breaker_failure"], {"queue": row[2]})
    return (row[0], row[1]) if row else None


def cancel_task(task_id: int, *, using: str = "default") -> str | None:
    """Cancel a SCHEDULED or READY task at once or request cancellation of a RUNNING one.

    Returns the status after the call (CANCELLED or RUNNING), None if the task was unknown or
    already finished.
    """
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["cancel_task"], {"id": task_id})
        row = cursor.fetchone()
    return row[0] if row else None


def get_task(task_id: int, *, using: str = "default") -> TaskRow | None:
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["get_task"], {"id": task_id})
        values = cursor.fetchone()
        columns = [column.name for column in cursor.description]
    return task_row(columns, values) if values else None


def is_cancel_requested(task_id: int, *, using: str = "default") -> bool:
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["is_cancel_requested"], {"id": task_id})
        row = cursor.fetchone()
    return bool(row and row[0])


def release_tasks(
    *, worker_id: UUID, claimed: Sequence[tuple[int, int]], using: str = "default"
) -> list[int]:
    """Hand back claimed, never started (task_id, attempt) pairs; returns the ids released."""
    if not claimed:
        return []
    with connections[using].cursor() as cursor:
        cursor.execute(
            QUERIES["release_tasks"],
            {
                "worker_id": worker_id,
                "ids": [task_id for task_id, _ in claimed],
                "attempts": [attempt for _, attempt in claimed],
            },
        )
        return [row[0] for row in cursor.fetchall()]


def retry_task(task_id: int, *, budget: int, using: str = "default") -> bool:
    """FAILED or CANCELLED back to the live table, READY, with `budget` more attempts; False if not
    in those states."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["retry_task"], {"id": task_id, "budget": budget, "notify": conf.get().notify})
        return cursor.fetchone() is not None


def set_priority(task_id: int, priority: int, *, using: str = "default") -> bool:
    """Change a waiting (SCHEDULED or READY) task's priority; False when it is not waiting (any more)."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["set_priority"], {"id": task_id, "priority": priority})
        return cursor.fetchone() is not None


def stage_tasks(*, limit: int, using: str = "default") -> dict[str, int]:
    """Make up to limit due SCHEDULED tasks READY and notify their queues: {queue: tasks staged}."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["stage_tasks"], {"limit": limit, "notify": conf.get().notify})
        return {queue: count for queue, count, _ in cursor.fetchall()}
