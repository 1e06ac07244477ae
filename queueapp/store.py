"""The only module that runs queue SQL (queueapp/sql/queries.sql), on Django's connections.

Enqueue runs on the caller's connection and so in the caller's transaction. Worker writes are
fenced by (worker_id, attempt): they return False/None when the task was taken away.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import connections
from django.utils.json import normalize_json

from queueapp import exceptions
from queueapp.sql import QUERIES

NOTIFY_CHANNEL = "taskqueue"


@dataclass(frozen=True, slots=True, kw_only=True)
class NewTask:
    """A task about to be inserted; args and kwargs already encoded as JSON text."""

    task_path: str
    queue_name: str
    priority: int
    args_json: str
    kwargs_json: str
    run_after: datetime | None
    max_attempts: int
    timeout: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRow:
    """A task as the queue stores it."""

    id: int
    task_path: str
    queue_name: str
    priority: int
    status: str
    args: list[Any]
    kwargs: dict[str, Any]
    run_after: datetime
    enqueued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    max_attempts: int
    worker_id: UUID | None
    worker_ids: list[UUID]
    errors: list[dict[str, Any]]
    return_value: Any
    cancel_requested: bool
    timeout: float | None


_JSON_COLUMNS = ("args", "kwargs", "errors", "return_value")
_ROW_FIELDS = TaskRow.__slots__


def _to_row(values: Sequence[Any]) -> TaskRow:
    # Django's psycopg setup loads jsonb as text; decode it here, once.
    data = dict(zip(_ROW_FIELDS, values, strict=False))
    for column in _JSON_COLUMNS:
        if data[column] is not None:
            data[column] = json.loads(data[column])
    return TaskRow(**data)


def _to_json(value: Any) -> str:
    """Compact JSON that PostgreSQL's jsonb accepts: no NaN/Infinity, no lone surrogates, no NUL."""
    text = json.dumps(normalize_json(value), allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    text.encode()  # UnicodeEncodeError for a lone surrogate, which jsonb refuses
    if "\\u0000" in text and _has_nul(value):
        raise ValueError("strings cannot contain the NUL character (\\u0000), which jsonb refuses")
    return text


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


def encode_arguments(args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[str, str]:
    """Encode args and kwargs as JSON text, or raise a clear InvalidTask."""
    try:
        args_json, kwargs_json = _to_json(list(args)), _to_json(kwargs)
    except (TypeError, ValueError) as exc:
        raise exceptions.ArgumentsNotJSON(
            f"task arguments must be JSON (str, int, float, bool, None, list, dict): {exc}"
        ) from exc
    size = len(args_json.encode()) + len(kwargs_json.encode())
    limit = settings.TASKQUEUE["MAX_ARGS_BYTES"]
    if size > limit:
        raise exceptions.ArgumentsTooLarge(
            f"task arguments are {size} bytes of JSON; the limit is {limit} "
            "(TASKQUEUE['MAX_ARGS_BYTES']): pass a reference such as a primary key instead"
        )
    return args_json, kwargs_json


def encode_return_value(value: Any) -> str:
    """JSON text of a task's return value; raises ReturnValueNotJSON when it has none."""
    try:
        return _to_json(value)
    except (TypeError, ValueError) as exc:
        raise exceptions.ReturnValueNotJSON(f"task return value is not JSON: {exc}") from exc


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
    }


def _batch_row_json(new: NewTask) -> str:
    # Splice the already-encoded arguments in rather than decode and encode them again.
    head = json.dumps(
        {
            "task_path": new.task_path,
            "queue_name": new.queue_name,
            "priority": new.priority,
            "run_after": new.run_after.isoformat() if new.run_after else None,
            "max_attempts": new.max_attempts,
            "timeout": new.timeout,
        }
    )
    return f'{head[:-1]},"args":{new.args_json},"kwargs":{new.kwargs_json}}}'


def enqueue_task(new: NewTask, *, using: str = "default") -> TaskRow:
    """Insert one READY task and notify its queue, in the caller's transaction."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["enqueue_task"], _params(new))
        return _to_row(cursor.fetchone())


def enqueue_tasks(batch: Sequence[NewTask], *, using: str = "default") -> list[TaskRow]:
    """Insert a batch in one statement, then one notification per queue; rows in input order."""
    if not batch:
        return []
    rows_json = "[" + ",".join(_batch_row_json(new) for new in batch) + "]"
    queues = sorted({new.queue_name for new in batch})
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["enqueue_tasks"], {"rows": rows_json})
        rows = sorted((_to_row(values) for values in cursor.fetchall()), key=lambda row: row.id)
        cursor.execute(QUERIES["notify_queues"], {"queues": queues})
    return rows


def claim_tasks(
    *, worker_id: UUID, queues: Sequence[str], limit: int, using: str = "default"
) -> list[TaskRow]:
    """Claim up to limit READY, due tasks by priority, then run_after, then id."""
    if limit <= 0:
        return []
    with connections[using].cursor() as cursor:
        cursor.execute(
            QUERIES["claim_tasks"], {"worker_id": worker_id, "queues": list(queues), "limit": limit}
        )
        rows = [_to_row(values) for values in cursor.fetchall()]
    # UPDATE ... RETURNING gives no order; hand tasks out in claim order.
    rows.sort(key=lambda row: (-row.priority, row.run_after, row.id))
    return rows


def finish_task(
    *, task_id: int, worker_id: UUID, attempt: int, return_value_json: str, using: str = "default"
) -> str | None:
    """Record success (or CANCELLED if cancel was requested); None when the task was taken away."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            QUERIES["finish_task"],
            {"id": task_id, "worker_id": worker_id, "attempt": attempt, "return_value": return_value_json},
        )
        row = cursor.fetchone()
    return row[0] if row else None


def fail_task(
    *,
    task_id: int,
    worker_id: UUID,
    attempt: int,
    error: dict[str, Any],
    backoff_base: float,
    backoff_max: float,
    using: str = "default",
) -> tuple[str, datetime] | None:
    """Record a failed attempt: READY for a retry, FAILED or CANCELLED; None when taken away."""
    if not (math.isfinite(backoff_base) and math.isfinite(backoff_max)):
        raise ValueError("backoff_base and backoff_max must be finite numbers of seconds")
    with connections[using].cursor() as cursor:
        cursor.execute(
            QUERIES["fail_task"],
            {
                "id": task_id,
                "worker_id": worker_id,
                "attempt": attempt,
                "error": json.dumps(error),
                "backoff_base": backoff_base,
                "backoff_max": backoff_max,
            },
        )
        row = cursor.fetchone()
    return (row[0], row[1]) if row else None


def cancel_task(task_id: int, *, using: str = "default") -> str | None:
    """Cancel a READY task at once or request cancellation of a RUNNING one.

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
    return _to_row(values) if values else None


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


def register_worker(
    *,
    worker_id: UUID,
    hostname: str,
    pid: int,
    queues: Sequence[str],
    concurrency: int,
    using: str = "default",
) -> None:
    with connections[using].cursor() as cursor:
        cursor.execute(
            QUERIES["register_worker"],
            {
                "id": worker_id,
                "hostname": hostname,
                "pid": pid,
                "queues": list(queues),
                "concurrency": concurrency,
            },
        )


def beat_worker(worker_id: UUID, *, using: str = "default") -> bool:
    """Record a heartbeat; False when the worker was marked LOST and must exit."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["beat_worker"], {"id": worker_id})
        return cursor.fetchone() is not None


def set_worker_state(worker_id: UUID, state: str, *, using: str = "default") -> bool:
    """Move a worker to STOPPING or STOPPED; False when it was already LOST."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["set_worker_state"], {"id": worker_id, "state": state})
        return cursor.fetchone() is not None


@dataclass(frozen=True, slots=True)
class ReapOutcome:
    """What one reaper run did (or, for a preview, would do)."""

    ran: bool
    """False when another reaper held the cluster-wide lock, so this one did nothing."""
    workers_lost: int
    tasks_requeued: int
    tasks_failed: int


def reap_workers(
    *,
    stale_after: float,
    backoff_base: float,
    backoff_max: float,
    worker_ids: Sequence[UUID] = (),
    using: str = "default",
) -> ReapOutcome:
    """Mark stale (or the named) workers LOST and take back their RUNNING tasks."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            QUERIES["reap_workers"],
            {
                "stale_after": stale_after,
                "worker_ids": list(worker_ids),
                "backoff_base": backoff_base,
                "backoff_max": backoff_max,
            },
        )
        locked, lost, requeued, failed = cursor.fetchone()
    return ReapOutcome(bool(locked), lost, requeued, failed)


def preview_reap(*, stale_after: float, using: str = "default") -> ReapOutcome:
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["preview_reap"], {"stale_after": stale_after})
        lost, requeued, failed = cursor.fetchone()
    return ReapOutcome(True, lost, requeued, failed)


def timed_out_tasks(
    worker_ids: Sequence[UUID], *, using: str = "default"
) -> list[tuple[int, UUID, int, float]]:
    """(task_id, worker_id, attempt, timeout) of RUNNING tasks past their timeout."""
    if not worker_ids:
        return []
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["timed_out_tasks"], {"worker_ids": list(worker_ids)})
        return [(row[0], row[1], row[2], row[3]) for row in cursor.fetchall()]


def retry_task(task_id: int, *, budget: int, using: str = "default") -> bool:
    """FAILED or CANCELLED back to READY with `budget` more attempts; False if not in those states."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["retry_task"], {"id": task_id, "budget": budget})
        return cursor.fetchone() is not None


def set_priority(task_id: int, priority: int, *, using: str = "default") -> bool:
    """Change a READY task's priority; False when it is not READY (any more)."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["set_priority"], {"id": task_id, "priority": priority})
        return cursor.fetchone() is not None


def count_ready(queue: str, *, cap: int, using: str = "default") -> int:
    """READY tasks in queue, counting no further than cap."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["count_ready"], {"queue": queue, "cap": cap})
        return int(cursor.fetchone()[0])


def claim_idempotency_key(
    *, api_key_id: int, key: str, request_hash: str, using: str = "default"
) -> int | None:
    """Take key for this request (returns the row id), or None when an earlier request holds it."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            QUERIES["claim_idempotency_key"],
            {"api_key_id": api_key_id, "key": key, "request_hash": request_hash},
        )
        row = cursor.fetchone()
    return row[0] if row else None


def get_idempotency_key(*, api_key_id: int, key: str, using: str = "default") -> tuple[str, list[int]] | None:
    """(request_hash, task_ids) recorded for key."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["get_idempotency_key"], {"api_key_id": api_key_id, "key": key})
        row = cursor.fetchone()
    return (row[0], list(row[1])) if row else None


def set_idempotency_tasks(idempotency_id: int, task_ids: Sequence[int], *, using: str = "default") -> None:
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["set_idempotency_tasks"], {"id": idempotency_id, "task_ids": list(task_ids)})


def database_now(*, using: str = "default") -> datetime:
    """The database's clock: the one every queue time is measured on."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["database_now"])
        value: datetime = cursor.fetchone()[0]
    return value


def pickup_latency(*, since: datetime, using: str = "default") -> tuple[float | None, float | None]:
    """(p50, p95) seconds from due to start for first attempts finished since `since`."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["pickup_latency"], {"since": since})
        p50, p95 = cursor.fetchone()
    return (float(p50) if p50 is not None else None, float(p95) if p95 is not None else None)


def finished_per_minute(
    *, since: datetime, using: str = "default"
) -> list[tuple[datetime, int, int, float | None, float | None]]:
    """(minute, successful, failed, latency p50, latency p95) for each minute with finished tasks."""
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["finished_per_minute"], {"since": since})
        return [(m, ok, bad, p50, p95) for m, ok, bad, p50, p95 in cursor.fetchall()]


def queue_overview(*, using: str = "default") -> dict[str, dict[str, Any]]:
    """{queue: {"counts": {status: n}, "oldest_ready_seconds": float | None}}."""
    overview: dict[str, dict[str, Any]] = {}
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["queue_overview"])
        for queue, status, count, oldest in cursor.fetchall():
            entry = overview.setdefault(queue, {"counts": {}, "oldest_ready_seconds": None})
            entry["counts"][status] = count
            if status == "READY" and oldest is not None:
                entry["oldest_ready_seconds"] = float(oldest)
    return overview


def estimated_rows(table: str, *, using: str = "default") -> int:
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["estimated_rows"], {"table": table})
        return max(int(cursor.fetchone()[0]), 0)


def purge_finished(*, older_than: float, statuses: Sequence[str], batch: int, using: str = "default") -> int:
    """Delete one batch of finished tasks older than older_than seconds; returns how many."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            QUERIES["purge_finished"], {"older_than": older_than, "statuses": list(statuses), "batch": batch}
        )
        return int(cursor.rowcount)


def count_purgeable(*, older_than: float, statuses: Sequence[str], using: str = "default") -> int:
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["count_purgeable"], {"older_than": older_than, "statuses": list(statuses)})
        return int(cursor.fetchone()[0])


def purge_idempotency_keys(*, older_than: float, using: str = "default") -> int:
    with connections[using].cursor() as cursor:
        cursor.execute(QUERIES["purge_idempotency_keys"], {"older_than": older_than})
        return int(cursor.rowcount)
