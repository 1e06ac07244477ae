"""Periodic tasks: declared in code (``@periodic`` or TASKQUEUE["SCHEDULE"]) or in the console,
enqueued tick by tick by the scheduler service of every worker (workers/scheduler.py).

    @periodic(cron="*/5 * * * *")
    @task
    def refresh_rates() -> None: ...

Code schedules are written to the schedule table when a worker starts (sync_declared), so that one
table drives the scheduler, the console and the API. Each tick is enqueued once: its (schedule,
tick) row is unique in the database, and it is inserted in the transaction that enqueues its task.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from django.db import transaction
from django.tasks import Task, task_backends
from django.tasks.base import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY

from queueapp import conf, cron, models, registry, store
from queueapp.store.schedules import DueSchedule

T = TypeVar("T", bound=Task[Any, Any])

SETTING_KEYS = {
    "task",
    "cron",
    "timezone",
    "args",
    "kwargs",
    "queue",
    "priority",
    "catch_up",
    "catch_up_limit",
}


@dataclass(frozen=True, kw_only=True)
class ScheduleSpec:
    """A schedule declared in code."""

    name: str
    task_path: str
    cron: str
    timezone: str = "UTC"
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    queue_name: str | None = None
    """The task's own queue when None."""
    priority: int | None = None
    """The task's own priority when None."""
    catch_up: str = models.CatchUp.LATEST
    catch_up_limit: int = 100


_decorated: dict[str, ScheduleSpec] = {}


def periodic(
    *,
    cron: str,
    name: str | None = None,
    timezone: str = "UTC",
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    catch_up: str = models.CatchUp.LATEST,
    catch_up_limit: int = 100,
) -> Callable[[T], T]:
    """Run a task at every tick of cron in timezone; on top of @task. Checked at start-up
    (system checks), so a bad expression stops `manage.py check` and the worker with its reason."""

    def declare(task: T) -> T:
        spec = ScheduleSpec(
            name=name or task.module_path,
            task_path=task.module_path,
            cron=cron,
            timezone=timezone,
            args=tuple(args),
            kwargs=dict(kwargs or {}),
            catch_up=catch_up,
            catch_up_limit=catch_up_limit,
        )
        _decorated[spec.name] = spec
        return task

    return declare


def from_setting() -> list[ScheduleSpec]:
    """TASKQUEUE["SCHEDULE"]: {name: {"task": dotted path, "cron": ..., optional "timezone", "args",
    "kwargs", "queue", "priority", "catch_up", "catch_up_limit"}}. Unknown keys raise ValueError."""
    specs = []
    for name, entry in conf.get().schedule.items():
        unknown = sorted(set(entry) - SETTING_KEYS)
        if unknown or "task" not in entry or "cron" not in entry:
            raise ValueError(
                f"TASKQUEUE['SCHEDULE'][{name!r}] needs 'task' and 'cron'"
                + (f" and has unknown keys {', '.join(unknown)}" if unknown else "")
                + f"; it may have {', '.join(sorted(SETTING_KEYS - {'task', 'cron'}))}"
            )
        specs.append(
            ScheduleSpec(
                name=name,
                task_path=entry["task"],
                cron=entry["cron"],
                timezone=entry.get("timezone", "UTC"),
                args=tuple(entry.get("args", ())),
                kwargs=dict(entry.get("kwargs", {})),
                queue_name=entry.get("queue"),
                priority=entry.get("priority"),
                catch_up=entry.get("catch_up", models.CatchUp.LATEST),
                catch_up_limit=entry.get("catch_up_limit", 100),
            )
        )
    return specs


def declared() -> list[ScheduleSpec]:
    """Every schedule declared in code: the setting's, then the decorators' (a name in both: the
    setting wins)."""
    specs = {spec.name: spec for spec in _decorated.values()}
    specs.update({spec.name: spec for spec in from_setting()})
    return list(specs.values())


def spec_errors(spec: ScheduleSpec) -> list[str]:
    """What is wrong with a declared schedule, each as a sentence naming it."""
    errors = [
        error
        for error in (
            cron.cron_error(spec.cron),
            cron.timezone_error(spec.timezone),
            _task_error(spec.task_path),
            _queue_error(spec.queue_name),
        )
        if error
    ]
    if spec.catch_up not in models.CatchUp.values:
        errors.append(f"catch_up must be one of {', '.join(models.CatchUp.values)}, not {spec.catch_up!r}")
    if not (isinstance(spec.catch_up_limit, int) and spec.catch_up_limit >= 1):
        errors.append(f"catch_up_limit must be a whole number of at least 1, not {spec.catch_up_limit!r}")
    if spec.priority is not None and not TASK_MIN_PRIORITY <= spec.priority <= TASK_MAX_PRIORITY:
        errors.append(
            f"priority must be between {TASK_MIN_PRIORITY} and {TASK_MAX_PRIORITY}, not {spec.priority}"
        )
    try:
        store.encode_arguments(spec.args, dict(spec.kwargs))
    except Exception as exc:  # ArgumentsNotJSON, ArgumentsTooLarge: their message says what
        errors.append(str(exc))
    return [f"schedule {spec.name!r}: {error}" for error in errors]


def _task_error(task_path: str) -> str | None:
    if task_path in registry.paths():
        return None
    return (
        f"task {task_path!r} is not registered (define it with @task in an app's tasks.py "
        "or a TASKQUEUE['IMPORTS'] module)"
    )


def _queue_error(queue: str | None) -> str | None:
    queues = task_backends["default"].queues
    if queue is None or not queues or queue in queues:
        return None
    return f"queue {queue!r} is not one of the backend's QUEUES ({', '.join(sorted(queues))})"


def sync_declared(now: datetime) -> None:
    """Write the code's schedules to the table and drop code schedules no longer declared."""
    specs = declared()
    with transaction.atomic():
        for spec in specs:
            task = registry.get(spec.task_path)
            store.upsert_code_schedule(
                {
                    "name": spec.name,
                    "task_path": spec.task_path,
                    "cron": spec.cron,
                    "timezone": spec.timezone,
                    "args": json.dumps(list(spec.args)),
                    "kwargs": json.dumps(dict(spec.kwargs)),
                    "queue_name": spec.queue_name or task.queue_name,
                    "priority": task.priority if spec.priority is None else spec.priority,
                    "catch_up": spec.catch_up,
                    "catch_up_limit": spec.catch_up_limit,
                    "next_run_at": cron.next_ticks(spec.cron, spec.timezone, now, 1)[0],
                }
            )
        store.drop_code_schedules([spec.name for spec in specs])


def tick_key(name: str, tick_at: datetime) -> str:
    """The unique key of a tick's task: searchable in the console and the API."""
    return f"schedule:{name}@{tick_at.isoformat()}"


def enqueue_tick(
    schedule: DueSchedule | models.Schedule, tick_at: datetime, *, manual: bool = False
) -> int | None:
    """Enqueue the schedule's task for one tick, in the caller's transaction; the task id, or None
    when another scheduler enqueued this tick already. Raises InvalidTask when the task is not
    registered here or its arguments are refused (nothing is stored then). A unique task keeps its
    own key, so a tick finds the previous run still live and makes none (no overlap); other tasks
    get the tick's key."""
    task = registry.get(schedule.task_path)
    options: dict[str, Any] = {"queue_name": schedule.queue_name, "priority": schedule.priority}
    if not getattr(task, "unique", False):
        options["unique_key"] = tick_key(schedule.name, tick_at)
    with transaction.atomic():
        tick_id = store.claim_tick(schedule_id=schedule.id, tick_at=tick_at, manual=manual)
        if tick_id is None:
            return None
        result = task.using(**options).enqueue(*schedule.args, **schedule.kwargs)
        store.set_tick_task(tick_id, int(result.id))
    return int(result.id)


def run_now(schedule: models.Schedule) -> int:
    """The console's "run now": the task at once, as a manual tick at the database's now."""
    task_id = enqueue_tick(schedule, store.database_now(), manual=True)
    assert task_id is not None  # a manual tick at a fresh instant is never a duplicate
    return task_id


def next_run_after(schedule: models.Schedule) -> datetime:
    """Where a schedule made or changed in the console starts: its first tick after now."""
    return cron.next_ticks(schedule.cron, schedule.timezone, store.database_now(), 1)[0]
