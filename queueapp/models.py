"""Tasks and workers as rows: the queue's whole state lives here."""

from __future__ import annotations

import uuid

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Func, Q, TextField
from django.db.models.functions import Cast
from django.db.models.lookups import LessThanOrEqual
from django.tasks.base import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY

# Combined JSON size of args and kwargs the database accepts; the Python side checks
# the configurable (smaller or equal) TASKQUEUE["MAX_ARGS_BYTES"] first with a clear error.
ARGS_HARD_LIMIT_BYTES = 16 * 1024 * 1024


def _octet_length(field: str) -> Func:
    return Func(Cast(field, TextField()), function="octet_length", output_field=models.IntegerField())


class TaskStatus(models.TextChoices):
    READY = "READY", "Ready"
    """Waiting to run: new, or waiting for a retry (then run_after is later)."""
    RUNNING = "RUNNING", "Running"
    """Claimed by a worker, which holds it through the fenced worker_id and attempt."""
    SUCCESSFUL = "SUCCESSFUL", "Successful"
    """Terminal: returned a value."""
    FAILED = "FAILED", "Failed"
    """Terminal: the last attempt raised or its worker was lost."""
    CANCELLED = "CANCELLED", "Cancelled"
    """Terminal: cancelled before it could finish. django.tasks sees it as FAILED."""


TERMINAL_STATUSES = (TaskStatus.SUCCESSFUL, TaskStatus.FAILED, TaskStatus.CANCELLED)


class WorkerState(models.TextChoices):
    ALIVE = "ALIVE", "Alive"
    STOPPING = "STOPPING", "Stopping"
    STOPPED = "STOPPED", "Stopped"
    LOST = "LOST", "Lost"
    """Its heartbeat stopped; the reaper took its tasks away."""


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

    class Meta:
        indexes = [
            models.Index(
                fields=["last_heartbeat_at"], name="worker_alive_beat_idx", condition=Q(state="ALIVE")
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(state__in=WorkerState.values), name="worker_state_known"),
            models.CheckConstraint(condition=Q(concurrency__gte=1), name="worker_concurrency_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.hostname}:{self.pid} ({self.id})"


class Task(models.Model):
    """One enqueued call of a django.tasks Task and everything that happened to it."""

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
    """Start of the latest attempt."""
    finished_at = models.DateTimeField(null=True, blank=True)
    attempts = models.IntegerField(default=0)
    """Attempts started so far; the claim increments it, so it fences every later write."""
    max_attempts = models.IntegerField(default=3)
    # No full index on worker_id: every claim and finish writes it; task_running_worker_idx
    # (partial, RUNNING only) serves the reaper and the workers page.
    worker = models.ForeignKey(
        Worker, null=True, blank=True, on_delete=models.SET_NULL, related_name="tasks", db_index=False
    )
    """The worker running the current attempt (None unless RUNNING)."""
    worker_ids = ArrayField(models.UUIDField(), default=list, blank=True)
    """Every worker that started an attempt, in order (django.tasks' TaskResult.worker_ids)."""
    errors = models.JSONField(default=list, blank=True)
    """One entry per failed attempt: exception_class_path, message, traceback, attempt, worker_id."""
    return_value = models.JSONField(null=True, blank=True)
    timeout = models.FloatField(null=True, blank=True)
    """Seconds an attempt may run; enforced by killing its process under `runworker --processes`."""
    cancel_requested = models.BooleanField(default=False)
    """Set when a RUNNING task is cancelled: it is never recorded as SUCCESSFUL afterwards."""

    class Meta:
        permissions = [
            ("retry_task", "Can retry failed or cancelled tasks"),
            ("cancel_task", "Can cancel tasks"),
            ("reprioritize_task", "Can change the priority of waiting tasks"),
        ]
        indexes = [
            # The claim: WHERE status = 'READY' ORDER BY priority DESC, run_after, id. The claim
            # reads it in order and stops after LIMIT rows; queue_name and run_after are checked
            # on the way (a queue_name column first would need a sort once several queues are asked).
            models.Index(
                models.F("priority").desc(),
                "run_after",
                "id",
                name="task_claim_idx",
                condition=Q(status="READY"),
            ),
            # Back pressure counts one queue's READY tasks (up to its limit) without walking the others.
            models.Index(fields=["queue_name"], name="task_ready_queue_idx", condition=Q(status="READY")),
            # The console's and the API's filters, newest first (each scans one index backwards).
            models.Index(fields=["status", "id"], name="task_status_id_idx"),
            models.Index(fields=["queue_name", "id"], name="task_queue_id_idx"),
            models.Index(fields=["task_path", "id"], name="task_path_id_idx"),
            # Throughput and latency over recent minutes (API stats, console, metrics); it covers what
            # the per-minute charts read, so they count from the index alone.
            models.Index(
                fields=["finished_at"],
                name="task_finished_idx",
                condition=Q(finished_at__isnull=False),
                include=["status", "attempts", "started_at", "run_after"],
            ),
            # The reaper: RUNNING tasks of a lost worker.
            models.Index(fields=["worker"], name="task_running_worker_idx", condition=Q(status="RUNNING")),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(priority__gte=TASK_MIN_PRIORITY, priority__lte=TASK_MAX_PRIORITY),
                name="task_priority_range",
            ),
            models.CheckConstraint(condition=Q(status__in=TaskStatus.values), name="task_status_known"),
            models.CheckConstraint(condition=Q(attempts__gte=0), name="task_attempts_non_negative"),
            models.CheckConstraint(condition=Q(max_attempts__gte=1), name="task_max_attempts_positive"),
            models.CheckConstraint(
                condition=Q(timeout__gt=0) | Q(timeout__isnull=True), name="task_timeout_positive"
            ),
            models.CheckConstraint(
                condition=Q(status="RUNNING", worker__isnull=False) | ~Q(status="RUNNING"),
                name="task_running_has_worker",
            ),
            models.CheckConstraint(
                condition=LessThanOrEqual(
                    _octet_length("args") + _octet_length("kwargs"), ARGS_HARD_LIMIT_BYTES
                ),
                name="task_args_size_cap",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_path} #{self.id}"


class ApiKey(models.Model):
    """A key for the REST API. Only a SHA-256 of the secret is stored; the key is shown once."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    """The public part of the key (`tq_<prefix>_<secret>`), to find the row without the secret."""
    key_hash = models.CharField(max_length=64)
    task_patterns = ArrayField(models.CharField(max_length=100), default=list, blank=True)
    """Shell-style patterns of the HTTP task names this key may submit; empty means all."""
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
