"""Submitting tasks from outside Python (the REST API): by registered name, with idempotency and
back pressure, all or nothing in one transaction."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.tasks import task_backends
from django.tasks.exceptions import InvalidTask

from queueapp import conf, http_tasks, models, store
from queueapp.backend import AnyTask, PostgresBackend
from queueapp.exceptions import TaskQueueError


class SubmissionError(TaskQueueError):
    """The submission was refused."""

    status = 400
    code = "bad_request"


class UnknownTask(SubmissionError):
    """No task is registered for HTTP submission under that name."""

    status, code = 422, "unknown_task"


class TaskNotAllowed(SubmissionError):
    """This API key may not submit that task."""

    status, code = 403, "task_not_allowed"


class InvalidSubmission(SubmissionError):
    """The task's options or arguments were refused."""

    status, code = 422, "invalid_task"


class QueueFull(SubmissionError):
    """The queue already holds as many READY tasks as its configured limit."""

    status, code = 429, "queue_full"


class IdempotencyConflict(SubmissionError):
    """The Idempotency-Key was used before with a different request body."""

    status, code = 409, "idempotency_conflict"


@dataclass(frozen=True, kw_only=True)
class Submission:
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str | None = None
    priority: int | None = None
    run_after: datetime | None = None
    max_attempts: int | None = None
    concurrency_key: str | None = None
    unique_key: str | None = None
    unique_for: float | None = None


def request_hash(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def queue_limit(queue: str) -> int | None:
    limits = conf.get()
    return limits.queue_limits.get(queue, limits.max_ready_per_queue)


def _resolve(api_key: models.ApiKey, item: Submission) -> AnyTask:
    task = http_tasks.get(item.task)
    if task is None:
        raise UnknownTask(f"no task named {item.task!r} is registered for HTTP submission")
    if not http_tasks.allowed(item.task, api_key.task_patterns):
        raise TaskNotAllowed(f"this API key may not submit {item.task!r}")
    try:
        return task.using(  # type: ignore[call-arg]
            queue_name=item.queue,
            priority=item.priority,
            run_after=item.run_after,
            max_attempts=item.max_attempts,
            concurrency_key=item.concurrency_key,
            unique_key=item.unique_key,
            unique_for=item.unique_for,
        )
    except InvalidTask as exc:
        raise InvalidSubmission(f"{item.task}: {exc}") from exc


def _check_back_pressure(tasks: Sequence[AnyTask]) -> None:
    for queue in sorted({task.queue_name for task in tasks}):
        limit = queue_limit(queue)
        if limit is not None and store.count_ready([queue], cap=limit) >= limit:
            raise QueueFull(f"queue {queue!r} holds its limit of {limit} READY tasks; retry later")


def submit(
    api_key: models.ApiKey, items: Sequence[Submission], *, idempotency_key: str | None, body_hash: str
) -> tuple[list[int], bool]:
    """Enqueue items in one transaction; returns (task ids, created). A replayed Idempotency-Key
    with the same body returns the original ids and created=False; so do unique keys that were all
    held (the ids are then the holders')."""
    backend = task_backends["default"]
    assert isinstance(backend, PostgresBackend)
    tasks = [_resolve(api_key, item) for item in items]
    with transaction.atomic():
        claimed = None
        if idempotency_key is not None:
            claimed = store.claim_idempotency_key(
                api_key_id=api_key.id, key=idempotency_key, request_hash=body_hash
            )
            if claimed is None:
                earlier = store.get_idempotency_key(api_key_id=api_key.id, key=idempotency_key)
                assert earlier is not None  # the conflicting insert committed before ours returned
                if earlier[0] != body_hash:
                    raise IdempotencyConflict(
                        "this Idempotency-Key was used with a different request body; use a new key"
                    )
                return earlier[1], False
        _check_back_pressure(tasks)
        try:
            made = backend.enqueue_calls(
                (task, item.args, item.kwargs) for task, item in zip(tasks, items, strict=True)
            )
        except InvalidTask as exc:
            raise InvalidSubmission(str(exc)) from exc
        ids = [int(result.id) for result, _ in made]
        if claimed is not None:
            store.set_idempotency_tasks(claimed, ids)
    return ids, any(created for _, created in made)
