"""Tasks and workers as rows: the queue's whole state lives here."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Func, Q, TextField
from django.db.models.functions import Cast
from django.db.models.lookups import Exact, LessThanOrEqual
from django.tasks.base import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY

from queueapp.states import LIVE_STATUSES, TERMINAL_STATUSES, BreakerState, TaskStatus, WorkerState

__all__ = ["LIVE_STATUSES", "TERMINAL_STATUSES", "TaskStatus", "WorkerState"]

# Combined JSON size of args and kwargs the database accepts; the Python side checks
# the configurable (smaller or equal) TASKQUEUE["MAX_ARGS_BYTES"] first with a clear error.
ARGS_HARD_LIMIT_BYTES = 16 * 1024 * 1024


def _octet_length(field: str) -> Func:
    return Func(Cast(field, TextField()), function="octet_length", output_field=models.IntegerField())


def _json_type(field: str) -> Func:
    return Func(models.F(field), function="jsonb_typeof", output_field=TextField())


class Worker(models.Model):
    """One worker process start. Heartbeats update last_heartbeat_at in place."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    hostname = models.CharField(max_length=255)
    pid = models.IntegerField()
    queues = ArrayField(models.CharField(max_length=100))
    concurrency = models.PositiveIntegerField()
    state = models.CharField(max_length=10, choices=WorkerState.choices, default=WorkerState.ALIVE)
    started_at = models.DateTimeField(db_default=models.functions.Now())
    last_heartbeat_at = models.DateTimeField(db_default=models.functions.Now())
    stopped_at = models.DateTimeField(null=True, blank=True)
    waiting = models.BooleanField(default=False, db_default=False)
    """Free slots and nothing to claim: enqueues on its queues notify (queries.sql mark_worker_waiting)."""
    wake_channel = models.CharField(max_length=63, null=True, blank=True)  # noqa: DJ001 - none: shared
    """The channel its wake-ups go to: its listener's own (its supervisor's, or its own), so that a
    wake-up naming it reaches that one listener instead of every one (migration 0015). None: the
    shared channel (a worker that does not listen, or of a version before 0015)."""

    class Meta:
        indexes = [
            models.Index(
                fields=["last_heartbeat_at"],
                name="worker_alive_beat_idx",
                condition=Q(state=WorkerState.ALIVE),
            ),
            models.Index(
                fields=["id"], name="worker_waiting_idx", condition=Q(waiting=True, state=WorkerState.ALIVE)
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(state__in=WorkerState.values), name="worker_state_known"),
            models.CheckConstraint(condition=Q(concurrency__gte=1), name="worker_concurrency_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.hostname}:{self.pid} ({self.id})"


class TaskColumns(models.Model):
    """The columns of a task, the same in the live table, the history table and the view over both
    (a finished task moves from one table to the other as it is, so its id never changes)."""

    id = models.BigAutoField(primary_key=True)
    task_path = models.CharField(max_length=255)
    queue_name = models.CharField(max_length=100, default="default")
    priority = models.SmallIntegerField(default=0)
    status = models.CharField(max_length=10, choices=TaskStatus.choices, default=TaskStatus.READY)
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    run_after = models.DateTimeField(db_default=models.functions.Now())
    """Earliest start; the enqueue time unless deferred or waiting for a retry."""
    enqueued_at = models.DateTimeField(db_default=models.functions.Now())
    started_at = models.DateTimeField(null=True, blank=True)
    """Start of the latest attempt (the time it was claimed)."""
    finished_at = models.DateTimeField(null=True, blank=True)
    attempts = models.IntegerField(default=0)
    """Attempts started so far; the claim increments it, so it fences every later write."""
    max_attempts = models.IntegerField(default=3)
    worker_ids = ArrayField(models.UUIDField(), default=list, blank=True)
    """Every worker that started an attempt, in order (django.tasks' TaskResult.worker_ids)."""
    errors = models.JSONField(default=list, blank=True)
    """One entry per failed attempt: exception_class_path, message, traceback, attempt, worker_id."""
    return_value = models.JSONField(null=True, blank=True)
    timeout = models.FloatField(null=True, blank=True)
    """Seconds an attempt may run; enforced by killing its process under `runworker --processes`."""
    cancel_requested = models.BooleanField(default=False)
    """Set when a RUNNING task is cancelled: it is never recorded as SUCCESSFUL afterwards."""
    # NULL, not "": no key is not a key that all unkeyed tasks share.
    concurrency_key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001
    """Tasks of a queue with the same key run at most QueueControl.key_concurrency at a time."""
    unique_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001 (NULL: no key, unindexed)
    """A unique task's key: no two live tasks share one (docs/scheduling.md, "Unique tasks")."""

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.task_path} #{self.id}"


class LiveTask(TaskColumns):
    """A task that can still run (SCHEDULED, READY, RUNNING): the lean table of the hot path.

    Every index here is paid by every enqueue, claim and finish, so it has only those of the claim,
    the stager, the reaper and back pressure. A task leaves it, for TaskHistory, in the statement
    that records its end.
    """

    # No foreign key constraint: every claim writes worker_id, and the constraint's trigger would
    # read and KEY SHARE-lock the worker's row for each claimed task. The claim checks instead that
    # its worker is ALIVE, once per statement. No full index either: task_live_running_queue_idx
    # (partial, RUNNING only) serves the reaper and the workers page.
    worker = models.ForeignKey(
        Worker,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="live_tasks",
    )
    """The worker running the current attempt (None unless RUNNING)."""
    retried_at_attempt = models.IntegerField(db_default=0)
    """Attempts already used when the task was last retried by hand: its backoff counts from there,
    so a retried task waits as little as a new one before its second attempt."""

    class Meta:
        db_table = "queueapp_task_live"
        indexes = [
            # The claim: WHERE status = 'READY' ORDER BY priority DESC, run_after, id. The claim
            # reads it in order and stops after LIMIT rows; queue_name is checked on the way (a
            # queue_name column first would need a sort once several queues are asked). Only due
            # tasks are READY, so deferred ones never lie in the claim's path.
            models.Index(
                models.F("priority").desc(),
                "run_after",
                "id",
                name="task_live_claim_idx",
                condition=Q(status=TaskStatus.READY),
            ),
            # The stager: SCHEDULED tasks by the time they become due.
            models.Index(
                fields=["run_after"], name="task_live_due_idx", condition=Q(status=TaskStatus.SCHEDULED)
            ),
            # Back pressure counts one queue's READY tasks (up to its limit) without walking the others.
            models.Index(
                fields=["queue_name"], name="task_live_ready_queue_idx", condition=Q(status=TaskStatus.READY)
            ),
            # RUNNING tasks by queue: the flow-controlled claims count their queue's (and its keys')
            # through its range alone, not every queue's. The reaper, the workers page and the
            # supervisor find a worker's by worker in the same index (the fleet's RUNNING tasks,
            # no heap read for the others): they are rare, the claims are not.
            models.Index(
                fields=["queue_name", "worker"],
                name="task_live_running_queue_idx",
                condition=Q(status=TaskStatus.RUNNING),
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(priority__gte=TASK_MIN_PRIORITY, priority__lte=TASK_MAX_PRIORITY),
                name="task_live_priority_range",
            ),
            models.CheckConstraint(condition=Q(status__in=LIVE_STATUSES), name="task_live_status_live"),
            models.CheckConstraint(condition=Q(attempts__gte=0), name="task_live_attempts_non_negative"),
            models.CheckConstraint(condition=Q(max_attempts__gte=1), name="task_live_max_attempts_positive"),
            models.CheckConstraint(
                condition=Q(timeout__gt=0) | Q(timeout__isnull=True), name="task_live_timeout_positive"
            ),
            models.CheckConstraint(
                condition=Q(status=TaskStatus.RUNNING, worker__isnull=False) | ~Q(status=TaskStatus.RUNNING),
                name="task_live_running_has_worker",
            ),
            models.CheckConstraint(
                condition=LessThanOrEqual(
                    _octet_length("args") + _octet_length("kwargs"), ARGS_HARD_LIMIT_BYTES
                ),
                name="task_live_args_size_cap",
            ),
            # Unique tasks: one live task per key, whatever races. Partial, so a task without a key
            # adds no index entry (only the predicate is evaluated on insert).
            models.UniqueConstraint(
                fields=["unique_key"], condition=Q(unique_key__isnull=False), name="task_live_unique_key"
            ),
            # A task's arguments as the API and enqueue write them: a string or an object as args
            # would run with its characters or keys as arguments. History has the same checks
            # (migration 0006, which adds them without a long lock).
            models.CheckConstraint(condition=Exact(_json_type("args"), "array"), name="task_live_args_array"),
            models.CheckConstraint(
                condition=Exact(_json_type("kwargs"), "object"), name="task_live_kwargs_object"
            ),
        ]


class TaskHistory(TaskColumns):
    """A finished task (SUCCESSFUL, FAILED, CANCELLED). The table is range-partitioned by
    finished_at, one partition a day, so that retention drops partitions instead of deleting rows;
    its migration creates it (Django cannot declare partitions) and store.history keeps the
    partitions ahead. Indexes (per partition): id, (status, id), (queue_name, id), (task_path, id),
    and finished_at covering the charts' columns."""

    worker = models.ForeignKey(
        Worker,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="+",
    )
    """The worker that ran the last attempt."""

    class Meta:
        # Managed so that Django's test flush empties it; migration 0002 creates it (partitioned,
        # which Django cannot declare) with its indexes, so there are none here to keep apart.
        db_table = "queueapp_task_history"


class Task(TaskColumns):
    """Every task, live or finished: a read-only view (UNION ALL of both tables) for the console,
    the API and get_result. Each task is in exactly one of the tables at any moment, because it
    moves in one statement. Writes go through queueapp.store."""

    worker = models.ForeignKey(
        Worker,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        related_name="tasks",
    )
    """The worker running the current attempt, or that ran the last one."""

    class Meta:
        managed = False
        db_table = "queueapp_task"
        permissions = [
            ("retry_task", "Can retry failed or cancelled tasks"),
            ("cancel_task", "Can cancel tasks"),
            ("reprioritize_task", "Can change the priority of waiting tasks"),
        ]


class BreakerEvent(models.Model):
    """One attempt's outcome in a queue with a circuit breaker (kept for the breaker's window only)."""

    id = models.BigAutoField(primary_key=True)
    queue_name = models.CharField(max_length=100)
    at = models.DateTimeField(db_default=models.functions.Now())
    failed = models.BooleanField()

    class Meta:
        indexes = [models.Index(fields=["queue_name", "at"], name="breaker_event_queue_at_idx")]

    def __str__(self) -> str:
        return f"{self.queue_name} {'failed' if self.failed else 'succeeded'} at {self.at}"


class QueueControl(models.Model):
    """Flow control of one queue: pause, fleet-wide concurrency and rate limits (docs/flow-control.md).

    A queue without a row, or whose row limits nothing, is claimed by the plain claim and pays
    nothing for flow control; the others (the view queueapp_flow_queue, made by migration 0009) by
    the claim that locks this row. The table also has a flow_epoch column that this model does not
    declare (migration 0010): moved by every flow-control change of the queue (queries.sql,
    flow_changed), and never written back by the ORM.
    """

    name = models.CharField(max_length=100, primary_key=True)
    paused = models.BooleanField(default=False, db_default=False)
    """Nothing of the queue is claimed; running tasks finish, enqueueing still works."""
    concurrency_limit = models.PositiveIntegerField(null=True, blank=True)
    """At most this many RUNNING tasks of the queue across all workers (claimed ahead included)."""
    key_concurrency = models.PositiveIntegerField(default=1, db_default=1)
    """At most this many RUNNING tasks with the same concurrency key (1: a mutex per key)."""
    rate_limit = models.PositiveIntegerField(null=True, blank=True)
    """At most this many starts per rate_period seconds, fleet-wide (a token bucket)."""
    rate_period = models.FloatField(default=1.0, db_default=1.0)
    key_rate_limit = models.PositiveIntegerField(null=True, blank=True)
    """At most this many starts per key_rate_period seconds for each concurrency key, fleet-wide (a
    token bucket per key, KeyBucket)."""
    key_rate_period = models.FloatField(default=1.0, db_default=1.0)
    has_keys = models.BooleanField(default=False, db_default=False, editable=False)
    """Set by the first enqueue with a concurrency key: its tasks need the flow-controlled claim."""
    tokens = models.FloatField(default=0.0, db_default=0.0, editable=False)
    tokens_at = models.DateTimeField(null=True, blank=True, editable=False)
    """The bucket's tokens at tokens_at (None: full)."""
    breaker_threshold = models.FloatField(null=True, blank=True)
    """Circuit breaker, off when empty: the share of failed attempts (0 to 1) that opens it."""
    breaker_min_attempts = models.PositiveIntegerField(default=20, db_default=20)
    """Attempts within the window before the share counts."""
    breaker_window = models.FloatField(default=60.0, db_default=60.0)
    """Seconds of attempts the share is taken over."""
    breaker_cooloff = models.FloatField(default=30.0, db_default=30.0)
    """Seconds an open breaker claims nothing before it lets one task through (half-open)."""
    breaker_state = models.CharField(
        max_length=10,
        choices=BreakerState.choices,
        default=BreakerState.CLOSED,
        db_default="closed",
        editable=False,
    )
    breaker_until = models.DateTimeField(null=True, blank=True, editable=False)
    """Open: when it turns half-open. Half-open: when it may let a (further) trial task through."""
    breaker_changed_at = models.DateTimeField(null=True, blank=True, editable=False)
    updated_at = models.DateTimeField(db_default=models.functions.Now(), editable=False)

    class Meta:
        verbose_name = "queue"
        verbose_name_plural = "queues"
        constraints = [
            models.CheckConstraint(
                condition=Q(concurrency_limit__gte=1) | Q(concurrency_limit__isnull=True),
                name="queue_concurrency_limit_positive",
                violation_error_message="A concurrency limit is at least 1 (leave it empty for none).",
            ),
            models.CheckConstraint(
                condition=Q(key_concurrency__gte=1),
                name="queue_key_concurrency_positive",
                violation_error_message="Tasks per concurrency key is at least 1.",
            ),
            models.CheckConstraint(
                condition=Q(rate_limit__gte=1) | Q(rate_limit__isnull=True),
                name="queue_rate_limit_positive",
                violation_error_message="A rate limit is at least 1 start per period (empty for none).",
            ),
            models.CheckConstraint(
                condition=Q(rate_period__gt=0),
                name="queue_rate_period_positive",
                violation_error_message="The rate period is a positive number of seconds.",
            ),
            models.CheckConstraint(
                condition=Q(key_rate_limit__gte=1) | Q(key_rate_limit__isnull=True),
                name="queue_key_rate_limit_positive",
                violation_error_message="A rate limit per key is at least 1 start per period (empty: none).",
            ),
            models.CheckConstraint(
                condition=Q(key_rate_period__gt=0),
                name="queue_key_rate_period_positive",
                violation_error_message="The rate period per key is a positive number of seconds.",
            ),
            models.CheckConstraint(
                condition=Q(breaker_threshold__gt=0, breaker_threshold__lte=1)
                | Q(breaker_threshold__isnull=True),
                name="queue_breaker_threshold_share",
                violation_error_message="The breaker threshold is a share: over 0, at most 1.",
            ),
            models.CheckConstraint(
                condition=Q(breaker_min_attempts__gte=1, breaker_window__gt=0, breaker_cooloff__gt=0),
                name="queue_breaker_positive",
                violation_error_message="The breaker's attempts, window and cool-off are positive.",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.breaker_threshold is None:
            # No breaker: none left open or half-open, which would hold the queue for good (nothing
            # steps a breaker without a threshold).
            self.breaker_state = BreakerState.CLOSED
            self.breaker_until = None
        super().save(*args, **kwargs)


class ApiKey(models.Model):
    """A key for the REST API. Only a SHA-256 of the secret is stored; the key is shown once."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    """The public part of the key (`tq_<prefix>_<secret>`), to find the row without the secret."""
    key_hash = models.CharField(max_length=64)
    task_patterns = ArrayField(models.CharField(max_length=100), default=list, blank=True)
    """Shell-style patterns of the HTTP task names this key may submit; empty means all."""
    can_manage_queues = models.BooleanField(default=False, db_default=False)
    """May pause and resume queues through the API (reading queues needs no scope)."""
    created_at = models.DateTimeField(db_default=models.functions.Now())
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} (tq_{self.prefix}_…)"


class Idempotency(models.Model):
    """An Idempotency-Key seen from an API key: the same key and body give back the same task."""

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE)
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    task_ids = ArrayField(models.BigIntegerField(), default=list)
    """The task (or, for a bulk submission, the tasks) the first request created."""
    created_at = models.DateTimeField(db_default=models.functions.Now())

    class Meta:
        constraints = [models.UniqueConstraint(fields=["api_key", "key"], name="idempotency_unique_key")]

    def __str__(self) -> str:
        return f"{self.key} -> {self.task_ids}"


class CatchUp(models.TextChoices):
    """What a schedule does with ticks missed while no worker ran (later than SCHEDULE_GRACE)."""

    NONE = "none", "None: skip missed ticks"
    LATEST = "latest", "Latest: run the latest missed tick once"
    ALL = "all", "All: run every missed tick, up to the limit"


class Schedule(models.Model):
    """A periodic task: enqueued at every tick of a cron expression, in a time zone, by the
    scheduler service every worker runs. Declared in code (source "code", kept in step at worker
    start) or made in the admin (source "admin")."""

    name = models.CharField(max_length=100, unique=True)
    task_path = models.CharField(max_length=255)
    cron = models.CharField(
        max_length=100, help_text="Five fields (minute hour day month weekday), or six with seconds"
    )
    timezone = models.CharField(max_length=64, default="UTC", help_text="An IANA zone, e.g. Europe/Paris")
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    queue_name = models.CharField(max_length=100, default="default")
    priority = models.SmallIntegerField(default=0)
    catch_up = models.CharField(max_length=10, choices=CatchUp.choices, default=CatchUp.LATEST)
    catch_up_limit = models.PositiveIntegerField(default=100)
    """With catch_up "all": at most this many missed ticks run (the latest ones)."""
    enabled = models.BooleanField(default=True)
    source = models.CharField(max_length=10, default="admin", editable=False)
    next_run_at = models.DateTimeField(null=True, blank=True, editable=False)
    """The first tick not handled yet: the scheduler's cursor (it only moves forward)."""
    created_at = models.DateTimeField(db_default=models.functions.Now())

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(catch_up__in=CatchUp.values), name="schedule_catch_up_known"),
            models.CheckConstraint(
                condition=Q(priority__gte=TASK_MIN_PRIORITY, priority__lte=TASK_MAX_PRIORITY),
                name="schedule_priority_range",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class ScheduleTick(models.Model):
    """One tick of a schedule that was enqueued. The unique (schedule, tick_at) is what makes a
    tick run once however many schedulers race for it; "run now" adds a manual tick."""

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="ticks")
    tick_at = models.DateTimeField()
    task_id = models.BigIntegerField(null=True)
    """The task enqueued for the tick (no foreign key: tasks live in a view over two tables)."""
    manual = models.BooleanField(default=False)
    enqueued_at = models.DateTimeField(db_default=models.functions.Now())

    class Meta:
        db_table = "queueapp_schedule_tick"
        constraints = [models.UniqueConstraint(fields=["schedule", "tick_at"], name="schedule_tick_once")]

    def __str__(self) -> str:
        return f"{self.schedule_id} @ {self.tick_at}"


class KeyBucket(models.Model):
    """The token bucket of one concurrency key of a queue with a rate limit per key: written by the
    flow-controlled claim, under its queue's lock, when the key's tasks start. No row: a full bucket."""

    pk = models.CompositePrimaryKey("queue_name", "concurrency_key")
    queue_name = models.CharField(max_length=100)
    concurrency_key = models.CharField(max_length=200)
    tokens = models.FloatField()
    tokens_at = models.DateTimeField()
    """The bucket's tokens at tokens_at; it refills at the queue's key_rate_limit per key_rate_period."""

    def __str__(self) -> str:
        return f"{self.queue_name} key {self.concurrency_key}: {self.tokens:g} tokens at {self.tokens_at}"


class Housekeeper(models.Model):
    """Which process runs the fleet's stager and scheduler (workers.housekeeper): one row, held for a
    few seconds at a time and renewed while its holder runs; another process takes it once it
    expires or is given up. A speed-up, not a lock: two holders at once only do the work twice."""

    role = models.CharField(max_length=50, primary_key=True)
    holder = models.UUIDField()
    """The holding process's worker id (a supervisor's own id, not one of its children's)."""
    hostname = models.CharField(max_length=255)
    pid = models.IntegerField()
    taken_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    class Meta:
        db_table = "queueapp_housekeeper"

    def __str__(self) -> str:
        return f"{self.role}: {self.hostname} pid {self.pid} until {self.expires_at}"
