"""Request and response shapes of the REST API (pydantic, through django-ninja)."""

from __future__ import annotations

import datetime as dt
from typing import Any
from uuid import UUID

from ninja import Field, Schema
from pydantic import AwareDatetime, ConfigDict, JsonValue, field_validator

MAX_ARGS = 100
MAX_DEPTH = 16


def _depth(value: Any, level: int = 1) -> int:
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


class TaskIn(Schema):
    """One task to enqueue. `task` is a name registered for HTTP submission."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    args: list[JsonValue] = Field(default_factory=list, max_length=MAX_ARGS)
    kwargs: dict[str, JsonValue] = Field(default_factory=dict, max_length=MAX_ARGS)
    queue: str | None = Field(default=None, min_length=1, max_length=100)
    priority: int | None = Field(default=None, ge=-100, le=100)
    run_after: AwareDatetime | None = Field(
        default=None, description="ISO 8601 with a time zone; the task does not start before it."
    )
    max_attempts: int | None = Field(default=None, ge=1, le=1000)

    @field_validator("args", "kwargs")
    @classmethod
    def not_too_deep(cls, value: Any) -> Any:
        if _depth(value) > MAX_DEPTH:
            raise ValueError(f"arguments are nested deeper than {MAX_DEPTH} levels")
        return value


class BulkIn(Schema):
    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskIn] = Field(min_length=1, max_length=1000)


class TaskError(Schema):
    exception_class_path: str
    message: str = ""
    traceback: str = ""
    attempt: int | None = None


class TaskOut(Schema):
    id: int
    url: str
    task: str = Field(description="The HTTP name when the task has one, else its dotted path.")
    queue: str
    priority: int
    status: str = Field(description="READY, RUNNING, SUCCESSFUL, FAILED or CANCELLED")
    attempts: int
    max_attempts: int
    args: list[JsonValue]
    kwargs: dict[str, JsonValue]
    enqueued_at: dt.datetime
    run_after: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    cancel_requested: bool
    worker_id: UUID | None
    return_value: JsonValue = None
    errors: list[TaskError]


class BulkOut(Schema):
    tasks: list[TaskOut]


class TaskPage(Schema):
    tasks: list[TaskOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null at the end.")


class WorkerOut(Schema):
    id: UUID
    hostname: str
    pid: int
    queues: list[str]
    concurrency: int
    state: str = Field(
        description="alive, stale (heartbeat too old, not reaped yet), stopping, stopped or lost"
    )
    started_at: dt.datetime
    last_heartbeat_at: dt.datetime
    heartbeat_age_seconds: float
    running_tasks: int


class WorkersOut(Schema):
    workers: list[WorkerOut]


class HealthOut(Schema):
    database: str
    live_workers: int
    pending: dict[str, int] = Field(description="READY and RUNNING counts")
    completed: dict[str, int] = Field(description="SUCCESSFUL, FAILED and CANCELLED counts")
    oldest_ready_age_seconds: float | None
    timestamp: dt.datetime


class StatsOut(Schema):
    queues: dict[str, dict[str, int]]
    throughput: dict[str, dict[str, int]] = Field(description="finished tasks by status over 1m, 5m and 15m")
    pickup_latency_seconds: dict[str, float | None] = Field(description="p50 and p95 over 15 minutes")
    timestamp: dt.datetime


class Error(Schema):
    error: str = Field(description="A stable machine-readable code")
    detail: str = Field(description="What was wrong, for a person")
