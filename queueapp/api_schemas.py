"""Request and response shapes of the REST API (pydantic, through django-ninja)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal
from uuid import UUID

from ninja import Field, Schema
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    ConfigDict,
    JsonValue,
    create_model,
    field_validator,
)


def _iso_8601(value: Any) -> Any:
    # pydantic would also read 0.5 or "1700000000" as a Unix time; the API speaks ISO 8601 only.
    if value is not None and not (isinstance(value, str) and ISO_DATETIME.match(value)):
        raise ValueError("must be an ISO 8601 date-time with a time zone, e.g. 2030-01-31T09:00:00Z")
    return value


def _utc(value: dt.datetime) -> dt.datetime:
    # PostgreSQL takes offsets up to ±15:59 only; UTC always fits.
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError("date-time out of range") from None


def _json_integer(value: Any) -> Any:
    # JSON's 5.0 is the integer 5, but "5" and true are not numbers.
    if isinstance(value, bool | str):
        raise ValueError("must be a JSON integer")
    return value


ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")
IsoDateTime = Annotated[AwareDatetime, BeforeValidator(_iso_8601), AfterValidator(_utc)]

MAX_ARGS = 100
ARGS_NOTE = (
    f"JSON, at most {MAX_ARGS} items and 16 levels deep; strings must not contain NUL (\\u0000) or "
    "unpaired surrogates, which PostgreSQL cannot store"
)
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
    args: list[JsonValue] = Field(default_factory=list, max_length=MAX_ARGS, description=ARGS_NOTE)
    kwargs: dict[str, JsonValue] = Field(default_factory=dict, max_length=MAX_ARGS, description=ARGS_NOTE)
    queue: str | None = Field(default=None, min_length=1, max_length=100)
    priority: int | None = Field(default=None, ge=-100, le=100)
    run_after: IsoDateTime | None = Field(
        default=None,
        strict=False,
        description="ISO 8601 with a time zone; the task does not start before it.",
    )
    max_attempts: int | None = Field(default=None, ge=1, le=1000)
    concurrency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Tasks of a queue with the same key run at most the queue's key_concurrency at a time "
        "(default 1).",
    )
    unique_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="While a task with this key is SCHEDULED, READY or RUNNING (or finished less than "
        "unique_for seconds ago), no new task is made: the answer is 200 with that task instead of 201.",
    )
    unique_for: float | None = Field(
        default=None, ge=0, le=366 * 86400, description="Seconds the key stays held after its task finished."
    )

    @field_validator("priority", "max_attempts", "unique_for", mode="before")
    @classmethod
    def numbers_are_numbers(cls, value: Any) -> Any:
        return _json_integer(value)

    @field_validator("args", "kwargs")
    @classmethod
    def not_too_deep(cls, value: Any) -> Any:
        if _depth(value) > MAX_DEPTH:
            raise ValueError(f"arguments are nested deeper than {MAX_DEPTH} levels")
        return value


def submission_schema(task_names: list[str], queues: list[str]) -> type[TaskIn]:
    """TaskIn with `task` and `queue` narrowed to what can be submitted, so the OpenAPI schema lists
    the exposed task names and the queues, and a schema-valid request is one the API accepts."""
    if not task_names:
        return TaskIn
    names_type: Any = Literal[tuple(task_names)]
    queue_type: Any = Literal[tuple(queues)] | None
    return create_model(
        "TaskSubmission",
        __base__=TaskIn,
        task=(names_type, Field(description="A task exposed for HTTP submission")),
        queue=(queue_type, None),
    )


class BulkIn(Schema):
    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskIn] = Field(min_length=1, max_length=1000)


def bulk_schema(item: type[TaskIn]) -> type[BulkIn]:
    return create_model(
        "BulkSubmission",
        __base__=BulkIn,
        tasks=(list[item], Field(min_length=1, max_length=1000)),  # type: ignore[valid-type]
    )


class RetryIn(Schema):
    """An optional body for a retry."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int | None = Field(
        default=None, ge=1, le=1000, description="Attempts from the retry on; default: the task's own"
    )

    @field_validator("max_attempts", mode="before")
    @classmethod
    def a_number(cls, value: Any) -> Any:
        return _json_integer(value)


class TaskError(Schema):
    exception_class_path: str
    message: str = ""
    traceback: str = ""
    attempt: int | None = None


class HoldOut(Schema):
    code: str = Field(
        description="run_after, queue_paused, breaker_open, queue_concurrency, key_concurrency, rate_limit, "
        "key_rate_limit, tasks_ahead or no_worker"
    )
    message: str


class QueueOut(Schema):
    name: str
    paused: bool
    concurrency_limit: int | None
    key_concurrency: int
    rate_limit: int | None = Field(description="Starts per rate_period seconds, fleet-wide.")
    rate_period: float
    ready: int = Field(description="READY tasks (due).")
    scheduled: int = Field(description="SCHEDULED tasks (deferred, or waiting for a retry).")
    running: int
    started_last_minute: int
    oldest_ready_seconds: float | None
    breaker_threshold: float | None = Field(description="Failed share that opens the breaker (null: none).")
    breaker_state: str = Field(description="closed, open or half_open")
    key_rate_limit: int | None = Field(
        description="Starts per key_rate_period seconds for each concurrency key."
    )
    key_rate_period: float


class QueuesOut(Schema):
    queues: list[QueueOut]


class TaskOut(Schema):
    id: int
    url: str
    task: str = Field(description="The HTTP name when the task has one, else its dotted path.")
    queue: str
    priority: int
    status: str = Field(
        description="SCHEDULED (due later: deferred or waiting for a retry), READY, RUNNING, "
        "SUCCESSFUL, FAILED or CANCELLED"
    )
    attempts: int
    max_attempts: int
    args: list[JsonValue]
    kwargs: dict[str, JsonValue]
    enqueued_at: dt.datetime
    run_after: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    cancel_requested: bool
    concurrency_key: str | None = None
    worker_id: UUID | None
    return_value: JsonValue = None
    errors: list[TaskError]
    waiting_on: list[HoldOut] | None = Field(
        default=None,
        description="GET /api/tasks/{id} only, for a SCHEDULED or READY task: what holds it now "
        "(empty: nothing, a worker should take it at once).",
    )
    unique_key: str | None = None


class BulkOut(Schema):
    tasks: list[TaskOut]


class TaskPage(Schema):
    tasks: list[TaskOut]
    next_cursor: int | None = Field(description="Pass as ?cursor= for the next page; null at the end.")


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
    status: Literal["healthy", "degraded", "unhealthy"] = Field(
        description="degraded: tasks wait that no live worker will run, or wait too long, or workers "
        "stopped beating; unhealthy (503): the database cannot be reached or migrations are missing"
    )
    reasons: list[str] = Field(description="Why the status is not healthy; empty when it is")
    database: str = Field(description="ok or unavailable")
    live_workers: int | None = None
    pending: dict[str, int] | None = Field(default=None, description="SCHEDULED, READY and RUNNING counts")
    completed: dict[str, int] | None = Field(
        default=None,
        description="SUCCESSFUL, FAILED and CANCELLED counts of tasks finished in the last 5 minutes",
    )
    oldest_ready_age_seconds: float | None = None
    timestamp: dt.datetime | None = None


class StatsOut(Schema):
    queues: dict[str, dict[str, int]] = Field(description="live tasks (SCHEDULED, READY, RUNNING) by queue")
    throughput: dict[str, dict[str, int]] = Field(description="finished tasks by status over 1m, 5m and 15m")
    pickup_latency_seconds: dict[str, float | None] = Field(description="p50 and p95 over 15 minutes")
    timestamp: dt.datetime


class ScheduleOut(Schema):
    name: str
    task: str = Field(description="The task's dotted path")
    cron: str
    description: str = Field(description="The cron expression in words")
    timezone: str
    queue: str
    priority: int
    catch_up: str = Field(description="none, latest or all (with catch_up_limit)")
    catch_up_limit: int
    enabled: bool
    source: str = Field(description="code (TASKQUEUE['SCHEDULE'] or @periodic) or admin")
    next_run_at: dt.datetime | None = Field(description="The next tick not enqueued yet")
    last_run: LastRunOut | None


class LastRunOut(Schema):
    tick_at: dt.datetime
    manual: bool
    task_id: int | None
    status: str | None = Field(description="The task's status; null once it has been purged")


class SchedulesOut(Schema):
    schedules: list[ScheduleOut]


class Error(Schema):
    error: str = Field(description="A stable machine-readable code")
    detail: str = Field(description="What was wrong, for a person")
