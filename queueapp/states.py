"""The queue's state machines and what an attempt comes to: one enum each, no string literals.

Each member is its own value as a string (`TaskStatus.READY == "READY"`), so it goes into SQL
parameters and comes out of the database unchanged. Importable before Django's apps are ready
(store and the backend use it), unlike the models, which take TaskStatus and WorkerState from here.
"""

from __future__ import annotations

import enum

from django.db.models import TextChoices


class TaskStatus(TextChoices):
    SCHEDULED = "SCHEDULED", "Scheduled"
    """Not due yet: deferred, or waiting for a retry (run_after is later). The stager makes it READY."""
    READY = "READY", "Ready"
    """Due: the claim takes READY tasks by priority, then run_after, then id."""
    RUNNING = "RUNNING", "Running"
    """Claimed by a worker, which holds it through the fenced worker_id and attempt."""
    SUCCESSFUL = "SUCCESSFUL", "Successful"
    """Terminal: returned a value."""
    FAILED = "FAILED", "Failed"
    """Terminal: the last attempt raised or its worker was lost."""
    CANCELLED = "CANCELLED", "Cancelled"
    """Terminal: cancelled before it could finish. django.tasks sees it as FAILED."""


LIVE_STATUSES = (TaskStatus.SCHEDULED, TaskStatus.READY, TaskStatus.RUNNING)
"""Statuses of tasks that can still run: they live in queueapp_task_live."""
TERMINAL_STATUSES = (TaskStatus.SUCCESSFUL, TaskStatus.FAILED, TaskStatus.CANCELLED)
"""Statuses of finished tasks: they live in queueapp_task_history, partitioned by finished_at."""


class WorkerState(TextChoices):
    ALIVE = "ALIVE", "Alive"
    STOPPING = "STOPPING", "Stopping"
    STOPPED = "STOPPED", "Stopped"
    LOST = "LOST", "Lost"
    """Its heartbeat stopped; the reaper took its tasks away."""


class BreakerState(TextChoices):
    """A queue's circuit breaker (docs/flow-control.md)."""

    CLOSED = "closed", "Closed"
    """Tasks are claimed as usual."""
    OPEN = "open", "Open"
    """Too many attempts failed: nothing is claimed until the cool-off ends."""
    HALF_OPEN = "half_open", "Half-open"
    """One trial task at a time: a success closes the breaker, a failure opens it again."""


class Outcome(enum.StrEnum):
    """What one attempt came to, as a worker records and reports it (log lines, the metrics' label).
    Not a status: a retry leaves the task SCHEDULED or READY, and a dropped result changed nothing."""

    SUCCESSFUL = "SUCCESSFUL"
    RETRY = "retry"
    """It raised and attempts remain: the task waits for its retry."""
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    DROPPED = "dropped"
    """The task was taken from this worker meanwhile (reaped, cancelled): nothing was written."""

    @classmethod
    def of(cls, status: str | None) -> Outcome:
        """The outcome of a fenced write that left the task in status (None: it matched nothing)."""
        return _OUTCOME_OF[status]  # a dict: calling the enum costs more, once a task


_OUTCOME_OF: dict[str | None, Outcome] = {
    None: Outcome.DROPPED,
    TaskStatus.SCHEDULED: Outcome.RETRY,
    TaskStatus.READY: Outcome.RETRY,
    TaskStatus.SUCCESSFUL: Outcome.SUCCESSFUL,
    TaskStatus.FAILED: Outcome.FAILED,
    TaskStatus.CANCELLED: Outcome.CANCELLED,
}
