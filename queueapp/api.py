"""The REST API under /api/: thin views that validate, call submissions/backend/reads, and shape."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from django.http import Http404, HttpRequest
from django.tasks import task_backends
from django.utils import timezone
from ninja import NinjaAPI, Query, Schema, Status
from ninja.errors import HttpError
from pydantic import Field

from queueapp import api_schemas as s
from queueapp import conf, http_tasks, models, reads, store, submissions
from queueapp import health as health_checks
from queueapp.api_support import ApiKeyAuth, Docs, HealthAuth, StrictJsonParser, error, install_error_handlers
from queueapp.backend import PostgresBackend, parse_result_id

api = NinjaAPI(
    title="taskqueue",
    version="1",
    description="Submit and inspect tasks. Every call needs `Authorization: Bearer <API key>` "
    "(`manage.py create_api_key`). Errors are `{error, detail}` JSON.",
    auth=ApiKeyAuth(),
    parser=StrictJsonParser(),
    urls_namespace="api",
    docs=Docs(),
)
install_error_handlers(api)

# Built when the URLconf loads, after every app's tasks registered: the schema names them.
if TYPE_CHECKING:
    TaskSubmission = s.TaskIn
    BulkSubmission = s.BulkIn
else:
    TaskSubmission = s.submission_schema(http_tasks.names(), sorted(task_backends["default"].queues))
    BulkSubmission = s.bulk_schema(TaskSubmission)

# /api/health counts finished tasks over this window: counting all of history would read every row.
HEALTH_WINDOW_MINUTES = 5
COMMON: dict[int, Any] = {401: s.Error, 413: s.Error, 415: s.Error, 422: s.Error, 503: s.Error, 400: s.Error}
SUBMIT_ERRORS: dict[int, Any] = {**COMMON, 403: s.Error, 409: s.Error, 429: s.Error}


def backend() -> PostgresBackend:
    pg = task_backends["default"]
    assert isinstance(pg, PostgresBackend)
    return pg


def task_out(task: models.Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "url": f"/api/tasks/{task.id}",
        "task": http_tasks.name_for(task.task_path) or task.task_path,
        "queue": task.queue_name,
        "priority": task.priority,
        "status": task.status,
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
        "args": task.args,
        "kwargs": task.kwargs,
        "enqueued_at": task.enqueued_at,
        "run_after": task.run_after,
        "started_at": task.started_at,
        "finished_at": task.finished_at,
        "cancel_requested": task.cancel_requested,
        "concurrency_key": task.concurrency_key,
        "worker_id": task.worker_id,
        "return_value": task.return_value,
        "errors": task.errors,
        "unique_key": task.unique_key,
    }


def tasks_by_id(ids: list[int]) -> list[dict[str, Any]]:
    found = models.Task.objects.in_bulk(ids)
    return [task_out(found[task_id]) for task_id in ids if task_id in found]


def get_task_or_404(task_id: int) -> models.Task:
    task = models.Task.objects.filter(id=task_id).first() if parse_result_id(task_id) else None
    if task is None:
        raise Http404(f"no task {task_id}")
    return task


def _submit(request: HttpRequest, items: list[s.TaskIn], body: Any) -> tuple[list[int], bool]:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 255:
        raise HttpError(422, "Idempotency-Key must be 1 to 255 characters")
    return submissions.submit(
        request.auth,  # type: ignore[attr-defined]
        [submissions.Submission(**item.model_dump()) for item in items],
        idempotency_key=key,
        body_hash=submissions.request_hash(body),
    )


@api.post("/tasks", response={201: s.TaskOut, 200: s.TaskOut, **SUBMIT_ERRORS}, summary="Submit a task")
def submit_task(request: HttpRequest, payload: TaskSubmission) -> Status[dict[str, Any]]:
    """201 with the new task; 200 with the original when the Idempotency-Key was seen with this body,
    or with the task holding the unique_key."""
    ids, created = _submit(request, [payload], payload.model_dump(mode="json"))
    return Status(201 if created else 200, tasks_by_id(ids)[0])


@api.post(
    "/tasks/bulk", response={201: s.BulkOut, 200: s.BulkOut, **SUBMIT_ERRORS}, summary="Submit up to 1,000"
)
def submit_bulk(request: HttpRequest, payload: BulkSubmission) -> Status[dict[str, Any]]:
    """All or nothing, in one transaction. 200 when no task was created (a replayed Idempotency-Key,
    or every unique_key held: the holders are listed)."""
    ids, created = _submit(request, payload.tasks, payload.model_dump(mode="json"))
    return Status(201 if created else 200, {"tasks": tasks_by_id(ids)})


class ListParams(Schema):
    status: str | None = Field(
        default=None, pattern="^(SCHEDULED|READY|RUNNING|SUCCESSFUL|FAILED|CANCELLED)$"
    )
    queue: str | None = Field(default=None, max_length=100)
    task: str | None = Field(default=None, max_length=255, description="HTTP name or dotted path")
    enqueued_after: s.IsoDateTime | None = None
    enqueued_before: s.IsoDateTime | None = None
    unique_key: str | None = Field(default=None, max_length=255, description="Tasks with exactly this key")
    cursor: int | None = Field(
        default=None, ge=1, le=2**63 - 1, description="next_cursor of the previous page (smaller ids)"
    )
    limit: int = Field(default=50, ge=1, le=500)


@api.get("/tasks", response={200: s.TaskPage, **COMMON}, summary="List tasks, newest first")
def list_tasks(request: HttpRequest, params: Query[ListParams]) -> Any:
    # ninja reads only the parameters it knows: ignored, `?stauts=FAILED` answered with every task.
    unknown = sorted(set(request.GET) - set(ListParams.model_fields))
    if unknown:
        known = ", ".join(ListParams.model_fields)
        return error(422, "invalid_request", f"unknown query parameter(s) {unknown}: the list takes {known}")
    task_path = None
    if params.task:
        exposed = http_tasks.get(params.task)
        task_path = exposed.module_path if exposed else params.task
    page, next_id = reads.list_tasks(
        reads.TaskFilter(
            status=params.status,
            queue=params.queue,
            task_path=task_path,
            enqueued_after=params.enqueued_after,
            enqueued_before=params.enqueued_before,
            unique_key=params.unique_key,
        ),
        before_id=params.cursor,
        limit=params.limit,
    )
    return {"tasks": [task_out(task) for task in page], "next_cursor": next_id}


@api.get("/tasks/{task_id}", response={200: s.TaskOut, 404: s.Error, **COMMON}, summary="One task")
def get_task(request: HttpRequest, task_id: int) -> dict[str, Any]:
    """A waiting task says what holds it (waiting_on)."""
    task = get_task_or_404(task_id)
    holds = store.why_waiting(task.id, stale_after=conf.get().stale_after)
    return {**task_out(task), "waiting_on": None if holds is None else [asdict(h) for h in holds]}


@api.post("/tasks/{task_id}/cancel", response={200: s.TaskOut, 404: s.Error, 409: s.Error, **COMMON})
def cancel_task(request: HttpRequest, task_id: int) -> Any:
    """SCHEDULED and READY are cancelled at once; RUNNING gets a cancel request. 409 when already
    finished."""
    task = get_task_or_404(task_id)
    if not backend().cancel(str(task.id)):
        return error(409, "already_finished", f"task {task.id} is {get_task_or_404(task_id).status}")
    return task_out(get_task_or_404(task_id))


@api.post("/tasks/{task_id}/retry", response={200: s.TaskOut, 404: s.Error, 409: s.Error, **COMMON})
def retry_task(request: HttpRequest, task_id: int, payload: s.RetryIn | None = None) -> Any:
    """FAILED or CANCELLED back to READY under the same id (the task moves back from history and
    runs again) with a fresh budget: `max_attempts` attempts from now (default: the task's own), the
    backoff starting again from its base; 409 from any other state."""
    task = get_task_or_404(task_id)
    if not backend().retry(str(task.id), max_attempts=payload.max_attempts if payload else None):
        current = get_task_or_404(task_id).status
        return error(
            409, "not_retryable", f"task {task.id} is {current}; only FAILED or CANCELLED can be retried"
        )
    return task_out(get_task_or_404(task_id))


@api.get("/queues", response={200: s.QueuesOut, **COMMON}, summary="Queues: flow control and figures")
def list_queues(request: HttpRequest) -> dict[str, Any]:
    return {"queues": [asdict(queue) for queue in store.queue_flow()]}


@api.post(
    "/queues/{name}/pause",
    response={200: s.QueueOut, 403: s.Error, 422: s.Error, **COMMON},
    summary="Pause a queue",
)
def pause_queue(request: HttpRequest, name: str) -> Any:
    """Nothing of the queue is claimed from the commit on; running tasks finish. Needs a key that may
    manage queues."""
    return _set_paused(request, name, True)


@api.post(
    "/queues/{name}/resume",
    response={200: s.QueueOut, 403: s.Error, 422: s.Error, **COMMON},
    summary="Resume a queue",
)
def resume_queue(request: HttpRequest, name: str) -> Any:
    return _set_paused(request, name, False)


def _set_paused(request: HttpRequest, name: str, paused: bool) -> Any:
    if not request.auth.can_manage_queues:  # type: ignore[attr-defined]
        return error(403, "not_allowed", "this API key may not pause or resume queues (can_manage_queues)")
    if not 1 <= len(name) <= 100:
        return error(422, "invalid_queue", "a queue name has 1 to 100 characters")
    store.set_paused(name, paused)
    return next(asdict(queue) for queue in store.queue_flow() if queue.name == name)


@api.get("/schedules", response={200: s.SchedulesOut, **COMMON}, summary="Schedules and their next run")
def list_schedules(request: HttpRequest) -> dict[str, Any]:
    return {"schedules": [reads.schedule_out(schedule) for schedule in reads.list_schedules()]}


@api.get("/workers", response={200: s.WorkersOut, **COMMON}, summary="Workers and their heartbeats")
def list_workers(request: HttpRequest) -> dict[str, Any]:
    now = timezone.now()
    return {
        "workers": [
            {
                "id": w.id,
                "hostname": w.hostname,
                "pid": w.pid,
                "queues": w.queues,
                "concurrency": w.concurrency,
                "state": reads.worker_health(w, now),
                "started_at": w.started_at,
                "last_heartbeat_at": w.last_heartbeat_at,
                "heartbeat_age_seconds": max(0.0, (now - w.last_heartbeat_at).total_seconds()),
                "running_tasks": w.running,  # type: ignore[attr-defined]
            }
            for w in reads.list_workers()
        ]
    }


@api.get(
    "/health",
    response={**COMMON, 200: s.HealthOut, 503: s.HealthOut},
    auth=HealthAuth(),
    summary="Is the queue healthy?",
)
def health(request: HttpRequest) -> Status[dict[str, Any]]:
    """`healthy`, `degraded` (the queue works, but not as it should) or `unhealthy` (503: the
    database cannot be reached or migrations are missing), with the reasons."""
    report = health_checks.report(HEALTH_WINDOW_MINUTES)
    code = 503 if report.status == health_checks.UNHEALTHY else 200
    return Status(code, {"status": report.status, "reasons": report.reasons, **report.figures})


@api.get("/stats", response={200: s.StatsOut, **COMMON}, summary="Counts, throughput and latency")
def stats(request: HttpRequest) -> dict[str, Any]:
    now = store.database_now()
    return {
        "queues": reads.status_counts(),
        "throughput": {f"{m}m": reads.throughput(now, m) for m in (1, 5, 15)},
        "pickup_latency_seconds": reads.pickup_latency(now),
        "timestamp": now,
    }
