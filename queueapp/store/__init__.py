"""The only place that runs queue SQL (queueapp/sql/queries.sql): on Django's connections, and for
a worker's rounds on a psycopg connection of the worker's own (store.WorkerSession).

Enqueue runs on the caller's connection and so in the caller's transaction. Every write a worker
makes after its claim is fenced by (worker_id, attempt) and returns None/False when the task was
taken away. Callers import the package: `from queueapp import store; store.claim_tasks(...)`.
"""

from __future__ import annotations

from queueapp.store.history import (
    Dropped,
    count_purgeable,
    drop_history_partitions,
    ensure_history_partitions,
    history_partitions,
    purge_finished,
)
from queueapp.store.maintenance import (
    claim_idempotency_key,
    get_idempotency_key,
    purge_idempotency_keys,
    set_idempotency_tasks,
)
from queueapp.store.reports import (
    count_ready,
    database_now,
    estimated_tasks,
    finished_by_queue,
    finished_per_minute,
    pickup_latency,
    queue_overview,
)
from queueapp.store.rows import (
    NOTIFY_CHANNEL,
    Inserted,
    NewTask,
    TaskRow,
    check_arguments,
    encode_arguments,
    encode_return_value,
)
from queueapp.store.schedules import (
    DueSchedule,
    advance_schedule,
    claim_tick,
    drop_code_schedules,
    due_schedules,
    purge_schedule_ticks,
    set_tick_task,
    upsert_code_schedule,
)
from queueapp.store.session import Success, WorkerSession
from queueapp.store.tasks import (
    cancel_task,
    claim_tasks,
    enqueue_task,
    enqueue_tasks,
    enqueue_unique_tasks,
    fail_task,
    finish_task,
    get_task,
    is_cancel_requested,
    release_tasks,
    retry_task,
    set_priority,
    stage_tasks,
)
from queueapp.store.timeouts import StatementLimits
from queueapp.store.workers import (
    ReapOutcome,
    TimedTask,
    beat_worker,
    preview_reap,
    purge_workers,
    reap_workers,
    register_worker,
    set_worker_state,
    timed_tasks,
)

__all__ = [
    "NOTIFY_CHANNEL",
    "Dropped",
    "DueSchedule",
    "Inserted",
    "NewTask",
    "ReapOutcome",
    "StatementLimits",
    "Success",
    "TaskRow",
    "TimedTask",
    "WorkerSession",
    "advance_schedule",
    "beat_worker",
    "cancel_task",
    "check_arguments",
    "claim_idempotency_key",
    "claim_tasks",
    "claim_tick",
    "count_purgeable",
    "count_ready",
    "database_now",
    "drop_code_schedules",
    "drop_history_partitions",
    "due_schedules",
    "encode_arguments",
    "encode_return_value",
    "enqueue_task",
    "enqueue_tasks",
    "enqueue_unique_tasks",
    "ensure_history_partitions",
    "estimated_tasks",
    "fail_task",
    "finish_task",
    "finished_by_queue",
    "finished_per_minute",
    "get_idempotency_key",
    "get_task",
    "history_partitions",
    "is_cancel_requested",
    "pickup_latency",
    "preview_reap",
    "purge_finished",
    "purge_idempotency_keys",
    "purge_schedule_ticks",
    "purge_workers",
    "queue_overview",
    "reap_workers",
    "register_worker",
    "release_tasks",
    "retry_task",
    "set_idempotency_tasks",
    "set_priority",
    "set_tick_task",
    "set_worker_state",
    "stage_tasks",
    "timed_tasks",
    "upsert_code_schedule",
]
